//! Custom update sources (OfficeScan's "Customized Update Source List"): which sources a
//! machine fetches content from, in which order, and what happens when all of them fail.
//!
//! Pure. An ordered list of at most 1024 entries maps an IPv4 range (`a-b`) or an IPv6
//! prefix (`2001:db8::/48`) to an ordered list of sources. A machine uses the FIRST entry that
//! one of its addresses falls in, tries that entry's sources in order, and when every one fails
//! applies the fallback switch of the content's category: fetch from the server, or not at all.
//! A machine that no entry matches uses the server, as before custom sources existed.
//!
//! Validation follows the seed: clients reach a source by address, so an IPv4 entry needs
//! sources that have an IPv4 address and an IPv6 entry sources with an IPv6 address. Which
//! addresses a source has is a fact the caller gathers (DNS, inventories) and passes in.

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The seed's limit on the list.
pub const MAX_ENTRIES: usize = 1024;

/// The addresses an entry covers. Stored and sent as the text an administrator writes
/// (`10.0.0.1-10.0.0.9`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Inclusive `first-last`.
    V4 {
        first: Ipv4Addr,
        last: Ipv4Addr,
    },
    V6 {
        prefix: Ipv6Net,
    },
}

impl Range {
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self, a) {
            (Range::V4 { first, last }, IpAddr::V4(a)) => *first <= a && a <= *last,
            (Range::V4 { first, last }, IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| *first <= a && a <= *last),
            (Range::V6 { prefix }, IpAddr::V6(a)) => prefix.contains(&a),
            (Range::V6 { .. }, IpAddr::V4(_)) => false,
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, Range::V6 { .. })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::V4 { first, last } => write!(f, "{first}-{last}"),
            Range::V6 { prefix } => write!(f, "{prefix}"),
        }
    }
}

impl Serialize for Range {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Range, D::Error> {
        let s = String::deserialize(d)?;
        parse_range(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `10.0.0.1-10.0.0.99`, a single IPv4 address, or `2001:db8::/48`.
pub fn parse_range(s: &str) -> Result<Range, String> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let first: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not an IPv4 address", a.trim()))?;
        let last: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not an IPv4 address", b.trim()))?;
        if first > last {
            return Err(format!(
                "the range `{s}` ends before it starts; write the lower address first"
            ));
        }
        return Ok(Range::V4 { first, last });
    }
    if s.contains('/') {
        if s.contains(':') {
            let prefix: Ipv6Net = s.parse().map_err(|_| {
                format!("`{s}` is not an IPv6 prefix and length (like 2001:db8::/48)")
            })?;
            return Ok(Range::V6 {
                prefix: prefix.trunc(),
            });
        }
        return Err(format!(
            "`{s}`: IPv4 entries are ranges (`10.0.0.1-10.0.0.254`), not prefixes"
        ));
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(Range::V4 { first: a, last: a });
    }
    Err(format!(
        "`{s}` is neither an IPv4 range (`10.0.0.1-10.0.0.254`) nor an IPv6 prefix and length (`2001:db8::/48`)"
    ))
}

/// Where content can come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The management server itself.
    Server,
    /// An agent in the relay (update agent) role, by machine id or hostname.
    Relay { machine: String },
    /// An HTTPS directory holding archives named `<sha256>.pcpkg`.
    Https {
        url: String,
        /// `sha256:HEX` of a self-signed certificate to pin; otherwise the system's CAs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    /// `smb://host[:port]/share/dir`: a share holding archives named `<sha256>.pcpkg`.
    Smb { url: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Server => write!(f, "server"),
            Source::Relay { machine } => write!(f, "relay {machine}"),
            Source::Https { url, .. } => write!(f, "{url}"),
            Source::Smb { url } => write!(f, "{url}"),
        }
    }
}

/// What to do when every custom source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Fetch from the management server.
    #[default]
    Server,
    /// Give up: the delivery fails with E27.
    NotAtAll,
}

/// The seed's three switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fallbacks {
    pub components: Fallback,
    pub domain_settings: Fallback,
    pub programs_and_hotfixes: Fallback,
}

/// What kind of content a fetch is, to pick its switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Components,
    DomainSettings,
    ProgramsAndHotfixes,
}

