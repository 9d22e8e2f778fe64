//! PostgreSQL's part of a backup: `pg_dump` and `pg_restore` as child processes. The password
//! never goes into their argv (every user of the machine can read a process list): the URL
//! they get has it removed, and it travels in `PGPASSWORD` instead.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// A PostgreSQL URL split into what may be shown and the password.
#[derive(Debug, PartialEq)]
pub struct Connection {
    /// The URL without the password.
    pub url: String,
    pub password: Option<String>,
}

/// Splits the password out of `postgres://user:password@host:port/db?params`.
pub fn split(url: &str) -> Connection {
    let Some(s) = url.find("://").map(|s| s + 3) else {
        return Connection {
            url: url.into(),
            password: None,
        };
    };
    let end = url[s..].find(['/', '?']).map_or(url.len(), |e| s + e);
    let authority = &url[s..end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, password)) => Connection {
                url: format!("{}{user}@{host}{}", &url[..s], &url[end..]),
                password: Some(patchcast_proto::proxy::percent_decode(password)),
            },
            None => Connection {
                url: url.into(),
                password: None,
            },
        },
        None => Connection {
            url: url.into(),
            password: None,
        },
    }
}

fn command(program: &str, conn: &Connection) -> Command {
    let mut cmd = Command::new(program);
    if let Some(p) = &conn.password {
        cmd.env("PGPASSWORD", p);
    }
    cmd
}

fn refused(what: &str, out: &std::process::Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Dumps the database into `out` (pg_dump's custom format: restored by `pg_restore`, without
/// owners or grants, so it can go into a database owned by another role).
pub fn dump(url: &str, out: &Path) -> Result<()> {
    let conn = split(url);
    let o = command("pg_dump", &conn)
        .args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(out)
        .arg(format!("--dbname={}", conn.url))
        .stdin(Stdio::null())
        .output()
        .context("running pg_dump (is the PostgreSQL client installed?)")?;
    if !o.status.success() {
        return Err(refused("pg_dump", &o));
    }
    Ok(())
}

/// Restores a dump read from `dump` into the (empty) database at `url`, in one transaction.
pub fn restore(url: &str, dump: &mut dyn Read) -> Result<()> {
    let conn = split(url);
    let mut child = command("pg_restore", &conn)
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
        ])
        .arg(format!("--dbname={}", conn.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running pg_restore (is the PostgreSQL client installed?)")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let copied = std::io::copy(dump, &mut stdin).and_then(|_| stdin.flush());
    drop(stdin);
    let o = child.wait_with_output()?;
    if !o.status.success() {
        return Err(refused("pg_restore", &o));
    }
    if let Err(e) = copied {
        bail!("feeding the dump to pg_restore: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_and_is_decoded() {
        assert_eq!(
            split("postgres://app:p%40ss:w@db.lan:5433/patchcast?sslmode=require"),
            Connection {
                url: "postgres://app@db.lan:5433/patchcast?sslmode=require".into(),
                password: Some("p@ss:w".into()),
            }
        );
        assert_eq!(
            split("postgres://postgres@127.0.0.1:5432/x"),
            Connection {
                url: "postgres://postgres@127.0.0.1:5432/x".into(),
                password: None,
            }
        );
        assert_eq!(split("postgres://h/db").password, None);
    }
}
