//! The web console: server-rendered HTML (handlebars templates embedded in the binary) over
//! the same HTTPS listener and database as the API, for administrators in a browser.
//!
//! | module | role |
//! |---|---|
//! | `accounts` | admin accounts: argon2id hashes in `web_accounts`, the CLI's account endpoint |
//! | `actions` | the action forms (one CSRF-checked POST, run through `crate::actions`) and the Audit page |
//! | `auth` | sessions (random cookie, stored hashed), the viewer of a request (session or Bearer) |
//! | `csrf` | the synchronizer token every state-changing form carries |
//! | `lockout` | refuses sign-in for an account or address after repeated failures |
//! | `i18n` | the console's own strings in English and Japanese, the language of a request |
//! | `views` | pure shaping of results into what pages show (compliance, filters, latest per package) |
//! | `pages` | the HTML handlers |
//! | `sse` | live scenario progress (server-sent events) |
//! | `export` | CSV (RFC 4180 quoting) and JSON of every list |
//! | `waves` | hook for rollout waves on the scenario page |
//!
//! Every page is escaped by handlebars (no triple-stash anywhere), sent with a strict CSP (no
//! inline script or style), `X-Frame-Options: DENY` and `Cache-Control: no-store`.

pub mod accounts;
pub mod actions;
pub mod auth;
pub mod csrf;
pub mod export;
pub mod fleet;
pub mod i18n;
pub mod lockout;
pub mod pages;
pub mod sse;
pub mod views;
pub mod waves;

use crate::Server;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use handlebars::Handlebars;
use std::sync::Arc;

/// The console's state: the server, the compiled templates and the sign-in lockout.
pub struct Web {
    pub server: Arc<Server>,
    pub hb: Handlebars<'static>,
    pub lockout: std::sync::Mutex<lockout::Lockout>,
}

pub type WebState = axum::extract::State<Arc<Web>>;

impl crate::api::HasServer for Arc<Web> {
    fn server(&self) -> &Server {
        &self.server
    }
}

/// Templates, compiled into the binary so a deployment is one file.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("../../templates/layout.hbs")),
    ("login", include_str!("../../templates/login.hbs")),
    ("dashboard", include_str!("../../templates/dashboard.hbs")),
    ("machines", include_str!("../../templates/machines.hbs")),
    ("machine", include_str!("../../templates/machine.hbs")),
    ("scenarios", include_str!("../../templates/scenarios.hbs")),
    ("scenario", include_str!("../../templates/scenario.hbs")),
    ("error", include_str!("../../templates/error.hbs")),
    ("audit", include_str!("../../templates/audit.hbs")),
];

const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

/// The compiled templates. Strict mode: a template naming a value the page does not provide is
/// an error at render time (a test renders every page), not a silently empty cell.
pub fn templates() -> anyhow::Result<Handlebars<'static>> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    for (name, text) in TEMPLATES {
        hb.register_template_string(name, *text)
            .map_err(|e| anyhow::anyhow!("template {name}: {e}"))?;
    }
    Ok(hb)
}

/// The console's routes, mounted at `/` beside the API.
pub fn router(server: Arc<Server>) -> Router {
    let web = Arc::new(Web {
        server,
        hb: templates().expect("the embedded templates compile (tested)"),
        lockout: Default::default(),
    });
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/machines", get(pages::machines))
        .route("/machines/{id}", get(pages::machine))
        .route("/scenarios", get(pages::scenarios))
        .route("/scenarios/{id}", get(pages::scenario))
        .route("/scenarios/{id}/events", get(sse::scenario_events))
        .route(actions::ACTIONS, post(actions::post))
        .route("/audit", get(actions::page))
        // Exports: the extension picks the format (see `export::Format::of`).
        .route("/export/compliance.csv", get(export::compliance))
        .route("/export/compliance.json", get(export::compliance))
        .route("/export/machines.csv", get(export::machines))
        .route("/export/machines.json", get(export::machines))
        .route(
            "/export/machines/{id}/results.csv",
            get(export::machine_results),
        )
        .route(
            "/export/machines/{id}/results.json",
            get(export::machine_results),
        )
        .route(
            "/export/scenarios/{id}/deliveries.csv",
            get(export::scenario_deliveries),
        )
        .route(
            "/export/scenarios/{id}/deliveries.json",
            get(export::scenario_deliveries),
        )
        .route(
            accounts::ACCOUNTS,
            post(accounts::api_add).get(accounts::api_list),
        )
        .route(
            &format!("{}/{{name}}", accounts::ACCOUNTS),
            axum::routing::delete(accounts::api_remove),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(web)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// No inline script or style is needed (the JS and CSS are files), so the policy allows only
/// this origin; framing is refused; authenticated answers are never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/static/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// A failure shown to a browser or a script: status and a plain message.
#[derive(Debug)]
pub struct WebError(pub StatusCode, pub String);

impl WebError {
    pub fn not_found(what: impl Into<String>) -> WebError {
        WebError(StatusCode::NOT_FOUND, what.into())
    }
    pub fn bad(what: impl Into<String>) -> WebError {
        WebError(StatusCode::BAD_REQUEST, what.into())
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> WebError {
        tracing::error!("web console request failed: {e:#}");
        // Internals stay in the log; the browser gets a generic line.
        WebError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server error; the server log has the details".into(),
        )
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

pub type WebResult<T = Response> = Result<T, WebError>;
