//! What a backup archive may hold and whether one is whole: pure decisions over names, sizes
//! and hashes, so a tampered or truncated archive is refused before restore writes a byte.
//!
//! Members, in archive order: the database (`database/patchcast.db` or
//! `database/postgres.dump`), `tls/cert.pem`, `tls/key.pem`, `admin.token`, `trust/*.pub`,
//! `tls/next/*` while a certificate renewal is prepared, `ssh/known_hosts` when there is one,
//! `content/<sha256>`, and `manifest.json` last (it is
//! written once every member's hash is known, so backup reads each file once).

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "patchcast-backup-1";
pub const MANIFEST: &str = "manifest.json";
pub const SQLITE: &str = "database/patchcast.db";
pub const POSTGRES: &str = "database/postgres.dump";
/// What every server has besides its database.
pub const REQUIRED: [&str; 3] = ["tls/cert.pem", "tls/key.pem", "admin.token"];
/// A certificate renewal in progress (`proto::repin`), when there is one.
pub const RENEWAL: [&str; 4] = [
    "tls/next/cert.pem",
    "tls/next/key.pem",
    "tls/next/repin.json",
    "tls/next/switch",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    pub fn member(self) -> &'static str {
        match self {
            Database::Sqlite => SQLITE,
            Database::Postgres => POSTGRES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created_ms: i64,
    pub database: Database,
    pub members: Vec<Member>,
}

/// Where an archive member goes under the new data directory, and whether it is a secret
/// (written 0600). None: not a name a backup holds.
pub fn target(path: &str) -> Option<(String, bool)> {
    let secret = matches!(
        path,
        "tls/key.pem" | "tls/next/key.pem" | "admin.token" | SQLITE
    );
    match path {
        SQLITE => Some(("patchcast.db".into(), secret)),
        "tls/cert.pem" | "tls/key.pem" | "admin.token" | "ssh/known_hosts" => {
            Some((path.into(), secret))
        }
        _ if RENEWAL.contains(&path) => Some((path.into(), secret)),
        _ => {
            let ok = match path.split_once('/') {
                Some(("content", name)) => {
                    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
                }
                Some(("trust", name)) => {
                    name.ends_with(".pub")
                        && name.len() > 4
                        && !name.starts_with('.')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                }
                _ => false,
            };
            ok.then(|| (path.into(), false))
        }
    }
}

/// Every reason the archive is not the backup its manifest describes, given the members seen
/// (in archive order, with the sizes and hashes read); empty when it is whole.
pub fn problems(manifest: &Manifest, seen: &[Member]) -> Vec<String> {
    let mut out = Vec::new();
    if manifest.format != FORMAT {
        out.push(format!(
            "format `{}` is not {FORMAT} (a backup from another patchcast version?)",
            manifest.format
        ));
    }
    let mut listed = std::collections::HashMap::new();
    for m in &manifest.members {
        if listed.insert(m.path.as_str(), m).is_some() {
            out.push(format!("{} is listed twice", m.path));
        }
        if m.path != POSTGRES && target(&m.path).is_none() {
            out.push(format!("{} is not a member a backup holds", m.path));
        }
    }
    let db = manifest.database.member();
    for need in REQUIRED.iter().chain(std::iter::once(&db)) {
        if !listed.contains_key(need) {
            out.push(format!("{need} is missing from the manifest"));
        }
    }
    let other_db = match manifest.database {
        Database::Sqlite => POSTGRES,
        Database::Postgres => SQLITE,
    };
    if listed.contains_key(other_db) {
        out.push(format!(
            "{other_db} does not belong to a {:?} backup",
            manifest.database
        ));
    }
    let mut found = std::collections::HashSet::new();
    for s in seen {
        if !found.insert(s.path.as_str()) {
            out.push(format!("{} appears twice in the archive", s.path));
            continue;
        }
        match listed.get(s.path.as_str()) {
            None => out.push(format!(
                "{} is in the archive but not in the manifest",
                s.path
            )),
            Some(m) if m.size != s.size || !m.sha256.eq_ignore_ascii_case(&s.sha256) => {
                out.push(format!(
                    "{}: {} bytes with sha256 {}, the manifest says {} bytes with sha256 {}",
                    s.path, s.size, s.sha256, m.size, m.sha256
                ))
            }
            Some(_) => {}
        }
    }
    for m in &manifest.members {
        if !found.contains(m.path.as_str()) {
            out.push(format!(
                "{} is in the manifest but not in the archive",
                m.path
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, sha: &str) -> Member {
        Member {
            path: path.into(),
            size: 3,
            sha256: sha.into(),
        }
    }

    fn whole() -> (Manifest, Vec<Member>) {
        let members = vec![
            member(SQLITE, "aa"),
            member("tls/cert.pem", "bb"),
            member("tls/key.pem", "cc"),
            member("admin.token", "dd"),
            member("trust/0-release.pub", "ee"),
            member(&format!("content/{}", "a".repeat(64)), "ff"),
        ];
        let m = Manifest {
            format: FORMAT.into(),
            created_ms: 1,
            database: Database::Sqlite,
            members: members.clone(),
        };
        (m, members)
    }

    #[test]
    fn a_whole_archive_has_no_problems() {
        let (m, seen) = whole();
        assert_eq!(problems(&m, &seen), Vec::<String>::new());
    }

    #[test]
    fn a_changed_missing_or_extra_member_is_named() {
        let (m, mut seen) = whole();
        seen[1].sha256 = "00".into();
        seen.remove(2);
        seen.push(member("admin.token", "dd"));
        seen.push(member("content/../../etc/passwd", "11"));
        let p = problems(&m, &seen);
        assert!(
            p.iter()
                .any(|p| p.starts_with("tls/cert.pem: 3 bytes with sha256 00")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p == "tls/key.pem is in the manifest but not in the archive"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p == "admin.token appears twice in the archive"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p == "content/../../etc/passwd is in the archive but not in the manifest"),
            "{p:?}"
        );
    }

    #[test]
    fn the_manifest_itself_must_describe_a_server() {
        let (mut m, seen) = whole();
        m.format = "patchcast-backup-9".into();
        m.database = Database::Postgres;
        m.members.retain(|x| x.path != "admin.token");
        m.members.push(member("etc/shadow", "00"));
        let p = problems(&m, &seen);
        for want in [
            "format `patchcast-backup-9` is not patchcast-backup-1 (a backup from another patchcast version?)",
            "admin.token is missing from the manifest",
            "database/postgres.dump is missing from the manifest",
            "database/patchcast.db does not belong to a Postgres backup",
            "etc/shadow is not a member a backup holds",
        ] {
            assert!(p.iter().any(|p| p == want), "{want}: {p:?}");
        }
    }

    #[test]
    fn only_known_names_have_a_place_and_secrets_are_marked() {
        assert_eq!(target(SQLITE), Some(("patchcast.db".into(), true)));
        assert_eq!(target("tls/key.pem"), Some(("tls/key.pem".into(), true)));
        assert_eq!(target("tls/cert.pem"), Some(("tls/cert.pem".into(), false)));
        assert_eq!(
            target("trust/1-release.pub"),
            Some(("trust/1-release.pub".into(), false))
        );
        for bad in [
            "content/abc",
            "content/../x",
            "trust/../../root/.ssh/authorized_keys.pub",
            "trust/.pub",
            "trust/a/b.pub",
            "server.json",
            "/etc/passwd",
            POSTGRES,
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }
}
