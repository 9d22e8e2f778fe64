//! The console's HTML pages. Each handler checks who is asking, loads through the server's
//! query functions, shapes with `views`, and renders a template; nothing here decides delivery
//! state.

use super::auth::{
    LANG_COOKIE, LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL_MS, Viewer, secret_cookie,
};
use super::i18n::{delivery_label, lang_of, state_label, strings, word};
use super::views::{MachineFilter, bucket, time};
use super::{Web, WebError, WebResult, WebState};
use crate::db::{self, now_ms};
use crate::results::Query as ResultsQuery;
use axum::extract::{ConnectInfo, Form, OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use patchcast_core::delivery::{State as DeliveryState, state_names};
use patchcast_core::errors::{Code, Lang, Params, entry, human_bytes, render};
use patchcast_proto::admin_api::DeliveryRow;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Machines silent this long are listed on the dashboard.
pub const STALE_AFTER_MS: i64 = 24 * 3600 * 1000;
/// The dashboard's "recent errors" window.
pub const RECENT_ERRORS_MS: i64 = 7 * 24 * 3600 * 1000;
/// Silent machines the dashboard lists by name (the rest are counted).
pub const STALE_LISTED: usize = 100;
/// Machines on one page of the console's list.
pub const MACHINES_PER_PAGE: usize = 100;

/// Rows on one page of a scenario's deliveries, of a machine's history or of the audit.
pub const ROWS_PER_PAGE: usize = 100;

/// A paged list's `?page=` (from 0).
#[derive(Deserialize, Default)]
pub struct PageQ {
    #[serde(default)]
    pub page: usize,
}

/// One request's reader: language, whether to remember it, viewer and the page's own URL.
pub struct Ctx {
    pub lang: Lang,
    remember_lang: bool,
    viewer: Option<Viewer>,
    uri: axum::http::Uri,
}

#[derive(Deserialize, Default)]
pub struct LangQ {
    #[serde(default)]
    pub lang: Option<String>,
}

/// Percent-encoding for a query value or a path segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Ctx {
    pub async fn of(w: &Web, h: &HeaderMap, uri: &axum::http::Uri) -> WebResult<Ctx> {
        let q: Vec<(String, String)> = uri
            .query()
            .and_then(serde_urlencoded_pairs)
            .unwrap_or_default();
        let lang_q = q.iter().find(|(k, _)| k == "lang").map(|(_, v)| v.as_str());
        let (lang, remember_lang) = lang_of(h, lang_q);
        Ok(Ctx {
            lang,
            remember_lang,
            viewer: w.server.viewer(h).await?,
            uri: uri.clone(),
        })
    }

    /// Signed in, or a redirect to the sign-in page that comes back here.
    pub fn require(&self) -> Result<&Viewer, Box<Response>> {
        match &self.viewer {
            Some(v) => Ok(v),
            None => {
                let back = self
                    .uri
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.to_string());
                Err(Box::new(
                    Redirect::to(&format!("/login?next={}", enc(&back))).into_response(),
                ))
            }
        }
    }

    /// This page in the other language (other query parameters kept).
    fn switch_url(&self) -> String {
        let other = match self.lang {
            Lang::En => "ja",
            Lang::Ja => "en",
        };
        let mut parts: Vec<String> = self
            .uri
            .query()
            .and_then(serde_urlencoded_pairs)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != "lang")
            .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
            .collect();
        parts.push(format!("lang={other}"));
        format!("{}?{}", self.uri.path(), parts.join("&"))
    }

    /// Renders `template` with the common values (strings, language, viewer, CSRF token).
    pub fn page(&self, w: &Web, template: &str, status: StatusCode, mut data: Value) -> WebResult {
        let obj = data.as_object_mut().expect("page data is an object");
        obj.insert("t".into(), strings(self.lang));
        obj.insert("lang".into(), self.lang.as_str().into());
        obj.insert("switch_url".into(), self.switch_url().into());
        obj.insert("nav".into(), template.into());
        // Action forms come back to the page they were on.
        obj.insert("back".into(), self.uri.path().into());
        obj.insert(
            "account".into(),
            self.viewer.as_ref().map(|v| v.account().to_string()).into(),
        );
        obj.insert(
            "csrf".into(),
            self.viewer.as_ref().map_or("", |v| v.csrf()).into(),
        );
        let html =
            w.hb.render(template, &data)
                .map_err(|e| anyhow::anyhow!("{template}: {e}"))?;
        let mut res = (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response();
        if self.remember_lang {
            let c = format!(
                "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; Secure; SameSite=Strict",
                self.lang.as_str()
            );
            res.headers_mut()
                .append(header::SET_COOKIE, c.parse().expect("an ASCII cookie"));
        }
        Ok(res)
    }
}

