//! SSH (russh): agentless delivery to Unix hosts and remote installation of the agent.
//!
//! `session` connects with a private key and checks the host key against an OpenSSH
//! known_hosts file (`known_hosts`; trust on first use only when asked); it runs commands and
//! uploads files over SFTP. `facts` gathers what `core::identify` asks for on the far side
//! with one shell script per query set. The server's `ssh_worker` uses these to play the
//! agent's part for SSH machines, through the same dispatcher and state machine.

pub mod facts;
pub mod known_hosts;
pub mod session;

use std::fmt;

/// `user@host[:port]` (`[v6]:port` for IPv6 with a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            format!("`{s}` is not an SSH target ({why}); write it as user@host or user@host:port")
        };
        let (user, rest) = s.split_once('@').ok_or_else(|| bad("no user@"))?;
        if user.is_empty() {
            return Err(bad("the user is empty"));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match tail.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if tail.is_empty() => (h.to_string(), None),
                None => return Err(bad("unexpected text after ]")),
            }
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').expect("one colon");
            (h.to_string(), Some(p))
        } else {
            // No colon, or a bare IPv6 address (no port possible without brackets).
            (rest.to_string(), None)
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            None => 22,
        };
        Ok(Target {
            user: user.to_string(),
            host,
            port,
        })
    }
}

/// Quotes `s` for a POSIX shell: the far side always runs commands through one.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let ok: &[(&str, &str, &str, u16)] = &[
            ("root@host", "root", "host", 22),
            ("u@10.0.0.1:2222", "u", "10.0.0.1", 2222),
            ("u@[::1]:2200", "u", "::1", 2200),
            ("u@[fe80::1]", "u", "fe80::1", 22),
            ("u@fe80::1", "u", "fe80::1", 22),
        ];
        for (s, user, host, port) in ok {
            let t: Target = s.parse().unwrap();
            assert_eq!(
                (t.user.as_str(), t.host.as_str(), t.port),
                (*user, *host, *port)
            );
        }
        for bad in [
            "host",
            "@host",
            "u@",
            "u@h:0",
            "u@h:99999",
            "u@[::1",
            "u@h:x",
        ] {
            let e = bad.parse::<Target>().unwrap_err();
            assert!(e.contains("user@host"), "{bad}: {e}");
        }
        assert_eq!(
            "u@[::1]:22".parse::<Target>().unwrap().to_string(),
            "u@[::1]:22"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
