//! A scripted patchcast server for agent tests: real HTTPS (axum + rustls, the project's own
//! `tls::Identity`) on a loopback port, in the test process. It implements enroll, inventory,
//! poll (long poll), report and content, and lets a test queue work, serve chosen (or
//! tampered) archive bytes, cut or stall a download once, and read every request it saw.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use patchcast::core::delivery::{Event, Execution};
use patchcast::transport::protocol::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a download of the content misbehaves, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glitch {
    /// Send this many bytes, then break the connection.
    CutAfter(usize),
    /// Send this many bytes, then send nothing more (the test kills the agent meanwhile).
    StallAfter(usize),
}

#[derive(Default)]
pub struct Script {
    pub token: String,
    pub publisher_keys: Vec<String>,
    pub poll_ms: u64,
    /// machine id → secret
    pub agents: BTreeMap<String, String>,
    pub work: VecDeque<Work>,
    /// archive sha256 (hex) → bytes served
    pub content: BTreeMap<String, Vec<u8>>,
    pub glitch: Option<Glitch>,
    /// Answer reboot-required reports with `reboot: true`.
    pub allow_reboot: bool,
    /// Every report as received, repeats included.
    pub reports: Vec<Report>,
    /// Reports recorded once per (delivery, attempt, seq): what a real server applies.
    pub applied: Vec<Report>,
    /// `Range` header (or None) of every content request.
    pub content_requests: Vec<Option<String>>,
    pub inventories: Vec<Inventory>,
    pub polls: u64,
    /// While set, reports are answered with this status and not recorded (a server outage).
    pub fail_reports: Option<u16>,
    /// Seqs of the reports refused that way.
    pub failed_reports: Vec<u32>,
    /// Deliveries the agent said it was busy with, one per heartbeat.
    pub busy: Vec<String>,
    pub unauthorized: u64,
    /// Trust statements and a re-pin statement put in every poll reply without work.
    pub trust: Vec<patchcast::pack::trust::Signed>,
    pub repin: Option<patchcast::transport::repin::Signed>,
    /// `Poll::trust_serial` of every idle poll, in order.
    pub trust_serials: Vec<Option<u64>>,
}

pub struct Scripted {
    pub url: String,
    pub fingerprint: String,
    pub script: Arc<Mutex<Script>>,
    wake: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct App {
    script: Arc<Mutex<Script>>,
    wake: Arc<tokio::sync::Notify>,
}

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: msg.to_string(),
            code: None,
        }),
    )
        .into_response()
}

impl App {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(b) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            self.script.lock().unwrap().unauthorized += 1;
            return false;
        };
        let mut s = self.script.lock().unwrap();
        let ok = b
            .split_once('.')
            .is_some_and(|(m, secret)| s.agents.get(m).is_some_and(|x| x == secret));
        if !ok {
            s.unauthorized += 1;
        }
        ok
    }
}

async fn enroll(State(app): State<App>, Json(req): Json<EnrollRequest>) -> Response {
    let mut s = app.script.lock().unwrap();
    if req.token != s.token {
        return error(StatusCode::UNAUTHORIZED, "unknown enrollment token");
    }
    let machine_id = format!("m{}", s.agents.len() + 1);
    let secret = format!("secret-{}-{}", machine_id, std::process::id());
    s.agents.insert(machine_id.clone(), secret.clone());
    s.inventories.push(req.inventory);
    Json(EnrollResponse {
        machine_id,
        credential: secret,
        publisher_keys: s.publisher_keys.clone(),
        poll_ms: s.poll_ms,
        trust_serial: 0,
        revoked_keys: Vec::new(),
    })
    .into_response()
}

async fn inventory(
    State(app): State<App>,
    headers: HeaderMap,
    Json(inv): Json<Inventory>,
) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credential");
    }
    app.script.lock().unwrap().inventories.push(inv);
    StatusCode::NO_CONTENT.into_response()
}

async fn poll(State(app): State<App>, headers: HeaderMap, Json(p): Json<Poll>) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credential");
    }
    if let AgentState::Busy { delivery_id, .. } = &p.state {
        app.script.lock().unwrap().busy.push(delivery_id.clone());
    } else {
        app.script
            .lock()
            .unwrap()
            .trust_serials
            .push(p.trust_serial);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.min(MAX_WAIT_MS));
    loop {
        let notified = app.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut s = app.script.lock().unwrap();
            s.polls += 1;
            if let Some(w) = s.work.pop_front() {
                return Json(PollResponse {
                    work: Some(w),
                    ..PollResponse::default()
                })
                .into_response();
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let s = app.script.lock().unwrap();
            return Json(PollResponse {
                trust: s.trust.clone(),
                repin: s.repin.clone(),
                ..PollResponse::default()
            })
            .into_response();
        }
    }
}

