//! The management server: HTTPS (axum over rustls) for agents and administrators, a database
//! (SQLite or PostgreSQL) holding every machine, package, scenario and delivery transition, a
//! content store of signed archives, and the dispatcher that drives deliveries through the
//! pure state machine in `core::delivery`.

pub mod ssh;
pub mod web;

pub mod actions;
pub mod api;
pub mod autoupdate;
pub mod backup;
pub mod batch;
pub mod cache;
pub mod caps;
pub mod clock;
pub mod cluster;
pub mod db;
pub mod dispatch;
pub mod group_commit;
pub mod keys;
pub mod lifecycle;
pub mod machines;
pub mod ops;
pub mod results;
pub mod rollout;
pub mod scenarios;
pub mod schedule_routes;
pub mod settings;
pub mod sources;
pub mod sources_api;
pub mod ssh_machines;
pub mod ssh_worker;
pub mod store;
pub mod throttle;
pub mod upgrades;
pub mod windows;

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How the server is started (`patchcast server` flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://…`; None: SQLite at DATA/patchcast.db.
    pub database: Option<String>,
    /// Publisher public keys (`.pub`) whose packages are accepted.
    pub trust_keys: Vec<PathBuf>,
    /// Free bytes the server keeps on its disk; a publish that would go below is refused (E17).
    pub reserve: u64,
    /// Where signed archives are kept (`--content`): DATA/content unless given. Servers
    /// sharing one PostgreSQL database share this directory (a network share).
    pub content: Option<PathBuf>,
    /// Extra host names / addresses for the certificate.
    pub names: Vec<String>,
    /// Added to an install timeout before an unheard in-flight delivery gets NoReply (E13).
    pub no_reply_margin: Duration,
    /// Long-poll length agents are told to use.
    pub poll_ms: u64,
    /// Lets an admin set the server's time (tests only; see `clock`).
    pub test_clock: bool,
    /// Transfer caps and the per-transfer bandwidth limit (`caps`).
    pub caps: caps::Caps,
    /// A second, plain-HTTP listener serving `/metrics` without the admin token (`ops`).
    pub metrics_listen: Option<SocketAddr>,
    /// Delivery history older than this that a finished delivery's later transitions
    /// superseded is pruned (`Server::prune_history`); None keeps all history.
    pub history_retention: Option<Duration>,
}

impl Config {
    pub fn new(data: &Path) -> Config {
        Config {
            data: data.to_path_buf(),
            listen: "127.0.0.1:8443".parse().expect("a valid address"),
            database: None,
            trust_keys: Vec::new(),
            reserve: 1 << 30,
            names: Vec::new(),
            content: None,
            no_reply_margin: Duration::from_secs(120),
            poll_ms: 30_000,
            test_clock: false,
            caps: caps::Caps::default(),
            metrics_listen: None,
            history_retention: None,
        }
    }
}

/// How often the retention task looks for history to prune, and the rows one statement
/// deletes at most (so a large first prune never holds the write lock for long).
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
pub const PRUNE_BATCH: i64 = 5_000;

/// What `DATA/server.json` holds: how admin commands on this host reach the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub url: String,
    pub fingerprint: String,
}

/// When a machine's last-seen row was written, with the (peer, state) written.
pub type SeenWrite = (i64, (String, String));

pub struct Server {
    pub db: db::Pool,
    pub store: store::Store,
    /// Publisher keys (with their trust statements) and the certificate renewal (`keys`).
    pub keys: keys::Keys,
    pub admin_hash: String,
    pub reserve: u64,
    pub no_reply_margin: Duration,
    pub poll_ms: u64,
    /// The write lock, leader election and signals to other servers on the same
    /// PostgreSQL database (`cluster`).
    pub cluster: cluster::Cluster,
    /// Reports and dispatches waiting to be written together (`group_commit`).
    pub writes: group_commit::Queue,
    /// Small tables and credential hashes kept between their changes (`cache`).
    pub cached: cache::Caches,
    pub notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Last `seen` write per machine.
    pub seen: Mutex<HashMap<String, SeenWrite>>,
    /// Those of them not written yet (`Server::flush_seen`).
    pub seen_due: Mutex<HashMap<String, SeenWrite>>,
    /// Where the server reads the time (`clock`).
    pub clock: clock::Clock,
    pub caps: caps::Caps,
    /// Agents' sessions and open polls, for time settings (`settings`).
    pub presence: Mutex<settings::Presence>,
    /// Update sources and relays (`sources`).
    pub sources: sources::State,
    /// Workers delivering to SSH machines (`ssh_worker`).
    pub ssh: ssh_worker::Workers,
    /// Metrics and probes (`ops`).
    pub ops: ops::Ops,
}

