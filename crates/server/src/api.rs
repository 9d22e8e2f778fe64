//! HTTP routes: the agent protocol (`transport::protocol`) and the admin API
//! (`transport::admin_api`). Handlers authenticate, decode, call the server and map errors
//! to status codes with an `ApiError` body; the decisions are elsewhere.

use super::Server;
use super::dispatch::ReportOutcome;
use super::machines::EnrollError;
use super::results::Query as ResultsQuery;
use super::store::StageError;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use patchcast_core::errors::{Code, Lang};
use patchcast_core::machine_names::NameError;
use patchcast_core::model::scenario::Scenario;
use patchcast_core::model::types::Sha256;
use patchcast_pack::archive::VerifyError;
use patchcast_proto::admin_api::{self as admin, Group, Labels, PackageView, TokenRequest};
use patchcast_proto::protocol::{
    self as proto, AgentState, ApiError, EnrollRequest, Inventory, Poll, PollResponse, Report,
};
use patchcast_proto::range::parse_range;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

type S = State<Arc<Server>>;

pub struct ApiErr(StatusCode, ApiError);

impl ApiErr {
    pub(super) fn new(status: StatusCode, msg: impl Into<String>, code: Option<Code>) -> ApiErr {
        ApiErr(
            status,
            ApiError {
                error: msg.into(),
                code,
            },
        )
    }
    pub(super) fn bad(msg: impl Into<String>) -> ApiErr {
        ApiErr::new(StatusCode::BAD_REQUEST, msg, None)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<anyhow::Error> for ApiErr {
    fn from(e: anyhow::Error) -> ApiErr {
        // A machine name the administrator wrote that picks out no single machine.
        if let Some(n) = e.downcast_ref::<NameError>() {
            let status = match n {
                NameError::Unknown(_) => StatusCode::NOT_FOUND,
                NameError::Ambiguous { .. } => StatusCode::CONFLICT,
            };
            return ApiErr::new(status, n.to_string(), None);
        }
        // The detail (paths, SQL, addresses) stays in the server's log; the caller, who may
        // not be authenticated yet, gets a reference to find it there.
        let incident = super::random_hex(4).unwrap_or_default();
        tracing::error!(%incident, "request failed: {e:#}");
        // The server's own trouble: the FAQ's "error while preparing" (restart the server).
        ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("server error (incident {incident}); the server log has the details"),
            Some(Code::E01),
        )
    }
}

pub(super) type R<T> = Result<T, ApiErr>;

/// Largest body of an enrollment, the one request before authentication (a token and an
/// inventory; a Debian host with 3,000 packages sends about 150 KB).
pub const ENROLL_BODY_LIMIT: usize = 1 << 20;
/// Largest body of any other request but a publish, which streams to disk after the admin
/// check and is bounded by the server's disk reserve instead.
pub const BODY_LIMIT: usize = 8 << 20;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route(
            proto::ENROLL,
            post(enroll).layer(DefaultBodyLimit::max(ENROLL_BODY_LIMIT)),
        )
        .route(proto::INVENTORY, post(inventory))
        .route(proto::POLL, post(poll))
        .route(proto::REPORT, post(report))
        .route(&format!("{}/{{sha256}}", proto::CONTENT), get(content))
        .route(admin::TOKENS, post(create_token).get(tokens))
        .route(
            &format!("{}/{{id}}", admin::TOKENS),
            axum::routing::delete(revoke_token),
        )
        .route(admin::MACHINES, get(machines))
        .route(&format!("{}/{{id}}/labels", admin::MACHINES), post(label))
        .route(
            &format!("{}/{{id}}", admin::MACHINES),
            axum::routing::delete(remove_machine),
        )
        .route(admin::GROUPS, get(groups).post(put_group))
        .route(
            &format!("{}/{{name}}", admin::GROUPS),
            axum::routing::delete(delete_group),
        )
        .route(admin::PACKAGES, get(packages).post(publish))
        .route(
            &format!("{}/{{id}}", admin::PACKAGES),
            axum::routing::delete(remove_package),
        )
        .route(
            &format!("{}/{{id}}/versions", admin::PACKAGES),
            get(package_versions),
        )
        .route(admin::SCENARIOS, post(run_scenario).get(scenario_list))
        .route(
            &format!("{}/{{id}}", admin::SCENARIOS),
            get(scenario_status),
        )
        .route(admin::RESULTS, get(results))
        .route(
            &format!("{}/{{id}}/retry", admin::DELIVERIES),
            post(retry_delivery),
        )
        .route(
            &format!("{}/{{id}}/cancel", admin::DELIVERIES),
            post(cancel_delivery),
        )
        .route(
            &format!("{}/{{id}}/cancel", admin::SCENARIOS),
            post(cancel_scenario),
        )
        .route(admin::AUDIT, get(audit))
        .merge(super::schedule_routes::routes())
        .merge(super::sources_api::routes())
        .merge(super::keys::routes())
        .merge(super::ops::routes())
        .route(
            patchcast_proto::ssh_api::SSH_MACHINES,
            post(add_ssh_machine),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(server.clone())
        // The web console (issue 7) at `/`, on the same listener.
        .merge(crate::web::router(server.clone()))
        // After routing, so the template (`MatchedPath`) is known; unmatched paths are not timed.
        .route_layer(axum::middleware::from_fn_with_state(
            server.clone(),
            super::ops::track,
        ))
        .layer(axum::middleware::map_response_with_state(
            server,
            date_header,
        ))
}

/// Every reply carries the server's time in `Date` (its test clock when it has one, which
/// hyper's own header would not follow): the reference for the agent doctor's clock check
/// (E28).
async fn date_header(State(s): State<Arc<Server>>, mut resp: Response) -> Response {
    let date = s.now_utc().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = header::HeaderValue::from_str(&date) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthorized(what: &str) -> ApiErr {
    ApiErr::new(
        StatusCode::UNAUTHORIZED,
        format!("{what}: missing or invalid credential"),
        Some(Code::E26),
    )
}

/// An authenticated agent, as its machine id. The credential is in a header, so as an
/// extractor placed before the body this refuses a request before its body is read.
pub(super) struct AgentId(pub String);

impl FromRequestParts<Arc<Server>> for AgentId {
    type Rejection = ApiErr;
    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> R<AgentId> {
        match bearer(&parts.headers) {
            Some(b) => s
                .authenticate_agent(b)
                .await?
                .map(AgentId)
                .ok_or_else(|| unauthorized("agent request")),
            None => Err(unauthorized("agent request")),
        }
    }
}

/// Router states that hold the server (the API's, the web console's).
pub trait HasServer {
    fn server(&self) -> &Server;
}

impl HasServer for Arc<Server> {
    fn server(&self) -> &Server {
        self
    }
}

impl Server {
    /// Whether the request carries the admin token as its bearer credential.
    pub fn is_admin_request(&self, h: &HeaderMap) -> bool {
        bearer(h).is_some_and(|b| self.is_admin(b))
    }
}

/// An authenticated administrator (the admin token); like `AgentId`, checked before the
/// body is read. Used by the API and the console's account API alike.
pub struct Admin;

impl<S: HasServer + Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiErr;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> R<Admin> {
        if s.server().is_admin_request(&parts.headers) {
            Ok(Admin)
        } else {
            Err(unauthorized(
                "admin request (use the token in DATA/admin.token)",
            ))
        }
    }
}

async fn enroll(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<EnrollRequest>,
) -> R<Response> {
    match s.enroll(&req, peer.ip()).await {
        Ok(r) => Ok(Json(r).into_response()),
        Err(EnrollError::BadToken) => {
            tracing::warn!(%peer, "enrollment refused: bad token");
            Err(ApiErr::new(
                StatusCode::UNAUTHORIZED,
                EnrollError::BadToken.to_string(),
                Some(Code::E26),
            ))
        }
        Err(EnrollError::Other(e)) => Err(e.into()),
    }
}

async fn inventory(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AgentId(m): AgentId,
    Json(inv): Json<Inventory>,
) -> R<StatusCode> {
    s.set_inventory(&m, &inv, peer.ip()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn poll(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AgentId(m): AgentId,
    Json(p): Json<Poll>,
) -> R<Json<PollResponse>> {
    let state = match p.state {
        AgentState::Idle => "idle",
        AgentState::Busy { .. } => "busy",
        AgentState::RebootPending { .. } => "reboot_pending",
    };
    s.ops.check_ins.inc();
    s.seen(&m, peer.ip(), state);
    let _open = s.open_poll(&m);
    // A time setting goes out at once, without waiting out the long poll.
    let setting = s.setting_for_poll(&m, &p).await?;
    let relay_role = s.is_relay(&m).await;
    let work = if setting.is_some() {
        None
    } else if relay_role {
        // A relay's poll also ends when its role or wanted content changes.
        let changed = s.sources.relay_notifier(&m);
        tokio::select! {
            w = s.poll(&m, &p.state, p.wait_ms) => w?,
            _ = changed.notified() => None,
        }
    } else {
        s.poll(&m, &p.state, p.wait_ms).await?
    };
    if let Some(w) = &work {
        tracing::info!(machine = %m, delivery = %w.delivery_id, attempt = w.attempt, package = %w.package_id, "dispatched");
    }
    let next_check_in_ms = if work.is_none() {
        s.next_check_in(&m).await?
    } else {
        None
    };
    // Most machines are not relays: their poll reads no relay list.
    let relay = if relay_role {
        s.relay_settings(&m).await?
    } else {
        None
    };
    // Keys that can change (`keys`): only for agents that say which statements they have.
    let (trust, repin) = match p.trust_serial {
        Some(serial) => (
            s.keys.above(serial),
            s.keys.repin_for(p.next_fingerprint.as_deref()),
        ),
        None => (Vec::new(), None),
    };
    Ok(Json(PollResponse {
        work,
        relay,
        setting,
        next_check_in_ms,
        trust,
        repin,
        fingerprint: Some(s.keys.fingerprint().to_string()),
    }))
}

async fn report(State(s): S, AgentId(m): AgentId, Json(r): Json<Report>) -> R<Response> {
    match s.report(&m, &r).await? {
        ReportOutcome::Ack(a) => Ok(Json(a).into_response()),
        ReportOutcome::NotFound => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("delivery {} is not one of this machine's", r.delivery_id),
            None,
        )),
        ReportOutcome::Refused(e) => Err(ApiErr::new(StatusCode::CONFLICT, e.to_string(), None)),
    }
}

async fn content(State(s): S, _: AgentId, h: HeaderMap, Path(sha): Path<String>) -> R<Response> {
    let sha: Sha256 = sha
        .parse()
        .map_err(|e: patchcast_core::model::types::FormatError| ApiErr::bad(e.0))?;
    let path = s.store.path_of(&sha);
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        return Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no content {sha} on this server"),
            Some(Code::E10),
        ));
    };
    let size = f.metadata().await.map_err(anyhow::Error::from)?.len();
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    match parse_range(&h, size) {
        Err(patchcast_proto::range::Unsatisfiable) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            Json(ApiError {
                error: format!("range not satisfiable for {size} bytes"),
                code: None,
            }),
        )
            .into_response()),
        Ok(None) => {
            let body = s.content_body(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10));
            Ok((
                [
                    (header::CONTENT_LENGTH, size.to_string()),
                    (header::ACCEPT_RANGES, "bytes".into()),
                ],
                body,
            )
                .into_response())
        }
        Ok(Some((start, end))) => {
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(anyhow::Error::from)?;
            let len = end - start + 1;
            let body = s.content_body(tokio_util::io::ReaderStream::with_capacity(
                f.take(len),
                256 << 10,
            ));
            Ok((
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_LENGTH, len.to_string()),
                    (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
                    (header::ACCEPT_RANGES, "bytes".into()),
                ],
                body,
            )
                .into_response())
        }
    }
}

