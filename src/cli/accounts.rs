//! `patchcast admin add|list|remove`: web console accounts, managed with the admin token.
//! The password is read from the terminal (not echoed, asked twice) or, when stdin is not a
//! terminal, from its first line; never from the command line, where `ps` and shell history
//! would keep it.

use super::admin::Connect;
use crate::web::accounts::{ACCOUNTS, AccountView, NewAccount, check_new};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Create a console account, or set a new password for an existing one (ends its sessions).
    Add {
        /// Account name (letters, digits, `.`, `_`, `-`, `@`).
        name: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// List console accounts.
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Remove a console account (its sessions end at once).
    Remove {
        name: String,
        #[command(flatten)]
        connect: Connect,
    },
}

pub fn run(cmd: AdminCmd, json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    match cmd {
        AdminCmd::Add { name, connect } => {
            let password = read_password(&name)?;
            check_new(&name, &password).map_err(|e| anyhow::anyhow!(e))?;
            let admin = connect.admin()?;
            let v: AccountView = rt.block_on(admin.0.post(
                ACCOUNTS,
                &NewAccount {
                    name: name.clone(),
                    password,
                },
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "console account `{}` set; sign in at the server's URL",
                    v.name
                );
            }
        }
        AdminCmd::List { connect } => {
            let v: Vec<AccountView> = rt.block_on(connect.admin()?.0.get(ACCOUNTS))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for a in v {
                    println!(
                        "{:<24} created {}",
                        a.name,
                        crate::web::views::time(a.created_at_ms)
                    );
                }
            }
        }
        AdminCmd::Remove { name, connect } => {
            let admin = connect.admin()?;
            let path = format!("{ACCOUNTS}/{}", crate::web::pages::enc(&name));
            let rb = admin.0.request(reqwest::Method::DELETE, &path);
            let () = rt.block_on(admin.0.send(rb, &path))?;
            if json {
                println!("{}", serde_json::json!({"removed": name}));
            } else {
                println!("console account `{name}` removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password(name: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        if p.is_empty() {
            bail!(
                "no password on stdin: pipe it in (`… | patchcast admin add {name}`) or run in a terminal"
            );
        }
        return Ok(p);
    }
    let first = prompt(&format!("password for `{name}`: "))?;
    let second = prompt("again: ")?;
    if first != second {
        bail!("the two passwords differ; run `patchcast admin add {name}` again");
    }
    Ok(first)
}

/// Asks on stderr and reads one line from the terminal with echo off.
fn prompt(text: &str) -> Result<String> {
    eprint!("{text}");
    std::io::stderr().flush()?;
    let _echo = EchoOff::new();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    eprintln!();
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Terminal echo off while alive (Unix); elsewhere the prompt echoes.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        #[cfg(unix)]
        {
            // SAFETY: termios calls on fd 0 with a zeroed struct they fill in.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(0, &mut t) != 0 {
                    return EchoOff { saved: None };
                }
                let saved = t;
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
                EchoOff { saved: Some(saved) }
            }
        }
        #[cfg(not(unix))]
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}
