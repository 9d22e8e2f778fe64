//! Package version ordering as dpkg and rpm define it. Pure functions, pinned by the
//! examples in dpkg's and rpm's own test suites.

use std::cmp::Ordering;

/// Compares two Debian versions (`[epoch:]upstream[-revision]`) like `dpkg --compare-versions`.
pub fn dpkg_cmp(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_debian(a);
    let (eb, ub, rb) = split_debian(b);
    ea.cmp(&eb)
        .then_with(|| dpkg_part_cmp(ua, ub))
        .then_with(|| dpkg_part_cmp(ra, rb))
}

fn split_debian(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
            (e.parse().unwrap_or(0), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// dpkg's ordering of one non-digit character: `~` sorts before everything, even the end
/// of the string; letters sort before other characters.
fn dpkg_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn dpkg_part_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = dpkg_order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = dpkg_order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Digit run, numerically.
        let (si, sj) = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let ord = numeric_cmp(&a[si..i], &b[sj..j]);
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn numeric_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares two RPM `[epoch:]version[-release]` strings like `rpmdev-vercmp`.
pub fn rpm_cmp(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (e, rest) = match v.split_once(':') {
            Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
                (e.parse().unwrap_or(0), r)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((ver, rel)) => (e, ver.to_string(), rel.to_string()),
            None => (e, rest.to_string(), String::new()),
        }
    };
    let (ea, va, ra) = split(a);
    let (eb, vb, rb) = split(b);
    ea.cmp(&eb).then_with(|| rpmvercmp(&va, &vb)).then_with(|| {
        if ra.is_empty() || rb.is_empty() {
            Ordering::Equal
        } else {
            rpmvercmp(&ra, &rb)
        }
    })
}

/// rpm's `rpmvercmp`: alternating alphabetic and numeric segments; numeric beats alpha;
/// `~` sorts before anything, `^` after the base version but before any further segment.
pub fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        // Tilde: sorts before everything else.
        let (at, bt) = (a.get(i) == Some(&b'~'), b.get(j) == Some(&b'~'));
        if at || bt {
            if !at {
                return Ordering::Greater;
            }
            if !bt {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        // Caret: like tilde, but sorts after the end of the other string.
        let (ac, bc) = (a.get(i) == Some(&b'^'), b.get(j) == Some(&b'^'));
        if ac || bc {
            if i >= a.len() {
                return Ordering::Less;
            }
            if j >= b.len() {
                return Ordering::Greater;
            }
            if !ac {
                return Ordering::Greater;
            }
            if !bc {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if i >= a.len() || j >= b.len() {
            break;
        }
        let numeric = a[i].is_ascii_digit();
        let take = |s: &[u8], mut k: usize| {
            let start = k;
            while k < s.len()
                && if numeric {
                    s[k].is_ascii_digit()
                } else {
                    s[k].is_ascii_alphabetic()
                }
            {
                k += 1;
            }
            (start, k)
        };
        let (si, ei) = take(a, i);
        let (sj, ej) = take(b, j);
        if sj == ej {
            // Segments of different types: numeric is newer.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let ord = if numeric {
            numeric_cmp(&a[si..ei], &b[sj..ej])
        } else {
            a[si..ei].cmp(&b[sj..ej])
        };
        if ord != Ordering::Equal {
            return ord;
        }
        i = ei;
        j = ej;
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

/// How a package about to be published orders against the one published under its id:
/// by `version` (dpkg ordering, which reads plain dotted versions as expected) when both have
/// one, else by service-pack level; None when they cannot be ordered. A publish that would be
/// `Less` is a replay of an older signed version and is refused (rollback is explicit).
pub fn publish_order(
    published: &crate::model::package::Package,
    new: &crate::model::package::Package,
) -> Option<Ordering> {
    use crate::model::package::Kind;
    match (&published.version, &new.version, &published.kind, &new.kind) {
        (Some(a), Some(b), _, _) => Some(dpkg_cmp(b, a)),
        (_, _, Kind::ServicePack { level: a }, Kind::ServicePack { level: b }) => Some(b.cmp(a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_examples() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1.2.0-1", "1.10.0-1", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0", Greater),
            ("1.0-1", "1.0", Greater),
            ("001.2", "1.2", Equal),
            ("2.30-1ubuntu1", "2.30-1", Greater),
            ("1.0.", "1.0", Greater),
        ] {
            assert_eq!(dpkg_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(dpkg_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn rpm_examples() {
        // From rpm's tests/rpmvercmp.at.
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("5.5p1", "5.5p2", Less),
            ("5.5p10", "5.5p1", Greater),
            ("10xyz", "10.1xyz", Less),
            ("xyz10", "xyz10.1", Less),
            ("1.0aa", "1.0a", Greater),
            ("2a", "2.0", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.01", Less),
            ("1.0^20160101", "1.0.1", Less),
            ("1.0~rc1^git1", "1.0~rc1", Greater),
            ("a+", "a_", Equal),
        ] {
            assert_eq!(rpmvercmp(a, b), want, "{a} vs {b}");
        }
        assert_eq!(rpm_cmp("1:1.0-1", "2.0-1"), Greater);
        assert_eq!(rpm_cmp("1.0-1.el9", "1.0-2.el9"), Less);
        assert_eq!(rpm_cmp("1.0", "1.0-5"), Equal);
    }

    #[test]
    fn regression_publish_order_refuses_older_versions() {
        let pkg = |extra: &str| {
            let yaml = format!(
                "id: t\ntitle: t\ntargets: [{{ os: debian }}]\n{extra}\npayload: [a.sh]\ninstall: {{ command: 'sh a.sh' }}\n"
            );
            let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
            let (p, problems) = crate::model::package::resolve(&raw);
            p.unwrap_or_else(|| panic!("{problems:?}"))
        };
        let app = |v: &str| {
            pkg(&format!(
                "kind: application\nversion: '{v}'\nidentification: [{{ probe: 'true' }}]"
            ))
        };
        assert_eq!(
            publish_order(&app("1.10"), &app("1.9")),
            Some(Ordering::Less)
        );
        assert_eq!(
            publish_order(&app("1.9"), &app("1.10")),
            Some(Ordering::Greater)
        );
        assert_eq!(
            publish_order(&app("2.0"), &app("2.0")),
            Some(Ordering::Equal)
        );
        let sp = |major: u32| {
            pkg(&format!(
                "kind: service_pack\nservice_pack: {{ major: {major}, minor: 0 }}"
            ))
        };
        assert_eq!(publish_order(&sp(2), &sp(1)), Some(Ordering::Less));
        let hotfix = pkg("kind: hotfix\nkb: KB958644");
        assert_eq!(publish_order(&hotfix, &hotfix), None);
    }
}
