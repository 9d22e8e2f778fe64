//! `patchcast-agent doctor`: the connectivity self-test for a machine that does not report
//! (the troubleshooting guide's name lookup, ping and telnet to the port, certificate and
//! credential checks), run on the machine itself. Each check is ok, or names the code the
//! failure would be reported with and its remedy; nothing is sent that changes the server's
//! view of the machine (the credential is tried on a content request for no content).

use crate::config::{AgentConfig, Root, bearer};
use patchcast_core::errors::{Code, Lang, Params, render};
use patchcast_core::faults::{self, Fault};
use patchcast_proto::client::Client;
use patchcast_proto::protocol::CONTENT;
use patchcast_proto::sources::{AGENT_SOURCES, AgentSources, SourceTarget};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
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
    /// The code's message, in the language asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The code's remedy, in the language asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

fn ok(check: &'static str, detail: String) -> Check {
    Check {
        check,
        ok: true,
        detail,
        code: None,
        message: None,
        remedy: None,
    }
}

fn failed(check: &'static str, detail: String, code: Option<Code>, lang: Lang) -> Check {
    failed_with(check, detail, code, &Params::default(), lang)
}

fn failed_with(
    check: &'static str,
    detail: String,
    code: Option<Code>,
    params: &Params,
    lang: Lang,
) -> Check {
    let rendered = code.map(|c| render(c, lang, params));
    Check {
        check,
        ok: false,
        detail,
        code,
        message: rendered.as_ref().map(|r| r.message.clone()),
        remedy: rendered.map(|r| r.remedy),
    }
}

/// The name of `host`, resolved to its first address; the failure's detail otherwise (E14).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match tokio::time::timeout(LIMIT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(mut a)) => a.next().ok_or_else(|| format!("{host}: no address")),
        Ok(Err(e)) => Err(format!("{host}: {e}")),
        Err(_) => Err(format!("{host}: no answer in {} s", LIMIT.as_secs())),
    }
}

/// A TCP connection to `addr`; the failure's detail otherwise (E03).
async fn connect(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!(
            "{addr}: no answer in {} s (a firewall dropping packets?)",
            LIMIT.as_secs()
        )),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Content that cannot exist: a 404 for it says the way, TLS and the credential are fine,
/// without touching the machine's state anywhere.
fn no_content() -> String {
    "0".repeat(64)
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
        format!("machine {} of {}", cfg.machine_id, cfg.urls().join(", ")),
    ));
    // Every server the agent fails over between; the sources come from the first that
    // accepts the credential.
    let mut listed = None;
    for url in cfg.urls() {
        if let Some(client) = server(root, &cfg, &url, lang, &mut out).await
            && listed.is_none()
        {
            listed = Some((url, client));
        }
    }
    if let Some((url, client)) = listed {
        match client.get::<AgentSources>(AGENT_SOURCES).await {
            Ok(list) => {
                for t in &list.sources {
                    out.push(source(&root.0, &url, t, lang).await);
                }
            }
            Err(e) => out.push(failed(
                "update source",
                format!("the server did not list this machine's sources: {e}"),
                e.code(),
                lang,
            )),
        }
    }
    out
}

