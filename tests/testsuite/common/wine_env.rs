//! The Wine prefix scripts/wine.sh prepares and the Windows build of the agent: running
//! Windows programs in it, Windows paths for files under its C: drive, registry seeding.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WINE64: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver";

static SESSION: std::sync::Once = std::sync::Once::new();

#[derive(Clone, Debug)]
pub struct Wine {
    pub prefix: PathBuf,
    /// `patchcast-agent.exe`, built for x86_64-pc-windows-gnu.
    pub agent: PathBuf,
}

/// Tests that change the shared prefix's machine-wide state (registry, Program Files) take
/// turns.
pub static PREFIX: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Wine {
    /// The prefix and agent scripts/test.sh prepared; `None` (skipped) outside CI when they
    /// are missing, a failure in CI.
    pub fn get() -> Option<Wine> {
        let prefix = std::env::var_os("PATCHCAST_TEST_WINEPREFIX").map(PathBuf::from);
        let agent = std::env::var_os("PATCHCAST_TEST_WINDOWS_AGENT").map(PathBuf::from);
        match (prefix, agent) {
            (Some(prefix), Some(agent)) if prefix.is_dir() && agent.is_file() => {
                let wine = Wine { prefix, agent };
                wine.start_session();
                Some(wine)
            }
            (prefix, agent) => {
                let why = format!(
                    "PATCHCAST_TEST_WINEPREFIX={prefix:?} and PATCHCAST_TEST_WINDOWS_AGENT={agent:?} must name a Wine prefix and the Windows agent (scripts/test.sh prepares both)"
                );
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but {why}"
                );
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    }

    /// The first Wine program of a session starts wineserver and the system processes
    /// (services.exe, explorer) with its own standard output: a test that captured it would
    /// wait for an end of file they never send. So the session is started here, once, with
    /// no output, and kept (`-p`) for the whole run; scripts/test.sh ends it.
    fn start_session(&self) {
        SESSION.call_once(|| {
            use std::process::Stdio;
            let quiet = |mut c: Command| {
                c.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            };
            let mut server = Command::new(WINESERVER);
            server.arg("-p").env("WINEPREFIX", &self.prefix);
            // Fails harmlessly when a server already runs for the prefix.
            let _ = quiet(server);
            let mut boot = self.command("cmd");
            boot.args(["/c", "ver"]);
            let status = quiet(boot).expect("running Wine");
            assert!(status.success(), "Wine could not start a session: {status}");
        });
    }

    /// `program` (a Windows path or a file on this host) run by Wine in the prefix.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(WINE64);
        c.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all");
        c
    }

    pub fn drive_c(&self) -> PathBuf {
        self.prefix.join("drive_c")
    }

    /// The path Windows programs in the prefix use for `p`: `C:\…` under the C: drive,
    /// `Z:\…` (Wine's view of the host's root) elsewhere.
    pub fn windows_path(&self, p: &Path) -> String {
        let (drive, rest) = match p.strip_prefix(self.drive_c()) {
            Ok(rest) => ("C:", rest),
            Err(_) => ("Z:", p.strip_prefix("/").unwrap_or(p)),
        };
        let rest: Vec<String> = rest
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        format!("{drive}\\{}", rest.join("\\"))
    }

    /// Runs `cmd` to its end and returns its output; a Wine program that hangs fails the test
    /// after two minutes instead of holding the whole suite.
    pub fn output(mut cmd: Command) -> std::process::Output {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(120) {
                let _ = child.kill();
                panic!("{cmd:?} did not end within 120 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a Windows program with `args` to its end: (success, stdout and stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let mut c = self.command(program);
        c.args(args);
        let o = Wine::output(c);
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// Runs a Windows command line through `cmd /c`: (success, output).
    pub fn cmd(&self, line: &str) -> (bool, String) {
        self.run("cmd", &["/c", line])
    }

    /// `reg ARGS… /reg:64` (the 64-bit view): (success, output).
    pub fn reg(&self, args: &[&str]) -> (bool, String) {
        self.run("reg", &[args, &["/reg:64"]].concat())
    }

    /// `reg add KEY [/v NAME /t TYPE /d DATA] /f`; panics when it fails.
    pub fn reg_add(&self, key: &str, value: Option<(&str, &str, &str)>) {
        let mut args = vec!["add", key];
        if let Some((name, kind, data)) = value {
            args.extend(["/v", name, "/t", kind, "/d", data]);
        }
        args.push("/f");
        let (ok, out) = self.reg(&args);
        assert!(ok, "reg add {key}: {out}");
    }

    /// `reg delete KEY /f`; a missing key is fine.
    pub fn reg_delete(&self, key: &str) {
        self.reg(&["delete", key, "/f"]);
    }
}