impl Category {
    /// Hotfixes and service packs are "programs and hot fixes"; applications are components.
    pub fn of_package_kind(kind: &str) -> Category {
        match kind {
            "application" => Category::Components,
            _ => Category::ProgramsAndHotfixes,
        }
    }
}

impl Fallbacks {
    pub fn for_category(&self, c: Category) -> Fallback {
        match c {
            Category::Components => self.components,
            Category::DomainSettings => self.domain_settings,
            Category::ProgramsAndHotfixes => self.programs_and_hotfixes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub range: Range,
    pub sources: Vec<Source>,
}

/// The whole list as stored by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SourceList {
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub fallback: Fallbacks,
}

/// A validation problem: which entry (index), which source (index), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub entry: Option<usize>,
    pub source: Option<usize>,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.entry, self.source) {
            (Some(e), Some(s)) => write!(f, "entries[{e}].sources[{s}]: {}", self.message),
            (Some(e), None) => write!(f, "entries[{e}]: {}", self.message),
            _ => write!(f, "{}", self.message),
        }
    }
}

/// Checks the list against the facts: `addresses(source)` is every address the source can be
/// reached at, or None when it is unknown (an unknown relay, a host name that did not resolve).
pub fn validate(
    list: &SourceList,
    addresses: &dyn Fn(&Source) -> Option<Vec<IpAddr>>,
) -> Vec<Invalid> {
    let mut out = Vec::new();
    if list.entries.len() > MAX_ENTRIES {
        out.push(Invalid {
            entry: None,
            source: None,
            message: format!(
                "the list has {} entries; at most {MAX_ENTRIES} are allowed: merge adjacent ranges",
                list.entries.len()
            ),
        });
    }
    for (i, e) in list.entries.iter().enumerate() {
        if e.sources.is_empty() {
            out.push(Invalid {
                entry: Some(i),
                source: None,
                message: format!("the entry for {} lists no source", e.range),
            });
        }
        for (j, s) in e.sources.iter().enumerate() {
            if e.sources[..j].contains(s) {
                out.push(Invalid {
                    entry: Some(i),
                    source: Some(j),
                    message: format!("{s} is listed twice in this entry"),
                });
                continue;
            }
            let at = |message: String| Invalid {
                entry: Some(i),
                source: Some(j),
                message,
            };
            let Some(addrs) = addresses(s) else {
                out.push(at(format!(
                    "the address of {s} is not known (a relay must be enrolled and have the relay role; a host name must resolve)"
                )));
                continue;
            };
            let (want, fam) = if e.range.is_v6() {
                (true, "IPv6")
            } else {
                (false, "IPv4")
            };
            if !addrs.iter().any(|a| reaches(a, want)) {
                let have: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                out.push(at(format!(
                    "the entry {} is an {fam} entry but {s} has no {fam} address (it has: {}); clients reach a source by the family of their own address: give the source an {fam} address or move it to an entry of its family",
                    e.range,
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                )));
            }
        }
    }
    out
}

/// Whether an address serves clients of the family (`v6`). An unspecified listen address
/// (0.0.0.0 / ::) is resolved by the caller into real addresses, so it is not special here.
fn reaches(a: &IpAddr, v6: bool) -> bool {
    match a {
        IpAddr::V4(_) => !v6,
        IpAddr::V6(a) => v6 || a.to_ipv4_mapped().is_some(),
    }
}

/// Which entry a machine with `addresses` gets: the first entry any of its addresses is in.
pub fn match_entry(list: &SourceList, addresses: &[IpAddr]) -> Option<usize> {
    list.entries
        .iter()
        .position(|e| addresses.iter().any(|a| e.range.contains(*a)))
}

/// What a machine does for one fetch: the sources to try in order, then (or not) the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The matching entry's index, None when no entry matched (server only).
    pub entry: Option<usize>,
    pub sources: Vec<Source>,
    /// After every source failed: try the server (when it was not in `sources` already).
    pub fallback_to_server: bool,
}

