//! Keys that can change, on the server: the publisher keys it trusts (the `--trust-key`
//! files, then every accepted trust statement), the chain of statements it hands agents, and
//! the certificate renewal it prepares (`proto::repin`).
//!
//! The server checks a statement as agents will (`pack::trust::TrustSet::apply`, with the
//! next serial required), records it with an audit entry in one transaction, and trusts the
//! new set at once: packages signed by an added key publish, by a revoked key are refused
//! (E18). At start the stored chain is replayed over the `--trust-key` keys without checking
//! signers again (they were checked when accepted), so a `--trust-key` left on the command
//! line after its key was revoked stays revoked.

use super::Server;
use super::actions::Actor;
use super::api::{Admin, ApiErr, R};
use super::db;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::VerifyingKey;
use patchcast_core::errors::Code;
use patchcast_pack::trust::{Signed, TrustSet, id_of_hex};
use patchcast_proto::keys_api::{self as api, KeyView, Renewed, TrustView};
use patchcast_proto::repin;
use patchcast_proto::tls::Identity;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The server's keys (`Server::keys`).
pub struct Keys {
    trust: RwLock<Trust>,
    /// The `--trust-key` keys, hex: where the stored chain is replayed from.
    configured: Vec<String>,
    /// DATA/tls: the current identity, and `next/` while a renewal is prepared.
    tls_dir: PathBuf,
    /// The names the certificate is made for (a renewed one gets the same).
    names: Vec<String>,
    /// The identity the server presents.
    identity: Identity,
    /// The re-pin statement handed to agents while a renewal waits for the next start.
    repin: RwLock<Option<repin::Signed>>,
}

struct Trust {
    set: TrustSet,
    /// Every accepted statement, in serial order.
    chain: Vec<(u64, Signed)>,
}

impl Trust {
    /// The `--trust-key` keys (hex) with the stored chain replayed over them, without
    /// checking signers again (they were checked when accepted).
    async fn from_db(db: &db::Pool, hexes: &[String]) -> Result<Trust> {
        let mut set = TrustSet::initial(hexes);
        let chain = db::trust::chain(db).await?;
        for (serial, s) in &chain {
            let st = s
                .parse()
                .with_context(|| format!("stored trust statement {serial}"))?;
            for k in st.add.iter().map(|k| k.to_ascii_lowercase()) {
                if !set.revoked.contains(&k) && !set.keys.contains(&k) {
                    set.keys.push(k);
                }
            }
            for k in st.revoke.iter().map(|k| k.to_ascii_lowercase()) {
                set.keys.retain(|x| *x != k);
                if !set.revoked.contains(&k) {
                    set.revoked.push(k);
                }
            }
            set.serial = *serial;
        }
        Ok(Trust { set, chain })
    }
}

impl Keys {
    /// Reads the stored chain again: another server on the database may have accepted a
    /// statement (`cluster`).
    pub async fn reload(&self, db: &db::Pool) -> Result<()> {
        let t = Trust::from_db(db, &self.configured).await?;
        *self.trust.write().expect("trust lock") = t;
        Ok(())
    }

    /// The trusted set from the `--trust-key` keys and the stored chain; the prepared
    /// renewal, if any.
    pub async fn load(
        db: &db::Pool,
        configured: &[VerifyingKey],
        tls_dir: PathBuf,
        names: Vec<String>,
        identity: Identity,
    ) -> Result<Keys> {
        let hexes: Vec<String> = configured
            .iter()
            .map(|k| hex::encode(k.to_bytes()))
            .collect();
        let trust = Trust::from_db(db, &hexes).await?;
        for k in hexes.iter().filter(|k| trust.set.revoked.contains(k)) {
            tracing::warn!(key = %id_of_hex(k), "a --trust-key was revoked by a trust statement; it is not trusted");
        }
        let pending = repin::pending(&tls_dir)?;
        if let Some(s) = &pending
            && s.verify(&identity.fingerprint).is_err()
        {
            tracing::warn!(dir = %tls_dir.join("next").display(), "the prepared certificate renewal is not signed by this server's certificate and is not served");
        }
        // A statement from another identity (left over, or copied in) is not served: it
        // could only fail on every agent.
        let repin = pending.filter(|s| s.verify(&identity.fingerprint).is_ok());
        Ok(Keys {
            trust: RwLock::new(trust),
            configured: hexes,
            tls_dir,
            names,
            identity,
            repin: RwLock::new(repin),
        })
    }

    /// The publisher keys packages must be signed with now.
    pub fn trusted(&self) -> Vec<VerifyingKey> {
        let t = self.trust.read().expect("trust lock");
        t.set.verifying_keys().unwrap_or_default()
    }

    /// The current set (keys, revoked, serial): what an enrolling agent is given.
    pub fn set(&self) -> TrustSet {
        self.trust.read().expect("trust lock").set.clone()
    }

