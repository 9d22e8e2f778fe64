//! The agent's version with its build stamp: `0.1.0` from Cargo, then `+STAMP` when the
//! binary carries one (`0.1.0+b2`). The stamp lives in a fixed-size marker inside the
//! binary, so a build is stamped after linking by rewriting those bytes (`write`): two copies
//! of one build differ only there, and each reports its own version. Release builds and the
//! agent-upgrade tests stamp this way; a binary never stamped reports the plain version.

/// The marker's opening, written backwards: the binary must hold it forwards only once, in
/// `STAMP` (the stamp follows it there, NUL-padded to `STAMP_LEN` bytes), so the code that
/// looks for it builds it at run time.
const MARKER_REVERSED: [u8; 20] = *b"=@@pmats-tsachctap@@";
const MARKER_LEN: usize = MARKER_REVERSED.len();
/// Room for the stamp after the marker.
pub const STAMP_LEN: usize = 44;

// Read through `black_box` so the compiler keeps the bytes in the binary and reads them at
// run time instead of folding the empty stamp into the code.
#[used]
static STAMP: [u8; 64] = {
    let mut b = [0u8; 64];
    let mut i = 0;
    while i < MARKER_LEN {
        b[i] = MARKER_REVERSED[MARKER_LEN - 1 - i];
        i += 1;
    }
    b
};

fn marker() -> Vec<u8> {
    std::hint::black_box(MARKER_REVERSED)
        .iter()
        .rev()
        .copied()
        .collect()
}

/// The stamp this binary carries ("" when none).
pub fn stamp() -> String {
    let bytes: &[u8; 64] = std::hint::black_box(&STAMP);
    let s = &bytes[MARKER_LEN..];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// This agent's version as it reports it: Cargo's, plus `+STAMP` when stamped.
pub fn version() -> String {
    let base = env!("CARGO_PKG_VERSION");
    match stamp() {
        s if s.is_empty() => base.to_string(),
        s => format!("{base}+{s}"),
    }
}

/// `version`, kept for the life of the process (clap's `--version` wants a static string).
pub fn version_static() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(version)
}

/// Why a binary cannot be stamped.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("the stamp `{0}` is not 1 to {STAMP_LEN} characters of [A-Za-z0-9.~]")]
    Invalid(String),
    #[error("the binary has no stamp marker (is it a patchcast-agent?)")]
    NoMarker,
    #[error("the binary has the stamp marker more than once")]
    Ambiguous,
}

/// Writes `stamp` into the marker of the agent binary `bytes` (a copy of a build).
pub fn write(bytes: &mut [u8], stamp: &str) -> Result<(), StampError> {
    let ok = !stamp.is_empty()
        && stamp.len() <= STAMP_LEN
        && stamp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'~');
    if !ok {
        return Err(StampError::Invalid(stamp.into()));
    }
    let marker = marker();
    let mut found = bytes
        .windows(MARKER_LEN)
        .enumerate()
        .filter(|(_, w)| *w == marker.as_slice())
        .map(|(i, _)| i);
    let at = found.next().ok_or(StampError::NoMarker)? + MARKER_LEN;
    if found.next().is_some() {
        return Err(StampError::Ambiguous);
    }
    let field = &mut bytes[at..at + STAMP_LEN];
    field.fill(0);
    field[..stamp.len()].copy_from_slice(stamp.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_written_into_the_marker_and_only_there() {
        let mut bin = b"head".to_vec();
        bin.extend_from_slice(&STAMP);
        bin.extend_from_slice(b"tail");
        write(&mut bin, "b2").unwrap();
        assert_eq!(marker(), b"@@patchcast-stamp@@=");
        let at = 4 + MARKER_LEN;
        assert_eq!(&bin[at..at + 3], b"b2\0");
        assert!(bin.ends_with(b"tail") && bin.starts_with(b"head"));
        assert!(matches!(
            write(&mut bin, "b 2"),
            Err(StampError::Invalid(_))
        ));
        assert!(matches!(
            write(&mut b"none".to_vec(), "b2"),
            Err(StampError::NoMarker)
        ));
        let mut twice = bin.clone();
        twice.extend_from_slice(&STAMP);
        assert!(matches!(
            write(&mut twice, "b3"),
            Err(StampError::Ambiguous)
        ));
    }

    #[test]
    fn an_unstamped_binary_reports_the_cargo_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
    }
}