pub fn plan(list: &SourceList, addresses: &[IpAddr], category: Category) -> Plan {
    match match_entry(list, addresses) {
        None => Plan {
            entry: None,
            sources: vec![Source::Server],
            fallback_to_server: false,
        },
        Some(i) => {
            let sources = list.entries[i].sources.clone();
            let server_listed = sources.contains(&Source::Server);
            Plan {
                entry: Some(i),
                fallback_to_server: !server_listed
                    && list.fallback.for_category(category) == Fallback::Server,
                sources,
            }
        }
    }
}

/// The agent's side: after source `failed` (index into the plan's sources) failed, what next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the plan's source at this index.
    Source(usize),
    /// Every listed source failed; the switch says fetch from the server.
    Server,
    /// Every source failed and the switch says not at all: E27.
    GiveUp,
}

pub fn after_failure(sources: usize, fallback_to_server: bool, failed: Option<usize>) -> Next {
    let next = failed.map_or(0, |i| i + 1);
    if next < sources {
        Next::Source(next)
    } else if fallback_to_server {
        Next::Server
    } else {
        Next::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry(r: &str, sources: Vec<Source>) -> Entry {
        Entry {
            range: parse_range(r).unwrap(),
            sources,
        }
    }

    fn relay(m: &str) -> Source {
        Source::Relay { machine: m.into() }
    }

    fn smb(u: &str) -> Source {
        Source::Smb { url: u.into() }
    }

    #[test]
    fn ranges_parse_and_contain() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.1-10.0.0.9", "10.0.0.1", true),
            ("10.0.0.1-10.0.0.9", "10.0.0.9", true),
            ("10.0.0.1-10.0.0.9", "10.0.0.10", false),
            ("10.0.0.1-10.0.0.9", "10.0.0.0", false),
            ("10.0.0.1-10.0.0.9", "::ffff:10.0.0.5", true),
            ("10.0.0.1-10.0.0.9", "2001:db8::1", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::/32", "10.0.0.1", false),
            ("2001:db8::1/32", "2001:db8::7", true),
        ];
        for &(r, a, want) in cases {
            assert_eq!(parse_range(r).unwrap().contains(ip(a)), want, "{r} ∋ {a}");
        }
    }

    #[test]
    fn ranges_travel_as_the_text_written() {
        for r in ["10.0.0.1-10.0.0.9", "2001:db8::/32"] {
            let range = parse_range(r).unwrap();
            let json = serde_json::to_string(&range).unwrap();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Range>(&json).unwrap(), range);
        }
        assert!(serde_json::from_str::<Range>("\"10.0.0.0/8\"").is_err());
    }

    #[test]
    fn bad_ranges_say_what_to_write() {
        let cases: &[(&str, &str)] = &[
            ("10.0.0.9-10.0.0.1", "ends before it starts"),
            ("10.0.0.0/24", "not prefixes"),
            ("10.0.0.1-banana", "not an IPv4 address"),
            ("2001:db8::/129", "IPv6 prefix and length"),
            ("everything", "neither"),
        ];
        for &(r, want) in cases {
            let e = parse_range(r).unwrap_err();
            assert!(e.contains(want), "{r}: {e}");
        }
    }

    fn list() -> SourceList {
        SourceList {
            entries: vec![
                entry("10.0.0.1-10.0.0.99", vec![relay("r1"), Source::Server]),
                entry("10.0.0.50-10.0.0.200", vec![smb("smb://files/share/p")]),
                entry("2001:db8::/32", vec![relay("r6")]),
            ],
            fallback: Fallbacks {
                components: Fallback::Server,
                domain_settings: Fallback::NotAtAll,
                programs_and_hotfixes: Fallback::NotAtAll,
            },
        }
    }

    #[test]
    fn first_matching_entry_wins() {
        let l = list();
        let cases: &[(&[&str], Option<usize>)] = &[
            (&["10.0.0.60"], Some(0)),
            (&["10.0.0.150"], Some(1)),
            (&["10.0.0.201"], None),
            (&["2001:db8::5"], Some(2)),
            (&["10.9.9.9", "2001:db8::5"], Some(2)),
            (&["2001:db8::5", "10.0.0.150"], Some(1)),
            (&[], None),
        ];
        for (addrs, want) in cases {
            let a: Vec<IpAddr> = addrs.iter().map(|s| ip(s)).collect();
            assert_eq!(match_entry(&l, &a), *want, "{addrs:?}");
        }
    }

    #[test]
    fn plans_apply_the_category_switch() {
        let l = list();
        let p = plan(&l, &[ip("10.0.0.150")], Category::Components);
        assert_eq!(p.sources, vec![smb("smb://files/share/p")]);
        assert!(p.fallback_to_server);
        let p = plan(&l, &[ip("10.0.0.150")], Category::ProgramsAndHotfixes);
        assert!(!p.fallback_to_server);
        let p = plan(&l, &[ip("10.0.0.150")], Category::DomainSettings);
        assert!(!p.fallback_to_server);
        // The server listed as a source is not tried a second time as the fallback.
        let p = plan(&l, &[ip("10.0.0.5")], Category::Components);
        assert_eq!(p.sources, vec![relay("r1"), Source::Server]);
        assert!(!p.fallback_to_server);
        // No entry: the server, as without custom sources.
        let p = plan(&l, &[ip("172.16.0.1")], Category::ProgramsAndHotfixes);
        assert_eq!((p.entry, p.sources), (None, vec![Source::Server]));
    }

    #[test]
    fn ordered_fallback() {
        let cases: &[(usize, bool, Option<usize>, Next)] = &[
            (3, false, None, Next::Source(0)),
            (3, false, Some(0), Next::Source(1)),
            (3, false, Some(1), Next::Source(2)),
            (3, false, Some(2), Next::GiveUp),
            (3, true, Some(2), Next::Server),
            (0, true, None, Next::Server),
            (0, false, None, Next::GiveUp),
        ];
        for &(n, fb, failed, want) in cases {
            assert_eq!(after_failure(n, fb, failed), want, "{n} {fb} {failed:?}");
        }
    }

    fn facts(s: &Source) -> Option<Vec<IpAddr>> {
        match s {
            Source::Server => Some(vec![ip("10.0.0.1")]),
            Source::Relay { machine } if machine == "r1" => Some(vec![ip("10.0.0.2")]),
            Source::Relay { machine } if machine == "r6" => {
                Some(vec![ip("10.0.0.3"), ip("2001:db8::3")])
            }
            Source::Relay { machine } if machine == "v6only" => Some(vec![ip("2001:db8::9")]),
            Source::Smb { .. } => Some(vec![ip("10.0.0.4")]),
            _ => None,
        }
    }

    #[test]
    fn family_mismatch_is_an_error() {
        assert!(
            validate(&list(), &facts).is_empty(),
            "{:?}",
            validate(&list(), &facts)
        );
        let cases: &[(Entry, &str)] = &[
            (
                entry("2001:db8::/32", vec![relay("r6"), Source::Server]),
                "IPv6 entry but server has no IPv6 address",
            ),
            (
                entry("2001:db8::/32", vec![smb("smb://files/s")]),
                "has no IPv6 address",
            ),
            (
                entry("10.0.0.1-10.0.0.2", vec![relay("v6only")]),
                "IPv4 entry but relay v6only has no IPv4 address",
            ),
            (
                entry("10.0.0.1-10.0.0.2", vec![relay("ghost")]),
                "not known",
            ),
            (entry("10.0.0.1-10.0.0.2", vec![]), "lists no source"),
            (
                entry("10.0.0.1-10.0.0.2", vec![relay("r1"), relay("r1")]),
                "listed twice",
            ),
        ];
        for (e, want) in cases {
            let l = SourceList {
                entries: vec![e.clone()],
                fallback: Fallbacks::default(),
            };
            let problems = validate(&l, &facts);
            assert_eq!(problems.len(), 1, "{e:?}: {problems:?}");
            assert!(problems[0].message.contains(want), "{}", problems[0]);
            assert_eq!(problems[0].entry, Some(0));
        }
    }

    #[test]
    fn at_most_1024_entries() {
        let one = entry("10.0.0.1-10.0.0.2", vec![Source::Server]);
        let mut l = SourceList {
            entries: vec![one.clone(); MAX_ENTRIES],
            fallback: Fallbacks::default(),
        };
        assert!(validate(&l, &facts).is_empty());
        l.entries.push(one);
        let p = validate(&l, &facts);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("1025 entries"), "{}", p[0]);
    }
}
