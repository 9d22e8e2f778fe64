//! Console accounts: a name and an argon2id password hash (PHC string, salt included) in
//! `web_accounts`. Accounts are managed with the admin token (`patchcast admin add USER`),
//! never from the console itself, so a stolen session cannot mint another account.

use super::{WebError, WebResult, WebState};
use crate::Server;
use crate::api::Admin;
use crate::db::{self, now_ms};
use anyhow::{Context, Result};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The admin API path the CLI uses (Bearer admin token).
pub const ACCOUNTS: &str = "/api/v1/admin/accounts";

/// Shorter passwords are refused; length is what resists guessing.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAccount {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    pub created_at_ms: i64,
}

/// Why an account cannot be created, in words for the person typing it.
pub fn check_new(name: &str, password: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !name_ok {
        return Err(format!(
            "account name `{name}` is not allowed: use 1-64 letters, digits, `.`, `_`, `-` or `@`"
        ));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's minimum) and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Verified against when the account does not exist, so an unknown name costs the same time
/// as a wrong password and timing does not tell which part was wrong.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("patchcast decoy password").expect("randomness for the decoy salt")
    })
}

impl Server {
    /// Creates or replaces (new password) an account.
    pub async fn put_account(&self, name: &str, password: &str) -> Result<AccountView> {
        let hash = hash_password(password)?;
        let now = now_ms();
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        // A new password ends the account's sessions.
        db::accounts::put(&mut tx, name, &hash, now).await?;
        tx.commit().await?;
        Ok(AccountView {
            name: name.to_string(),
            created_at_ms: now,
        })
    }

    pub async fn remove_account(&self, name: &str) -> Result<bool> {
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let existed = db::accounts::remove(&mut tx, name).await?;
        tx.commit().await?;
        Ok(existed)
    }

    pub async fn accounts(&self) -> Result<Vec<AccountView>> {
        Ok(db::accounts::list(&self.db)
            .await?
            .into_iter()
            .map(|a| AccountView {
                name: a.name,
                created_at_ms: a.created_at,
            })
            .collect())
    }

    /// Whether `name` / `password` sign in. The hash check runs on a blocking thread (argon2
    /// is deliberately slow) and runs for unknown names too.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<bool> {
        let stored = db::accounts::password_hash(&self.db, name).await?;
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| decoy_hash().to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .context("password check")?;
        Ok(known && ok)
    }
}

pub async fn api_add(
    axum::extract::State(w): WebState,
    _: Admin,
    Json(a): Json<NewAccount>,
) -> WebResult {
    check_new(&a.name, &a.password).map_err(WebError::bad)?;
    let v = w.server.put_account(&a.name, &a.password).await?;
    tracing::info!(account = %a.name, "console account set");
    Ok(Json(v).into_response())
}

pub async fn api_list(axum::extract::State(w): WebState, _: Admin) -> WebResult {
    Ok(Json(w.server.accounts().await?).into_response())
}

pub async fn api_remove(
    axum::extract::State(w): WebState,
    _: Admin,
    Path(name): Path<String>,
) -> WebResult<Response> {
    if w.server.remove_account(&name).await? {
        tracing::info!(account = %name, "console account removed");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(WebError::not_found(format!(
            "no console account `{name}`; see `patchcast admin list`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn new_account_rules() {
        assert!(check_new("admin", "twelve chars").is_ok());
        assert!(
            check_new("admin", "short")
                .unwrap_err()
                .contains("at least 12")
        );
        for bad in ["", "a b", "<script>", &"x".repeat(65)] {
            assert!(check_new(bad, "long enough password").is_err(), "{bad}");
        }
    }
}