fn serde_urlencoded_pairs(q: &str) -> Option<Vec<(String, String)>> {
    Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{q}").parse().ok()?)
        .ok()
        .map(|Query(v)| v)
}

macro_rules! signed_in {
    ($ctx:expr) => {
        match $ctx.require() {
            Ok(v) => v,
            Err(redirect) => return Ok(*redirect),
        }
    };
}

/// Only same-site absolute paths: never `//host` or `/\host`, which browsers treat as another site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

#[derive(Deserialize, Default)]
pub struct LoginQ {
    next: Option<String>,
}

pub async fn login_form(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<LoginQ>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    if ctx.viewer.is_some() {
        return Ok(Redirect::to(&safe_next(q.next.as_deref())).into_response());
    }
    login_page(&w, &ctx, q.next.as_deref(), StatusCode::OK, None)
}

/// The sign-in form, with `error` above it (and `status`) after a refused attempt.
fn login_page(
    w: &Web,
    ctx: &Ctx,
    next: Option<&str>,
    status: StatusCode,
    error: Option<String>,
) -> WebResult {
    let token = crate::random_hex(16)?;
    let mut res = ctx.page(
        w,
        "login",
        status,
        json!({"login_token": token, "next": safe_next(next), "error": error}),
    )?;
    res.headers_mut().append(
        header::SET_COOKIE,
        secret_cookie(LOGIN_COOKIE, &token, 900)
            .parse()
            .expect("an ASCII cookie"),
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    account: String,
    #[serde(default)]
    password: String,
    csrf: Option<String>,
    next: Option<String>,
}

pub async fn login(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    let expected = super::auth::cookie(&h, LOGIN_COOKIE).unwrap_or("");
    if !super::csrf::matches(expected, f.csrf.as_deref()) {
        return Err(forbidden());
    }
    let keys = super::lockout::keys(&f.account, peer.ip());
    let wait = lock(&w).wait_ms(&keys, now_ms());
    if wait > 0 {
        // Refused before the password is looked at: a locked key learns nothing more.
        tracing::warn!(account = %f.account, %peer, wait_s = wait / 1000, "console sign-in locked out");
        let minutes = (wait + 59_999) / 60_000;
        let error = word("sign_in_locked", ctx.lang).replace("{minutes}", &minutes.to_string());
        return login_page(
            &w,
            &ctx,
            f.next.as_deref(),
            StatusCode::TOO_MANY_REQUESTS,
            Some(error),
        );
    }
    if !w.server.check_password(&f.account, &f.password).await? {
        lock(&w).failed(&keys, now_ms());
        // The account name is logged for the operator; the page says nothing about which part failed.
        tracing::warn!(account = %f.account, %peer, "console sign-in refused");
        let error = word("sign_in_failed", ctx.lang).to_string();
        return login_page(
            &w,
            &ctx,
            f.next.as_deref(),
            StatusCode::UNAUTHORIZED,
            Some(error),
        );
    }
    lock(&w).succeeded(&keys);
    let (token, _csrf) = w.server.create_session(&f.account).await?;
    tracing::info!(account = %f.account, "console sign-in");
    let mut res = Redirect::to(&safe_next(f.next.as_deref())).into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        secret_cookie(SESSION_COOKIE, &token, SESSION_TTL_MS / 1000)
            .parse()
            .expect("ASCII"),
    );
    h.append(
        header::SET_COOKIE,
        secret_cookie(LOGIN_COOKIE, "", 0).parse().expect("ASCII"),
    );
    Ok(res)
}

