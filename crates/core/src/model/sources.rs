//! The update source file (`sources.yaml`): the custom update source list as administrators
//! write it, resolved into `core::sources::SourceList`.
//!
//! ```yaml
//! fallback:                       # when every listed source failed: server | not_at_all
//!   components: server
//!   domain_settings: server
//!   programs_and_hotfixes: not_at_all
//! entries:                        # first matching entry wins; at most 1024
//!   - addresses: 10.1.0.1-10.1.0.254
//!     sources:
//!       - relay: branch1-ws07     # an agent with the relay role (id or hostname)
//!       - smb: smb://files.branch1:445/patches/pcpkg
//!       - https: https://mirror.example/patches
//!       - server
//!   - addresses: 2001:db8:1::/48
//!     sources: [server]
//! ```
//!
//! Shape problems (unknown keys, two kinds in one source, a bad range or URL) are found here
//! with `file:line:column`; whether each source has an address of the entry's family needs
//! facts only the server has (relay addresses, DNS), so the server checks that on `set`.

use super::problem::{Located, Problem};
use crate::sources::{Entry, Fallback, Fallbacks, Source, SourceList, parse_range};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    /// What a machine does when every source of its entry failed, per kind of content.
    #[serde(default)]
    pub fallback: RawFallbacks,
    /// Ordered; a machine uses the first entry one of its addresses falls in (at most 1024).
    #[serde(default)]
    pub entries: Vec<RawEntry>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFallbacks {
    /// Components (application packages): `server` (default) or `not_at_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<String>,
    /// Domain (group) settings: `server` (default) or `not_at_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_settings: Option<String>,
    /// Programs and hot fixes (hotfix and service pack packages): `server` (default) or `not_at_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs_and_hotfixes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    /// An IPv4 range `10.0.0.1-10.0.0.254` (or one address) or an IPv6 prefix `2001:db8::/48`.
    pub addresses: String,
    /// Tried in order.
    pub sources: Vec<RawSource>,
}

