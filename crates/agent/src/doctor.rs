//! `patchcast-agent doctor`: the connectivity self-test for a machine that does not report
//! (the troubleshooting guide's name lookup, ping and telnet to the port, certificate and
//! credential checks), run on the machine itself. Each check is ok, or names the code the
//! failure would be reported with and its remedy; nothing is sent that changes the server's
//! view of the machine (the credential is tried on a content request for no content).

use crate::config::{AgentConfig, Root, bearer};
use patchcast_core::errors::{Code, Lang, Params, render};
use patchcast_proto::client::{CallError, Client};
use serde::Serialize;
use std::time::Duration;

/// How long each network check may take.
const LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// The code's message and remedy, in the language asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

fn ok(check: &'static str, detail: String) -> Check {
    Check {
        check,
        ok: true,
        detail,
        code: None,
        remedy: None,
    }
}

fn failed(check: &'static str, detail: String, code: Option<Code>, lang: Lang) -> Check {
    let remedy = code.map(|c| render(c, lang, &Params::default()).remedy);
    Check {
        check,
        ok: false,
        detail,
        code,
        remedy,
    }
}

/// Runs the checks in order; a check that fails stops the ones that depend on it.
pub async fn run(root: &Root, lang: Lang) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match AgentConfig::load(root) {
        Ok(c) => c,
        Err(e) => {
            out.push(failed(
                "enrollment",
                format!("{e:#}; enroll first with `patchcast-agent enroll`"),
                None,
                lang,
            ));
            return out;
        }
    };
    out.push(ok(
        "enrollment",
        format!("machine {} of {}", cfg.machine_id, cfg.server),
    ));
    let Some((host, port)) = host_port(&cfg.server) else {
        out.push(failed(
            "server address",
            format!("`{}` is not https://HOST:PORT", cfg.server),
            None,
            lang,
        ));
        return out;
    };
    let addrs =
        match tokio::time::timeout(LIMIT, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                out.push(failed(
                    "name resolution",
                    format!("{host}: {e}"),
                    Some(Code::E14),
                    lang,
                ));
                return out;
            }
            Err(_) => {
                out.push(failed(
                    "name resolution",
                    format!("{host}: no answer in {} s", LIMIT.as_secs()),
                    Some(Code::E14),
                    lang,
                ));
                return out;
            }
        };
    let Some(addr) = addrs.first().copied() else {
        out.push(failed(
            "name resolution",
            format!("{host}: no address"),
            Some(Code::E14),
            lang,
        ));
        return out;
    };
    out.push(ok("name resolution", format!("{host} is {addr}")));
    match tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => out.push(ok("TCP connection", format!("{addr} accepts connections"))),
        Ok(Err(e)) => {
            out.push(failed(
                "TCP connection",
                format!("{addr}: {e}"),
                Some(Code::E03),
                lang,
            ));
            return out;
        }
        Err(_) => {
            out.push(failed(
                "TCP connection",
                format!(
                    "{addr}: no answer in {} s (a firewall dropping packets?)",
                    LIMIT.as_secs()
                ),
                Some(Code::E03),
                lang,
            ));
            return out;
        }
    }
    let bearer = match bearer(root, &cfg) {
        Ok(b) => b,
        Err(e) => {
            out.push(failed(
                "credential",
                format!("{e:#}; enroll again"),
                Some(Code::E26),
                lang,
            ));
            return out;
        }
    };
    let client = match Client::new(&cfg.server, &cfg.fingerprint, Some(bearer)) {
        Ok(c) => c,
        Err(e) => {
            out.push(failed("TLS certificate", format!("{e:#}"), None, lang));
            return out;
        }
    };
    // Content that cannot exist: 404 says TLS and the credential are fine, without touching
    // the machine's state on the server.
    let probe = format!("{}/{}", patchcast_proto::protocol::CONTENT, "0".repeat(64));
    match client.get::<serde_json::Value>(&probe).await {
        Err(CallError::Status { status: 404, .. }) | Ok(_) => {
            out.push(ok(
                "TLS certificate",
                format!("matches the pinned {}", cfg.fingerprint),
            ));
            out.push(ok("credential", "accepted by the server".into()));
        }
        Err(CallError::Status { status: 401, .. }) => {
            out.push(ok(
                "TLS certificate",
                format!("matches the pinned {}", cfg.fingerprint),
            ));
            out.push(failed(
                "credential",
                "refused by the server (the machine was removed or enrolled again elsewhere); enroll again with a new token".into(),
                Some(Code::E26),
                lang,
            ));
        }
        Err(e) => match crate::service::pin_mismatch(&e) {
            Some(why) => out.push(failed("TLS certificate", why, Some(Code::E26), lang)),
            None => out.push(failed(
                "TLS certificate",
                e.to_string(),
                Some(Code::E03),
                lang,
            )),
        },
    }
    out
}

/// `https://HOST:PORT/…` → (HOST, PORT); IPv6 hosts in brackets.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (authority, 443),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(host_port("https://srv:8443"), Some(("srv".into(), 8443)));
        assert_eq!(host_port("https://srv"), Some(("srv".into(), 443)));
        assert_eq!(
            host_port("https://[::1]:8443/x"),
            Some(("::1".into(), 8443))
        );
        assert_eq!(host_port("http://srv:80"), None);
    }
}
