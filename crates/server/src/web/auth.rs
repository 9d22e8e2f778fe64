//! Who is asking: a console session (cookie) or a script with the admin Bearer token.
//!
//! A session is 32 random bytes in a `__Host-` cookie (HttpOnly, Secure, SameSite=Strict,
//! Path=/); the database keeps only its SHA-256, with the account, the session's CSRF token and
//! an absolute expiry. Signing out or a new password deletes the row.

use crate::db::{self, now_ms};
use crate::{Server, random_hex, sha256_hex};
use anyhow::Result;
use axum::http::{HeaderMap, header};

pub const SESSION_COOKIE: &str = "__Host-patchcast_session";
/// Before sign-in: the double-submit token of the sign-in form (there is no session yet).
pub const LOGIN_COOKIE: &str = "__Host-patchcast_login";
pub const LANG_COOKIE: &str = "patchcast_lang";

/// Sessions end this long after sign-in, used or not.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Signed in through the console; `csrf` is the token its forms must carry.
    Session { account: String, csrf: String },
    /// The CLI's admin token (scripts reading JSON/CSV).
    Token,
}

impl Viewer {
    pub fn account(&self) -> &str {
        match self {
            Viewer::Session { account, .. } => account,
            Viewer::Token => "admin token",
        }
    }
    pub fn csrf(&self) -> &str {
        match self {
            Viewer::Session { csrf, .. } => csrf,
            Viewer::Token => "",
        }
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value for a secret cookie.
pub fn secret_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict")
}

impl Server {
    /// The viewer of a request, or None (not signed in, expired, or a wrong token).
    pub async fn viewer(&self, h: &HeaderMap) -> Result<Option<Viewer>> {
        if self.is_admin_request(h) {
            return Ok(Some(Viewer::Token));
        }
        let Some(token) = cookie(h, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let session = db::accounts::session(&self.db, &sha256_hex(token), now_ms()).await?;
        Ok(session.map(|(account, csrf)| Viewer::Session { account, csrf }))
    }

    /// A new session for `account`: (cookie value, CSRF token). Expired sessions are swept here.
    pub async fn create_session(&self, account: &str) -> Result<(String, String)> {
        let token = random_hex(32)?;
        let csrf = random_hex(32)?;
        let now = now_ms();
        let _w = self.write().await?;
        db::accounts::sweep_sessions(&self.db, now).await?;
        db::accounts::insert_session(
            &self.db,
            &sha256_hex(&token),
            account,
            &csrf,
            now,
            now + SESSION_TTL_MS,
        )
        .await?;
        Ok((token, csrf))
    }

    pub async fn end_session(&self, h: &HeaderMap) -> Result<()> {
        if let Some(token) = cookie(h, SESSION_COOKIE) {
            let _w = self.write().await?;
            db::accounts::delete_session(&self.db, &sha256_hex(token)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; __Host-patchcast_session=abc ; patchcast_lang=ja"
                .parse()
                .unwrap(),
        );
        h.append(header::COOKIE, "other=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LANG_COOKIE), Some("ja"));
        assert_eq!(cookie(&h, "other"), Some("2"));
        assert_eq!(cookie(&h, "patchcast"), None);
    }

    #[test]
    fn session_cookie_attributes() {
        let c = secret_cookie(SESSION_COOKIE, "v", 60);
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }
}