fn lock(w: &Web) -> std::sync::MutexGuard<'_, super::lockout::Lockout> {
    // The table holds counters only: one a panic left half updated is still usable.
    w.lockout.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn forbidden() -> WebError {
    WebError(
        StatusCode::FORBIDDEN,
        "refused: the form's CSRF token is missing or does not match this session; reload the page and try again".into(),
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(State(w): WebState, h: HeaderMap, Form(f): Form<CsrfForm>) -> WebResult {
    let Some(Viewer::Session { csrf, account }) = w.server.viewer(&h).await? else {
        return Err(forbidden());
    };
    if !super::csrf::matches(&csrf, f.csrf.as_deref()) {
        return Err(forbidden());
    }
    w.server.end_session(&h).await?;
    tracing::info!(account = %account, "console sign-out");
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        secret_cookie(SESSION_COOKIE, "", 0).parse().expect("ASCII"),
    );
    Ok(res)
}

/// A rendered code for templates: code, title, message, remedy, severity.
pub fn code_view(code: Code, lang: Lang, params: &Params) -> Value {
    let r = render(code, lang, params);
    json!({
        "code": code.as_str(),
        "title": entry(code).title.in_lang(lang),
        "message": r.message,
        "remedy": r.remedy,
        "warning": code.severity() == patchcast_core::errors::Severity::Warning,
    })
}

fn params_of(d: &DeliveryRow) -> Params {
    let mut p = d.detail.params.clone();
    if p.exit_code.is_none() {
        p.exit_code = d.detail.exit_code;
    }
    p
}

/// A delivery as a table row.
pub fn delivery_view(d: &DeliveryRow, lang: Lang) -> Value {
    json!({
        "id": d.delivery_id,
        "scenario": d.scenario_id,
        "machine": d.machine_id,
        "hostname": d.hostname,
        "mac": d.mac,
        "package": d.package_id,
        "state": d.state_name(),
        "state_label": delivery_label(d, lang),
        "bucket": bucket(d),
        "attempts": d.attempts,
        // The buttons its state allows (the state machine refuses the rest anyway).
        "can_retry": matches!(d.state, DeliveryState::Failed { .. } | DeliveryState::LoopDetected { .. }),
        "can_cancel": matches!(d.state, DeliveryState::Pending | DeliveryState::AwaitingRetry),
        "code": d.last_code.map(|c| code_view(c, lang, &params_of(d))),
        "updated": time(d.updated_at_ms),
    })
}

pub async fn dashboard(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    signed_in!(ctx);
    let lang = ctx.lang;
    // Counted by the database: the page costs the same for ten machines or a hundred thousand.
    let compliance = w.server.compliance().await?;
    let now = w.server.now();
    let errors = recent_errors(&w, now - RECENT_ERRORS_MS, lang).await?;
    // Machines whose current delivery of some package stopped: the FAQ's Q1 banner.
    let stopped = w
        .server
        .machines_in_states(&["failed", "loop_detected"])
        .await?;
    let (failed, looped) = (stopped[0], stopped[1]);
    let autoupdate_error =
        (failed + looped > 0).then(|| json!({"failed": failed, "looped": looped}));
    let (silent, silent_total) = w
        .server
        .silent_machines(now - STALE_AFTER_MS, STALE_LISTED)
        .await?;
    let stale: Vec<Value> = silent
        .iter()
        .map(|m| json!({"id": m.id, "hostname": m.hostname, "os": m.inventory.os, "last_seen": time(m.last_seen_ms)}))
        .collect();
    let stale_more = (silent_total > stale.len() as i64).then(|| silent_total - stale.len() as i64);
    let machine_total = w.server.machine_count().await?;
    ctx.page(
        &w,
        "dashboard",
        StatusCode::OK,
        json!({
            "compliance": compliance,
            "errors": errors,
            "autoupdate_error": autoupdate_error,
            "stale": stale,
            "stale_more": stale_more,
            "machine_total": machine_total,
        }),
    )
}

/// Codes raised in events since `since`, most frequent first, with their catalog text.
async fn recent_errors(w: &Web, since: i64, lang: Lang) -> anyhow::Result<Vec<Value>> {
    let rows = db::deliveries::codes_since(&w.server.db, since).await?;
    let mut out = Vec::new();
    for r in rows {
        let Ok(code) = r.code.parse::<Code>() else {
            continue;
        };
        let (n, last) = (r.n, r.last);
        out.push((n, json!({"count": n, "last": time(last), "code": code_view(code, lang, &Params::default())})));
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

fn options(values: impl IntoIterator<Item = (String, String)>, selected: &str) -> Vec<Value> {
    values
        .into_iter()
        .map(|(v, label)| json!({"value": v, "label": label, "selected": v == selected}))
        .collect()
}

/// The options of the machine list's filters, each read with one statement.
async fn filter_options(w: &Web, f: &MachineFilter, lang: Lang) -> anyhow::Result<Value> {
    let groups: BTreeSet<String> = db::machines::groups(&w.server.db)
        .await?
        .into_iter()
        .map(|g| g.name)
        .collect();
    let (oses, langs) = w.server.oses_and_languages().await?;
    let codes = w.server.current_codes().await?;
    Ok(json!({
        "q": f.q,
        "groups": options(groups.into_iter().map(|g| (g.clone(), g)), &f.group),
        "oses": options(oses.into_iter().map(|o| (o.clone(), o)), &f.os),
        "languages": options(langs.into_iter().map(|l| (l.clone(), l)), &f.language),
        "states": options(state_names().into_iter().map(|s| (s.to_string(), state_label(s, lang))), &f.state),
        "codes": options(codes.into_iter().map(|c| (c.clone(), c)), &f.code),
    }))
}

/// This list's URL at page `page` (the other query parameters kept).
pub fn page_url(uri: &axum::http::Uri, page: usize) -> String {
    let mut parts: Vec<String> = uri
        .query()
        .and_then(serde_urlencoded_pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
        .collect();
    if page > 0 {
        parts.push(format!("page={page}"));
    }
    if parts.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), parts.join("&"))
    }
}

pub async fn machines(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(f): Query<MachineFilter>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    signed_in!(ctx);
    let filters = filter_options(&w, &f, ctx.lang).await?;
    let (rows, more) = super::fleet::Scan::new(&w.server, f.clone(), ctx.lang)
        .await?
        .page(&w.server, f.page, MACHINES_PER_PAGE)
        .await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let m = &r.machine;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            let mut codes = BTreeSet::new();
            for d in &r.current {
                *counts.entry(bucket(d)).or_default() += 1;
                if let Some(c) = d.last_code {
                    codes.insert(c.as_str());
                }
            }
            json!({
                "id": m.id, "hostname": m.hostname, "os": m.inventory.os, "language": m.inventory.language,
                "groups": m.groups.join(", "), "last_seen": time(m.last_seen_ms), "agent_state": m.agent_state,
                "mac": m.inventory.mac().unwrap_or(""),
                "applied": counts.get("applied").copied().unwrap_or(0),
                "failed": counts.get("failed").copied().unwrap_or(0) + counts.get("not_applied").copied().unwrap_or(0),
                "in_progress": counts.get("in_progress").copied().unwrap_or(0),
                "codes": codes.into_iter().collect::<Vec<_>>().join(" "),
            })
        })
        .collect();
    // Exports hold every machine the filters keep, whatever page this is.
    let query: String = uri
        .query()
        .and_then(serde_urlencoded_pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
        .collect::<Vec<_>>()
        .join("&");
    ctx.page(
        &w,
        "machines",
        StatusCode::OK,
        json!({
            "machines": list,
            "filters": filters,
            "page_number": f.page + 1,
            "prev_url": (f.page > 0).then(|| page_url(&uri, f.page - 1)),
            "next_url": more.then(|| page_url(&uri, f.page + 1)),
            "export_csv": format!("/export/machines.csv?{query}"),
            "export_json": format!("/export/machines.json?{query}"),
        }),
    )
}

