//! Server certificate renewal: a re-pin statement, signed by the old server identity.
//!
//! Agents pin the server certificate's fingerprint at enrollment (`tls::Pinned`). To renew it
//! without enrolling every agent again, the server makes the next certificate beside the
//! current one (`DIR/next/`) and a statement `{"old": FP, "new": FP}` signed with the
//! **current certificate's own private key** over `"patchcast repin v1\n" ‖ sha256(statement)`,
//! carrying the current certificate itself. An agent checks that the certificate's
//! fingerprint is the one it pinned and that the statement names it as `old`, then verifies
//! the signature with that certificate's public key: only the holder of the identity the agent
//! already trusts can move it to another. No second key is needed, and agents enrolled before
//! this feature existed can follow a renewal, since their pin is all they need.
//!
//! The server serves the statement in poll replies while it still presents the old
//! certificate; an agent that accepts it pins both (old and new) until the server presents the
//! new one (`PollResponse::fingerprint`), then keeps only the new pin. The server keeps serving
//! the statement across restarts until the administrator asks for the switch
//! (`request_switch`, `patchcast server renew-cert --switch`); the next start then presents
//! the new certificate (`promote`) and keeps the old pair under `DIR/retired/`.

use crate::tls::{Identity, fingerprint, provider};
use anyhow::{Context, Result, bail};
use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const SIGNING_CONTEXT: &[u8] = b"patchcast repin v1\n";
/// Schemes a server key may sign with, most likely first (rcgen makes ECDSA P-256 keys).
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

/// What the statement says (its JSON text is what is signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repin {
    pub old: String,
    pub new: String,
}

/// A re-pin statement as served to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub statement: String,
    /// The old (signing) certificate, DER as hex: its fingerprint is the agent's pin.
    pub cert: String,
    /// The TLS signature scheme (IANA number) of `signature`.
    pub scheme: u16,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepinError {
    #[error("the re-pin statement is malformed: {0}")]
    Malformed(String),
    #[error("the re-pin statement is signed by certificate {signer}, not by the pinned {pinned}")]
    NotPinned { signer: String, pinned: String },
    #[error("the re-pin statement's signature does not verify with certificate {0}")]
    BadSignature(String),
}

fn signed_message(statement: &str) -> Vec<u8> {
    [
        SIGNING_CONTEXT,
        &patchcast_pack::hash::sha256_bytes(statement.as_bytes()).0,
    ]
    .concat()
}

fn well_formed(fp: &str) -> bool {
    fp.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Signs "move from `current` to `new_fingerprint`" with `current`'s private key.
pub fn sign(current: &Identity, new_fingerprint: &str) -> Result<Signed> {
    let text = serde_json::to_string(&Repin {
        old: current.fingerprint.clone(),
        new: new_fingerprint.to_string(),
    })?;
    let key = provider()
        .key_provider
        .load_private_key(current.key.clone_key())
        .context("loading the server's TLS key to sign the re-pin statement")?;
    let signer = key
        .choose_scheme(SCHEMES)
        .context("the server's TLS key signs with none of the schemes agents verify")?;
    let signature = signer
        .sign(&signed_message(&text))
        .context("signing the re-pin statement")?;
    Ok(Signed {
        statement: text,
        cert: hex::encode(current.cert.as_ref()),
        scheme: u16::from(signer.scheme()),
        signature: hex::encode(signature),
    })
}

impl Signed {
    /// The new fingerprint, when the statement is signed by the certificate pinned as
    /// `pinned` and names it as the old one.
    pub fn verify(&self, pinned: &str) -> Result<String, RepinError> {
        let malformed = |m: &str| RepinError::Malformed(m.to_string());
        let cert = hex::decode(&self.cert).map_err(|_| malformed("the certificate is not hex"))?;
        let signer = fingerprint(&cert);
        if !signer.eq_ignore_ascii_case(pinned) {
            return Err(RepinError::NotPinned {
                signer,
                pinned: pinned.to_string(),
            });
        }
        let st: Repin =
            serde_json::from_str(&self.statement).map_err(|e| malformed(&e.to_string()))?;
        if !st.old.eq_ignore_ascii_case(pinned) {
            return Err(malformed(
                "the statement does not name the pinned certificate as old",
            ));
        }
        if !well_formed(&st.new) || st.new.eq_ignore_ascii_case(&st.old) {
            return Err(malformed(
                "the new fingerprint is not sha256: and 64 hex digits",
            ));
        }
        let sig =
            hex::decode(&self.signature).map_err(|_| malformed("the signature is not hex"))?;
        let scheme = SignatureScheme::from(self.scheme);
        let alg = provider()
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .and_then(|(_, algs)| algs.first().copied())
            .ok_or_else(|| malformed("unknown signature scheme"))?;
        let der = CertificateDer::from(cert);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| malformed(&format!("the certificate does not parse: {e}")))?;
        ee.verify_signature(alg, &signed_message(&self.statement), &sig)
            .map_err(|_| RepinError::BadSignature(signer))?;
        Ok(st.new.to_ascii_lowercase())
    }
}