async fn report(State(app): State<App>, headers: HeaderMap, Json(r): Json<Report>) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credential");
    }
    let mut s = app.script.lock().unwrap();
    if let Some(status) = s.fail_reports {
        s.failed_reports.push(r.seq);
        return error(
            StatusCode::from_u16(status).unwrap(),
            "scripted outage: try again later",
        );
    }
    s.reports.push(r.clone());
    let repeat = s
        .applied
        .iter()
        .any(|a| a.delivery_id == r.delivery_id && a.attempt == r.attempt && a.seq == r.seq);
    if !repeat {
        s.applied.push(r.clone());
    }
    let reboot = s.allow_reboot
        && matches!(
            r.event,
            Event::Executed {
                execution: Execution::RebootRequired { .. }
            }
        );
    Json(ReportAck {
        applied: !repeat,
        reboot,
    })
    .into_response()
}

async fn content(State(app): State<App>, headers: HeaderMap, Path(sha): Path<String>) -> Response {
    if !app.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credential");
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (bytes, glitch) = {
        let mut s = app.script.lock().unwrap();
        s.content_requests.push(range.clone());
        let Some(b) = s.content.get(&sha).cloned() else {
            return error(StatusCode::NOT_FOUND, "no such content");
        };
        (b, s.glitch.take())
    };
    let total = bytes.len();
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => match r.trim_end_matches('-').parse::<usize>() {
            Ok(n) if n < total => n,
            _ => return error(StatusCode::RANGE_NOT_SATISFIABLE, "bad range"),
        },
        None => 0,
    };
    let body_bytes = bytes[start..].to_vec();
    let len = body_bytes.len();
    let body = match glitch {
        None => Body::from(body_bytes),
        Some(Glitch::CutAfter(n)) => {
            let first = body_bytes[..n.min(len)].to_vec();
            let s = futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(axum::body::Bytes::from(first)),
                Err(std::io::Error::other("connection cut by the test")),
            ]);
            Body::from_stream(s)
        }
        Some(Glitch::StallAfter(n)) => {
            let first = body_bytes[..n.min(len)].to_vec();
            let s = futures_util::StreamExt::chain(
                futures_util::stream::iter(vec![Ok::<_, std::io::Error>(axum::body::Bytes::from(
                    first,
                ))]),
                futures_util::stream::pending(),
            );
            Body::from_stream(s)
        }
    };
    let mut resp = Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    resp = if range.is_some() {
        resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        )
    } else {
        resp.status(StatusCode::OK)
    };
    resp.body(body).unwrap()
}

impl Scripted {
    /// Where the server's TLS identity (`cert.pem`, `key.pem`) is.
    pub fn tls_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Starts the server on a free loopback port (call inside a tokio runtime).
    pub async fn start(token: &str, publisher_keys: Vec<String>, poll_ms: u64) -> Scripted {
        let dir = tempfile::tempdir().unwrap();
        let id = patchcast::transport::tls::Identity::load_or_create(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(
            id.server_config().unwrap(),
        ));
        let script = Arc::new(Mutex::new(Script {
            token: token.into(),
            publisher_keys,
            poll_ms,
            ..Script::default()
        }));
        let wake = Arc::new(tokio::sync::Notify::new());
        let app = App {
            script: script.clone(),
            wake: wake.clone(),
        };
        let router = Router::new()
            .route(ENROLL, post(enroll))
            .route(INVENTORY, post(inventory))
            .route(POLL, post(poll))
            .route(REPORT, post(report))
            .route(&format!("{CONTENT}/{{sha}}"), get(content))
            .with_state(app);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = axum_server::from_tcp_rustls(listener, cfg).unwrap();
        tokio::spawn(async move {
            server.serve(router.into_make_service()).await.unwrap();
        });
        Scripted {
            url: format!("https://127.0.0.1:{port}"),
            fingerprint: id.fingerprint,
            script,
            wake,
            _dir: dir,
        }
    }

    pub fn push_work(&self, w: Work) {
        self.script.lock().unwrap().work.push_back(w);
        self.wake.notify_waiters();
    }

    pub fn serve(&self, sha256_hex: &str, bytes: Vec<u8>) {
        self.script
            .lock()
            .unwrap()
            .content
            .insert(sha256_hex.to_string(), bytes);
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.script.lock().unwrap())
    }

    /// The applied reports of one delivery, in order.
    pub fn reports_of(&self, delivery_id: &str) -> Vec<Report> {
        self.with(|s| {
            s.applied
                .iter()
                .filter(|r| r.delivery_id == delivery_id)
                .cloned()
                .collect()
        })
    }
}
