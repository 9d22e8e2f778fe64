//! Publisher keys that can change: signed trust statements.
//!
//! A trust statement adds and revokes publisher keys. It is signed by a key the reader
//! already trusts, over `"patchcast trust v1\n" ‖ sha256(statement JSON)` (domain-separated
//! like the manifest signature, so no manifest signature is ever a valid statement signature
//! or the reverse), and carries a serial: a reader applies only a statement whose serial is
//! above the last one it applied, so an old statement cannot be replayed. The statements form
//! a chain (1, 2, 3, …); the server keeps all of them and hands an agent those above the
//! serial it reports, so an agent that was offline for several rotations catches up in order.
//!
//! Rules (`TrustSet::apply`), each refusal changing nothing:
//! - the signer must be in the current set (a revoked or unknown key signs nothing);
//! - the serial must be above the current one;
//! - revocation is permanent: a revoked key is never added again (a new key is made instead);
//! - a key may not be added and revoked in one statement;
//! - the result must keep at least one key. A key may revoke itself (that is how a rotation
//!   retires the old key: signed by the old key, adding the new one and revoking the old), but
//!   never the last one, which would leave agents that accept no package at all.
//!
//! The module is pure: bytes in, a new set or a refusal out. Where the set is kept (the
//! agent's `agent.json`, the server's database) is the caller's business.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const SIGNING_CONTEXT: &[u8] = b"patchcast trust v1\n";

/// What a statement says (its JSON text is what is signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub serial: u64,
    /// Ed25519 public keys (hex) to trust from now on.
    #[serde(default)]
    pub add: Vec<String>,
    /// Ed25519 public keys (hex) never to trust again.
    #[serde(default)]
    pub revoke: Vec<String>,
}

/// A statement as it travels: its exact JSON text, the signer's public key and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub statement: String,
    /// The signer's public key (hex).
    pub key: String,
    /// Ed25519 signature (hex) over `"patchcast trust v1\n" ‖ sha256(statement)`.
    pub signature: String,
}

/// The publisher keys a reader trusts, with the serial of the last statement applied and the
/// keys revoked so far.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrustSet {
    pub serial: u64,
    pub keys: Vec<String>,
    #[serde(default)]
    pub revoked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the trust statement is malformed: {0}")]
    Malformed(String),
    #[error("the trust statement's signature does not verify with key {0}")]
    BadSignature(String),
    #[error(
        "the trust statement is signed by key {0}, which is not a trusted publisher key here; sign it with a key the agents already trust"
    )]
    UntrustedSigner(String),
    #[error("the trust statement is signed by key {0}, which was revoked")]
    RevokedSigner(String),
    #[error(
        "trust statement serial {serial} is not above the current serial {current} (an old statement replayed?)"
    )]
    Replayed { serial: u64, current: u64 },
    #[error("key {0} was revoked and cannot be trusted again; make a new key")]
    ReAdded(String),
    #[error("key {0} is both added and revoked by the statement")]
    AddedAndRevoked(String),
    #[error(
        "the statement would leave no trusted publisher key; add a new key in the same statement"
    )]
    NoKeyLeft,
    #[error("the statement adds and revokes nothing")]
    Empty,
}

/// The key id (`keys::key_id`) of a hex public key, or the text itself when it is not one.
pub fn id_of_hex(key: &str) -> String {
    parse_key(key)
        .map(|k| super::keys::key_id(&k))
        .unwrap_or_else(|_| key.to_string())
}

fn parse_key(hex_key: &str) -> Result<VerifyingKey, TrustError> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut raw)
        .map_err(|_| TrustError::Malformed(format!("key `{hex_key}` is not 64 hex digits")))?;
    VerifyingKey::from_bytes(&raw)
        .map_err(|_| TrustError::Malformed(format!("`{hex_key}` is not an Ed25519 public key")))
}

fn normal(hex_key: &str) -> String {
    hex_key.trim().to_ascii_lowercase()
}

fn signed_message(statement: &str) -> Vec<u8> {
    [
        SIGNING_CONTEXT,
        &super::hash::sha256_bytes(statement.as_bytes()).0,
    ]
    .concat()
}

