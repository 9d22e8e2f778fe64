//! The SMB client proper (cargo feature `smb`, on by default): connect, read, write.

use super::{CALL_LIMIT, Credentials, ShareUrl, SmbError};
use ::smb::{Client, ClientConfig, FileAccessMask, FileCreateArgs, UncPath};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Request size: Samba and the crate both handle 1 MiB without multi-credit trouble.
const BLOCK: usize = 1 << 20;
/// Reads in flight at once.
const IN_FLIGHT: usize = 8;

/// One SMB connection to one share.
pub struct Share {
    url: ShareUrl,
    client: Client,
    unc: UncPath,
}

async fn limit<T, E: fmt::Display>(
    url: &ShareUrl,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SmbError> {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Err(_) => Err(SmbError::Timeout {
            share: url.to_string(),
            what: what.to_string(),
        }),
        Ok(Err(e)) => Err(SmbError::Failed {
            share: url.to_string(),
            detail: format!("{what}: {e}"),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

fn status_of(e: &::smb::Error) -> Option<u32> {
    match e {
        ::smb::Error::ReceivedErrorMessage(s, _) | ::smb::Error::UnexpectedMessageStatus(s) => {
            Some(*s)
        }
        _ => None,
    }
}

impl Share {
    /// Connects and authenticates (NTLM; SMB 3 signing/encryption as the server offers).
    pub async fn connect(url: &ShareUrl, creds: &Credentials) -> Result<Share, SmbError> {
        let mut cfg = ClientConfig {
            dfs: false,
            ..Default::default()
        };
        cfg.connection.port = Some(url.port);
        cfg.connection.timeout = Some(CALL_LIMIT);
        cfg.connection.auth_methods.kerberos = false;
        let client = Client::new(cfg);
        let unc = UncPath::new(&url.host)
            .and_then(|u| u.with_share(&url.share))
            .map_err(|e| SmbError::Url(format!("{url}: {e}")))?;
        let connect = client.share_connect(&unc, &creds.user, creds.password.clone());
        match tokio::time::timeout(CALL_LIMIT, connect).await {
            Err(_) => Err(SmbError::Timeout {
                share: url.to_string(),
                what: "connecting".into(),
            }),
            Ok(Err(e)) => {
                let text = e.to_string();
                if status_of(&e) == Some(::smb::Status::U32_LOGON_FAILURE)
                    || text.contains("Logon Failure")
                {
                    return Err(SmbError::LogonFailure {
                        share: url.to_string(),
                        user: creds.user.clone(),
                    });
                }
                // Never echo anything that could carry the password back.
                let detail = text.replace(&creds.password, "***");
                if matches!(e, ::smb::Error::IoError(_)) || text.contains("onnect") {
                    Err(SmbError::Unreachable {
                        share: url.to_string(),
                        detail,
                    })
                } else {
                    Err(SmbError::Failed {
                        share: url.to_string(),
                        detail: format!("connecting: {detail}"),
                    })
                }
            }
            Ok(Ok(())) => Ok(Share {
                url: url.clone(),
                client,
                unc,
            }),
        }
    }

    fn path(&self, name: &str) -> UncPath {
        self.unc.clone().with_path(&self.url.file_path(name))
    }

    async fn open_read(&self, name: &str) -> Result<::smb::File, SmbError> {
        let args = FileCreateArgs::make_open_existing(
            FileAccessMask::new()
                .with_file_read_data(true)
                .with_file_read_attributes(true),
        );
        match tokio::time::timeout(CALL_LIMIT, self.client.create_file(&self.path(name), &args))
            .await
        {
            Err(_) => Err(SmbError::Timeout {
                share: self.url.to_string(),
                what: format!("opening {name}"),
            }),
            Ok(Err(e))
                if matches!(
                    status_of(&e),
                    Some(::smb::Status::U32_OBJECT_NAME_NOT_FOUND)
                        | Some(::smb::Status::U32_OBJECT_PATH_NOT_FOUND)
                ) =>
            {
                Err(SmbError::NotFound {
                    share: self.url.to_string(),
                    name: name.to_string(),
                })
            }
            Ok(Err(e)) => Err(SmbError::Failed {
                share: self.url.to_string(),
                detail: format!("opening {name}: {e}"),
            }),
            Ok(Ok(r)) => Ok(r.unwrap_file()),
        }
    }

    /// Appends bytes `offset..` of `name` to `out` (which holds `offset` bytes already); at
    /// most `max` bytes in all. Returns the file's size on the share.
    pub async fn download(
        &self,
        name: &str,
        offset: u64,
        max: u64,
        out: &mut std::fs::File,
        out_path: &Path,
    ) -> Result<u64, SmbError> {
        use ::smb::GetLen;
        use std::io::Write;
        let file = self.open_read(name).await?;
        let size = limit(&self.url, "reading the file size", file.get_len()).await?;
        if size > max {
            return Err(SmbError::Failed {
                share: self.url.to_string(),
                detail: format!("{name} is {size} bytes, more than the expected {max}"),
            });
        }
        let mut pos = offset;
        let mut next = offset;
        let mut inflight = FuturesOrdered::new();
        let f = &file;
        loop {
            while inflight.len() < IN_FLIGHT && next < size {
                let at = next;
                let len = BLOCK.min((size - at) as usize);
                next += len as u64;
                inflight.push_back(async move {
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    // A short read is legal: ask again for the rest of this block.
                    while got < len {
                        let n = tokio::time::timeout(
                            CALL_LIMIT,
                            f.read_block(&mut buf[got..], at + got as u64, None, false),
                        )
                        .await
                        .map_err(|_| format!("reading at {} timed out", at + got as u64))?
                        .map_err(|e| format!("reading at {}: {e}", at + got as u64))?;
                        if n == 0 {
                            return Err(format!(
                                "the file ended at {} of {size} bytes",
                                at + got as u64
                            ));
                        }
                        got += n;
                    }
                    Ok::<_, String>(buf)
                });
            }
            let Some(r) = inflight.next().await else {
                break;
            };
            let buf = r.map_err(|detail| SmbError::Failed {
                share: self.url.to_string(),
                detail,
            })?;
            out.write_all(&buf).map_err(|err| SmbError::Local {
                path: out_path.display().to_string(),
                err,
            })?;
            pos += buf.len() as u64;
        }
        drop(inflight);
        let _ = tokio::time::timeout(CALL_LIMIT, file.close()).await;
        debug_assert_eq!(pos, size.max(offset));
        Ok(size)
    }

    /// Writes the local file `from` to the share as `name` (replacing it): written as
    /// `name.part` and renamed over `name` on the same handle once every byte is there, so a
    /// reader never sees a partial `name` and a cut upload leaves only a `.part` behind.
    pub async fn upload(&self, from: &Path, name: &str) -> Result<u64, SmbError> {
        use ::smb::binrw_util::prelude::SizedWideString;
        use ::smb::{CreateOptions, FileAttributes, FileRenameInformation};
        use std::io::Read;
        let part = format!("{name}.part");
        let args = FileCreateArgs::make_overwrite(FileAttributes::new(), CreateOptions::new());
        let file = limit(
            &self.url,
            &format!("creating {part}"),
            self.client.create_file(&self.path(&part), &args),
        )
        .await?
        .unwrap_file();
        let mut src = std::fs::File::open(from).map_err(|err| SmbError::Local {
            path: from.display().to_string(),
            err,
        })?;
        let mut buf = vec![0u8; BLOCK];
        let mut pos = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|err| SmbError::Local {
                path: from.display().to_string(),
                err,
            })?;
            if n == 0 {
                break;
            }
            let mut done = 0;
            while done < n {
                let w = limit(
                    &self.url,
                    &format!("writing {name} at {}", pos + done as u64),
                    file.write_block(&buf[done..n], pos + done as u64, None),
                )
                .await?;
                if w == 0 {
                    return Err(SmbError::Failed {
                        share: self.url.to_string(),
                        detail: format!("the server accepted no bytes of {name}"),
                    });
                }
                done += w;
            }
            pos += n as u64;
        }
        let rename = FileRenameInformation {
            replace_if_exists: true.into(),
            root_directory: 0,
            file_name: SizedWideString::from(self.url.file_path(name)),
        };
        limit(
            &self.url,
            &format!("renaming {part} to {name}"),
            file.set_info(rename),
        )
        .await?;
        limit(&self.url, &format!("closing {name}"), file.close()).await?;
        Ok(pos)
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.close()).await;
    }
}
