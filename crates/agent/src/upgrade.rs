//! The agent upgrading itself (`kind: agent` packages): the file work and processes behind
//! the runner's agent steps; the decisions are `core::pipeline`'s (`watch`, the check-in).
//!
//! The binary the agent was started from (`exe`, read once at start: after the swap the
//! kernel's `/proc/self/exe` names a deleted file) is replaced in three moves, each safe to
//! repeat after a kill:
//! 1. stage (`Execute`): the verified payload's binary is copied to `exe.new` and the running
//!    binary to `exe.previous` (temporary file, fsync, rename);
//! 2. swap (`AgentSwap`): `exe.new` is renamed over `exe` (a rename is atomic; when `exe.new`
//!    is gone the swap happened already), and a watchdog is started from `exe.previous`;
//! 3. restart (`AgentCheckIn` journaled first): the process `exec`s `exe`, keeping its pid,
//!    arguments and environment (a service manager sees the same process).
//!
//! The new agent resumes the journal, finds the delivery at `AgentCheckIn`, calls the server
//! and claims the upgrade (`ROOT/work/ID/checked-in`) under a lock the watchdog shares; then
//! its version is verified as any install is. The watchdog (`patchcast-agent watchdog`, its own
//! process group) waits for that claim; when the agent process dies first, or the deadline
//! passes, it marks the upgrade rolled back under the same lock (so a late check-in cannot
//! win), kills what runs, copies `exe.previous` back over `exe`, journals E30, and starts the
//! restored agent with the original arguments in its own place. Only one watchdog runs per
//! delivery (an exclusive lock), so a kill and resume between the steps cannot start two.
//!
//! On Windows a running image cannot be replaced, nor a process replaced by `exec`: the swap
//! renames the running `exe` aside onto `exe.previous` (allowed; its bytes are that copy's)
//! before it puts `exe.new` in place; the restart ends the process (reporting the service
//! stopped); the watchdog waits for it to end, then starts the service through the SCM (or,
//! from a console, the new binary), and watches the service (or that process) instead of the
//! old pid. Its rollback stops the service, restores `exe.previous` and starts it again.

use super::config::Root;
use super::journal::{Journal, Step};
use anyhow::{Context, Result};
use patchcast_core::errors::Code;
use patchcast_core::identify::Facts;
use patchcast_core::pipeline::{self, Refusal, Watch};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The agent binary this process was started from, and its arguments (without the program).
struct Started {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

static STARTED: OnceLock<Started> = OnceLock::new();

/// Remembers the binary and arguments this process started with; the `patchcast-agent`
/// binary calls it first thing (`patchcast agent …` does not, so it cannot upgrade itself).
pub fn remember_start() {
    let exe = std::env::current_exe().unwrap_or_default();
    let args = std::env::args_os().skip(1).collect();
    let _ = STARTED.set(Started { exe, args });
}

fn started() -> Result<&'static Started, Box<Refusal>> {
    STARTED
        .get()
        .filter(|s| !s.exe.as_os_str().is_empty())
        .ok_or_else(|| {
            Box::new(Refusal::detail(
                Code::E30,
                "this agent was not started as the patchcast-agent binary, so it cannot replace itself",
            ))
        })
}

