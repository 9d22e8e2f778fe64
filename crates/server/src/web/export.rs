//! Exports of every console list: `….csv` (RFC 4180: CRLF, quoted when needed, quotes
//! doubled) or `….json` (the same records the admin API returns). Opened by a signed-in
//! browser or by a script with the admin Bearer token. Messages are in the reader's language
//! (`?lang=`, cookie, Accept-Language).
//!
//! A cell that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab or CR first, and
//! not a number) gets a leading `'`: host names and outputs come from endpoints.

use super::fleet;
use super::i18n::{delivery_label, lang_of};
use super::pages::find_machine;
use super::views::{self, MachineFilter, time};
use super::{WebError, WebResult, WebState};
use crate::results::{Query as ResultsQuery, Selection, json_elements};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use patchcast_core::errors::{Lang, render};
use patchcast_proto::admin_api::DeliveryRow;
use patchcast_proto::csv;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// From the request path's extension (routes exist only for `.csv` and `.json`).
    pub fn of(path: &str) -> Format {
        if path.ends_with(".json") {
            Format::Json
        } else {
            Format::Csv
        }
    }
}

/// A download's file name from names endpoints report (a hostname): letters, digits, `-`,
/// `_` and `.` only, so nothing can end the header value or smuggle a path.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn download(
    fmt: Format,
    name: &str,
    header: &[&str],
    rows: &[Vec<String>],
    json: impl Serialize,
) -> Response {
    match fmt {
        Format::Json => Json(json).into_response(),
        Format::Csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.csv\"", file_name(name)),
                ),
            ],
            patchcast_proto::csv::document(header, rows),
        )
            .into_response(),
    }
}

/// Signed in or the admin token; scripts get 401, not a sign-in page.
async fn allowed(
    w: &super::Web,
    h: &HeaderMap,
    uri: &axum::http::Uri,
) -> WebResult<(Lang, Format)> {
    if w.server.viewer(h).await?.is_none() {
        return Err(WebError(
            StatusCode::UNAUTHORIZED,
            "sign in, or send the admin token as `Authorization: Bearer …`".into(),
        ));
    }
    let lang_q = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("lang=")));
    Ok((lang_of(h, lang_q).0, Format::of(uri.path())))
}

const DELIVERY_COLUMNS: [&str; 12] = [
    "delivery_id",
    "scenario_id",
    "machine_id",
    "hostname",
    "package_id",
    "state",
    "state_label",
    "attempts",
    "code",
    "message",
    "remedy",
    "updated_at_utc",
];

fn delivery_cells(d: &DeliveryRow, lang: Lang) -> Vec<String> {
    let mut params = d.detail.params.clone();
    if params.exit_code.is_none() {
        params.exit_code = d.detail.exit_code;
    }
    let r = d.last_code.map(|c| render(c, lang, &params));
    vec![
        d.delivery_id.clone(),
        d.scenario_id.clone(),
        d.machine_id.clone(),
        d.hostname.clone(),
        d.package_id.clone(),
        d.state_name().into(),
        delivery_label(d, lang),
        d.attempts.to_string(),
        d.last_code.map(|c| c.to_string()).unwrap_or_default(),
        r.as_ref().map(|r| r.message.clone()).unwrap_or_default(),
        r.as_ref().map(|r| r.remedy.clone()).unwrap_or_default(),
        time(d.updated_at_ms),
    ]
}