async fn tokens(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.tokens().await?).into_response())
}

async fn revoke_token(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    if s.revoke_token(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no enrollment token `{id}`; see `patchcast token list`"),
            None,
        ))
    }
}

async fn create_token(State(s): S, _: Admin, Json(t): Json<TokenRequest>) -> R<Response> {
    Ok(Json(s.create_token(&t).await?).into_response())
}

async fn machines(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.machines().await?).into_response())
}

async fn label(
    State(s): S,
    _: Admin,
    Path(id): Path<String>,
    Json(l): Json<Labels>,
) -> R<Response> {
    match s.label(&id, &l.add, &l.remove).await? {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no machine `{id}`; see `patchcast machine list`"),
            None,
        )),
    }
}

async fn remove_machine(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    s.remove_machine(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_group(State(s): S, _: Admin, Path(name): Path<String>) -> R<Response> {
    match s.delete_group(&name).await? {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no group `{name}`; see `patchcast group list`"),
            None,
        )),
        Err(why) => Err(ApiErr::new(StatusCode::CONFLICT, why, None)),
    }
}

/// An administrator's action through the API: its `ActionDone`, or the refusal as 404, 409
/// or 400 with the message (`actions`).
pub(super) async fn act(s: &Server, a: crate::actions::AdminAction) -> R<Response> {
    use crate::actions::Refused;
    match s.act(&crate::actions::Actor::token(), &a).await? {
        Ok(done) => Ok(Json(done).into_response()),
        Err(r) => {
            let status = match r {
                Refused::NotFound(_) => StatusCode::NOT_FOUND,
                Refused::Conflict(_) => StatusCode::CONFLICT,
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            Err(ApiErr::new(status, r.message(), None))
        }
    }
}

async fn retry_delivery(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    act(&s, crate::actions::AdminAction::RetryDelivery(id)).await
}

async fn cancel_delivery(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    act(&s, crate::actions::AdminAction::CancelDelivery(id)).await
}

async fn cancel_scenario(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    act(&s, crate::actions::AdminAction::CancelScenario(id)).await
}

#[derive(Deserialize)]
struct AuditQ {
    limit: Option<u32>,
}

async fn audit(State(s): S, _: Admin, Query(q): Query<AuditQ>) -> R<Response> {
    Ok(Json(s.audit(q.limit.unwrap_or(50)).await?).into_response())
}

async fn remove_package(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    match s.remove_package(&id).await? {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no package `{id}`; see `patchcast package list`"),
            None,
        )),
        Err(why) => Err(ApiErr::new(StatusCode::CONFLICT, why, None)),
    }
}

