//! CSRF: every state-changing form carries a `csrf` field equal to its session's token
//! (synchronizer token, stored with the session). Before sign-in there is no session, so the
//! sign-in form uses a double-submit token: a random value in a short-lived cookie and in the
//! form, which a cross-site page can neither read nor set. SameSite=Strict cookies are a
//! second line, not the only one.

/// Constant-time comparison; an empty expected token never matches.
pub fn matches(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn tokens_match_exactly() {
        assert!(matches("abc123", Some("abc123")));
        assert!(!matches("abc123", Some("abc124")));
        assert!(!matches("abc123", Some("abc12")));
        assert!(!matches("abc123", None));
        assert!(!matches("", Some("")), "no token is never a match");
    }
}
