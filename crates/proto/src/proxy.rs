//! Which HTTP CONNECT proxy the agent's and the admin CLI's HTTPS connections go through.
//!
//! The choice is pure (`resolve`): `--proxy URL` wins over `HTTPS_PROXY`, `NO_PROXY` lists the
//! hosts reached directly either way, and credentials come from a file (or, for
//! `HTTPS_PROXY`, the variable's own `user:password@`), never from argv. A binary records its
//! choice once (`configure`); every HTTPS client of the process is built through `apply`.
//! The proxy only tunnels: TLS runs end to end inside the CONNECT tunnel, so the pinned
//! certificate is checked exactly as without a proxy.

use std::sync::OnceLock;

/// A proxy's user name and password (`USER:PASSWORD` in a credentials file). The password
/// never prints.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl Credentials {
    /// Reads `USER:PASSWORD` (the first `:` separates them; the password may hold more).
    pub fn parse(text: &str) -> Result<Credentials, ProxyError> {
        match text.trim().split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(ProxyError::Credentials),
        }
    }

    /// A file holding `USER:PASSWORD`.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Credentials> {
        let text = crate::host::secret_file(path)?;
        Credentials::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// The proxy a process uses: `http://host:port` without credentials, the credentials, and
/// the `NO_PROXY` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub url: String,
    pub credentials: Option<Credentials>,
    pub no_proxy: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProxyError {
    #[error(
        "{from}: `{url}` is not an HTTP proxy URL; give http://HOST:PORT (the proxy is spoken to in plain HTTP CONNECT, TLS runs inside the tunnel)"
    )]
    NotHttp { from: &'static str, url: String },
    #[error(
        "--proxy: the URL holds credentials, which would show in the process list; put USER:PASSWORD in a file and give --proxy-credentials-file FILE"
    )]
    CredentialsInArgv,
    #[error("the proxy credentials are not USER:PASSWORD")]
    Credentials,
    #[error(
        "--proxy-credentials-file is given but no proxy is: add --proxy URL or set HTTPS_PROXY"
    )]
    CredentialsWithoutProxy,
}

/// Decides the proxy from the `--proxy` flag, a credentials file's contents and the
/// environment (`env` looks a variable up; empty counts as unset).
pub fn resolve(
    flag: Option<&str>,
    credentials: Option<Credentials>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    let var = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| env(n))
            .find(|v| !v.trim().is_empty())
    };
    let (from, raw) = match (flag, var(&["HTTPS_PROXY", "https_proxy"])) {
        (Some(f), _) => ("--proxy", f.trim().to_string()),
        (None, Some(e)) => ("HTTPS_PROXY", e.trim().to_string()),
        (None, None) if credentials.is_some() => return Err(ProxyError::CredentialsWithoutProxy),
        (None, None) => return Ok(None),
    };
    let (host_port, userinfo) = split_http_url(from, &raw)?;
    let credentials = match (credentials, userinfo) {
        (_, Some(_)) if from == "--proxy" => return Err(ProxyError::CredentialsInArgv),
        (Some(c), _) => Some(c),
        (None, Some(u)) => Some(Credentials::parse(&percent_decode(&u))?),
        (None, None) => None,
    };
    Ok(Some(Proxy {
        url: format!("http://{host_port}"),
        credentials,
        no_proxy: var(&["NO_PROXY", "no_proxy"]),
    }))
}

/// `http://[user:pass@]host:port[/]` (or without a scheme, as curl accepts it) → host:port
/// and the user info.
fn split_http_url(from: &'static str, raw: &str) -> Result<(String, Option<String>), ProxyError> {
    let bad = || ProxyError::NotHttp {
        from,
        url: redact(raw),
    };
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(bad()),
        None => raw,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', ' ']) {
        return Err(bad());
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(bad());
    }
    Ok((host_port.to_string(), userinfo))
}

/// A proxy URL for messages: the user info dropped.
fn redact(raw: &str) -> String {
    match (raw.split_once("://"), raw.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        (None, Some((_, host))) => format!("…@{host}"),
        _ => raw.to_string(),
    }
}

/// `%XX` escapes of a URL's user info decoded (invalid escapes are kept as written).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|_| b[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

static PROCESS: OnceLock<Option<Proxy>> = OnceLock::new();