fn next_dir(dir: &Path) -> PathBuf {
    dir.join("next")
}

/// Makes (or, when already made, keeps) the next identity under `DIR/next` and the re-pin
/// statement signed by `current`; returns the statement.
pub fn renew(dir: &Path, current: &Identity, names: &[String]) -> Result<Signed> {
    let next = Identity::load_or_create(&next_dir(dir), names)?;
    let signed = sign(current, &next.fingerprint)?;
    let path = next_dir(dir).join("repin.json");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&signed)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(signed)
}

/// The statement waiting in `DIR/next`, when a renewal is prepared.
pub fn pending(dir: &Path) -> Result<Option<Signed>> {
    let path = next_dir(dir).join("repin.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_slice(&text).with_context(|| {
        format!("{} is malformed", path.display())
    })?))
}

/// Asks the next server start to present the prepared certificate (`DIR/next/switch`);
/// returns its fingerprint. Refused when no renewal is prepared by the current identity.
pub fn request_switch(dir: &Path) -> Result<String> {
    let current = Identity::load_or_create(dir, &[])?;
    let Some(signed) = pending(dir)? else {
        bail!(
            "no certificate renewal is prepared in {}; run `patchcast server renew-cert` first",
            dir.display()
        );
    };
    let new = signed.verify(&current.fingerprint).with_context(|| {
        format!(
            "the renewal in {} is not signed by the current certificate",
            next_dir(dir).display()
        )
    })?;
    let marker = next_dir(dir).join("switch");
    std::fs::write(&marker, format!("{new}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(new)
}

/// At server start: when a renewal is prepared and its switch requested (`request_switch`),
/// makes the next identity the current one and keeps the old pair under
/// `DIR/retired/<old fingerprint>/`. Returns (old, new) fingerprints. Each step is a rename,
/// and a start after a crash between two of them finishes the job.
pub fn promote(dir: &Path) -> Result<Option<(String, String)>> {
    let next = next_dir(dir);
    let (next_cert, next_key) = (next.join("cert.pem"), next.join("key.pem"));
    if !next_cert.exists() || (next_key.exists() && !next.join("switch").exists()) {
        return Ok(None);
    }
    let old = Identity::load_or_create(dir, &[])?;
    if next_key.exists() {
        // Only a renewal agents could follow: signed by the current identity, naming this
        // certificate. Anything else in `next/` would strand every agent (E26).
        let next_fp = fingerprint(
            CertificateDer::from_pem_file(&next_cert)
                .with_context(|| format!("reading {}", next_cert.display()))?
                .as_ref(),
        );
        let named = pending(dir)?.map(|s| s.verify(&old.fingerprint));
        if !matches!(&named, Some(Ok(fp)) if *fp == next_fp) {
            bail!(
                "{} holds certificate {next_fp} without a re-pin statement signed by the current certificate {} naming it; agents could not follow it. Remove {} and run `patchcast server renew-cert` again",
                next.display(),
                old.fingerprint,
                next.display()
            );
        }
        let retired = dir
            .join("retired")
            .join(old.fingerprint.trim_start_matches("sha256:"));
        std::fs::create_dir_all(&retired)
            .with_context(|| format!("creating {}", retired.display()))?;
        for f in ["cert.pem", "key.pem"] {
            let to = retired.join(f);
            if !to.exists() {
                std::fs::copy(dir.join(f), &to)
                    .with_context(|| format!("keeping {} in {}", f, retired.display()))?;
            }
        }
        std::fs::rename(&next_key, dir.join("key.pem"))
            .with_context(|| format!("moving {} into place", next_key.display()))?;
    } else if !dir.join("retired").exists() {
        bail!(
            "{} has a certificate but no key and nothing was retired: remove {} and renew again",
            next.display(),
            next.display()
        );
    }
    std::fs::rename(&next_cert, dir.join("cert.pem"))
        .with_context(|| format!("moving {} into place", next_cert.display()))?;
    let _ = std::fs::remove_dir_all(&next);
    let new = Identity::load_or_create(dir, &[])?;
    Ok(Some((old.fingerprint, new.fingerprint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path) -> Identity {
        Identity::load_or_create(dir, &["localhost".into()]).unwrap()
    }

    #[test]
    fn signed_by_the_pinned_identity_it_verifies_and_nothing_else_does() {
        let tmp = tempfile::tempdir().unwrap();
        let old = identity(&tmp.path().join("a"));
        let other = identity(&tmp.path().join("b"));
        let s = renew(&tmp.path().join("a"), &old, &["localhost".into()]).unwrap();
        let new = s.verify(&old.fingerprint).unwrap();
        assert_ne!(new, old.fingerprint);
        assert_eq!(pending(&tmp.path().join("a")).unwrap(), Some(s.clone()));
        // Pinned to another server: refused, whoever signed.
        assert!(matches!(
            s.verify(&other.fingerprint),
            Err(RepinError::NotPinned { .. })
        ));
        // Signed by another identity, claiming to be the pinned one: the certificate gives it away.
        let mut forged = sign(&other, &new).unwrap();
        forged.statement = serde_json::to_string(&Repin {
            old: old.fingerprint.clone(),
            new: new.clone(),
        })
        .unwrap();
        assert!(matches!(
            forged.verify(&old.fingerprint),
            Err(RepinError::NotPinned { .. })
        ));
        // The pinned certificate attached, another key's signature: refused.
        forged.cert = s.cert.clone();
        assert!(matches!(
            forged.verify(&old.fingerprint),
            Err(RepinError::BadSignature(_))
        ));
        // The statement changed after signing.
        let mut tampered = s.clone();
        tampered.statement = tampered.statement.replace(&new, &other.fingerprint);
        assert!(matches!(
            tampered.verify(&old.fingerprint),
            Err(RepinError::BadSignature(_))
        ));
    }

    #[test]
    fn promote_switches_to_the_next_identity_and_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(promote(dir).ok().flatten(), None);
        let old = identity(dir);
        let s = renew(dir, &old, &["localhost".into()]).unwrap();
        let new = s.verify(&old.fingerprint).unwrap();
        // Prepared but not asked for: the server keeps its certificate (and serves the statement).
        assert_eq!(promote(dir).unwrap(), None);
        assert_eq!(identity(dir).fingerprint, old.fingerprint);
        assert_eq!(request_switch(dir).unwrap(), new);
        let (was, now) = promote(dir).unwrap().unwrap();
        assert_eq!(
            (was.as_str(), now.as_str()),
            (old.fingerprint.as_str(), new.as_str())
        );
        assert_eq!(identity(dir).fingerprint, new);
        assert!(!dir.join("next").exists());
        assert!(
            dir.join("retired")
                .join(old.fingerprint.trim_start_matches("sha256:"))
                .join("key.pem")
                .exists()
        );
        assert_eq!(promote(dir).unwrap(), None);
    }

    #[test]
    fn a_next_certificate_without_a_statement_from_the_current_one_is_not_promoted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let current = identity(&dir);
        // Someone else's renewal copied in: its statement is signed by another identity.
        let other = identity(&tmp.path().join("other"));
        renew(&tmp.path().join("other"), &other, &["localhost".into()]).unwrap();
        std::fs::rename(tmp.path().join("other").join("next"), dir.join("next")).unwrap();
        let e = format!("{:#}", request_switch(&dir).unwrap_err());
        assert!(e.contains("not signed by the current certificate"), "{e}");
        std::fs::write(dir.join("next").join("switch"), "").unwrap();
        let e = promote(&dir).unwrap_err().to_string();
        assert!(e.contains("without a re-pin statement"), "{e}");
        assert_eq!(identity(&dir).fingerprint, current.fingerprint);
    }
}
