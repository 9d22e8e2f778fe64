//! Helpers shared by the integration tests, compiled once for the whole test binary.

pub mod agent_harness;
pub mod browser;
pub mod crafted;
pub mod fault_proxy;
pub mod netns;
pub mod proxy_env;
pub mod scripted_server;
pub mod server_harness;
pub mod sources_harness;
pub mod sshd_env;
pub mod web_client;
pub mod wine_env;

/// Held by each test that installs or removes software on this machine itself (dpkg, files
/// under /usr/local/bin): all tests run as threads of one process, and two of them install
/// and remove the same sample package. A tokio mutex, so an async test may hold it across
/// `.await` and a failed test does not poison it for the next.
pub static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A command whose stdout reader went away ended by SIGPIPE, as `cat`/`head` would, and did
/// not panic.
pub fn assert_ended_by_sigpipe(o: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        o.status
    );
}

/// The value of the metric `name` (with its labels, as printed) in an OpenMetrics text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().unwrap())
    })
}
