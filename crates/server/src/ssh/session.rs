//! One SSH connection: key authentication, host key check, commands, SFTP uploads.
//!
//! The host key is checked in russh's `check_server_key` callback, before authentication, so
//! no credential is ever offered to an unverified host. The private key's path appears in
//! errors (it tells the operator which file to fix), its content never does.

use super::Target;
use super::known_hosts::{self, HostKeyError, Trusted};
use patchcast_core::errors::Code;
use patchcast_core::faults::Fault;
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate, load_secret_key};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach and trust one host.
#[derive(Debug, Clone)]
pub struct Access {
    pub target: Target,
    /// Private key file (OpenSSH format, no passphrase).
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub trust_on_first_use: bool,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0}")]
    HostKey(#[from] HostKeyError),
    #[error("connecting to {target}: {why}")]
    Connect { target: String, why: String },
    /// The host's name does not resolve (told apart by where it failed, not by its text).
    #[error("connecting to {target}: the host name does not resolve: {why}")]
    UnknownHost { target: String, why: String },
    #[error(
        "{target} refused the key {key}: add its public key to the user's authorized_keys on that host"
    )]
    Refused { target: String, key: String },
    #[error(
        "reading the SSH private key {key}: {why} (an OpenSSH private key without passphrase is needed)"
    )]
    Key { key: String, why: String },
    #[error("on {target}: {why}")]
    Channel { target: String, why: String },
}

impl SshError {
    /// The result code a delivery reports for this failure.
    pub fn code(&self) -> Code {
        match self {
            // The FAQ's "could not connect to the machine".
            SshError::Connect { .. } => Fault::Unreachable.code(),
            // The FAQ's "no such host is known".
            SshError::UnknownHost { .. } => Fault::UnknownHost.code(),
            // A rejected host key or credential: E26 (check the path, then trust again).
            SshError::HostKey(_) | SshError::Refused { .. } | SshError::Key { .. } => Code::E26,
            // The connection broke after it was made: "re-check of the connection failed".
            SshError::Channel { .. } => Code::E05,
        }
    }
}

/// The host key's fingerprint and what the known_hosts check said about it.
type HostKeyVerdict = Option<(String, Result<Trusted, HostKeyError>)>;

struct Checker {
    access: Access,
    /// The host key's fingerprint and the check's verdict, for the caller.
    verdict: Arc<Mutex<HostKeyVerdict>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let t = &self.access.target;
        // A host certificate is judged by its key: known_hosts CA lines are not supported.
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
        };
        let key = &key;
        let r = known_hosts::check(
            &t.host,
            t.port,
            key,
            &self.access.known_hosts,
            self.access.trust_on_first_use,
        );
        let ok = r.is_ok();
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((known_hosts::fingerprint(key), r));
        Ok(ok)
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// None when it ended on a signal or the channel closed without a status.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// How a time-limited command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Exit(i32),
    /// Killed by a signal on the far side (its number when sent).
    Signal(String),
    TimedOut,
}

pub struct Session {
    handle: Handle<Checker>,
    pub target: Target,
    /// Whether the host key was recorded by this connection (trust on first use).
    pub learned_host_key: bool,
    /// `ssh-ed25519 SHA256:…`
    pub host_key: String,
}

