//! The relay (update agent) role: an agent that caches archives by SHA-256 under its root and
//! serves its neighbours over HTTPS with the same content protocol as the server
//! (`GET /api/v1/content/{sha256}`, `Range: bytes=N-`).
//!
//! - *Identity.* The relay makes its own self-signed certificate (ROOT/relay/tls) and reports
//!   its fingerprint to the server, which hands it to the neighbours with their work, so they
//!   pin it exactly as they pin the server.
//! - *Who may fetch.* A request carries a relay token signed by the server for one (client,
//!   relay, archive) pair and a few hours (`transport::sources`); the relay checks it offline
//!   with the server's token key. Neighbours never show their own credential to a relay.
//! - *What it serves.* Only archives it downloaded from the server and hashed: a file enters
//!   the cache by rename after its SHA-256 matched the name it is cached under.
//! - *Pre-fetch.* The server lists the archives the relay's clients will need; the relay
//!   fetches them and reports its cache, and only then does the server release the clients
//!   (OfficeScan upgrade method 2).

use super::fetch::{self, Fetched};
use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ed25519_dalek::VerifyingKey;
use patchcast_core::model::types::Sha256;
use patchcast_proto::client::Client;
use patchcast_proto::protocol::CONTENT;
use patchcast_proto::sources::{
    Prefetch, RELAY_STATUS, RelayAck, RelaySettings, RelayStatus, verify_token,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What the listener needs, shared with the running server task.
struct Shared {
    machine_id: String,
    cache: PathBuf,
    key: RwLock<Option<VerifyingKey>>,
}

struct Running {
    listen: String,
    url: String,
    handle: axum_server::Handle<SocketAddr>,
}

/// The relay role of one agent; inactive until the server's poll reply carries settings.
pub struct Relay {
    root: PathBuf,
    shared: Arc<Shared>,
    running: Option<Running>,
    fingerprint: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Relay {
    pub fn new(root: &Path, machine_id: &str) -> Relay {
        Relay {
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                machine_id: machine_id.to_string(),
                cache: root.join("relay").join("cache"),
                key: RwLock::new(None),
            }),
            running: None,
            fingerprint: None,
        }
    }

    pub fn cache_path(&self, sha: &Sha256) -> PathBuf {
        self.shared.cache.join(patchcast_smb::content_name(sha))
    }

    /// Archives in the cache (names that are not `<sha256>.pcpkg` are ignored).
    pub fn cached(&self) -> Vec<Sha256> {
        let mut out: Vec<Sha256> = std::fs::read_dir(&self.shared.cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".pcpkg")?.parse().ok())
            .collect();
        out.sort_by_key(Sha256::hex);
        out
    }

    /// Carries out the server's settings: start, move or stop the listener, pre-fetch what
    /// is wanted, report. Errors are the caller's to log; the agent's own work goes on.
    pub async fn apply(&mut self, settings: Option<&RelaySettings>, server: &Client) -> Result<()> {
        let Some(s) = settings else {
            if let Some(r) = self.running.take() {
                tracing::info!(url = %r.url, "relay role removed; listener stopped");
                r.handle.shutdown();
            }
            return Ok(());
        };
        let mut raw = [0u8; 32];
        hex::decode_to_slice(s.token_key.trim(), &mut raw)
            .context("the server's relay token key is not 64 hex digits")?;
        let key = VerifyingKey::from_bytes(&raw).context("the relay token key is not Ed25519")?;
        *self.shared.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        if self.running.as_ref().is_some_and(|r| r.listen != s.listen)
            && let Some(r) = self.running.take()
        {
            r.handle.shutdown();
        }
        if self.running.is_none() {
            self.start(&s.listen)?;
        }
        let mut wanted = s.prefetch.clone();
        // The ack may ask for more (clients that appeared meanwhile); a few rounds at most.
        for _ in 0..4 {
            for p in &wanted {
                self.prefetch(server, p).await?;
            }
            let Some(ack) = self.report(server).await? else {
                break;
            };
            wanted = ack
                .wanted
                .into_iter()
                .filter(|p| !self.cache_path(&p.sha256).exists())
                .collect();
            if wanted.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn start(&mut self, listen: &str) -> Result<()> {
        let addr: SocketAddr = listen
            .parse()
            .with_context(|| format!("relay listen address `{listen}` is not ADDRESS:PORT"))?;
        let mut names = vec!["localhost".to_string()];
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        let identity = patchcast_proto::tls::Identity::load_or_create(
            &self.root.join("relay").join("tls"),
            &names,
        )?;
        std::fs::create_dir_all(&self.shared.cache)
            .with_context(|| format!("creating {}", self.shared.cache.display()))?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("relay: listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(identity.server_config()?));
        let handle = axum_server::Handle::new();
        let app = axum::Router::new()
            .route(&format!("{CONTENT}/{{sha256}}"), get(content))
            .with_state(self.shared.clone());
        let srv = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
        tokio::spawn(async move {
            if let Err(e) = srv.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "relay listener stopped");
            }
        });
        let url = format!("https://{bound}");
        tracing::info!(%url, fingerprint = %identity.fingerprint, "relay listening");
        self.fingerprint = Some(identity.fingerprint.clone());
        self.running = Some(Running {
            listen: listen.to_string(),
            url,
            handle,
        });
        Ok(())
    }

    /// Downloads one archive from the server into the cache, verified by its SHA-256.
    async fn prefetch(&self, server: &Client, p: &Prefetch) -> Result<()> {
        let dest = self.cache_path(&p.sha256);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.root.join("relay").join("tmp").join(p.sha256.hex());
        let path = format!("{CONTENT}/{}", p.sha256.hex());
        tracing::info!(sha256 = %p.sha256, size = p.size, "relay pre-fetching");
        match fetch::fetch_http(server, &path, &p.sha256, p.size, &tmp, 5).await? {
            Fetched::Complete(done) => {
                std::fs::rename(&done, &dest)
                    .with_context(|| format!("moving {} to {}", done.display(), dest.display()))?;
                let _ = std::fs::remove_dir_all(&tmp);
                tracing::info!(sha256 = %p.sha256, "relay cached");
            }
            Fetched::Mismatch { got } => {
                tracing::error!(sha256 = %p.sha256, %got, "relay pre-fetch: content does not hash to its name; discarded");
            }
            other => tracing::warn!(sha256 = %p.sha256, result = ?other, "relay pre-fetch refused"),
        }
        Ok(())
    }

    async fn report(&mut self, server: &Client) -> Result<Option<RelayAck>> {
        let (Some(r), Some(fp)) = (&self.running, &self.fingerprint) else {
            return Ok(None);
        };
        let st = RelayStatus {
            url: r.url.clone(),
            fingerprint: fp.clone(),
            cached: self.cached(),
        };
        let ack: RelayAck = server.post(RELAY_STATUS, &st).await?;
        Ok(Some(ack))
    }
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (
        status,
        axum::Json(patchcast_proto::protocol::ApiError {
            error: msg.to_string(),
            code: None,
        }),
    )
        .into_response()
}