/// Signs `statement` with `key`.
pub fn sign(statement: &Statement, key: &SigningKey) -> Signed {
    let text = serde_json::to_string(statement).expect("a statement serialises");
    let signature = key.sign(&signed_message(&text));
    Signed {
        statement: text,
        key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

impl Signed {
    /// The statement inside, without checking anything.
    pub fn parse(&self) -> Result<Statement, TrustError> {
        serde_json::from_str(&self.statement).map_err(|e| TrustError::Malformed(e.to_string()))
    }
}

impl TrustSet {
    /// The set a reader starts from: the keys it was given, serial 0.
    pub fn initial(keys: &[String]) -> TrustSet {
        TrustSet {
            serial: 0,
            keys: keys.iter().map(|k| normal(k)).collect(),
            revoked: Vec::new(),
        }
    }

    /// The set after `signed`, or why it is refused (and the set unchanged).
    pub fn apply(&self, signed: &Signed) -> Result<TrustSet, TrustError> {
        let signer_hex = normal(&signed.key);
        let signer = parse_key(&signer_hex)?;
        let signer_id = super::keys::key_id(&signer);
        if self.revoked.contains(&signer_hex) {
            return Err(TrustError::RevokedSigner(signer_id));
        }
        if !self.keys.contains(&signer_hex) {
            return Err(TrustError::UntrustedSigner(signer_id));
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(signed.signature.trim(), &mut sig)
            .map_err(|_| TrustError::Malformed("the signature is not 128 hex digits".into()))?;
        signer
            .verify_strict(
                &signed_message(&signed.statement),
                &Signature::from_bytes(&sig),
            )
            .map_err(|_| TrustError::BadSignature(signer_id))?;
        let st = signed.parse()?;
        if st.serial <= self.serial {
            return Err(TrustError::Replayed {
                serial: st.serial,
                current: self.serial,
            });
        }
        if st.add.is_empty() && st.revoke.is_empty() {
            return Err(TrustError::Empty);
        }
        let add: Vec<String> = st.add.iter().map(|k| normal(k)).collect();
        let revoke: Vec<String> = st.revoke.iter().map(|k| normal(k)).collect();
        for k in add.iter().chain(&revoke) {
            parse_key(k)?;
        }
        let mut next = self.clone();
        next.serial = st.serial;
        for k in &add {
            if revoke.contains(k) {
                return Err(TrustError::AddedAndRevoked(id_of_hex(k)));
            }
            if self.revoked.contains(k) {
                return Err(TrustError::ReAdded(id_of_hex(k)));
            }
            if !next.keys.contains(k) {
                next.keys.push(k.clone());
            }
        }
        for k in revoke {
            next.keys.retain(|x| *x != k);
            if !next.revoked.contains(&k) {
                next.revoked.push(k);
            }
        }
        if next.keys.is_empty() {
            return Err(TrustError::NoKeyLeft);
        }
        Ok(next)
    }

    /// Applies `chain` in order; stops at the first refusal, returning the set reached so far
    /// with the refusal.
    pub fn apply_all(&self, chain: &[Signed]) -> (TrustSet, Option<TrustError>) {
        let mut set = self.clone();
        for s in chain {
            match set.apply(s) {
                Ok(next) => set = next,
                Err(e) => return (set, Some(e)),
            }
        }
        (set, None)
    }

    /// The trusted keys as Ed25519 keys.
    pub fn verifying_keys(&self) -> Result<Vec<VerifyingKey>, TrustError> {
        self.keys.iter().map(|k| parse_key(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }
    fn hexk(n: u8) -> String {
        hex::encode(key(n).verifying_key().to_bytes())
    }
    fn st(serial: u64, add: &[u8], revoke: &[u8]) -> Statement {
        Statement {
            serial,
            add: add.iter().map(|n| hexk(*n)).collect(),
            revoke: revoke.iter().map(|n| hexk(*n)).collect(),
        }
    }
    fn start() -> TrustSet {
        TrustSet::initial(&[hexk(1)])
    }

    #[test]
    fn rotation_signed_by_the_old_key_replaces_it() {
        let s = sign(&st(1, &[2], &[1]), &key(1));
        let next = start().apply(&s).unwrap();
        assert_eq!(next.keys, vec![hexk(2)]);
        assert_eq!(next.revoked, vec![hexk(1)]);
        assert_eq!(next.serial, 1);
        // The new key signs the next statement; the revoked one signs nothing more.
        let s2 = sign(&st(2, &[3], &[]), &key(2));
        assert_eq!(next.apply(&s2).unwrap().keys, vec![hexk(2), hexk(3)]);
        let by_revoked = sign(&st(2, &[3], &[]), &key(1));
        assert!(matches!(
            next.apply(&by_revoked),
            Err(TrustError::RevokedSigner(_))
        ));
    }

    #[test]
    fn refusals_change_nothing() {
        let set = start();
        type Case = (Signed, fn(&TrustError) -> bool);
        let cases: Vec<Case> = vec![
            // Signed by a key that was never trusted.
            (sign(&st(1, &[2], &[]), &key(9)), |e| {
                matches!(e, TrustError::UntrustedSigner(_))
            }),
            // The last key revoked with nothing added.
            (sign(&st(1, &[], &[1]), &key(1)), |e| {
                matches!(e, TrustError::NoKeyLeft)
            }),
            // Serial 0 is not above the current 0.
            (sign(&st(0, &[2], &[]), &key(1)), |e| {
                matches!(e, TrustError::Replayed { .. })
            }),
            (sign(&st(1, &[2], &[2]), &key(1)), |e| {
                matches!(e, TrustError::AddedAndRevoked(_))
            }),
            (sign(&st(1, &[], &[]), &key(1)), |e| {
                matches!(e, TrustError::Empty)
            }),
        ];
        for (s, want) in cases {
            let e = set.apply(&s).unwrap_err();
            assert!(want(&e), "{e}");
        }
        assert_eq!(set, start());
    }

    #[test]
    fn a_replayed_or_older_statement_is_refused() {
        let s1 = sign(&st(1, &[2], &[]), &key(1));
        let after = start().apply(&s1).unwrap();
        assert_eq!(
            after.apply(&s1),
            Err(TrustError::Replayed {
                serial: 1,
                current: 1
            })
        );
        // Serials may skip (the agent only needs them to grow).
        let s5 = sign(&st(5, &[3], &[]), &key(2));
        assert_eq!(after.apply(&s5).unwrap().serial, 5);
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let mut s = sign(&st(1, &[2], &[]), &key(1));
        s.statement = s.statement.replace("\"serial\":1", "\"serial\":7");
        assert!(matches!(
            start().apply(&s),
            Err(TrustError::BadSignature(_))
        ));
        // A signature over the same bytes in the manifest's domain is not a statement's.
        let text = serde_json::to_string(&st(1, &[2], &[])).unwrap();
        let m = [
            &b"patchcast manifest v1\n"[..],
            &crate::hash::sha256_bytes(text.as_bytes()).0,
        ]
        .concat();
        let forged = Signed {
            statement: text,
            key: hexk(1),
            signature: hex::encode(key(1).sign(&m).to_bytes()),
        };
        assert!(matches!(
            start().apply(&forged),
            Err(TrustError::BadSignature(_))
        ));
    }

    #[test]
    fn a_revoked_key_is_never_trusted_again() {
        let s1 = sign(&st(1, &[2], &[1]), &key(1));
        let s2 = sign(&st(2, &[1], &[]), &key(2));
        let (set, err) = start().apply_all(&[s1, s2]);
        assert!(matches!(err, Some(TrustError::ReAdded(_))));
        assert_eq!(set.serial, 1);
        assert_eq!(set.keys, vec![hexk(2)]);
    }

    #[test]
    fn an_agent_catches_up_through_the_chain() {
        // Offline while key 1 → 2 → 3 rotated: each statement verifies with the key before it.
        let chain = [
            sign(&st(1, &[2], &[1]), &key(1)),
            sign(&st(2, &[3], &[2]), &key(2)),
        ];
        let (set, err) = start().apply_all(&chain);
        assert_eq!(err, None);
        assert_eq!(set.keys, vec![hexk(3)]);
        assert_eq!(set.revoked, vec![hexk(1), hexk(2)]);
        // Only the last statement, without the first: signed by a key this reader never had.
        assert!(matches!(
            start().apply(&chain[1]),
            Err(TrustError::UntrustedSigner(_))
        ));
    }
}