impl Server {
    /// The publisher keys packages must be signed with now (`keys`).
    pub fn trusted(&self) -> Vec<VerifyingKey> {
        self.keys.trusted()
    }

    /// Serialises state-changing transactions: in this process, and on PostgreSQL across
    /// every server on the database (`cluster`).
    pub async fn write(&self) -> Result<cluster::WriteGuard> {
        self.cluster.write().await
    }

    /// After a change to group policies, the update-source list or relay roles: the copies
    /// here and on the other servers are dropped (`cache`).
    pub fn tables_changed(&self) {
        self.cached.tables_changed();
        self.cluster.signal(&cluster::Signal::Changed);
    }

    /// After a machine was removed: its credential is forgotten here and on the other servers.
    pub fn machine_removed(&self, id: &str) {
        self.cached.machine_removed(id);
        self.cluster
            .signal(&cluster::Signal::Removed(id.to_string()));
    }

    /// The write lock of the hot delivery paths (dispatch, reports, the no-reply sweeper):
    /// shared with each other on every server, never with an exclusive writer. Their
    /// transactions lock the rows they decide on (ARCHITECTURE "Several servers").
    pub async fn write_shared(&self) -> Result<cluster::WriteGuard> {
        self.cluster.write_shared().await
    }

    /// Acts on a change another server made (`cluster::Signal`).
    fn heard(self: &Arc<Self>, s: cluster::Signal) {
        use cluster::Signal;
        match s {
            Signal::Wake(m) => self.wake_local(&m),
            Signal::Relay(m) => self.sources.relay_notifier(&m).notify_one(),
            Signal::Keys => {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.keys.reload(&me.db).await {
                        tracing::error!(
                            "reloading trust statements another server accepted: {e:#}"
                        );
                    }
                });
            }
            Signal::Changed => self.cached.tables_changed(),
            Signal::Removed(m) => self.cached.machine_removed(&m),
            Signal::Lost => {
                self.cached.clear();
                let machines: Vec<String> = {
                    let map = self.notify.lock().unwrap_or_else(|p| p.into_inner());
                    map.keys().cloned().collect()
                };
                for m in machines {
                    self.wake_local(&m);
                }
                self.sources.wake_all_relays();
            }
        }
    }
}

