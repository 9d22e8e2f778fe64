//! Naming a machine. An administrator may write a machine's id or its hostname, but a hostname
//! is only what the machine says about itself: any agent can report any name. So a name is
//! resolved to an id once, when the administrator writes it, and only ids are stored and
//! compared; an agent that reports another machine's name (or id) as its hostname gains
//! nothing of that machine's labels, groups or relay role.

use std::fmt;

/// Why a name does not pick out one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Unknown(String),
    /// A hostname several machines report; the ids to choose from.
    Ambiguous {
        name: String,
        ids: Vec<String>,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Unknown(name) => write!(
                f,
                "no enrolled machine has the id or hostname `{name}`; see `patchcast machine list`"
            ),
            NameError::Ambiguous { name, ids } => write!(
                f,
                "`{name}` is the hostname of {} machines ({}): which one? Name it by its id",
                ids.len(),
                ids.join(", ")
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// The id `name` stands for among `(id, hostname)` pairs: a machine whose id it is, else the
/// one machine reporting it as hostname (compared without case, as DNS does).
pub fn resolve<'a>(
    name: &str,
    machines: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, NameError> {
    let mut by_host: Vec<String> = Vec::new();
    for (id, hostname) in machines {
        if id == name {
            return Ok(id.to_string());
        }
        if hostname.eq_ignore_ascii_case(name) {
            by_host.push(id.to_string());
        }
    }
    by_host.sort();
    match by_host.len() {
        0 => Err(NameError::Unknown(name.to_string())),
        1 => Ok(by_host.remove(0)),
        _ => Err(NameError::Ambiguous {
            name: name.to_string(),
            ids: by_host,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_wins_over_a_hostname_claiming_it() {
        // m-2 reports m-1's id as its hostname: the id still names m-1.
        let fleet = [("m-2", "m-1"), ("m-1", "web1")];
        assert_eq!(resolve("m-1", fleet), Ok("m-1".into()));
        assert_eq!(resolve("WEB1", fleet), Ok("m-1".into()));
        assert_eq!(
            resolve("nope", fleet),
            Err(NameError::Unknown("nope".into()))
        );
        let twins = [("m-9", "db"), ("m-3", "db")];
        let e = resolve("db", twins).unwrap_err();
        assert_eq!(
            e,
            NameError::Ambiguous {
                name: "db".into(),
                ids: vec!["m-3".into(), "m-9".into()]
            }
        );
        assert!(e.to_string().contains("which one?"), "{e}");
    }
}
