//! A thin JSON client for the patchcast HTTP API, shared by the agent, the admin CLI and the
//! load generator: one pinned HTTPS client, one bearer credential, errors that say what happened.

use super::protocol::ApiError;
use super::tls::pinned_http_client;
use patchcast_core::errors::Code;
use patchcast_core::faults::Fault;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    bearer: Option<String>,
}

/// Why a call failed, sorted the way callers react to it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not reach the server or the connection broke: retry with backoff. `fault` says
    /// which, from the error's type: a name that does not resolve (`Fault::UnknownHost`) or
    /// anything else on the way (`Fault::Unreachable`).
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        url: String,
        detail: String,
        fault: Fault,
    },
    /// The server answered with an error.
    #[error("{url}: HTTP {status}: {}", .body.error)]
    Status {
        url: String,
        status: u16,
        body: ApiError,
    },
    /// The server answered something that is not the expected JSON.
    #[error("{url}: unexpected reply: {detail}")]
    Protocol { url: String, detail: String },
}

impl CallError {
    /// The catalog code of a transport failure, when it has one (host unknown → E14, else E03).
    pub fn code(&self) -> Option<Code> {
        match self {
            CallError::Unreachable { fault, .. } => Some(fault.code()),
            CallError::Status { body, .. } => body.code,
            CallError::Protocol { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl Client {
    /// `base` is `https://host:port`; `fingerprint` the pinned server certificate.
    pub fn new(base: &str, fingerprint: &str, bearer: Option<String>) -> anyhow::Result<Client> {
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: pinned_http_client(fingerprint)?,
            bearer,
        })
    }

    /// A client accepting any of `fingerprints` (an agent during a certificate renewal).
    pub fn new_pinned_any(
        base: &str,
        fingerprints: &[String],
        bearer: Option<String>,
    ) -> anyhow::Result<Client> {
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: super::tls::pinned_any_http_client(fingerprints)?,
            bearer,
        })
    }

    /// A client over a given HTTP client (an HTTPS update source trusted through the system's
    /// certificate authorities rather than a pinned fingerprint).
    pub fn with_http(base: &str, http: reqwest::Client, bearer: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            bearer,
        }
    }

    pub fn with_bearer(&self, bearer: String) -> Client {
        Client {
            bearer: Some(bearer),
            ..self.clone()
        }
    }

    /// The same client and credential, for another server of the installation (servers
    /// sharing a database share one certificate).
    pub fn with_base(&self, base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request builder with the credential attached, for calls this module does not wrap
    /// (streaming uploads, range downloads).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.bearer {
            Some(b) => rb.bearer_auth(b),
            None => rb,
        }
    }

    pub async fn post<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<R, CallError> {
        self.send(self.request(reqwest::Method::POST, path).json(body), path)
            .await
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, CallError> {
        self.send(self.request(reqwest::Method::GET, path), path)
            .await
    }

    /// Sends `rb` and decodes a JSON reply; a 204 decodes as JSON `null` (use `Option<R>` or `()`).
    pub async fn send<R: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<R, CallError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(path, &e))?;
        self.decode(resp, path).await
    }

    pub async fn decode<R: DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        path: &str,
    ) -> Result<R, CallError> {
        let url = self.url(path);
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(path, &e))?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiError {
                error: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                code: None,
            });
            return Err(CallError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(json).map_err(|e| CallError::Protocol {
            url,
            detail: e.to_string(),
        })
    }

    pub fn unreachable(&self, path: &str, e: &reqwest::Error) -> CallError {
        // The whole source chain: "error sending request" alone does not say refused vs. TLS pin.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        // Typed: reqwest tags a failure of its resolver, whatever the resolver's message; the
        // pin check raises its own error type inside the TLS failure.
        let fault = if e.is_dns() {
            Fault::UnknownHost
        } else if crate::tls::PinMismatch::in_chain(e) {
            Fault::PinMismatch
        } else {
            Fault::Unreachable
        };
        CallError::Unreachable {
            url: self.url(path),
            detail,
            fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> String {
        format!("sha256:{}", "0".repeat(64))
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_e14_a_closed_port_e03() {
        // `.invalid` never resolves (RFC 2606).
        let c = Client::new("https://patchcast-no-such-host.invalid:8443", &pin(), None).unwrap();
        let e = c.get::<serde_json::Value>("/x").await.unwrap_err();
        assert_eq!(e.code(), Some(Code::E14), "{e}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(&format!("https://127.0.0.1:{port}"), &pin(), None).unwrap();
        let e = c.get::<serde_json::Value>("/x").await.unwrap_err();
        assert_eq!(e.code(), Some(Code::E03), "{e}");
    }

    #[tokio::test]
    async fn regression_a_certificate_that_is_not_the_pinned_one_is_typed_e26() {
        // Decided from the verifier's own error type, not from the message text.
        let dir = std::env::temp_dir().join(format!("patchcast-pin-{}", std::process::id()));
        let id = crate::tls::Identity::load_or_create(&dir, &["localhost".into()]).unwrap();
        let config = std::sync::Arc::new(id.server_config().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut tcp, _)) = listener.accept() {
                let mut tls = rustls::ServerConnection::new(config).unwrap();
                while tls.is_handshaking() && tls.complete_io(&mut tcp).is_ok() {}
            }
        });
        let c = Client::new(&format!("https://127.0.0.1:{port}"), &pin(), None).unwrap();
        let e = c.get::<serde_json::Value>("/x").await.unwrap_err();
        assert!(
            matches!(
                e,
                CallError::Unreachable {
                    fault: Fault::PinMismatch,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.code(), Some(Code::E26), "{e}");
    }
}