/// `server`, or a one-key map: `relay: MACHINE`, `smb: smb://…`, `https: https://…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawSource {
    Keyword(String),
    Map(RawSourceMap),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSourceMap {
    /// An agent with the relay (update agent) role: machine id or hostname (the server stores
    /// the id it resolves to when the list is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// `smb://host[:port]/share/dir` holding `<sha256>.pcpkg` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smb: Option<String>,
    /// `https://host[:port]/dir` holding `<sha256>.pcpkg` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    /// For `https`: pin this certificate (`sha256:HEX`) instead of trusting the system CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

fn fallback(v: &Option<String>, path: &str, problems: &mut Vec<Problem>) -> Fallback {
    match v.as_deref() {
        None | Some("server") => Fallback::Server,
        Some("not_at_all") => Fallback::NotAtAll,
        Some(other) => {
            problems.push(Problem::error(
                "sources-fallback",
                path,
                format!("`{other}` is not a fallback"),
                "write `server` (fetch from the management server) or `not_at_all`",
            ));
            Fallback::Server
        }
    }
}

fn check_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn source(raw: &RawSource, path: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let bad = |problems: &mut Vec<Problem>, msg: String| {
        problems.push(Problem::error(
            "sources-source",
            path,
            msg,
            "a source is `server`, `relay: MACHINE`, `smb: smb://HOST[:PORT]/SHARE/DIR` or `https: https://HOST/DIR`",
        ));
        None
    };
    match raw {
        RawSource::Keyword(k) if k == "server" => Some(Source::Server),
        RawSource::Keyword(k) => bad(problems, format!("`{k}` is not a source")),
        RawSource::Map(m) => {
            let kinds = [m.relay.is_some(), m.smb.is_some(), m.https.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if kinds != 1 {
                return bad(
                    problems,
                    format!("a source names exactly one of relay, smb, https ({kinds} given)"),
                );
            }
            if m.fingerprint.is_some() && m.https.is_none() {
                return bad(problems, "`fingerprint` goes with an `https` source".into());
            }
            if let Some(r) = &m.relay {
                if r.trim().is_empty() {
                    return bad(problems, "`relay` names no machine".into());
                }
                return Some(Source::Relay {
                    machine: r.trim().to_string(),
                });
            }
            if let Some(u) = &m.smb {
                if let Err(e) = super::share::ShareUrl::parse(u) {
                    return bad(problems, e.to_string());
                }
                return Some(Source::Smb { url: u.clone() });
            }
            let u = m.https.as_deref().unwrap_or_default();
            let ok = u
                .strip_prefix("https://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !ok {
                return bad(
                    problems,
                    format!("`{u}` is not an https:// URL with a host"),
                );
            }
            if let Some(fp) = &m.fingerprint
                && !check_fingerprint(fp)
            {
                problems.push(Problem::error(
                    "sources-fingerprint",
                    format!("{path}.fingerprint"),
                    format!("`{fp}` is not `sha256:` and 64 hex digits"),
                    "copy the certificate's SHA-256 fingerprint, e.g. from `openssl x509 -noout -fingerprint -sha256`",
                ));
                return None;
            }
            Some(Source::Https {
                url: u.trim_end_matches('/').to_string(),
                fingerprint: m.fingerprint.as_ref().map(|f| f.to_ascii_lowercase()),
            })
        }
    }
}

/// Checks the shape and values; every problem names the path of its value.
pub fn resolve(raw: &RawSources) -> (Option<SourceList>, Vec<Problem>) {
    let mut problems = Vec::new();
    let f = &raw.fallback;
    let fallback = Fallbacks {
        components: fallback(&f.components, "fallback.components", &mut problems),
        domain_settings: fallback(
            &f.domain_settings,
            "fallback.domain_settings",
            &mut problems,
        ),
        programs_and_hotfixes: fallback(
            &f.programs_and_hotfixes,
            "fallback.programs_and_hotfixes",
            &mut problems,
        ),
    };
    if raw.entries.len() > crate::sources::MAX_ENTRIES {
        problems.push(Problem::error(
            "sources-too-many",
            "entries",
            format!(
                "{} entries; at most {} are allowed",
                raw.entries.len(),
                crate::sources::MAX_ENTRIES
            ),
            "merge adjacent ranges into one entry",
        ));
    }
    let mut entries = Vec::new();
    for (i, e) in raw.entries.iter().enumerate() {
        let range = match parse_range(&e.addresses) {
            Ok(r) => Some(r),
            Err(m) => {
                problems.push(Problem::error(
                    "sources-range",
                    format!("entries[{i}].addresses"),
                    m,
                    "write an IPv4 range `10.0.0.1-10.0.0.254` or an IPv6 prefix and length `2001:db8::/48`",
                ));
                None
            }
        };
        if e.sources.is_empty() {
            problems.push(Problem::error(
                "sources-empty",
                format!("entries[{i}].sources"),
                "the entry lists no source",
                "list at least one source, e.g. `sources: [server]`",
            ));
        }
        let sources: Vec<Option<Source>> = e
            .sources
            .iter()
            .enumerate()
            .map(|(j, s)| source(s, &format!("entries[{i}].sources[{j}]"), &mut problems))
            .collect();
        if let Some(range) = range {
            entries.push(Entry {
                range,
                sources: sources.into_iter().flatten().collect(),
            });
        }
    }
    if problems.is_empty() {
        (Some(SourceList { entries, fallback }), problems)
    } else {
        (None, problems)
    }
}

/// Parses and checks a sources file's text; problems come back placed in `file`.
pub fn load(file: &str, text: &str) -> Result<SourceList, Vec<Located>> {
    super::yaml::load_document(file, text, "sources", resolve)
}

/// The positions of a file that parsed (to place the server's problems).
pub fn positions(text: &str) -> Option<super::yaml::Positions> {
    super::yaml::parse::<RawSources>(text).ok().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "fallback:\n  programs_and_hotfixes: not_at_all\nentries:\n  - addresses: 10.0.0.1-10.0.0.9\n    sources:\n      - relay: ws7\n      - smb: smb://127.0.0.1:4450/p/dir\n      - https: https://mirror.example/p/\n      - server\n  - addresses: 2001:db8::/32\n    sources: [server]\n";

    #[test]
    fn sample_resolves() {
        let l = load("s.yaml", GOOD).unwrap();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.entries[0].sources.len(), 4);
        assert_eq!(
            l.entries[0].sources[2],
            Source::Https {
                url: "https://mirror.example/p".into(),
                fingerprint: None
            }
        );
        assert_eq!(l.fallback.programs_and_hotfixes, Fallback::NotAtAll);
        assert_eq!(l.fallback.components, Fallback::Server);
    }

    #[test]
    fn problems_are_placed() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "entries:\n  - addresses: 10.0.0.9-10.0.0.1\n    sources: [server]\n",
                2,
                "ends before it starts",
            ),
            (
                "entries:\n  - addresses: 10.0.0.1\n    sources:\n      - server\n      - relay: a\n        smb: smb://h/s\n",
                5,
                "exactly one of",
            ),
            (
                "entries:\n  - addresses: 10.0.0.1\n    sources: [mirror]\n",
                3,
                "`mirror` is not a source",
            ),
            ("fallback:\n  components: maybe\n", 2, "not a fallback"),
            (
                "entries:\n  - addresses: 10.0.0.1\n    sources:\n      - smb: //host/share\n",
                4,
                "smb://",
            ),
            (
                "entries:\n  - adresses: 10.0.0.1\n    sources: [server]\n",
                2,
                "unknown field",
            ),
        ];
        for &(text, line, want) in cases {
            let e = load("s.yaml", text).unwrap_err();
            assert_eq!(e.len(), 1, "{text}: {e:?}");
            assert_eq!(e[0].line, line, "{text}: {}", e[0]);
            assert!(e[0].problem.message.contains(want), "{}", e[0]);
        }
    }
}
