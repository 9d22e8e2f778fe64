//! Running an install command: `sh -c` in its own process group (Unix) or `cmd /c` in a job
//! object (Windows), with a time limit that kills the whole tree (an installer's children
//! included), keeping the exit code and the last 64 KiB of its combined output.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// How much of the output is kept.
pub const TAIL_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed after the time limit.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub output_tail: String,
}

/// Keeps the last `TAIL_BYTES` of what is read.
fn read_tail(mut r: impl Read) -> Vec<u8> {
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(8192);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(TAIL_BYTES);
                tail.drain(..excess);
            }
        }
    }
    tail.into_iter().collect()
}

/// Kills every process of a group (a leftover install after the agent was killed).
#[cfg(unix)]
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Nothing to do on Windows: the installer's job was closed when the agent that held it
/// died, and closing it killed the tree (`windows::job`).
#[cfg(not(unix))]
pub fn kill_group(_pgid: i32) {}

/// Runs `command` with `sh -c` in `cwd`. `started` gets the process group id as soon as the
/// process exists, so the caller can journal it before waiting.
pub async fn run(
    command: &str,
    cwd: &Path,
    limit: Duration,
    started: impl FnOnce(i32) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    let (reader, writer) = std::io::pipe().context("creating the output pipe")?;
    let mut cmd = tokio::process::Command::from(shell(command));
    cmd.current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    #[cfg(unix)]
    cmd.process_group(0);
    // Suspended until it is inside its job (`windows::job`).
    #[cfg(windows)]
    cmd.creation_flags(
        windows_sys::Win32::System::Threading::CREATE_SUSPENDED
            | windows_sys::Win32::System::Threading::CREATE_NO_WINDOW,
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    // The command holds the write ends; dropping it leaves them only in the child.
    drop(cmd);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    #[cfg(windows)]
    let job = child
        .raw_handle()
        // SAFETY: the handle belongs to `child`, which outlives the call.
        .and_then(|h| unsafe { crate::windows::job::Job::contain(h, pid as u32) });
    started(pid)?;
    let tail = tokio::task::spawn_blocking(move || read_tail(reader));

    let exit = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => {
            let status = status.context("waiting for the install command")?;
            #[cfg(windows)]
            if let Some(job) = job {
                job.release();
            }
            Exit::Code(exit_code(status))
        }
        Err(_) => {
            kill_group(pid);
            #[cfg(windows)]
            if let Some(job) = &job {
                job.kill();
            }
            let _ = child.kill().await;
            Exit::TimedOut
        }
    };
    // A background process the installer left may hold the pipe open: do not wait for it forever.
    let bytes = match tokio::time::timeout(Duration::from_secs(5), tail).await {
        Ok(Ok(b)) => b,
        _ => b"(output unavailable: a process left by the installer keeps it open)".to_vec(),
    };
    Ok(Outcome {
        exit,
        output_tail: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The machine's shell running `command` (install commands and probes alike).
#[cfg(unix)]
pub fn shell(command: &str) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg(command);
    // An agent without root installs under its own tree, as `make install DESTDIR=…` does.
    if let Some(root) = super::facts::install_root() {
        c.env("DESTDIR", root);
    }
    c
}

/// `cmd /d /s /c "COMMAND"`: with /s, cmd strips the outer quotes and runs the rest as
/// written, so the command line reaches it exactly as its template quoted it for cmd.
#[cfg(windows)]
pub fn shell(command: &str) -> std::process::Command {
    use std::os::windows::process::CommandExt;
    let mut c = std::process::Command::new("cmd");
    c.args(["/d", "/s", "/c"]).raw_arg(format!("\"{command}\""));
    c
}

/// A shell-style exit code; killed by a signal is 128 + the signal, as shells report it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    status.code().unwrap_or(-1)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_code_and_output_tail_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            "head -c 100000 /dev/zero | tr '\\0' a; echo; echo done >&2; exit 7",
            dir.path(),
            Duration::from_secs(60),
            |_| Ok(()),
        )
        .await
        .unwrap();
        assert_eq!(out.exit, Exit::Code(7));
        assert_eq!(out.output_tail.len(), TAIL_BYTES);
        assert!(out.output_tail.ends_with("a\ndone\n"));
    }

    #[tokio::test]
    async fn a_command_over_its_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut pgid = 0;
        let out = run(
            "sleep 300 & sleep 300",
            dir.path(),
            Duration::from_millis(300),
            |p| {
                pgid = p;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(out.exit, Exit::TimedOut);
        // Killed children may linger as zombies until reaped by init; none may still run.
        // SIGKILL is delivered asynchronously: a member may take a moment to die under load.
        let running = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let rest = &stat[stat.rfind(')')? + 2..];
                    let f: Vec<&str> = rest.split(' ').collect();
                    (f[2] == pgid.to_string() && f[0] != "Z")
                        .then(|| e.file_name().to_string_lossy().into_owned())
                })
                .collect()
        };
        let mut left = running();
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            left = running();
        }
        assert!(left.is_empty(), "processes {left:?} of the group still run");
    }
}