/// The checks of one server URL, in order, into `out`; the client when the server accepted
/// the credential.
async fn server(
    root: &Root,
    cfg: &AgentConfig,
    url: &str,
    lang: Lang,
    out: &mut Vec<Check>,
) -> Option<Client> {
    let Some((host, port)) = host_port(url) else {
        out.push(failed(
            "server address",
            format!("`{}` is not https://HOST:PORT", url),
            None,
            lang,
        ));
        return None;
    };
    let addr = match resolve(&host, port).await {
        Ok(a) => a,
        Err(why) => {
            let code = Fault::UnknownHost.code();
            out.push(failed("name resolution", why, Some(code), lang));
            return None;
        }
    };
    out.push(ok("name resolution", format!("{host} is {addr}")));
    match connect(addr).await {
        Ok(()) => out.push(ok("TCP connection", format!("{addr} accepts connections"))),
        Err(why) => {
            let code = Fault::Unreachable.code();
            out.push(failed("TCP connection", why, Some(code), lang));
            return None;
        }
    }
    let bearer = match bearer(root, cfg) {
        Ok(b) => b,
        Err(e) => {
            out.push(failed(
                "credential",
                format!("{e:#}; enroll again"),
                Some(Code::E26),
                lang,
            ));
            return None;
        }
    };
    let client = match Client::new_pinned_any(url, &cfg.pins(), Some(bearer)) {
        Ok(c) => c,
        Err(e) => {
            out.push(failed("TLS certificate", format!("{e:#}"), None, lang));
            return None;
        }
    };
    let probe = format!("{CONTENT}/{}", no_content());
    let sent_ms = now_ms();
    let resp = match tokio::time::timeout(
        LIMIT,
        client.request(reqwest::Method::GET, &probe).send(),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let e = client.unreachable(&probe, &e);
            out.push(match crate::service::pin_mismatch(&e) {
                Some(why) => failed("TLS certificate", why, Some(Code::E26), lang),
                None => failed(
                    "TLS certificate",
                    e.to_string(),
                    Some(Fault::Unreachable.code()),
                    lang,
                ),
            });
            return None;
        }
        Err(_) => {
            out.push(failed(
                "TLS certificate",
                format!("no reply from {} in {} s", url, LIMIT.as_secs()),
                Some(Fault::Unreachable.code()),
                lang,
            ));
            return None;
        }
    };
    // Halfway between sending and the reply: the server stamped `Date` in between.
    let local_ms = sent_ms + (now_ms() - sent_ms) / 2;
    out.push(ok(
        "TLS certificate",
        format!("matches the pinned {}", cfg.fingerprint),
    ));
    let status = resp.status().as_u16();
    let credential_ok = match status {
        401 => {
            out.push(failed(
                "credential",
                "refused by the server (the machine was removed or enrolled again elsewhere); enroll again with a new token".into(),
                Some(Code::E26),
                lang,
            ));
            false
        }
        200..=299 | 404 => {
            out.push(ok("credential", "accepted by the server".into()));
            true
        }
        s => {
            out.push(failed(
                "credential",
                format!("the server answered HTTP {s} to a request for no content"),
                None,
                lang,
            ));
            false
        }
    };
    out.push(clock(&resp, local_ms, lang));
    credential_ok.then_some(client)
}

/// This machine's clock against the server's `Date` (E28 past the limit).
fn clock(resp: &reqwest::Response, local_ms: i64, lang: Lang) -> Check {
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok());
    let Some((date, server_ms)) = date.and_then(|d| Some((d, faults::http_date_ms(d)?))) else {
        return failed(
            "clock",
            "the server's reply has no readable Date header".into(),
            None,
            lang,
        );
    };
    match faults::clock_skew(local_ms, server_ms) {
        None => ok(
            "clock",
            format!(
                "within {} s of the server's ({date})",
                patchcast_core::errors::CLOCK_SKEW_LIMIT_SECS
            ),
        ),
        Some(r) => failed_with(
            "clock",
            format!(
                "this machine's clock is {} s {} the server's ({date}); the limit is {} s",
                (local_ms - server_ms).abs() / 1000,
                if local_ms > server_ms {
                    "ahead of"
                } else {
                    "behind"
                },
                patchcast_core::errors::CLOCK_SKEW_LIMIT_SECS
            ),
            Some(r.code),
            &r.params,
            lang,
        ),
    }
}