async fn scenario_list(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.scenario_list().await?).into_response())
}

async fn groups(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.groups().await?).into_response())
}

async fn put_group(State(s): S, _: Admin, Json(g): Json<Group>) -> R<Response> {
    match s.put_group(&g).await {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(ApiErr::bad(format!("{e:#}"))),
    }
}

async fn packages(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.packages().await?).into_response())
}

fn e17(free: u64, needed: u64, reserve: u64) -> ApiErr {
    ApiErr::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "E17: publishing would leave the server {} free, below its reserve of {} (free now: {}); free disk space on the server or lower --reserve",
            patchcast_core::errors::human_bytes(free.saturating_sub(needed)),
            patchcast_core::errors::human_bytes(reserve),
            patchcast_core::errors::human_bytes(free)
        ),
        Some(Code::E17),
    )
}

async fn package_versions(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    let v = super::db::packages::versions(&s.db, &id).await?;
    if v.is_empty() {
        return Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no package `{id}` is published; `patchcast package list` shows the ids"),
            None,
        ));
    }
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
struct PublishQ {
    /// Accept a version older than the current one and make it current.
    #[serde(default)]
    rollback: bool,
}

async fn publish(
    State(s): S,
    _: Admin,
    Query(q): Query<PublishQ>,
    h: HeaderMap,
    req: Request,
) -> R<Response> {
    if s.trusted().is_empty() {
        return Err(ApiErr::new(
            StatusCode::FORBIDDEN,
            "this server trusts no publisher key, so it accepts no package; restart it with --trust-key PUBLISHER.pub",
            Some(Code::E18),
        ));
    }
    let free = s.store.free_bytes()?;
    let announced: Option<u64> = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if free <= s.reserve || announced.is_some_and(|n| free - n < s.reserve) {
        return Err(e17(free, announced.unwrap_or(0), s.reserve));
    }
    let staged = match s
        .store
        .stage(req.into_body().into_data_stream(), free - s.reserve)
        .await
    {
        Ok(st) => st,
        Err(StageError::TooLarge { .. }) => return Err(e17(free, free, s.reserve)),
        Err(StageError::Body(e)) => return Err(ApiErr::bad(format!("the upload broke off: {e}"))),
        Err(StageError::Io(e)) => return Err(e.into()),
    };
    let (path, trusted) = (staged.path.clone(), s.trusted());
    let verified =
        tokio::task::spawn_blocking(move || patchcast_pack::archive::verify(&path, &trusted))
            .await
            .map_err(anyhow::Error::from)?;
    let v = match verified {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&staged.path);
            let code = match e {
                // Not a signed package at all is a missing signature.
                VerifyError::BadSignature(_)
                | VerifyError::UntrustedKey(_)
                | VerifyError::Structure(_) => Code::E18,
                VerifyError::UnsafeEntry { .. } => Code::E25,
                _ => Code::E19,
            };
            return Err(ApiErr::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{code}: package refused: {e}; sign it with a key this server trusts (`patchcast package build DIR --key KEY`)"
                ),
                Some(code),
            ));
        }
    };
    if let Some(why) = s.older_than_published(&v.package, q.rollback).await? {
        let _ = std::fs::remove_file(&staged.path);
        return Err(ApiErr::new(StatusCode::CONFLICT, why, None));
    }
    let (manifest, signature) = super::store::read_head(&staged.path)?;
    s.store.commit(&staged)?;
    let view = PackageView {
        id: v.manifest.package.id.clone(),
        version: v.manifest.package.version.clone(),
        title: v.manifest.package.title.clone(),
        archive_sha256: staged.sha256.hex(),
        archive_size: staged.size,
        key_id: v.key_id.clone(),
        published_at_ms: s.now(),
    };
    // The package's own install timeout (default 30m; an agent package's check-in
    // deadline), for the no-reply deadline.
    let timeout = v.package.install.timeout.as_secs();
    s.save_package(&view, &manifest, &signature, timeout, q.rollback)
        .await?;
    tracing::info!(package = %view.id, sha256 = %view.archive_sha256, rollback = q.rollback, "published");
    Ok(Json(view).into_response())
}

