//! Protocol additions for update sources and relays (all optional fields, so older agents and
//! servers ignore them).
//!
//! | method | path | auth | body → reply |
//! |---|---|---|---|
//! | POST | `/api/v1/agent/relay` | agent | `RelayStatus` → `RelayAck` (a relay's address and cache) |
//! | GET | `/api/v1/agent/sources` | agent | → `AgentSources` (what `patchcast-agent doctor` checks) |
//! | GET | `/api/v1/content/{sha256}` on a relay | relay token | archive bytes, `Range` as on the server |
//! | GET/PUT | `/api/v1/admin/sources` | admin | → `SourcesView` / `SetSources` → `SourcesView` |
//! | GET | `/api/v1/admin/sources/test?address=A` | admin | → `SourcesTest` |
//! | POST | `/api/v1/admin/machines/{id}/relay` | admin | `RelayRole` → `RelayView` |
//! | GET | `/api/v1/admin/relays` | admin | → `Vec<RelayView>` |
//!
//! **Relay tokens.** A neighbour authenticates to a relay with a token the server signed
//! (Ed25519) for exactly one (client machine, relay, archive) and a few hours: the relay checks
//! it offline against the server's token key, which it received over its pinned connection to
//! the server. The neighbour's own credential never leaves the neighbour, a token taken from
//! one relay is worthless at another, and it opens only the content that work item named.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use patchcast_core::model::types::Sha256;
use patchcast_core::sources::{Fallbacks, Plan, SourceList};
use serde::{Deserialize, Serialize};

pub const RELAY_STATUS: &str = "/api/v1/agent/relay";
pub const AGENT_SOURCES: &str = "/api/v1/agent/sources";
pub const ADMIN_SOURCES: &str = "/api/v1/admin/sources";
pub const ADMIN_SOURCES_TEST: &str = "/api/v1/admin/sources/test";
pub const ADMIN_RELAYS: &str = "/api/v1/admin/relays";

/// Where one work item's archive may be fetched, in order (`Work::sources`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkSources {
    /// The matching entry of the custom source list (for results and `sources test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    pub sources: Vec<SourceTarget>,
    /// After every source failed, fetch from the server (the category's switch).
    pub fallback_to_server: bool,
}

/// The custom update sources the asking machine may be sent to (never the server itself),
/// each once; relays without a token.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentSources {
    pub sources: Vec<SourceTarget>,
}

/// A source as the agent uses it: everything needed to connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceTarget {
    Server,
    Relay {
        machine: String,
        /// `https://addr:port` the relay listens on; None when it has not reported one yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// The server-signed token for this machine, relay and archive.
        token: String,
    },
    Https {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    Smb {
        url: String,
    },
}

impl SourceTarget {
    /// How results name the source.
    pub fn label(&self, server: &str) -> String {
        match self {
            SourceTarget::Server => format!("server {server}"),
            SourceTarget::Relay { machine, url, .. } => match url {
                Some(u) => format!("relay {machine} ({u})"),
                None => format!("relay {machine}"),
            },
            SourceTarget::Https { url, .. } => url.clone(),
            SourceTarget::Smb { url } => url.clone(),
        }
    }
}

/// The relay role as the server hands it to the agent (`PollResponse::relay`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelaySettings {
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// Hex Ed25519 key that signs relay tokens.
    pub token_key: String,
    /// Archives to have cached before the server releases the relay's clients.
    #[serde(default)]
    pub prefetch: Vec<Prefetch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefetch {
    pub sha256: Sha256,
    pub size: u64,
}

/// A relay's report: where it listens and what it holds (verified).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    pub url: String,
    pub fingerprint: String,
    pub cached: Vec<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayAck {
    /// Archives still wanted (the relay fetches them next).
    pub wanted: Vec<Prefetch>,
}

/// `patchcast machine relay M --enable/--disable [--listen ADDR:PORT]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRole {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayView {
    pub machine_id: String,
    pub hostname: String,
    pub enabled: bool,
    pub listen: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
    pub cached: Vec<String>,
}

/// `patchcast sources set`: the list, and the file text so problems can be placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSources {
    pub list: SourceList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcesView {
    pub list: SourceList,
    pub updated_at_ms: Option<i64>,
}

/// A refused list: every problem, with the path of its value (`entries[2].sources[0]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcesRefused {
    pub error: String,
    pub problems: Vec<SourceProblem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceProblem {
    pub path: String,
    pub message: String,
}

/// `patchcast sources test ADDRESS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcesTest {
    pub address: String,
    pub plans: Vec<CategoryPlan>,
    pub fallback: Fallbacks,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryPlan {
    pub category: patchcast_core::sources::Category,
    #[serde(flatten)]
    pub plan: Plan,
}

/// What a relay token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The client machine.
    pub sub: String,
    /// The relay machine.
    pub aud: String,
    pub sha256: String,
    /// Unix milliseconds.
    pub exp: i64,
}

const TOKEN_PREFIX: &str = "pcrt1";
const TOKEN_DOMAIN: &[u8] = b"patchcast relay token v1\n";

