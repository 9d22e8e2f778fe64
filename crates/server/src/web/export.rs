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
use crate::results::Query as ResultsQuery;
use axum::Json;
use axum::extract::{OriginalUri, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use patchcast_core::errors::{Lang, render};
use patchcast_proto::admin_api::DeliveryRow;
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

/// Where a streamed export is.
struct Streaming {
    scan: fleet::Scan,
    started: bool,
    first_row: bool,
    done: bool,
}

/// The machines export, streamed: the scan's batches are written as they are read (CSV rows,
/// or the JSON array's elements), so the server holds one batch however large the fleet.
/// The bytes are those `download` writes for the whole list at once.
pub async fn machines(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(f): Query<MachineFilter>,
) -> WebResult {
    let (lang, fmt) = allowed(&w, &h, &uri).await?;
    let scan = fleet::Scan::new(&w.server, f, lang).await?;
    let server = w.server.clone();
    let state = Streaming {
        scan,
        started: false,
        first_row: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut st| {
        let server = server.clone();
        async move {
            if st.done {
                return None;
            }
            let mut out = String::new();
            if !st.started {
                st.started = true;
                match fmt {
                    Format::Csv => out.push_str(&patchcast_proto::csv::line(&MACHINE_COLUMNS)),
                    Format::Json => out.push('['),
                }
            }
            match st.scan.next(&server).await {
                Ok(Some(rows)) => {
                    for r in &rows {
                        match fmt {
                            Format::Csv => {
                                out.push_str(&patchcast_proto::csv::line(&machine_cells(r)))
                            }
                            Format::Json => {
                                if !st.first_row {
                                    out.push(',');
                                }
                                match serde_json::to_string(&r.machine) {
                                    Ok(j) => out.push_str(&j),
                                    Err(e) => return Some((Err(std::io::Error::other(e)), st)),
                                }
                            }
                        }
                        st.first_row = false;
                    }
                }
                Ok(None) => {
                    st.done = true;
                    if fmt == Format::Json {
                        out.push(']');
                    }
                }
                Err(e) => {
                    // The status line is gone: cutting the body short is how the reader learns.
                    tracing::error!("machines export stopped: {e:#}");
                    st.done = true;
                    return Some((Err(std::io::Error::other(format!("{e:#}"))), st));
                }
            }
            Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(out)), st))
        }
    });
    let content_type = match fmt {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Json => "application/json",
    };
    let mut res = (
        [(header::CONTENT_TYPE, content_type.to_string())],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    if fmt == Format::Csv {
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"machines.csv\""
                .parse()
                .expect("an ASCII header"),
        );
    }
    Ok(res)
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
    let rows = w
        .server
        .results(&ResultsQuery {
            machine: Some(m.id.clone()),
            history: fmt == Format::Json,
            lang,
            ..ResultsQuery::default()
        })
        .await?
        .deliveries;
    let cells: Vec<Vec<String>> = rows.iter().map(|d| delivery_cells(d, lang)).collect();
    Ok(download(
        fmt,
        &format!("results-{}", m.hostname),
        &DELIVERY_COLUMNS,
        &cells,
        &rows,
    ))
}

pub async fn scenario_deliveries(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> WebResult {
    let (lang, fmt) = allowed(&w, &h, &uri).await?;
    let st = w
        .server
        .scenario_status(&id, lang)
        .await
        .map_err(|e| WebError::not_found(format!("{e:#}")))?;
    let cells: Vec<Vec<String>> = st
        .deliveries
        .iter()
        .map(|d| delivery_cells(d, lang))
        .collect();
    Ok(download(
        fmt,
        &format!("deliveries-{id}"),
        &DELIVERY_COLUMNS,
        &cells,
        &st.deliveries,
    ))
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