/// Test hook: `PATCHCAST_TEST_UPGRADE_KILL=POINT[,POINT…]` makes the process SIGKILL itself
/// at each named point of the upgrade (`staged-new`, `renamed`, `watchdog-started`,
/// `before-exec`, `watchdog`), so tests can stop it between the journaled moves.
fn test_kill(point: &str) {
    if std::env::var("PATCHCAST_TEST_UPGRADE_KILL").is_ok_and(|v| v.split(',').any(|p| p == point))
    {
        tracing::warn!(point, "test hook: this process kills itself");
        #[cfg(unix)]
        // SAFETY: sending SIGKILL to this very process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn sibling(exe: &Path, suffix: &str) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    exe.with_file_name(name)
}

/// Where the staged new binary waits for the swap.
pub fn new_path(exe: &Path) -> PathBuf {
    sibling(exe, ".new")
}

/// The agent binary whose `.previous` copy is `path` (`None`: `path` is no such copy).
pub fn of_previous(path: &Path) -> Option<PathBuf> {
    path.to_str()
        .and_then(|s| s.strip_suffix(".previous"))
        .map(PathBuf::from)
}

/// Where the binary that ran before the upgrade is kept.
pub fn previous_path(exe: &Path) -> PathBuf {
    sibling(exe, ".previous")
}

fn refusal(what: &str, path: &Path, e: impl std::fmt::Display) -> Box<Refusal> {
    Box::new(Refusal::detail(
        Code::E30,
        format!("{what} {}: {e}", path.display()),
    ))
}

/// Copies `from` to `to` as an executable: temporary file, fsync, rename.
fn install_copy(from: &Path, to: &Path) -> Result<(), Box<Refusal>> {
    let tmp = sibling(to, ".tmp");
    let copy = || -> std::io::Result<()> {
        let mut src = File::open(from)?;
        let mut dst = File::create(&tmp)?;
        std::io::copy(&mut src, &mut dst)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            dst.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        dst.sync_all()?;
        std::fs::rename(&tmp, to)?;
        sync_dir(to);
        Ok(())
    };
    copy().map_err(|e| refusal(&format!("copying {} to", from.display()), to, e))
}

/// Makes a rename in `path`'s directory durable (best effort: not every platform can).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Step 1: the new binary beside the running one, the running one kept as `.previous`.
pub fn stage(binary: &Path) -> Result<(), Box<Refusal>> {
    let exe = &started()?.exe;
    install_copy(binary, &new_path(exe))?;
    test_kill("staged-new");
    install_copy(exe, &previous_path(exe))?;
    tracing::info!(exe = %exe.display(), "new agent binary staged; the running one kept as .previous");
    Ok(())
}

/// Step 2: `exe.new` renamed over `exe` (already done when `exe.new` is gone), and the
/// watchdog started. Returns the check-in deadline.
pub fn swap(root: &Root, delivery_id: &str, check_in: Duration) -> Result<i64, Box<Refusal>> {
    let s = started()?;
    let new = new_path(&s.exe);
    if new.exists() {
        // Windows refuses to replace a running image but lets it be renamed aside.
        #[cfg(windows)]
        if s.exe.exists() {
            std::fs::rename(&s.exe, previous_path(&s.exe))
                .map_err(|e| refusal("renaming aside the running agent", &s.exe, e))?;
        }
        std::fs::rename(&new, &s.exe).map_err(|e| refusal("replacing", &s.exe, e))?;
        sync_dir(&s.exe);
        test_kill("renamed");
    }
    let deadline_ms = now_ms() + check_in.as_millis() as i64;
    let mut cmd = std::process::Command::new(previous_path(&s.exe));
    cmd.arg("watchdog")
        .arg("--root")
        .arg(&root.0)
        .args(["--delivery", delivery_id])
        .args(["--pid", &std::process::id().to_string()])
        .args(["--deadline-ms", &deadline_ms.to_string()]);
    #[cfg(windows)]
    if let Some(name) = super::windows::service::running_as() {
        cmd.args(["--service", name]);
    }
    cmd.arg("--")
        .args(&s.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // Its own process group: a signal to the agent's group does not reach it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let failed = |e: &dyn std::fmt::Display| {
        restore(&s.exe);
        refusal("starting the upgrade watchdog", &previous_path(&s.exe), e)
    };
    let mut child = cmd.spawn().map_err(|e| failed(&e))?;
    // Wait until it holds its lock: from then on a start that finds no watchdog knows it died.
    let mut ready = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready);
    }
    if ready.trim() != WATCHING {
        let _ = child.kill();
        return Err(failed(&"it exited before it watched the upgrade"));
    }
    tracing::info!(
        watchdog = child.id(),
        deadline_ms,
        "upgrade watchdog started"
    );
    test_kill("watchdog-started");
    Ok(deadline_ms)
}

/// Step 3: the process becomes the new binary. Returns only when that failed, with the
/// previous binary restored. On Windows the process ends and the watchdog starts the new one.
pub fn restart() -> Refusal {
    let s = match started() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    test_kill("before-exec");
    #[cfg(windows)]
    {
        let _ = s;
        tracing::info!("ending this process; the upgrade watchdog starts the new agent");
        super::windows::service::exit(0)
    }
    #[cfg(not(windows))]
    {
        let e = exec(&s.exe, &s.args);
        restore(&s.exe);
        *refusal("starting the new agent", &s.exe, e)
    }
}

/// What the watchdog prints once it holds its lock (the swap waits for it).
const WATCHING: &str = "watching";