/// Records this process's proxy (a binary calls it once, after reading its flags). Later
/// calls are ignored: the first choice holds for every client the process builds.
pub fn configure(proxy: Option<Proxy>) {
    let _ = PROCESS.set(proxy);
}

/// Reads the credentials file, decides with the process environment and records the choice
/// (what the binaries call with their `--proxy` and `--proxy-credentials-file` flags).
pub fn configure_from(
    flag: Option<&str>,
    credentials_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<Proxy>> {
    let credentials = credentials_file.map(Credentials::from_file).transpose()?;
    let proxy = resolve(flag, credentials, &|n| std::env::var(n).ok())?;
    configure(proxy.clone());
    Ok(proxy)
}

/// This process's proxy: the configured one, or else what the environment says.
pub fn current() -> anyhow::Result<Option<Proxy>> {
    match PROCESS.get() {
        Some(p) => Ok(p.clone()),
        None => Ok(resolve(None, None, &|n| std::env::var(n).ok())?),
    }
}

/// Routes a client through this process's proxy, or straight to its servers when there is
/// none (reqwest's own environment lookup is turned off, so this is the only decision).
pub fn apply(builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(p) = current()? else {
        return Ok(builder.no_proxy());
    };
    let mut proxy = reqwest::Proxy::all(&p.url)
        .map_err(|e| anyhow::anyhow!("proxy {}: {e}", p.url))?
        .no_proxy(
            p.no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string),
        );
    if let Some(c) = &p.credentials {
        proxy = proxy.basic_auth(&c.user, &c.password);
    }
    Ok(builder.proxy(proxy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn the_flag_wins_over_the_environment() {
        let p = resolve(
            Some("http://proxy.lan:3128"),
            None,
            &env(&[
                ("HTTPS_PROXY", "http://other:8080"),
                ("NO_PROXY", "10.0.0.0/8"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.url, "http://proxy.lan:3128");
        assert_eq!(p.no_proxy.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(p.credentials, None);
    }

    #[test]
    fn the_environment_is_read_in_either_case_and_empty_is_unset() {
        let p = resolve(None, None, &env(&[("https_proxy", "proxy:3128/")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.url, "http://proxy:3128");
        let none = resolve(None, None, &env(&[("HTTPS_PROXY", " ")])).unwrap();
        assert_eq!(none, None);
        assert_eq!(resolve(None, None, &env(&[])).unwrap(), None);
    }

    #[test]
    fn credentials_come_from_a_file_or_the_environment_never_the_flag() {
        assert_eq!(
            resolve(Some("http://u:p@proxy:3128"), None, &env(&[])),
            Err(ProxyError::CredentialsInArgv)
        );
        let from_env = resolve(
            None,
            None,
            &env(&[("HTTPS_PROXY", "http://al%40ice:p%3Aw@proxy:1")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_env.credentials, Some(creds("al@ice", "p:w")));
        assert_eq!(from_env.url, "http://proxy:1");
        let file_wins = resolve(
            None,
            Some(creds("bob", "s")),
            &env(&[("HTTPS_PROXY", "http://al:x@proxy:1")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(file_wins.credentials, Some(creds("bob", "s")));
        assert_eq!(
            resolve(None, Some(creds("bob", "s")), &env(&[])),
            Err(ProxyError::CredentialsWithoutProxy)
        );
    }

    #[test]
    fn only_plain_http_proxy_urls_are_accepted_and_errors_hide_credentials() {
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://",
            "http://proxy/path",
            "http://:3128",
        ] {
            assert!(
                matches!(
                    resolve(Some(bad), None, &env(&[])),
                    Err(ProxyError::NotHttp { .. })
                ),
                "{bad}"
            );
        }
        let e = resolve(
            None,
            None,
            &env(&[("HTTPS_PROXY", "ftp://u:secret@proxy:1")]),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn credentials_parse_at_the_first_colon_and_never_print_the_password() {
        assert_eq!(Credentials::parse("u:a:b\n").unwrap(), creds("u", "a:b"));
        assert_eq!(Credentials::parse("nocolon"), Err(ProxyError::Credentials));
        assert_eq!(Credentials::parse(":pw"), Err(ProxyError::Credentials));
        assert!(!format!("{:?}", creds("u", "hunter2")).contains("hunter2"));
    }
}