pub async fn find_machine(
    w: &Web,
    id: &str,
) -> anyhow::Result<Option<patchcast_proto::admin_api::MachineView>> {
    w.server.machine_by_id(id).await
}

pub async fn machine(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    Query(p): Query<PageQ>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    signed_in!(ctx);
    let lang = ctx.lang;
    let Some(m) = find_machine(&w, &id).await? else {
        return not_found_page(&w, &ctx, &format!("machine {id}"));
    };
    // The current delivery of each package, then one page of the history, newest first:
    // page 0 is the last `ROWS_PER_PAGE` rows of `results`' order, read in that order.
    let current: Vec<Value> = w
        .server
        .current_of(std::slice::from_ref(&m.id), lang, &mut Default::default())
        .await?
        .iter()
        .map(|d| delivery_view(d, lang))
        .collect();
    let sel = w
        .server
        .select(&ResultsQuery {
            machine: Some(m.id.clone()),
            history: true,
            lang,
            ..ResultsQuery::default()
        })
        .await?;
    let total = w
        .server
        .results_summary(&sel, &mut Default::default())
        .await?
        .2 as i64;
    let per_page = ROWS_PER_PAGE as i64;
    let end = total
        .saturating_sub((p.page as i64).saturating_mul(per_page))
        .max(0);
    let start = (end - per_page).max(0);
    let rows = w.server.deliveries(&sel, end - start, start).await?;
    let history: Vec<Value> = rows
        .iter()
        .rev()
        .map(|d| {
            let mut v = delivery_view(d, lang);
            let events: Vec<Value> = d
                .history
                .iter()
                .map(|e| {
                    json!({
                        "at": time(e.at_ms), "attempt": e.attempt, "seq": e.seq,
                        "event": e.name(),
                        "state": state_label(&e.state, lang),
                        "code": e.code.map(|c| code_view(c, lang, &e.params)),
                    })
                })
                .collect();
            let explanation: Vec<Value> = d
                .detail
                .explanation
                .iter()
                .map(|c| json!({"check": c.check, "outcome": format!("{:?}", c.outcome).to_lowercase(), "detail": c.detail}))
                .collect();
            let o = v.as_object_mut().expect("an object");
            o.insert("events".into(), events.into());
            o.insert("explanation".into(), explanation.into());
            o.insert("output_tail".into(), d.detail.output_tail.clone().into());
            o.insert("exit_code".into(), d.detail.exit_code.into());
            o.insert("source".into(), d.detail.source.clone().into());
            v
        })
        .collect();
    let inv = &m.inventory;
    let interfaces: Vec<Value> = inv
        .interfaces
        .iter()
        .map(|i| json!({"name": i.name, "mac": i.mac, "addresses": i.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")}))
        .collect();
    let packages: Vec<String> = inv
        .packages
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    ctx.page(
        &w,
        "machine",
        StatusCode::OK,
        json!({
            "m": {
                "id": m.id, "hostname": m.hostname, "peer": m.peer_address, "os": inv.os,
                "os_version": inv.os_version, "arch": inv.arch, "language": inv.language,
                "service_pack": inv.service_pack, "disk": format!("{} / {} ({})", human_bytes(inv.disk_free), human_bytes(inv.disk_total), inv.system_drive),
                "memory": human_bytes(inv.memory_total), "agent_version": inv.agent_version,
                "agent_state": m.agent_state, "boot_time": time(inv.boot_time as i64 * 1000),
                "pending_reboot": inv.pending_reboot, "emulated": inv.emulated,
                "groups": m.groups.join(", "), "labels": m.labels.join(", "),
                "last_seen": time(m.last_seen_ms), "enrolled": time(m.enrolled_at_ms),
                "interfaces": interfaces, "installed_updates": inv.installed_updates.join(", "),
                "packages": packages,
            },
            "current": current,
            "deliveries": history,
            "page_number": p.page + 1,
            "prev_url": (p.page > 0).then(|| page_url(&uri, p.page - 1)),
            "next_url": (start > 0).then(|| page_url(&uri, p.page + 1)),
            "export_csv": format!("/export/machines/{}/results.csv", enc(&m.id)),
            "export_json": format!("/export/machines/{}/results.json", enc(&m.id)),
        }),
    )
}

fn not_found_page(w: &Web, ctx: &Ctx, what: &str) -> WebResult {
    ctx.page(w, "error", StatusCode::NOT_FOUND, json!({"what": what}))
}

pub async fn scenarios(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    signed_in!(ctx);
    let rows = db::scenarios::newest_first(&w.server.db).await?;
    let mut list = Vec::new();
    for r in rows {
        let counts = crate::results::counts(&w.server, &r.id).await?;
        list.push(json!({
            "id": r.id,
            "name": r.name,
            "created": time(r.created_at),
            "total": counts.total, "done": counts.done,
            "applied": counts.states.get("applied").copied().unwrap_or(0),
            "failed": counts.states.get("failed").copied().unwrap_or(0),
        }));
    }
    // The forms: start a scenario from a published package and a group; automatic update.
    let packages: Vec<String> = w
        .server
        .packages()
        .await?
        .into_iter()
        .map(|p| p.id)
        .collect();
    let groups: Vec<String> = w
        .server
        .groups()
        .await?
        .into_iter()
        .map(|g| g.group.name)
        .collect();
    let assignments: Vec<Value> = w
        .server
        .assignments()
        .await?
        .into_iter()
        .map(
            |a| json!({"group": a.group, "package": a.package_id, "since": time(a.assigned_at_ms)}),
        )
        .collect();
    ctx.page(
        &w,
        "scenarios",
        StatusCode::OK,
        json!({"scenarios": list, "packages": packages, "groups": groups, "assignments": assignments}),
    )
}

pub async fn scenario(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    Query(p): Query<PageQ>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    signed_in!(ctx);
    let lang = ctx.lang;
    let Some((name, created_at_ms)) = db::scenarios::header(&w.server.db, &id).await? else {
        return not_found_page(&w, &ctx, &format!("scenario {id}"));
    };
    // Counted by the database; one page of rows read.
    let counts = crate::results::counts(&w.server, &id).await?;
    let done = counts.done || counts.total == 0;
    let states: Vec<Value> = state_names()
        .iter()
        .map(|s| json!({"state": s, "label": state_label(s, lang), "count": counts.states.get(*s).copied().unwrap_or(0)}))
        .collect();
    let sel = w
        .server
        .select(&ResultsQuery {
            scenario: Some(id.clone()),
            lang,
            ..ResultsQuery::default()
        })
        .await?;
    let per_page = ROWS_PER_PAGE as i64;
    let offset = (p.page as i64).saturating_mul(per_page);
    let rows = w.server.deliveries(&sel, per_page, offset).await?;
    let more = offset.saturating_add(per_page) < counts.total as i64;
    let rollout = super::waves::for_scenario(&w.server, &id).await?;
    let waiting = ["pending", "awaiting_retry"]
        .iter()
        .any(|s| counts.states.get(*s).is_some_and(|n| *n > 0));
    ctx.page(
        &w,
        "scenario",
        StatusCode::OK,
        json!({
            "s": {"id": id, "name": name, "created": time(created_at_ms), "total": counts.total, "done": done},
            "states": states,
            "deliveries": rows.iter().map(|d| delivery_view(d, lang)).collect::<Vec<_>>(),
            "page_number": p.page + 1,
            "prev_url": (p.page > 0).then(|| page_url(&uri, p.page - 1)),
            "next_url": more.then(|| page_url(&uri, p.page + 1)),
            "rollout": rollout,
            "can_cancel": waiting,
            "events_url": format!("/scenarios/{}/events", enc(&id)),
            "export_csv": format!("/export/scenarios/{}/deliveries.csv", enc(&id)),
            "export_json": format!("/export/scenarios/{}/deliveries.json", enc(&id)),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/machines/m1?x=1")), "/machines/m1?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "",
            "machines",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("/machines?q=a b&x"), "%2Fmachines%3Fq%3Da%20b%26x");
    }
}
