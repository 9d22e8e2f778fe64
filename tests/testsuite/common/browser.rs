//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`;
//! scripts/test.sh installs them). chromedriver runs as a child process on a free loopback
//! port and speaks plain HTTP there; fantoccini is the client.
//!
//! Trust: the console uses the server's self-signed certificate. Instead of turning off
//! certificate checks, Chromium is told to accept exactly that certificate's public key
//! (`--ignore-certificate-errors-spki-list` with the SHA-256 of its SubjectPublicKeyInfo), and
//! only for this throwaway test profile: any other certificate is still refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Whether the browser is installed; without it the test is skipped, and fails under CI=true.
pub fn available() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but {CHROMIUM} or {CHROMEDRIVER} is missing: run the tests through scripts/test.sh, which installs chromium and chromium-driver"
        );
    }
    eprintln!(
        "SKIPPED: headless Chromium is not installed (apt-get install chromium chromium-driver, or run scripts/test.sh)"
    );
    false
}

/// base64 (standard alphabet, padded), for the SPKI hash Chromium expects.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One DER element at the start of `d`: (tag, whole element, contents).
fn der(d: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = d[0];
    let (len, head) = if d[1] < 0x80 {
        (d[1] as usize, 2)
    } else {
        let n = (d[1] & 0x7f) as usize;
        let len = d[2..2 + n].iter().fold(0usize, |a, b| a << 8 | *b as usize);
        (len, 2 + n)
    };
    (tag, &d[..head + len], &d[head..head + len])
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo, base64: Chromium's SPKI pin.
pub fn spki_pin(cert_pem: &Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(cert_pem).unwrap();
    let (_, _, certificate) = der(&cert);
    let (_, _, mut tbs) = der(certificate);
    // tbsCertificate: [0] version (optional), serial, signature, issuer, validity, subject, SPKI.
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, whole, _) = der(tbs);
        fields.push((tag, whole));
        tbs = &tbs[whole.len()..];
    }
    let skip = usize::from(fields[0].0 == 0xa0);
    let spki = fields[skip + 5].1;
    base64(&patchcast::pack::hash::sha256_bytes(spki).0)
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium session that trusts `spki` only.
    pub async fn start(spki: &str) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // TESTBED.md's flags: no sandbox (root in a container), and nothing that
                // reaches out to the network by itself.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--ignore-certificate-errors-spki-list={spki}"),
                    "--lang=en-US", "--accept-lang=en-US",
                ],
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        // chromedriver prints nothing useful on readiness; retry the session until it listens
        // (a hang guard, not a timing assertion).
        let start = Instant::now();
        let client = loop {
            let mut b = fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            );
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "chromedriver did not accept a session: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Saves a PNG screenshot of the page as `dir/name.png`; returns the path.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG image");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    /// Ends the session (closes Chromium) and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
