//! The signed archive format: determinism, tamper detection, unsafe entries.

use crate::common::crafted::raw_entry;
use ed25519_dalek::SigningKey;
use patchcast::model::raw::RawPackage;
use patchcast::pack::archive::{self, VerifyError};
use proptest::prelude::*;
use std::io::Cursor;
use std::path::Path;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn raw(payload: &[String]) -> RawPackage {
    let yaml = format!(
        "id: t\nkind: application\ntitle: t\ntargets: [{{ os: debian }}]\nidentification: [{{ probe: 'true' }}]\npayload: [{}]\ninstall: {{ command: 'sh {{{{payload.0}}}}' }}\n",
        payload
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

/// Writes the files into `dir` and builds the archive; returns its bytes.
fn build_in(dir: &Path, files: &[(String, Vec<u8>)], k: &SigningKey) -> Vec<u8> {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    let out = dir.join("out.pcpkg");
    archive::build(dir, &raw(&names), k, &out, |_| {}).unwrap();
    std::fs::read(out).unwrap()
}

/// Byte ranges of the manifest's and each payload file's content inside the archive.
fn data_ranges(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let mut a = tar::Archive::new(Cursor::new(bytes));
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let start = e.raw_file_position() as usize;
            (
                e.path().unwrap().display().to_string(),
                start..start + e.size() as usize,
            )
        })
        .filter(|(name, r)| name != "manifest.sig" && !r.is_empty())
        .collect()
}

fn files_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::btree_map(
        "[a-z]{1,8}(/[a-z]{1,8})?\\.(exe|txt|sh)",
        prop::collection::vec(any::<u8>(), 1..3000),
        1..5,
    )
    .prop_map(|m| m.into_iter().collect::<Vec<_>>())
    // Directory names have no dot and file names always do, so no path is both.
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn identical_inputs_give_identical_archives(files in files_strategy()) {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = key(7);
        let x = build_in(a.path(), &files, &k);
        let y = build_in(b.path(), &files, &k);
        prop_assert_eq!(&x, &y);
        let v = archive::verify_reader(Cursor::new(&x), &[k.verifying_key()]).unwrap();
        prop_assert_eq!(v.manifest.files.len(), files.len());
    }

    #[test]
    fn any_one_byte_change_is_rejected(files in files_strategy(), pick in any::<prop::sample::Index>(), which in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let k = key(9);
        let mut bytes = build_in(dir.path(), &files, &k);
        let ranges = data_ranges(&bytes);
        let (name, range) = which.get(&ranges).clone();
        let at = range.start + pick.index(range.len());
        bytes[at] ^= flip;
        let r = archive::verify_reader(Cursor::new(&bytes), &[k.verifying_key()]);
        prop_assert!(r.is_err(), "changing byte {} of {} went unnoticed", at - range.start, name);
        if name.starts_with("payload/") {
            prop_assert!(matches!(r, Err(VerifyError::Tampered { .. })), "{:?}", r.err());
        } else {
            prop_assert!(matches!(r, Err(VerifyError::BadSignature(_))), "{:?}", r.err());
        }
    }
}

#[test]
fn wrong_key_and_truncation_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build_in(
        dir.path(),
        &[("setup.sh".into(), b"echo hi\n".to_vec())],
        &key(1),
    );
    let r = archive::verify_reader(Cursor::new(&bytes), &[key(2).verifying_key()]);
    assert!(matches!(r, Err(VerifyError::UntrustedKey(_))), "{r:?}");
    for cut in [10, 600, 1600, bytes.len() - 1100] {
        let r = archive::verify_reader(Cursor::new(&bytes[..cut]), &[key(1).verifying_key()]);
        assert!(r.is_err(), "cut at {cut} accepted");
    }
}

/// A signed manifest for payload `a.txt` = "hello", followed by an arbitrary last entry.
fn crafted(last: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let good = build_in(dir.path(), &[("a.txt".into(), b"hello".to_vec())], &key(3));
    crate::common::crafted::crafted(&good, last)
}