/// One update source: its name (E14), a connection (E03), then what it answers for content
/// it cannot have: "not found" is a source at work; a refused certificate or credential is
/// E26, any other failure E10.
async fn source(root: &Path, server: &str, t: &SourceTarget, lang: Lang) -> Check {
    const NAME: &str = "update source";
    let label = t.label(server);
    let fail =
        |why: String, code: Option<Code>| failed(NAME, format!("{label}: {why}"), code, lang);
    let (url, pinned) = match t {
        SourceTarget::Server => return ok(NAME, format!("{label}: checked above")),
        SourceTarget::Relay { url: None, .. } => {
            return fail(
                "the relay has not reported its address to the server yet (it is skipped)".into(),
                None,
            );
        }
        SourceTarget::Relay {
            url: Some(u),
            fingerprint,
            ..
        } => (u.clone(), fingerprint.clone()),
        SourceTarget::Https { url, fingerprint } => (url.clone(), fingerprint.clone()),
        SourceTarget::Smb { url } => return smb(root, &label, url, lang).await,
    };
    let Some((host, port)) = host_port(&url) else {
        return fail(format!("`{url}` is not https://HOST[:PORT]"), None);
    };
    let addr = match resolve(&host, port).await {
        Ok(a) => a,
        Err(why) => return fail(why, Some(Fault::UnknownHost.code())),
    };
    if let Err(why) = connect(addr).await {
        return fail(why, Some(Fault::Unreachable.code()));
    }
    let (client, path) = match (t, pinned) {
        (SourceTarget::Relay { .. }, Some(fp)) => (
            Client::new(&url, &fp, None),
            format!("{CONTENT}/{}", no_content()),
        ),
        (SourceTarget::Https { .. }, Some(fp)) => (
            Client::new(&url, &fp, None),
            format!("/{}.pcpkg", no_content()),
        ),
        _ => (
            patchcast_proto::proxy::apply(reqwest::Client::builder())
                .and_then(|b| Ok(b.connect_timeout(LIMIT).build()?))
                .map(|h| Client::with_http(&url, h, None)),
            format!("/{}.pcpkg", no_content()),
        ),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return fail(format!("{e:#}"), None),
    };
    let relay = matches!(t, SourceTarget::Relay { .. });
    match tokio::time::timeout(LIMIT, client.request(reqwest::Method::GET, &path).send()).await {
        Err(_) => fail(
            format!("no reply in {} s", LIMIT.as_secs()),
            Some(Fault::ContentMissing.code()),
        ),
        Ok(Err(e)) => {
            // The TCP connection was made above: failing to connect now is the TLS handshake.
            let code = if e.is_connect() {
                Code::E26
            } else {
                Fault::ContentMissing.code()
            };
            let e = client.unreachable(&path, &e);
            fail(
                crate::service::pin_mismatch(&e).unwrap_or(e.to_string()),
                Some(code),
            )
        }
        // A relay asked without a token refuses (401); a directory lacks that name (404).
        Ok(Ok(r))
            if r.status().is_success() || r.status() == 404 || (relay && r.status() == 401) =>
        {
            ok(NAME, format!("{label}: {addr} answers"))
        }
        Ok(Ok(r)) if matches!(r.status().as_u16(), 401 | 403) => fail(
            format!(
                "HTTP {}: the source refuses this machine",
                r.status().as_u16()
            ),
            Some(Code::E26),
        ),
        Ok(Ok(r)) => fail(
            format!("HTTP {} for content", r.status().as_u16()),
            Some(Fault::ContentMissing.code()),
        ),
    }
}

/// An SMB share: its name (E14), a connection (E03), a logon with this machine's
/// credentials (E26), any other failure E10.
async fn smb(root: &Path, label: &str, url: &str, lang: Lang) -> Check {
    const NAME: &str = "update source";
    let fail =
        |why: String, code: Option<Code>| failed(NAME, format!("{label}: {why}"), code, lang);
    let share = match patchcast_smb::ShareUrl::parse(url) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string(), None),
    };
    let addr = match resolve(&share.host, share.port).await {
        Ok(a) => a,
        Err(why) => return fail(why, Some(Fault::UnknownHost.code())),
    };
    if let Err(why) = connect(addr).await {
        return fail(why, Some(Fault::Unreachable.code()));
    }
    let creds = match crate::sources::smb_credentials(root) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string(), Some(Code::E26)),
    };
    use patchcast_smb::SmbError;
    match patchcast_smb::Share::connect(&share, &creds).await {
        Ok(conn) => {
            conn.close().await;
            ok(
                NAME,
                format!("{label}: {addr} accepts this machine's logon"),
            )
        }
        Err(e @ SmbError::Unreachable { .. }) => {
            fail(e.to_string(), Some(Fault::Unreachable.code()))
        }
        Err(e @ (SmbError::LogonFailure { .. } | SmbError::NoCredentials(_))) => {
            fail(e.to_string(), Some(Code::E26))
        }
        Err(e @ SmbError::NotBuiltIn) => fail(e.to_string(), None),
        Err(e) => fail(e.to_string(), Some(Fault::ContentMissing.code())),
    }
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
