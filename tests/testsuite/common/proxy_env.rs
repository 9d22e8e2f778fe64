//! The real HTTP CONNECT proxy (tinyproxy) scripts/tinyproxy.sh starts for a test run:
//! `PATCHCAST_TEST_PROXY` (its URL), `_USER` and `_PASSWORD` (it asks for Basic credentials)
//! and `_LOG` (its log, where each CONNECT is recorded). Without them the proxy tests are
//! skipped with a message, and fail under `CI=true`.

use std::path::{Path, PathBuf};

pub struct TestProxy {
    pub url: String,
    pub user: String,
    pub password: String,
    pub log: PathBuf,
}

impl TestProxy {
    pub fn from_env() -> Option<TestProxy> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        match (
            var("PATCHCAST_TEST_PROXY"),
            var("PATCHCAST_TEST_PROXY_USER"),
            var("PATCHCAST_TEST_PROXY_PASSWORD"),
            var("PATCHCAST_TEST_PROXY_LOG"),
        ) {
            (Some(url), Some(user), Some(password), Some(log)) => Some(TestProxy {
                url,
                user,
                password,
                log: log.into(),
            }),
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "CI=true but PATCHCAST_TEST_PROXY is unset: run the tests through scripts/test.sh, which starts tinyproxy"
                    );
                }
                eprintln!(
                    "SKIPPED: needs the test proxy: PATCHCAST_TEST_PROXY is unset (scripts/test.sh starts tinyproxy)"
                );
                None
            }
        }
    }

    /// Writes `USER:PASSWORD` into DIR/proxy.credentials.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        let f = dir.join("proxy.credentials");
        std::fs::write(&f, format!("{}:{}\n", self.user, self.password)).unwrap();
        f
    }

    /// How many CONNECT requests to `host:port` the proxy has logged so far.
    pub fn connects_to(&self, host_port: &str) -> usize {
        let needle = format!("CONNECT {host_port} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}
