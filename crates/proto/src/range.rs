//! HTTP `Range` requests as the server and relays answer them: one range, `bytes=N-`,
//! `bytes=N-M` or a suffix `bytes=-N`.

use axum::http::{HeaderMap, header};

/// A `Range` header that cannot be served (malformed, several ranges, or past the end): 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// `Range: bytes=N-` or `bytes=N-M` → (start, end inclusive); None when absent.
pub fn parse_range(h: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| Unsatisfiable)?.trim();
    let spec = v.strip_prefix("bytes=").ok_or(Unsatisfiable)?;
    if spec.contains(',') {
        return Err(Unsatisfiable);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (start, end) = if a.is_empty() {
        // Suffix: the last N bytes.
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range("bytes=0-", 10), Ok(Some((0, 9))));
        assert_eq!(range("bytes=4-", 10), Ok(Some((4, 9))));
        assert_eq!(range("bytes=2-5", 10), Ok(Some((2, 5))));
        assert_eq!(
            range("bytes=2-99", 10),
            Ok(Some((2, 9))),
            "end clamps to the size"
        );
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 9))), "suffix");
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=x-",
        ] {
            assert_eq!(range(bad, 10), Err(Unsatisfiable), "{bad}");
        }
        assert_eq!(
            range("bytes=0-", 0),
            Err(Unsatisfiable),
            "nothing to serve of an empty file"
        );
    }
}