/// A started server.
pub struct Running {
    pub info: ServerInfo,
    pub addr: SocketAddr,
    /// Where `--metrics-listen` serves `/metrics`, when given.
    pub metrics_addr: Option<SocketAddr>,
    pub admin_token: String,
    pub recovered: u64,
    pub server: Arc<Server>,
    pub handle: axum_server::Handle<SocketAddr>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn sha256_hex(s: &str) -> String {
    patchcast_pack::hash::sha256_bytes(s.as_bytes()).hex()
}

pub use patchcast_pack::keys::random_hex;

/// The admin token in DATA/admin.token, created (0600) on first start.
fn admin_token(data: &Path) -> Result<String> {
    let path = data.join("admin.token");
    if !path.exists() {
        let token = format!("pcadm_{}", random_hex(24)?);
        patchcast_pack::keys::write_private(&path, format!("{token}\n").as_bytes())?;
    }
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Starts the server: identity, database (migrated), content store, recovery, listener.
pub async fn start(cfg: Config) -> Result<Running> {
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating {}", cfg.data.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(cfg.names.iter().cloned());
    if !cfg.listen.ip().is_unspecified() {
        names.push(cfg.listen.ip().to_string());
    }
    names.dedup();
    let tls_dir = cfg.data.join("tls");
    // A renewal prepared by `patchcast server renew-cert` takes effect at the start after
    // `renew-cert --switch`.
    if let Some((old, new)) = patchcast_proto::repin::promote(&tls_dir)? {
        tracing::info!(%old, %new, "switched to the renewed server certificate");
    }
    let identity = patchcast_proto::tls::Identity::load_or_create(&tls_dir, &names)?;
    let url = match &cfg.database {
        Some(u) => u.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            cfg.data.join("patchcast.db").display()
        ),
    };
    let cluster = cluster::Cluster::new(&url);
    let db = {
        // Several servers may start at once on PostgreSQL: one migrates (schema and data
        // upgrades), the others wait and find nothing left to do.
        let _w = cluster.write().await?;
        let db = db::open(&url).await?;
        upgrades::run(&db).await?;
        db
    };
    let trusted = cfg
        .trust_keys
        .iter()
        .map(|p| patchcast_pack::keys::read_public(p))
        .collect::<Result<Vec<_>>>()?;
    let admin = admin_token(&cfg.data)?;
    let fingerprint = identity.fingerprint.clone();
    let tls_config = identity.server_config()?;
    let keys = keys::Keys::load(&db, &trusted, tls_dir, names, identity).await?;
    let (writes, writer) = group_commit::channel();
    let server = Arc::new(Server {
        db,
        store: store::Store::open(
            &cfg.content
                .clone()
                .unwrap_or_else(|| cfg.data.join("content")),
        )?,
        keys,
        admin_hash: sha256_hex(&admin),
        reserve: cfg.reserve,
        no_reply_margin: cfg.no_reply_margin,
        poll_ms: cfg.poll_ms,
        cluster,
        writes,
        cached: cache::Caches::default(),
        notify: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        seen_due: Mutex::new(HashMap::new()),
        clock: if cfg.test_clock {
            tracing::warn!(
                "TEST CLOCK enabled: an admin can set this server's time; never use this in production"
            );
            clock::Clock::test()
        } else {
            clock::Clock::system()
        },
        caps: cfg.caps.clone(),
        presence: Mutex::new(settings::Presence::default()),
        sources: sources::State::new(cfg.listen),
        ssh: ssh_worker::Workers::new(&cfg.data),
        ops: ops::Ops::new(&cfg.data),
    });
    let heard = Arc::downgrade(&server);
    server.cluster.start(server.db.clone(), move |s| {
        if let Some(server) = heard.upgrade() {
            server.heard(s);
        }
    });
    let recovered = server.recover().await?;
    group_commit::spawn(server.clone(), writer)?;
    ssh_worker::start_all(server.clone()).await?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listening on {}", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let info = ServerInfo {
        url: format!("https://{host}:{}", addr.port()),
        fingerprint,
    };
    write_info(&cfg.data, &info)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls_config));
    let handle = axum_server::Handle::new();
    let app = api::router(server.clone());
    let srv = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
    let task = tokio::spawn(srv.serve(app.into_make_service_with_connect_info::<SocketAddr>()));
    // Plain HTTP and no token: for a scraper on a management network or loopback.
    let metrics_addr = match cfg.metrics_listen {
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("listening on {at} (--metrics-listen)"))?;
            let bound = l.local_addr()?;
            let app = ops::metrics_router(server.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!("metrics listener stopped: {e}");
                }
            });
            Some(bound)
        }
        None => None,
    };
    // The no-reply sweeper (E13).
    let sweeper = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !sweeper.cluster.leader() {
                continue;
            }
            if let Err(e) = sweeper.sweep().await {
                tracing::error!("no-reply sweep failed: {e:#}");
            }
        }
    });
    // Presence: the check-ins heard since the last flush, written together.
    let flusher = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(machines::SEEN_FLUSH);
        loop {
            tick.tick().await;
            if let Err(e) = flusher.flush_seen().await {
                tracing::error!("writing check-ins (last seen) failed: {e:#}");
            }
        }
    });
    // Automatic update, rollout gates (`autoupdate`, `rollout`).
    windows::spawn_ticker(server.clone());
    // History retention: one task, pruning in bounded batches.
    if let Some(retention) = cfg.history_retention {
        let pruner = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tick.tick().await;
                if !pruner.cluster.leader() {
                    continue;
                }
                if let Err(e) = pruner.prune_history(retention, PRUNE_BATCH).await {
                    tracing::error!("history retention failed: {e:#}");
                }
            }
        });
    }
    Ok(Running {
        info,
        addr,
        metrics_addr,
        admin_token: admin,
        recovered,
        server,
        handle,
        task,
    })
}

fn write_info(data: &Path, info: &ServerInfo) -> Result<()> {
    let path = data.join("server.json");
    let tmp = data.join("server.json.tmp");
    let mut bytes = serde_json::to_vec_pretty(info)?;
    bytes.push(b'\n');
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