/// Replaces this process with `exe ARGS` (same pid); returns only the error when it could not.
#[cfg(unix)]
fn exec(exe: &Path, args: &[std::ffi::OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(exe).args(args).exec()
}

#[cfg(not(unix))]
fn exec(_exe: &Path, _args: &[std::ffi::OsString]) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a process cannot become another binary here (no exec); start the agent again",
    )
}

/// Copies `exe.previous` back over `exe` (idempotent).
fn restore(exe: &Path) {
    match install_copy(&previous_path(exe), exe) {
        Ok(()) => tracing::warn!(exe = %exe.display(), "previous agent binary restored"),
        Err(r) => {
            tracing::error!(detail = ?r.params.detail, "the previous agent binary could not be restored")
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An exclusive file lock (`flock` on Unix, `LockFileEx` on Windows) held until dropped.
struct Lock(#[allow(dead_code)] File);

/// The lock files live in the delivery's work directory, which exists from the fetch until
/// the delivery is over (never created here: a finished delivery's directory stays gone).
fn lock(path: &Path, wait: bool) -> Result<Option<Lock>> {
    // Not truncated: Windows refuses to truncate a file another handle holds locked.
    let f = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let locked = if wait {
        f.lock()
    } else {
        match f.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    };
    locked.with_context(|| format!("locking {}", path.display()))?;
    Ok(Some(Lock(f)))
}

fn watchdog_lock(root: &Root, delivery_id: &str) -> PathBuf {
    root.work(delivery_id).join("watchdog.lock")
}
fn check_in_lock(root: &Root, delivery_id: &str) -> PathBuf {
    root.work(delivery_id).join("check-in.lock")
}
fn checked_in_marker(root: &Root, delivery_id: &str) -> PathBuf {
    root.work(delivery_id).join("checked-in")
}
fn rolled_back_marker(root: &Root, delivery_id: &str) -> PathBuf {
    root.work(delivery_id).join("rolled-back")
}

/// The new agent claims the upgrade (after it reached the server): from then on its watchdog
/// keeps it. Refused when the watchdog already decided to roll it back.
pub fn claim(root: &Root, delivery_id: &str) -> Result<()> {
    let _held = lock(&check_in_lock(root, delivery_id), true)?;
    if rolled_back_marker(root, delivery_id).exists() {
        anyhow::bail!("the upgrade watchdog is rolling this agent back; not claiming it");
    }
    let mut f = File::create(checked_in_marker(root, delivery_id))?;
    f.write_all(super::stamp::version().as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The new agent is not the build the package promised (its version does not satisfy it):
/// it rolls itself back as the watchdog would (which then finds the delivery over), and
/// starts the previous binary in its place. Returns only when that could not be done.
pub fn disown(root: &Root, delivery_id: &str, why: &str) -> anyhow::Error {
    // Windows: the running image cannot be overwritten; the process ends without claiming,
    // and the watchdog rolls the upgrade back as for a build that exited.
    #[cfg(windows)]
    {
        let _ = (root, delivery_id);
        tracing::error!(
            reason = why,
            "ending this process for the watchdog to roll it back"
        );
        super::windows::service::exit(1)
    }
    #[cfg(not(windows))]
    {
        let r = (|| -> Result<std::io::Error> {
            let s = started().map_err(|r| anyhow::anyhow!("{:?}", r.params.detail))?;
            {
                let _held = lock(&check_in_lock(root, delivery_id), true)?;
                if rolled_back_marker(root, delivery_id).exists() {
                    anyhow::bail!("the upgrade watchdog is rolling this agent back");
                }
                File::create(rolled_back_marker(root, delivery_id))?.sync_all()?;
                undo(root, delivery_id, &s.exe, why)?;
            }
            Ok(exec(&s.exe, &s.args))
        })();
        match r {
            Ok(e) => anyhow::Error::from(e).context("starting the restored agent"),
            Err(e) => e,
        }
    }
}

/// Copies `EXE.previous` back over `exe` and journals E30 for `why` on the delivery when it
/// is still waiting for the new agent. The caller marked it rolled back, under the check-in lock.
fn undo(root: &Root, delivery_id: &str, exe: &Path, why: &str) -> Result<()> {
    install_copy(&previous_path(exe), exe).map_err(|r| anyhow::anyhow!("{:?}", r.params.detail))?;
    tracing::warn!(exe = %exe.display(), reason = why, "previous agent binary restored");
    let journal = Journal::new(root.journal());
    if let Some(mut entry) = journal.load(delivery_id)?
        && matches!(entry.step, Step::AgentSwap | Step::AgentCheckIn { .. })
    {
        let package = entry.work.package_id.clone();
        entry.record(pipeline::rolled_back(&package, why));
        journal.save(&entry)?;
    }
    Ok(())
}

/// Rolls back every upgrade left without its watchdog (`pipeline::orphaned`): run by the
/// agent at start, and by `patchcast-agent recover` (systemd's `ExecStartPre=`, from
/// `EXE.previous`) before a broken new build is started at all. `exe` is the agent binary.
/// Returns whether a previous binary was restored.
pub fn recover(root: &Root, exe: &Path) -> Result<bool> {
    let mut restored = false;
    for entry in Journal::new(root.journal()).entries()? {
        let id = &entry.work.delivery_id;
        if !matches!(entry.step, Step::AgentSwap | Step::AgentCheckIn { .. }) {
            continue;
        }
        // The work directory is gone with a finished delivery: nothing to recover.
        let Ok(_held) = lock(&check_in_lock(root, id), true) else {
            continue;
        };
        let watchdog = lock(&watchdog_lock(root, id), false)?;
        let Some(why) = pipeline::orphaned(
            &entry.step,
            new_path(exe).exists(),
            watchdog.is_none(),
            checked_in_marker(root, id).exists(),
        ) else {
            continue;
        };
        tracing::error!(delivery = %id, reason = %why, "rolling an unwatched agent upgrade back");
        File::create(rolled_back_marker(root, id))?.sync_all()?;
        undo(root, id, exe, &why)?;
        restored = true;
    }
    Ok(restored)
}

/// The agent's start: `recover`, and when it restored the binary this process was started
/// from, the restored one takes its place.
pub fn recover_at_start(root: &Root) -> Result<()> {
    let Ok(s) = started() else {
        return Ok(());
    };
    if recover(root, &s.exe)? {
        let e = exec(&s.exe, &s.args);
        return Err(e).with_context(|| format!("starting the restored agent {}", s.exe.display()));
    }
    Ok(())
}

/// The facts a check-in reports: this machine, and this agent's own version.
pub fn facts() -> Facts {
    Facts {
        agent_version: Some(super::stamp::version()),
        ..super::facts::machine()
    }
}

/// Whether process `pid` still runs (a zombie does not: it exited, unreaped).
fn alive(pid: i32) -> bool {
    if cfg!(target_os = "linux") {
        return match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        };
    }
    process_exists(pid)
}

#[cfg(unix)]
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[cfg(windows)]
fn process_exists(pid: i32) -> bool {
    super::windows::job::process_alive(pid as u32)
}

#[cfg(not(any(unix, windows)))]
fn process_exists(_pid: i32) -> bool {
    true
}

/// The agent the watchdog watches, and how it is stopped and started again.
enum Watched {
    /// A process: on Unix the agent's own (same pid across the `exec`), on Windows the one the
    /// watchdog started from a console's command.
    Process(i32),
    /// The Windows service of that name, started and stopped through the SCM.
    #[cfg(windows)]
    Service(String),
}

impl Watched {
    fn alive(&self) -> bool {
        match self {
            Watched::Process(pid) => alive(*pid),
            #[cfg(windows)]
            Watched::Service(name) => super::windows::service::running(name),
        }
    }

    fn stop(&self) {
        match self {
            Watched::Process(pid) => {
                if alive(*pid) {
                    kill(*pid);
                }
            }
            #[cfg(windows)]
            Watched::Service(name) => {
                if let Err(e) = super::windows::service::stop(name, Duration::from_secs(30)) {
                    tracing::error!(service = %name, error = %format!("{e:#}"), "stopping the agent service failed");
                }
            }
        }
    }
}

fn kill(pid: i32) {
    #[cfg(unix)]
    // SAFETY: killing the agent process the watchdog was started to watch.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    #[cfg(windows)]
    super::windows::job::terminate(pid as u32);
}

/// Windows: waits (until the deadline) for the agent process `pid` to end, then starts the new
/// binary: service `service` through the SCM, or from a console `exe ARGS`. A start that fails
/// leaves the agent not alive: the watch rolls it back.
#[cfg(windows)]
fn start_new(
    pid: i32,
    service: Option<&str>,
    exe: &Path,
    args: &[std::ffi::OsString],
    deadline_ms: i64,
) -> Watched {
    while alive(pid) && now_ms() < deadline_ms {
        std::thread::sleep(Duration::from_millis(200));
    }
    if alive(pid) {
        tracing::error!(pid, "the agent did not end for its upgrade; ending it");
        kill(pid);
    }
    start(service, exe, args)
}

/// Windows: starts the agent (the service, or `exe ARGS` as a process of its own).
#[cfg(windows)]
fn start(service: Option<&str>, exe: &Path, args: &[std::ffi::OsString]) -> Watched {
    if let Some(name) = service {
        match super::windows::service::start(name) {
            Ok(()) => tracing::info!(service = name, "agent service started"),
            Err(e) => {
                tracing::error!(service = name, error = %format!("{e:#}"), "starting the agent service failed")
            }
        }
        return Watched::Service(name.to_string());
    }
    match std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => Watched::Process(child.id() as i32),
        Err(e) => {
            tracing::error!(exe = %exe.display(), error = %e, "starting the agent failed");
            Watched::Process(0)
        }
    }
}

/// `patchcast-agent watchdog`: watches the upgrade of delivery `delivery_id` carried out by
/// process `pid` until the new agent checks in, or rolls it back (see the module's head).
/// `args` are the agent's own arguments, to start the restored agent with; `service` the
/// Windows service it runs as.
pub fn watchdog(
    root: Root,
    delivery_id: &str,
    pid: i32,
    deadline_ms: i64,
    service: Option<&str>,
    args: &[std::ffi::OsString],
) -> Result<()> {
    super::journal::check_delivery_id(delivery_id)?;
    let only = lock(&watchdog_lock(&root, delivery_id), false)?;
    // Tell the swap the upgrade is watched, then let go of its pipe.
    let _ = writeln!(std::io::stdout(), "{WATCHING}");
    #[cfg(unix)]
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: replacing this process's stdout with /dev/null.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
    let Some(_only) = only else {
        tracing::info!(
            delivery = delivery_id,
            "another watchdog watches this upgrade"
        );
        return Ok(());
    };
    test_kill("watchdog");
    let exe = std::env::current_exe()?;
    // This process runs from `exe.previous`: the binary to put back.
    let current =
        of_previous(&exe).context("the watchdog must run from the agent's .previous binary")?;
    #[cfg(windows)]
    let agent = start_new(pid, service, &current, args, deadline_ms);
    #[cfg(not(windows))]
    let agent = {
        let _ = service;
        Watched::Process(pid)
    };
    let journal = Journal::new(root.journal());
    let waiting = || -> Result<bool> {
        Ok(journal
            .load(delivery_id)?
            .is_some_and(|e| matches!(e.step, Step::AgentSwap | Step::AgentCheckIn { .. })))
    };
    let why = loop {
        // The delivery finished (its work directory went with it): nothing left to watch.
        let Ok(held) = lock(&check_in_lock(&root, delivery_id), true) else {
            if !waiting()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let waiting = waiting()?;
        // The new agent found itself the wrong build and rolled itself back: nothing to do.
        if rolled_back_marker(&root, delivery_id).exists() {
            tracing::info!(
                delivery = delivery_id,
                "the upgrade was rolled back already"
            );
            return Ok(());
        }
        let checked_in = !waiting || checked_in_marker(&root, delivery_id).exists();
        match pipeline::watch(checked_in, agent.alive(), now_ms(), deadline_ms) {
            Watch::Kept => {
                tracing::info!(
                    delivery = delivery_id,
                    "the new agent checked in; watchdog done"
                );
                return Ok(());
            }
            Watch::Wait => {
                drop(held);
                std::thread::sleep(Duration::from_millis(200));
            }
            Watch::RollBack(why) => {
                File::create(rolled_back_marker(&root, delivery_id))?.sync_all()?;
                break why;
            }
        }
    };
    tracing::error!(delivery = delivery_id, pid, reason = %why, "rolling the agent upgrade back");
    agent.stop();
    undo(&root, delivery_id, &current, &why)?;
    // The restored agent takes this process's place; it reports the E30 from the journal.
    #[cfg(windows)]
    {
        start(service, &current, args);
        Ok(())
    }
    #[cfg(not(windows))]
    {
        let e = exec(&current, args);
        Err(e).with_context(|| format!("starting the restored agent {}", current.display()))
    }
}
