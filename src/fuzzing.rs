//! Fuzzing entry points: one function per cargo-fuzz target in `fuzz/fuzz_targets/`.
//!
//! Each takes arbitrary bytes and drives one parser that reads untrusted input (package and
//! policy documents, signed archives, protocol messages, `Range` headers, known_hosts files)
//! the way the program does, returning quietly on any error. A panic, hang or runaway
//! allocation is a bug. The functions live here rather than in the fuzz crate so that the
//! saved corpora and crash reproducers (`fuzz/corpus/`, `fuzz/regressions/`) are also replayed
//! by an ordinary test (`tests/testsuite/fuzz_corpora.rs`) on stable Rust, in CI, without
//! cargo-fuzz. `scripts/fuzz.sh` runs the fuzzers.

use crate::model::group_policy::GroupPolicy;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use std::net::IpAddr;

/// The seed of the signing key the `archive` target trusts. The archives in
/// `fuzz/corpus/archive/` are signed with it, so mutations of their tar structure and payload
/// get past the signature check into the member reading. New seeds: `patchcast package build
/// DIR --key K -o A.pcpkg`, K holding `patchcast-ed25519-secret ` and 64 times `5a`.
pub const ARCHIVE_KEY_SEED: [u8; 32] = [0x5a; 32];

/// The instant at which policies' windows are evaluated (2026-01-01T00:00:00Z).
const NOW_SECS: i64 = 1_767_225_600;

fn text(data: &[u8]) -> Option<&str> {
    // Documents are read with `read_to_string`: a file that is not UTF-8 never reaches a parser.
    std::str::from_utf8(data).ok()
}

fn archive_key() -> SigningKey {
    SigningKey::from_bytes(&ARCHIVE_KEY_SEED)
}

/// `package.yaml`: parsed as `pack::load` does, resolved, and every problem placed.
pub fn package_yaml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok((raw, positions)) = crate::model::yaml::parse::<crate::model::raw::RawPackage>(text)
    else {
        return;
    };
    let (_package, problems) = crate::model::package::resolve(&raw);
    for p in &problems {
        let _ = positions.of(&p.path);
    }
}

/// A signed package archive, streamed through `verify_reader` with the fixed trusted key.
/// A JSON object is also taken as a `manifest.json`, signed on the spot with that key and
/// checked by `verify_manifest` (what an agent does with a work item's manifest), so the
/// manifest's own parsing and checks are reached without forging a signature.
pub fn archive(data: &[u8]) {
    let key = archive_key();
    let trusted: [VerifyingKey; 1] = [key.verifying_key()];
    let _ = crate::pack::archive::verify_reader(data, &trusted);
    if data.trim_ascii_start().first() == Some(&b'{') {
        let sig = signature_for(&key, data);
        let _ = crate::pack::archive::verify_manifest(data, &sig, &trusted);
    }
}

/// A `manifest.sig` for `manifest` as `pack::archive::build` writes it.
fn signature_for(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    let digest = crate::pack::hash::sha256_bytes(manifest);
    let message = [b"patchcast manifest v1\n".as_slice(), &digest.0].concat();
    serde_json::to_vec(&crate::pack::archive::SignatureFile {
        algorithm: "ed25519".into(),
        key_id: crate::pack::keys::key_id(&key.verifying_key()),
        manifest_sha256: digest,
        signature: hex::encode(key.sign(&message).to_bytes()),
    })
    .unwrap_or_default()
}

fn json<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