    /// The statements above `serial`, in order.
    pub fn above(&self, serial: u64) -> Vec<Signed> {
        let t = self.trust.read().expect("trust lock");
        t.chain
            .iter()
            .filter(|(n, _)| *n > serial)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The re-pin statement for an agent that does not hold its new pin yet.
    pub fn repin_for(&self, next: Option<&str>) -> Option<repin::Signed> {
        let r = self.repin.read().expect("repin lock").clone()?;
        match (r.verify(&self.identity.fingerprint), next) {
            (Ok(new), Some(held)) if held.eq_ignore_ascii_case(&new) => None,
            (Ok(_), _) => Some(r),
            (Err(_), _) => None,
        }
    }

    /// The fingerprint of the certificate the server presents.
    pub fn fingerprint(&self) -> &str {
        &self.identity.fingerprint
    }

    fn view(&self) -> TrustView {
        let set = self.set();
        let view = |keys: &[String]| {
            keys.iter()
                .map(|k| KeyView {
                    id: id_of_hex(k),
                    key: k.clone(),
                })
                .collect()
        };
        TrustView {
            serial: set.serial,
            keys: view(&set.keys),
            revoked: view(&set.revoked),
        }
    }
}

/// Why a statement was not accepted, for the administrator.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Trust(#[from] patchcast_pack::trust::TrustError),
    #[error(
        "trust statement serial {got} is not the next one ({want}); fetch the current serial and sign again"
    )]
    NotNext { got: u64, want: u64 },
}

impl Server {
    /// Accepts a trust statement: checked as agents will check it, then stored (with an audit
    /// entry) and trusted at once.
    pub async fn publish_trust(
        &self,
        who: &Actor,
        signed: &Signed,
    ) -> Result<Result<TrustView, Refused>> {
        let _w = self.write().await?;
        if self.cluster.shared() {
            // Another server may have accepted the statement before this one.
            self.keys.reload(&self.db).await?;
        }
        let current = self.keys.set();
        let next = match current.apply(signed) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e.into())),
        };
        if next.serial != current.serial + 1 {
            return Ok(Err(Refused::NotNext {
                got: next.serial,
                want: current.serial + 1,
            }));
        }
        let st = signed.parse()?;
        let detail = format!(
            "trust statement {} signed by {}: added {}; revoked {}",
            next.serial,
            id_of_hex(&signed.key),
            ids(&st.add),
            ids(&st.revoke)
        );
        let mut tx = self.db.begin().await?;
        db::trust::insert(&mut tx, next.serial, signed, self.now()).await?;
        db::audit::insert(
            &mut tx,
            &who.0,
            "trust.statement",
            &next.serial.to_string(),
            &detail,
            db::now_ms(),
        )
        .await?;
        tx.commit().await?;
        {
            let mut t = self.keys.trust.write().expect("trust lock");
            let serial = next.serial;
            t.set = next;
            t.chain.push((serial, signed.clone()));
        }
        self.cluster.signal(&super::cluster::Signal::Keys);
        tracing::info!("{detail}");
        Ok(Ok(self.keys.view()))
    }

    /// Prepares a certificate renewal: the next identity in DATA/tls/next and the re-pin
    /// statement signed by the current one, served to agents from now on (and after a
    /// restart). The server presents the new certificate from the start after
    /// `repin::request_switch`. Calling it again keeps the prepared one.
    pub fn renew_cert(&self) -> Result<Renewed> {
        let k = &self.keys;
        let signed = repin::renew(&k.tls_dir, &k.identity, &k.names)?;
        let new = signed.verify(&k.identity.fingerprint)?;
        *k.repin.write().expect("repin lock") = Some(signed);
        tracing::info!(old = %k.identity.fingerprint, %new, "certificate renewal prepared; agents are told at their next poll (`patchcast server renew-cert --switch`, then a restart, presents the new certificate)");
        Ok(Renewed {
            old: k.identity.fingerprint.clone(),
            new,
        })
    }
}

fn ids(keys: &[String]) -> String {
    if keys.is_empty() {
        return "none".into();
    }
    keys.iter()
        .map(|k| id_of_hex(k))
        .collect::<Vec<_>>()
        .join(", ")
}

type S = State<Arc<Server>>;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route(api::TRUST, get(trust).post(publish))
        .route(api::RENEW_CERT, post(renew))
}

async fn trust(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.keys.view()).into_response())
}

async fn publish(State(s): S, _: Admin, Json(signed): Json<Signed>) -> R<Response> {
    match s.publish_trust(&Actor::token(), &signed).await? {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(ApiErr::new(
            StatusCode::CONFLICT,
            format!("trust statement refused: {e}"),
            Some(Code::E18),
        )),
    }
}

async fn renew(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.renew_cert()?).into_response())
}
