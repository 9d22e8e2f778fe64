//! Operating the server: the probes (`/healthz`, `/readyz`) and Prometheus metrics
//! (`/metrics`, behind the admin token on the main listener, or without it on a separate
//! plain-HTTP listener given by `--metrics-listen`).
//!
//! Counters and histograms are updated where things happen (check-ins in the poll route,
//! content bytes as the body streams, every request's latency in a route layer keyed by the
//! route template, never the raw URI); the deliveries gauge is read from the database at
//! scrape time, so it cannot drift from the truth. Database time comes from the store's
//! per-statement timings (`db::timing`), which the process's log subscriber includes.

use super::Server;
use super::api::Admin;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// The content type of the OpenMetrics text format (Prometheus scrapes it natively).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a readiness check may take before it counts as a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Time of every SQL statement this process runs (fed by `db::timing`). Process-wide: the
/// log subscriber that feeds it is process-wide too.
static DB_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 4.0, 10)));

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub state: String,
    /// The result code of the delivery's last transition (`""`: none).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route template (`/api/v1/content/{sha256}`), so ids do not explode the series.
    pub route: String,
    pub status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms … 41 s: long polls end near their 30 s default.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The server's metrics and what the probes need.
pub struct Ops {
    data: PathBuf,
    registry: Registry,
    deliveries: Family<DeliveryLabels, Gauge>,
    pub check_ins: Counter,
    pub transfer_bytes: Counter,
    /// Groups of delivery writes that failed as a whole (a deadlock, a database error) and
    /// were written again one by one (`group_commit`).
    pub groups_retried: Counter,
    requests: HistogramFamily<RouteLabels>,
    /// One scrape at a time: the deliveries gauge is cleared and refilled per scrape.
    scrape: tokio::sync::Mutex<()>,
}

impl Ops {
    pub fn new(data: &std::path::Path) -> Ops {
        let mut registry = Registry::with_prefix("patchcast");
        let deliveries = Family::<DeliveryLabels, Gauge>::default();
        registry.register(
            "deliveries",
            "Deliveries by state and the result code of their last transition",
            deliveries.clone(),
        );
        let check_ins = Counter::default();
        registry.register(
            "check_ins",
            "Agent check-ins (polls) received",
            check_ins.clone(),
        );
        let transfer_bytes = Counter::default();
        registry.register(
            "transfer_bytes",
            "Content bytes sent to agents and relays",
            transfer_bytes.clone(),
        );
        let groups_retried = Counter::default();
        registry.register(
            "write_groups_retried",
            "Groups of delivery writes that failed together and were written one by one",
            groups_retried.clone(),
        );
        let requests: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency to the response head, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "db_query_duration_seconds",
            "Time of each SQL statement",
            DB_SECONDS.clone(),
        );
        Ops {
            data: data.to_path_buf(),
            registry,
            deliveries,
            check_ins,
            transfer_bytes,
            groups_retried,
            requests,
            scrape: tokio::sync::Mutex::new(()),
        }
    }
}

impl Server {
    /// The metrics in the OpenMetrics text format, the deliveries gauge read now.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let counts = super::db::deliveries::count_by_state_and_code(&self.db).await?;
        let _one = self.ops.scrape.lock().await;
        self.ops.deliveries.clear();
        for (state, code, n) in counts {
            self.ops
                .deliveries
                .get_or_create(&DeliveryLabels { state, code })
                .set(n);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.ops.registry)?;
        Ok(out)
    }

    /// Why the server cannot serve now (database unreachable, data directory not writable),
    /// or None when it can.
    pub async fn not_ready(&self) -> Option<String> {
        match tokio::time::timeout(READY_TIMEOUT, crate::db::ping(&self.db)).await {
            Err(_) => return Some("database: no answer within 3s".into()),
            Ok(Err(e)) => return Some(format!("{e:#}")),
            Ok(Ok(())) => {}
        }
        // Writable as the server writes: a file created, written and removed.
        let probe = self.ops.data.join(".readyz");
        let write = async {
            tokio::fs::write(&probe, b"ok").await?;
            tokio::fs::remove_file(&probe).await
        };
        match tokio::time::timeout(READY_TIMEOUT, write).await {
            Err(_) => Some("data directory: no answer within 3s".into()),
            Ok(Err(e)) => Some(format!(
                "data directory {} is not writable: {e}",
                self.ops.data.display()
            )),
            Ok(Ok(())) => None,
        }
    }
}

/// The probes (no credential) and `/metrics` (the admin token), on the main listener.
pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(METRICS, get(metrics_with_token))
}

/// `/metrics` alone without a credential, for the separate `--metrics-listen` listener.
pub fn metrics_router(server: Arc<Server>) -> Router {
    Router::new()
        .route(METRICS, get(metrics))
        .with_state(server)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(s): State<Arc<Server>>) -> Response {
    match s.not_ready().await {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "not ready", "reason": reason })),
            )
                .into_response()
        }
    }
}

async fn metrics_with_token(s: State<Arc<Server>>, _: Admin) -> Response {
    metrics(s).await
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    match s.metrics_text().await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => super::api::ApiErr::from(e).into_response(),
    }
}

/// Route layer: each request's latency to its response head, by route template.
pub async fn track(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    s.ops
        .requests
        .get_or_create(&RouteLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(t0.elapsed().as_secs_f64());
    resp
}

/// The database-time histogram's feed (`db::timing`), to add to a
/// `tracing_subscriber::registry()`: every statement is timed, whichever module ran it.
pub fn db_time_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    super::db::timing::layer(|secs| DB_SECONDS.observe(secs))
}