async fn content(
    State(s): State<Arc<Shared>>,
    h: HeaderMap,
    UrlPath(sha): UrlPath<String>,
) -> Response {
    let Ok(sha) = sha.parse::<Sha256>() else {
        return refuse(StatusCode::BAD_REQUEST, "not a SHA-256");
    };
    let token = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let key = *s.key.read().unwrap_or_else(|p| p.into_inner());
    let (Some(token), Some(key)) = (token, key) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "relay request: missing relay token",
        );
    };
    match verify_token(&key, token, &s.machine_id, &sha.hex(), now_ms()) {
        Ok(g) => tracing::debug!(client = %g.sub, %sha, "relay serving"),
        Err(e) => {
            tracing::warn!(error = %e, %sha, "relay request refused");
            return refuse(StatusCode::UNAUTHORIZED, &format!("relay request: {e}"));
        }
    }
    let path = s.cache.join(patchcast_smb::content_name(&sha));
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        return refuse(StatusCode::NOT_FOUND, &format!("relay has no {sha} cached"));
    };
    let size = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    match patchcast_proto::range::parse_range(&h, size) {
        Err(patchcast_proto::range::Unsatisfiable) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response(),
        Ok(None) => (
            [
                (header::CONTENT_LENGTH, size.to_string()),
                (header::ACCEPT_RANGES, "bytes".into()),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10)),
        )
            .into_response(),
        Ok(Some((start, end))) => {
            if let Err(e) = f.seek(std::io::SeekFrom::Start(start)).await {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
            let len = end - start + 1;
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_LENGTH, len.to_string()),
                    (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
                    (header::ACCEPT_RANGES, "bytes".into()),
                ],
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                    f.take(len),
                    256 << 10,
                )),
            )
                .into_response()
        }
    }
}
