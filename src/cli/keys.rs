//! `patchcast key add|revoke|rotate|list` (publisher trust statements) and `patchcast server
//! renew-cert` (the server certificate's renewal): thin commands over `keys_api`; what a
//! statement may do is decided in `pack::trust`, by the server and again by every agent.

use super::admin::Connect;
use crate::pack::trust::{Statement, sign};
use crate::transport::keys_api::TrustView;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct RotateArgs {
    /// The key being replaced (its secret, OLD.key): it signs the statement and is revoked by it.
    #[arg(long)]
    pub key: PathBuf,
    /// The new key's public half (NEW.pub, from `patchcast key generate`).
    #[arg(long)]
    pub new: PathBuf,
    #[command(flatten)]
    pub connect: Connect,
}

#[derive(Args)]
pub struct ChangeArgs {
    /// The secret of a key the server and agents trust now (KEY.key): it signs the statement.
    #[arg(long)]
    pub key: PathBuf,
    /// Public keys (.pub files).
    #[arg(required = true)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub connect: Connect,
}

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub connect: Connect,
}

fn hex_of(pub_file: &Path) -> Result<String> {
    Ok(hex::encode(
        crate::pack::keys::read_public(pub_file)?.to_bytes(),
    ))
}

/// Signs the next statement (`add`, `revoke`) with `key` and publishes it.
pub fn publish(
    connect: &Connect,
    key: &Path,
    add: Vec<String>,
    revoke: Vec<String>,
    json: bool,
) -> Result<ExitCode> {
    let signing = crate::pack::keys::read_secret(key)?;
    let rt = tokio::runtime::Runtime::new()?;
    let admin = connect.admin()?;
    let current = rt
        .block_on(admin.trust())
        .context("reading the server's publisher keys")?;
    let statement = Statement {
        serial: current.serial + 1,
        add,
        revoke,
    };
    let signed = sign(&statement, &signing);
    let view = rt.block_on(admin.publish_trust(&signed))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "trust statement {} published (signed by {}); agents apply it at their next poll",
            view.serial,
            crate::pack::keys::key_id(&signing.verifying_key())
        );
        print_view(&view);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_view(view: &TrustView) {
    println!("trusted publisher keys (serial {}):", view.serial);
    for k in &view.keys {
        println!("  {}  {}", k.id, k.key);
    }
    if !view.revoked.is_empty() {
        println!("revoked:");
        for k in &view.revoked {
            println!("  {}  {}", k.id, k.key);
        }
    }
}

pub fn rotate(a: RotateArgs, json: bool) -> Result<ExitCode> {
    let old = hex::encode(
        crate::pack::keys::read_secret(&a.key)?
            .verifying_key()
            .to_bytes(),
    );
    publish(&a.connect, &a.key, vec![hex_of(&a.new)?], vec![old], json)
}

pub fn add(a: ChangeArgs, json: bool) -> Result<ExitCode> {
    let keys = a.keys.iter().map(|k| hex_of(k)).collect::<Result<_>>()?;
    publish(&a.connect, &a.key, keys, Vec::new(), json)
}

pub fn revoke(a: ChangeArgs, json: bool) -> Result<ExitCode> {
    let keys = a.keys.iter().map(|k| hex_of(k)).collect::<Result<_>>()?;
    publish(&a.connect, &a.key, Vec::new(), keys, json)
}

pub fn list(a: ConnectArgs, json: bool) -> Result<ExitCode> {
    let view = tokio::runtime::Runtime::new()?.block_on(a.connect.admin()?.trust())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_view(&view);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RenewArgs {
    /// Instead of preparing: make the next server start present the prepared certificate
    /// (on the server host, with --data DIR), once the agents have polled.
    #[arg(long)]
    pub switch: bool,
    #[command(flatten)]
    pub connect: Connect,
}

pub fn renew_cert(a: RenewArgs, json: bool) -> Result<ExitCode> {
    if a.switch {
        let data =
            a.connect.data.as_ref().context(
                "--switch works on the server host: give --data DIR (or PATCHCAST_DATA)",
            )?;
        let new = crate::transport::repin::request_switch(&data.join("tls"))?;
        if json {
            println!("{}", serde_json::json!({ "switch_to": new }));
        } else {
            println!(
                "the server presents {new} from its next start: restart it. Agents that accepted the re-pin statement follow; others refuse it (E26) and must be enrolled again."
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = tokio::runtime::Runtime::new()?.block_on(a.connect.admin()?.renew_cert())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "certificate renewal prepared\n  current: {}\n  next:    {}\nagents pin the next certificate at their next poll (a re-pin statement signed by the current one, served until the switch, restarts included); once they have polled, run `patchcast server renew-cert --switch` and restart the server.",
            r.old, r.new
        );
    }
    Ok(ExitCode::SUCCESS)
}