pub async fn compliance(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> WebResult {
    let (_, fmt) = allowed(&w, &h, &uri).await?;
    let c = w.server.compliance().await?;
    let cells: Vec<Vec<String>> = c.iter().map(|p| p.cells()).collect();
    Ok(download(
        fmt,
        "compliance",
        &[
            "package_id",
            "applied",
            "not_applied",
            "not_applicable",
            "failed",
            "in_progress",
        ],
        &cells,
        &c,
    ))
}

const MACHINE_COLUMNS: [&str; 17] = [
    "machine_id",
    "hostname",
    "os",
    "os_version",
    "arch",
    "language",
    "groups",
    "labels",
    "peer_address",
    "last_seen_utc",
    "agent_state",
    "applied",
    "not_applied",
    "not_applicable",
    "failed",
    "in_progress",
    "codes",
];

fn machine_cells(r: &fleet::Row) -> Vec<String> {
    let m = &r.machine;
    let n = |b: &str| {
        r.current
            .iter()
            .filter(|d| views::bucket(d) == b)
            .count()
            .to_string()
    };
    let mut codes: Vec<String> = r
        .current
        .iter()
        .filter_map(|d| d.last_code.map(|c| c.to_string()))
        .collect();
    codes.sort();
    codes.dedup();
    vec![
        m.id.clone(),
        m.hostname.clone(),
        m.inventory.os.clone(),
        m.inventory.os_version.clone(),
        m.inventory.arch.clone(),
        m.inventory.language.clone(),
        m.groups.join(" "),
        m.labels.join(" "),
        m.peer_address.clone(),
        time(m.last_seen_ms),
        m.agent_state.clone(),
        n("applied"),
        n("not_applied"),
        n("not_applicable"),
        n("failed"),
        n("in_progress"),
        codes.join(" "),
    ]
}

/// A streamed download: CSV (the header, then each batch's rows as it is read) or JSON (one
/// array of the records): the server holds a batch however long the list, and the bytes are
/// those `download` writes for the whole list at once.
fn streamed<T, J>(
    fmt: Format,
    name: &str,
    header: &'static [&'static str],
    batches: impl Stream<Item = anyhow::Result<Vec<T>>> + Send + 'static,
    cells: impl Fn(&T) -> Vec<String> + Send + 'static,
    record: fn(T) -> J,
) -> Response
where
    T: Send + 'static,
    J: Serialize + Send + 'static,
{
    let bytes = |b: &'static [u8]| stream::once(async move { Ok(Bytes::from_static(b)) });
    let (chunks, content_type) = match fmt {
        Format::Csv => {
            let rows = batches.map(move |b| {
                let lines: String = b?.iter().map(|r| csv::line(&cells(r))).collect();
                Ok(Bytes::from(lines))
            });
            let head = stream::once(async move { Ok(Bytes::from(csv::line(header))) });
            (head.chain(rows).boxed(), "text/csv; charset=utf-8")
        }
        Format::Json => {
            let records = batches.map(move |b| Ok(b?.into_iter().map(record).collect::<Vec<_>>()));
            let array = bytes(b"[").chain(json_elements(records)).chain(bytes(b"]"));
            (array.boxed(), "application/json")
        }
    };
    let mut res = (
        [(header::CONTENT_TYPE, content_type.to_string())],
        crate::results::body("export", chunks),
    )
        .into_response();
    if fmt == Format::Csv {
        let disposition = format!("attachment; filename=\"{}.csv\"", file_name(name));
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            disposition.parse().expect("an ASCII header"),
        );
    }
    res
}

/// The machines export, streamed: the fleet scan's batches are written as they are read.
pub async fn machines(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(f): Query<MachineFilter>,
) -> WebResult {
    let (lang, fmt) = allowed(&w, &h, &uri).await?;
    let scan = fleet::Scan::new(&w.server, f, lang).await?;
    let batches = stream::try_unfold((scan, w.server.clone()), |(mut scan, s)| async move {
        Ok(scan.next(&s).await?.map(|rows| (rows, (scan, s))))
    });
    Ok(streamed(
        fmt,
        "machines",
        &MACHINE_COLUMNS,
        batches,
        machine_cells,
        |r: fleet::Row| r.machine,
    ))
}

/// Every delivery `sel` selects, streamed in `results`' order.
fn deliveries(w: &super::Web, lang: Lang, fmt: Format, name: &str, sel: Selection) -> Response {
    streamed(
        fmt,
        name,
        &DELIVERY_COLUMNS,
        w.server.delivery_batches(sel),
        move |d| delivery_cells(d, lang),
        |d: DeliveryRow| d,
    )
}

pub async fn machine_results(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> WebResult {
    let (lang, fmt) = allowed(&w, &h, &uri).await?;
    let Some(m) = find_machine(&w, &id).await? else {
        return Err(WebError::not_found(format!("no machine `{id}`")));
    };
    let q = ResultsQuery {
        machine: Some(m.id.clone()),
        history: fmt == Format::Json,
        lang,
        ..ResultsQuery::default()
    };
    let sel = w.server.select(&q).await?;
    Ok(deliveries(
        &w,
        lang,
        fmt,
        &format!("results-{}", m.hostname),
        sel,
    ))
}

pub async fn scenario_deliveries(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> WebResult {
    let (lang, fmt) = allowed(&w, &h, &uri).await?;
    if !w.server.scenario_exists(&id).await? {
        return Err(WebError::not_found(format!(
            "no scenario `{id}` on this server"
        )));
    }
    let q = ResultsQuery {
        scenario: Some(id.clone()),
        lang,
        ..ResultsQuery::default()
    };
    let sel = w.server.select(&q).await?;
    Ok(deliveries(&w, lang, fmt, &format!("deliveries-{id}"), sel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_download_names_from_endpoints_are_plain() {
        assert_eq!(file_name("results-pc1.example"), "results-pc1.example");
        assert_eq!(
            file_name("results-a\"; filename=x\r\nSet-Cookie: y/../z"),
            "results-a___filename_x__Set-Cookie__y_.._z"
        );
        assert_eq!(file_name("results-日本"), "results-__");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::of("/export/machines.json"), Format::Json);
        assert_eq!(Format::of("/export/machines.csv"), Format::Csv);
    }
}