async fn run_scenario(State(s): S, _: Admin, Json(sc): Json<Scenario>) -> R<Response> {
    match s
        .create_scenario(&sc, &crate::actions::Actor::token())
        .await
    {
        Ok(c) => Ok(Json(c).into_response()),
        Err(e) => Err(ApiErr::bad(format!("{e:#}"))),
    }
}

#[derive(Deserialize)]
struct StatusQ {
    #[serde(default)]
    lang: Option<String>,
    limit: Option<u64>,
    after: Option<String>,
}

async fn scenario_status(
    State(s): S,
    _: Admin,
    Path(id): Path<String>,
    Query(q): Query<StatusQ>,
) -> R<Response> {
    use crate::results::{StatusError, StatusPage};
    let lang = Lang::from_tag(q.lang.as_deref().unwrap_or("en"));
    let page = StatusPage {
        limit: q.limit,
        after: q.after,
    };
    match s.scenario_status(&id, lang, &page).await {
        Ok(st) => Ok(Json(st).into_response()),
        Err(e @ StatusError::NoScenario(_)) => {
            Err(ApiErr::new(StatusCode::NOT_FOUND, e.to_string(), None))
        }
        Err(e @ StatusError::Cursor(_)) => Err(ApiErr::bad(e.to_string())),
        Err(StatusError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ResultsQ {
    scenario: Option<String>,
    machine: Option<String>,
    package: Option<String>,
    #[serde(default)]
    history: bool,
    lang: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    page: u64,
}

async fn results(State(s): S, _: Admin, Query(q): Query<ResultsQ>) -> R<Response> {
    let q = ResultsQuery {
        scenario: q.scenario,
        machine: q.machine,
        package: q.package,
        history: q.history,
        lang: Lang::from_tag(q.lang.as_deref().unwrap_or("en")),
        limit: q.limit,
        page: q.page,
    };
    if q.limit.is_some() {
        return Ok(Json(s.results(&q).await?).into_response());
    }
    // Every delivery: streamed, so the server holds a batch of them however many there are.
    let sel = s.select(&q).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        crate::results::body("results", s.results_json(sel)),
    )
        .into_response())
}

impl Server {
    pub async fn save_package(
        &self,
        v: &PackageView,
        manifest: &str,
        signature: &str,
        install_timeout_secs: u64,
        rollback: bool,
    ) -> anyhow::Result<()> {
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        super::db::packages::replace(
            &mut tx,
            v,
            manifest,
            signature,
            install_timeout_secs,
            rollback,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Why publishing `new` would replay an older signed version of a published package
    /// (`core::lifecycle::publish`); an explicit `rollback` accepts it.
    async fn older_than_published(
        &self,
        new: &patchcast_core::model::package::Package,
        rollback: bool,
    ) -> anyhow::Result<Option<String>> {
        use patchcast_core::lifecycle::{Publish, publish};
        let Some(text) = super::db::packages::manifest(&self.db, new.id.as_str()).await? else {
            return Ok(None);
        };
        let m: patchcast_pack::archive::Manifest = serde_json::from_str(&text)?;
        let published = patchcast_core::model::package::resolve(&m.package).0;
        Ok(match publish(published.as_ref(), new, rollback) {
            Publish::RefuseOlder { current, offered } => Some(format!(
                "package `{}` {current} is published; {offered} is older and is refused (a replay of an older signed version); publish a newer version, or roll back explicitly with `patchcast package publish --rollback`",
                new.id.as_str(),
            )),
            Publish::Accept | Publish::Rollback => None,
        })
    }

    pub async fn packages(&self) -> anyhow::Result<Vec<PackageView>> {
        super::db::packages::list(&self.db).await
    }
}

async fn add_ssh_machine(
    State(s): S,
    _: Admin,
    Json(req): Json<patchcast_proto::ssh_api::SshMachineRequest>,
) -> R<Json<patchcast_proto::ssh_api::SshMachineAdded>> {
    use super::ssh_machines::AddError;
    match s.add_ssh_machine(&req).await {
        Ok(added) => Ok(Json(added)),
        Err(AddError::Invalid(msg)) => Err(ApiErr::bad(msg)),
        // The host or its key said no: the request cannot succeed as it is.
        Err(AddError::Ssh(e)) => Err(ApiErr::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
            Some(e.code()),
        )),
        Err(AddError::Other(e)) => Err(e.into()),
    }
}