#[test]
fn unsafe_entries_are_rejected_before_anything_is_written() {
    let k = key(3).verifying_key();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            crafted(|b| {
                raw_entry(
                    b,
                    b"payload/../../a.txt",
                    tar::EntryType::Regular,
                    None,
                    b"hello",
                )
            }),
        ),
        (
            "absolute",
            crafted(|b| raw_entry(b, b"/etc/a.txt", tar::EntryType::Regular, None, b"hello")),
        ),
        (
            "symlink",
            crafted(|b| {
                raw_entry(
                    b,
                    b"payload/a.txt",
                    tar::EntryType::Symlink,
                    Some(b"/etc/passwd"),
                    b"",
                )
            }),
        ),
        (
            "hardlink",
            crafted(|b| {
                raw_entry(
                    b,
                    b"payload/a.txt",
                    tar::EntryType::Link,
                    Some(b"../../etc/passwd"),
                    b"",
                )
            }),
        ),
        (
            "device",
            crafted(|b| raw_entry(b, b"payload/a.txt", tar::EntryType::Char, None, b"")),
        ),
    ];
    for (what, bytes) in cases {
        let r = archive::verify_reader(Cursor::new(&bytes), &[k]);
        assert!(
            matches!(r, Err(VerifyError::UnsafeEntry { .. })),
            "{what}: {r:?}"
        );
        let dest = tempfile::tempdir().unwrap();
        let target = dest.path().join("work");
        let r = archive::extract(Cursor::new(&bytes), &[k], &target);
        assert!(r.is_err(), "{what}");
        assert!(
            !target.exists(),
            "{what}: nothing may be left after a rejected extract"
        );
        assert_eq!(
            std::fs::read_dir(dest.path()).unwrap().count(),
            0,
            "{what}: no staging left"
        );
    }
    // An extra entry after the signed payload is refused too.
    let extra = crafted(|b| {
        raw_entry(b, b"payload/a.txt", tar::EntryType::Regular, None, b"hello");
        raw_entry(b, b"payload/b.txt", tar::EntryType::Regular, None, b"extra");
    });
    assert!(matches!(
        archive::verify_reader(Cursor::new(&extra), &[k]),
        Err(VerifyError::Structure(_))
    ));
    // And the well-formed twin passes, so the checks above are not rejecting everything.
    let ok = crafted(|b| raw_entry(b, b"payload/a.txt", tar::EntryType::Regular, None, b"hello"));
    archive::verify_reader(Cursor::new(&ok), &[k]).unwrap();
}

#[test]
fn extract_writes_only_verified_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("bin/tool.sh".to_string(), b"#!/bin/sh\necho ok\n".to_vec()),
        ("data.txt".to_string(), b"1.0\n".to_vec()),
    ];
    let bytes = build_in(dir.path(), &files, &key(5));
    let dest = tempfile::tempdir().unwrap();
    let work = dest.path().join("work");
    let v = archive::extract(Cursor::new(&bytes), &[key(5).verifying_key()], &work).unwrap();
    assert_eq!(v.package.payload, vec!["bin/tool.sh", "data.txt"]);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(work.join(name)).unwrap(), data);
    }
    // Tampered payload: the work directory never appears.
    let mut bad = bytes.clone();
    let (_, r) = data_ranges(&bad)
        .into_iter()
        .find(|(n, _)| n == "payload/data.txt")
        .unwrap();
    bad[r.start] ^= 1;
    let work2 = dest.path().join("work2");
    assert!(matches!(
        archive::extract(Cursor::new(&bad), &[key(5).verifying_key()], &work2),
        Err(VerifyError::Tampered { .. })
    ));
    assert!(!work2.exists());
}

/// A manifest signed by a trusted key whose install template includes itself: verifying it
/// (at publish, `package verify` and the agent's probe step) recursed until the stack
/// overflowed and took the server down. It is now refused with the template's position.
#[test]
fn regression_signed_self_including_template_is_refused_not_a_crash() {
    use ed25519_dalek::Signer;
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    let bytes = build_in(dir.path(), &[("a.sh".into(), b"true\n".to_vec())], &k);
    let mut a = tar::Archive::new(Cursor::new(bytes));
    let mut manifest = String::new();
    std::io::Read::read_to_string(
        &mut a.entries().unwrap().next().unwrap().unwrap(),
        &mut manifest,
    )
    .unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m["package"]["install"]["command"] =
        "{{#*inline \"again\"}}{{> again}}{{/inline}}{{> again}}".into();
    let manifest = serde_json::to_vec(&m).unwrap();
    let digest = patchcast::pack::hash::sha256_bytes(&manifest);
    let message = [b"patchcast manifest v1\n".as_slice(), &digest.0].concat();
    let sig = archive::SignatureFile {
        algorithm: "ed25519".into(),
        key_id: patchcast::pack::keys::key_id(&k.verifying_key()),
        manifest_sha256: digest,
        signature: hex::encode(k.sign(&message).to_bytes()),
    };
    let sig = serde_json::to_vec(&sig).unwrap();
    match archive::verify_manifest(&manifest, &sig, &[k.verifying_key()]) {
        Err(VerifyError::Structure(why)) => {
            assert!(
                why.contains("partial") && why.contains("line 1, column 1"),
                "{why}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
