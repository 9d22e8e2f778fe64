//! The scripted server as a standalone process for `scripts/bench-agent-idle.sh` (ignored in
//! normal test runs): it writes its URL and fingerprint to `$BENCH_SERVER_INFO` and serves
//! until killed.

use crate::common::{agent_harness, scripted_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "run by scripts/bench-agent-idle.sh"]
async fn serve_for_benchmark() {
    let info = std::env::var("BENCH_SERVER_INFO").expect("BENCH_SERVER_INFO names the output file");
    let poll_ms = std::env::var("BENCH_SERVER_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let server =
        scripted_server::Scripted::start("bench", vec![agent_harness::publisher_hex()], poll_ms)
            .await;
    let tmp = format!("{info}.tmp");
    std::fs::write(
        &tmp,
        format!("URL={}\nFINGERPRINT={}\n", server.url, server.fingerprint),
    )
    .unwrap();
    std::fs::rename(&tmp, &info).unwrap();
    std::future::pending::<()>().await;
}