impl Session {
    pub async fn connect(access: &Access) -> Result<Session, SshError> {
        let target = access.target.to_string();
        let key = load_secret_key(&access.key, None).map_err(|e| SshError::Key {
            key: access.key.display().to_string(),
            why: e.to_string(),
        })?;
        let config = Arc::new(client::Config {
            // Without it every small exchange waits for a delayed ACK (~40 ms).
            nodelay: true,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            ..client::Config::default()
        });
        let verdict = Arc::new(Mutex::new(None));
        let checker = Checker {
            access: access.clone(),
            verdict: verdict.clone(),
        };
        // Resolved here, apart from connecting, so that a name that does not resolve is E14
        // and an address that does not answer E03.
        let host = (access.target.host.as_str(), access.target.port);
        let addrs: Vec<std::net::SocketAddr> =
            match tokio::time::timeout(access.connect_timeout, tokio::net::lookup_host(host)).await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(SshError::UnknownHost {
                        target,
                        why: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(SshError::UnknownHost {
                        target,
                        why: format!("no answer within {:?}", access.connect_timeout),
                    });
                }
            };
        let connected = tokio::time::timeout(
            access.connect_timeout,
            client::connect(config, &addrs[..], checker),
        )
        .await;
        let (host_key, checked) = verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map_or((String::new(), None), |(f, r)| (f, Some(r)));
        let mut handle = match connected {
            Err(_) => {
                return Err(SshError::Connect {
                    target,
                    why: format!("no answer within {:?}", access.connect_timeout),
                });
            }
            Ok(Err(e)) => {
                if let Some(Err(hk)) = checked {
                    return Err(SshError::HostKey(hk));
                }
                return Err(SshError::Connect {
                    target,
                    why: e.to_string(),
                });
            }
            Ok(Ok(h)) => h,
        };
        let learned_host_key = matches!(checked, Some(Ok(Trusted::Learned)));
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| SshError::Connect {
                target: target.clone(),
                why: e.to_string(),
            })?
            .flatten();
        let auth = handle
            .authenticate_publickey(
                access.target.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| SshError::Connect {
                target: target.clone(),
                why: format!("authentication failed: {e}"),
            })?;
        if !auth.success() {
            return Err(SshError::Refused {
                target,
                key: access.key.display().to_string(),
            });
        }
        Ok(Session {
            handle,
            target: access.target.clone(),
            learned_host_key,
            host_key,
        })
    }

    fn channel_err(&self, what: &str, e: impl std::fmt::Display) -> SshError {
        SshError::Channel {
            target: self.target.to_string(),
            why: format!("{what}: {e}"),
        }
    }

    /// Runs `command` through the user's shell and collects everything it prints.
    pub async fn exec(&self, command: &str) -> Result<Output, SshError> {
        self.exec_with_input(command, &[]).await
    }

    /// `exec` with `input` on the command's stdin (then end of file): how secrets reach a
    /// remote command without showing in its argument list.
    pub async fn exec_with_input(&self, command: &str, input: &[u8]) -> Result<Output, SshError> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_err("opening a session", e))?;
        ch.exec(true, command)
            .await
            .map_err(|e| self.channel_err("starting a command", e))?;
        if !input.is_empty() {
            ch.data(input)
                .await
                .map_err(|e| self.channel_err("sending input", e))?;
        }
        ch.eof()
            .await
            .map_err(|e| self.channel_err("closing input", e))?;
        let mut out = Output::default();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                _ => {}
            }
        }
        Ok(out)
    }

    /// `exec`, failing with the command's stderr when it does not exit 0.
    pub async fn run(&self, what: &str, command: &str) -> Result<Output, SshError> {
        let out = self.exec(command).await?;
        if !out.success() {
            return Err(self.channel_err(
                what,
                format!(
                    "exit status {}: {}",
                    out.status.map_or("none".into(), |s| s.to_string()),
                    out.stderr_text()
                ),
            ));
        }
        Ok(out)
    }

    /// Runs `command` for at most `limit`, keeping the last `tail` bytes of its output
    /// (stdout and stderr interleaved). On time-out the channel is closed; killing what it
    /// started is the caller's job (it knows the process group).
    pub async fn exec_limited(
        &self,
        command: &str,
        limit: Duration,
        tail: usize,
    ) -> Result<(Finished, Vec<u8>), SshError> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_err("opening a session", e))?;
        ch.exec(true, command)
            .await
            .map_err(|e| self.channel_err("starting a command", e))?;
        let mut buf: Vec<u8> = Vec::new();
        let mut finished = None;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ch.wait()).await {
                Err(_) => {
                    let _ = ch.close().await;
                    return Ok((Finished::TimedOut, buf));
                }
                Ok(None) => break,
                Ok(Some(m)) => m,
            };
            match msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                    buf.extend_from_slice(&data);
                    if buf.len() > 2 * tail {
                        buf.drain(..buf.len() - tail);
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    finished = Some(Finished::Exit(exit_status as i32))
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    finished = Some(Finished::Signal(format!("{signal_name:?}")))
                }
                _ => {}
            }
        }
        if buf.len() > tail {
            buf.drain(..buf.len() - tail);
        }
        Ok((
            finished.unwrap_or(Finished::Signal("channel closed".into())),
            buf,
        ))
    }

    /// Uploads `local` to `remote` over SFTP (created or truncated, mode 0600 before any byte
    /// is written), calling `progress` with the bytes sent so far.
    /// Writes local files to the host over one SFTP session: each `(local, remote, mode)`,
    /// creating `dirs` first (in order, parents before children). The host's own tools never
    /// touch the content, so what lands is exactly what the server verified.
    pub async fn upload(
        &self,
        dirs: &[String],
        files: &[(PathBuf, String, u32)],
        mut progress: impl FnMut(u64),
    ) -> Result<u64, SshError> {
        use russh_sftp::client::SftpSession;
        use russh_sftp::protocol::{FileAttributes, OpenFlags};
        use tokio::io::AsyncReadExt;
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_err("opening an SFTP session", e))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.channel_err("starting the SFTP subsystem", e))?;
        let sftp = SftpSession::new(ch.into_stream())
            .await
            .map_err(|e| self.channel_err("starting SFTP", e))?;
        for dir in dirs {
            sftp.create_dir(dir.as_str())
                .await
                .map_err(|e| self.channel_err(&format!("creating {dir}"), e))?;
        }
        let mut buf = vec![0u8; 255 * 1024];
        let mut sent = 0u64;
        for (local, remote, mode) in files {
            let attrs = FileAttributes {
                permissions: Some(*mode),
                ..FileAttributes::empty()
            };
            let mut file = sftp
                .open_with_flags_and_attributes(
                    remote.as_str(),
                    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                    attrs,
                )
                .await
                .map_err(|e| self.channel_err(&format!("creating {remote}"), e))?;
            let mut src = tokio::fs::File::open(local)
                .await
                .map_err(|e| self.channel_err(&format!("opening {}", local.display()), e))?;
            loop {
                let n = src
                    .read(&mut buf)
                    .await
                    .map_err(|e| self.channel_err(&format!("reading {}", local.display()), e))?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])
                    .await
                    .map_err(|e| self.channel_err(&format!("writing {remote}"), e))?;
                sent += n as u64;
                progress(sent);
            }
            file.shutdown()
                .await
                .map_err(|e| self.channel_err(&format!("closing {remote}"), e))?;
        }
        let _ = sftp.close().await;
        Ok(sent)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