pub fn sign_token(key: &SigningKey, g: &Grant) -> String {
    let body = serde_json::to_vec(g).expect("a grant serializes");
    let mut msg = TOKEN_DOMAIN.to_vec();
    msg.extend_from_slice(&body);
    let sig = key.sign(&msg);
    format!(
        "{TOKEN_PREFIX}.{}.{}",
        hex::encode(&body),
        hex::encode(sig.to_bytes())
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a relay token")]
    Malformed,
    #[error("the token's signature is not the server's")]
    BadSignature,
    #[error("the token is for relay {0}, not this one")]
    OtherRelay(String),
    #[error("the token is for content {0}, not this one")]
    OtherContent(String),
    #[error("the token expired")]
    Expired,
}

/// Checks a token for `relay` and `sha256` at time `now_ms`. Pure: the clock is a parameter.
pub fn verify_token(
    key: &VerifyingKey,
    token: &str,
    relay: &str,
    sha256: &str,
    now_ms: i64,
) -> Result<Grant, TokenError> {
    let mut parts = token.split('.');
    let (Some(TOKEN_PREFIX), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let body = hex::decode(body).map_err(|_| TokenError::Malformed)?;
    let sig: [u8; 64] = hex::decode(sig)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(TokenError::Malformed)?;
    let mut msg = TOKEN_DOMAIN.to_vec();
    msg.extend_from_slice(&body);
    key.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| TokenError::BadSignature)?;
    let g: Grant = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if g.aud != relay {
        return Err(TokenError::OtherRelay(g.aud));
    }
    if g.sha256 != sha256 {
        return Err(TokenError::OtherContent(g.sha256));
    }
    if g.exp <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(g)
}

/// The admin calls for sources and relays.
impl crate::admin_api::Admin {
    /// `Ok(Err(refused))` when the server found problems with the list (nothing was saved).
    pub async fn set_sources(
        &self,
        list: &SourceList,
    ) -> Result<Result<SourcesView, SourcesRefused>, crate::client::CallError> {
        let c = &self.0;
        let rb = c
            .request(reqwest::Method::PUT, ADMIN_SOURCES)
            .json(&SetSources { list: list.clone() });
        let resp = rb
            .send()
            .await
            .map_err(|e| c.unreachable(ADMIN_SOURCES, &e))?;
        if resp.status().as_u16() == 422 {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| c.unreachable(ADMIN_SOURCES, &e))?;
            return serde_json::from_slice(&bytes).map(Err).map_err(|e| {
                crate::client::CallError::Protocol {
                    url: c.url(ADMIN_SOURCES),
                    detail: e.to_string(),
                }
            });
        }
        c.decode(resp, ADMIN_SOURCES).await.map(Ok)
    }

    pub async fn sources(&self) -> Result<SourcesView, crate::client::CallError> {
        self.0.get(ADMIN_SOURCES).await
    }

    pub async fn sources_test(
        &self,
        address: &str,
    ) -> Result<SourcesTest, crate::client::CallError> {
        let a: String = address
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.0
            .get(&format!("{ADMIN_SOURCES_TEST}?address={a}"))
            .await
    }

    pub async fn relay_role(
        &self,
        machine: &str,
        role: &RelayRole,
    ) -> Result<RelayView, crate::client::CallError> {
        self.0
            .post(
                &format!("{}/{machine}/relay", crate::admin_api::MACHINES),
                role,
            )
            .await
    }

    pub async fn relays(&self) -> Result<Vec<RelayView>, crate::client::CallError> {
        self.0.get(ADMIN_RELAYS).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_and_signed() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let pk = key.verifying_key();
        let g = Grant {
            sub: "m1".into(),
            aud: "r1".into(),
            sha256: "ab".repeat(32),
            exp: 1000,
        };
        let t = sign_token(&key, &g);
        let sha = "ab".repeat(32);
        assert_eq!(verify_token(&pk, &t, "r1", &sha, 999), Ok(g.clone()));
        let cases: &[(&str, &str, &str, i64, TokenError)] = &[
            (&t, "r2", &sha, 999, TokenError::OtherRelay("r1".into())),
            (
                &t,
                "r1",
                &"cd".repeat(32),
                999,
                TokenError::OtherContent(sha.clone()),
            ),
            (&t, "r1", &sha, 1000, TokenError::Expired),
            ("pcrt1.zz.zz", "r1", &sha, 0, TokenError::Malformed),
            ("m1.secret", "r1", &sha, 0, TokenError::Malformed),
        ];
        for (tok, relay, s, now, want) in cases {
            assert_eq!(
                verify_token(&pk, tok, relay, s, *now).unwrap_err(),
                *want,
                "{tok}"
            );
        }
        let forged = sign_token(&other, &g);
        assert_eq!(
            verify_token(&pk, &forged, "r1", &sha, 0).unwrap_err(),
            TokenError::BadSignature
        );
        // Changing the grant after signing breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let g2 = Grant { exp: i64::MAX, ..g };
        parts[1] = hex::encode(serde_json::to_vec(&g2).unwrap());
        assert_eq!(
            verify_token(&pk, &parts.join("."), "r1", &sha, 0).unwrap_err(),
            TokenError::BadSignature
        );
    }
}