/// The protocol's JSON bodies: every message type the server or an agent (or a relay)
/// deserializes from the network, plus what each does with it right away when that is pure
/// (a work item's manifest is verified, a policy's windows are computed).
pub fn protocol_json(data: &[u8]) {
    use crate::transport::{admin_api, protocol, schedule_api, sources, ssh_api};
    let key = archive_key();
    let trusted = [key.verifying_key()];

    // Server side: agent requests.
    let _ = json::<protocol::EnrollRequest>(data);
    let _ = json::<protocol::Inventory>(data);
    let _ = json::<protocol::Poll>(data);
    let _ = json::<protocol::Report>(data);
    let _ = json::<sources::RelayStatus>(data);
    // Server side: admin requests.
    let _ = json::<admin_api::TokenRequest>(data);
    let _ = json::<admin_api::Labels>(data);
    let _ = json::<admin_api::Group>(data);
    let _ = json::<crate::model::scenario::Scenario>(data);
    let _ = json::<crate::model::rollout::Rollout>(data);
    let _ = json::<ssh_api::SshMachineRequest>(data);
    let _ = json::<schedule_api::Assign>(data);
    let _ = json::<schedule_api::ClockChange>(data);
    let _ = json::<sources::SetSources>(data);
    let _ = json::<sources::RelayRole>(data);
    let _ = json::<crate::web::accounts::NewAccount>(data);
    if let Some(p) = json::<GroupPolicy>(data) {
        exercise_policy(&p);
    }
    // Agent side: the server's answers.
    let _ = json::<protocol::EnrollResponse>(data);
    let _ = json::<protocol::ReportAck>(data);
    let _ = json::<protocol::ApiError>(data);
    let _ = json::<sources::RelayAck>(data);
    if let Some(r) = json::<protocol::PollResponse>(data) {
        if let Some(w) = &r.work {
            let _ = crate::pack::archive::verify_manifest(
                w.manifest.as_bytes(),
                w.signature.as_bytes(),
                &trusted,
            );
        }
        for p in r.setting.iter().flat_map(|s| &s.policies) {
            exercise_policy(p);
        }
        // Keys that can change: each statement checked against the chain, as agents do.
        let mut set = crate::pack::trust::TrustSet::initial(&[hex::encode(trusted[0].as_bytes())]);
        for t in &r.trust {
            if let Ok(next) = set.apply(t) {
                set = next;
            }
        }
        if let Some(repin) = &r.repin {
            let _ = repin.verify("sha256:00");
        }
    }
    if let Some(t) = json::<crate::pack::trust::Signed>(data) {
        let _ =
            crate::pack::trust::TrustSet::initial(&[hex::encode(trusted[0].as_bytes())]).apply(&t);
    }
    if let Some(r) = json::<crate::transport::repin::Signed>(data) {
        let _ = r.verify("sha256:00");
    }
    // Relay side: a relay token, as it arrives in a request header, and its claims.
    let _ = json::<sources::Grant>(data);
    if let Some(token) = text(data) {
        let _ = sources::verify_token(&trusted[0], token, "relay", "sha256", NOW_SECS * 1000);
    }
}

/// What the server and agents compute from a stored policy: its windows' openings around a
/// fixed instant and a machine's check-in slot in them.
fn exercise_policy(p: &GroupPolicy) {
    let Some(now) = DateTime::<Utc>::from_timestamp(NOW_SECS, 0) else {
        return;
    };
    let spread = p.spread();
    for w in p.windows() {
        let _ = w.open_at(now);
        let _ = w.next_after(now);
        for o in w.upcoming(now, 3) {
            let _ = crate::core::schedule::check_in_at("machine-1", &o, spread);
        }
    }
}

/// An HTTP `Range` header value, against files of several sizes. The answer must lie inside
/// the file (`start <= end < size`); anything else is a bug, reported by a panic.
pub fn range(data: &[u8]) {
    use reqwest::header::{HeaderMap, HeaderValue, RANGE};
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(RANGE, value);
    for size in [0, 1, 10, 1 << 20, u64::MAX] {
        if let Ok(Some((start, end))) = crate::transport::range::parse_range(&headers, size) {
            assert!(
                start <= end && end < size,
                "range {start}-{end} outside a file of {size} bytes"
            );
        }
    }
}

/// A sources document (`sources.yaml`), resolved, then matched as the server plans a fetch.
pub fn sources_yaml(data: &[u8]) {
    use crate::core::sources::{Category, match_entry, plan};
    let Some(text) = text(data) else { return };
    let _ = crate::model::sources::positions(text);
    let Ok(list) = crate::model::sources::load("sources.yaml", text) else {
        return;
    };
    let addresses: [IpAddr; 3] = [
        IpAddr::from([10, 1, 0, 7]),
        IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, 0, 7]),
        IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0xc0a8, 0x0101]),
    ];
    let _ = match_entry(&list, &addresses);
    for category in [
        Category::Components,
        Category::DomainSettings,
        Category::ProgramsAndHotfixes,
    ] {
        let _ = plan(&list, &addresses[..1], category);
        let _ = plan(&list, &addresses[1..], category);
    }
}

/// A group policy document, resolved, and its windows computed.
pub fn group_policy_yaml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(p) = crate::model::group_policy::load("policy.yaml", text) {
        exercise_policy(&p);
    }
}

/// The Ed25519 key the `known_hosts` target looks up (an OpenSSH public key line).
const KNOWN_HOSTS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHgQDB7X6HLijk1Gx19yvXA3IYai/a9XBHb1UwvGLuC5";

/// A known_hosts file, read by `ssh::known_hosts::check` for two hosts (port 22 and another
/// port), without trust on first use so nothing is written. The reader is russh's, which
/// takes only a path, so the bytes go through a temporary file of their own.
pub fn known_hosts(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Ok(key) = KNOWN_HOSTS_KEY.parse() else {
        return;
    };
    let file = std::env::temp_dir().join(format!(
        "patchcast-fuzz-known-hosts-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&file, data).is_err() {
        return;
    }
    for (host, port) in [("h", 22), ("127.0.0.1", 2222)] {
        let _ = crate::ssh::known_hosts::check(host, port, &key, &file, false);
    }
    let _ = std::fs::remove_file(&file);
}
