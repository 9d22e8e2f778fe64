//! The Windows agent for real: the x86_64-pc-windows-gnu build runs under Wine against the
//! real server on loopback, reads the machine through the registry, WMI and kernel32, and
//! installs the MSI and EXE samples of packages/ with their own installers (msiexec, setup).
//! As a service (`sc`) or from a console, it upgrades itself to another build through the
//! server, and a broken build is rolled back by its watchdog (through the SCM for a service).
//! Tests that need what Wine cannot pretend to be (Windows Server 2003/2008 in Japanese) use
//! the emulated endpoint instead (agent_emulated.rs).

use crate::common::agent_harness::{AgentProc, wait_for};
use crate::common::server_harness::{Backend, TestServer};
use crate::common::sources_harness::publish;
use crate::common::wine_env::{PREFIX, Wine};
use patchcast::core::delivery::State;
use patchcast::transport::admin_api::{DeliveryRow, MachineView, ResultsQuery};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SERVICING: &str =
    "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\Packages";
const REBOOT_REQUIRED: &str = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired";
const MSI_PRODUCT: &str = "{7C0D3E4A-5B1F-4E2A-9C61-2F3B8D4A1E07}";

fn servicing_key(kb: &str) -> String {
    format!("{SERVICING}\\Package_for_{kb}~31bf3856ad364e35~amd64~~10.0.1.0")
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packages")
        .join(name)
}

/// A package directory written by the test: `package.yaml` plus small payload files.
fn package(dir: &Path, id: &str, yaml: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("package.yaml"), yaml).unwrap();
    for (name, bytes) in files {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    d
}

const TARGETS: &str = "targets:\n  - { os: windows-10, arch: x64 }\n";

struct WinSite {
    server: TestServer,
    agent: AgentProc,
    machine: String,
}

impl WinSite {
    /// A server and the Windows agent enrolled under Wine, its root on the prefix's C: drive
    /// (or on `root` when given).
    async fn new(wine: &Wine, root: Option<PathBuf>) -> WinSite {
        let server = TestServer::start(Backend::Sqlite, &["--poll", "1s"])
            .await
            .unwrap();
        let token = server.group_token("windows").await;
        let root = root.unwrap_or_else(|| {
            wine.drive_c()
                .join("patchcast-tests")
                .join(patchcast::server::random_hex(4).unwrap())
        });
        let agent = AgentProc::wine(&root, wine);
        let (ok, out) = agent.enroll(&server.url, &token, &server.fingerprint).await;
        assert!(ok, "the Windows agent enrolls under Wine: {out}");
        let machine = server.admin().machines().await.unwrap()[0].id.clone();
        WinSite {
            server,
            agent,
            machine,
        }
    }

    async fn view(&self) -> MachineView {
        let all = self.server.admin().machines().await.unwrap();
        all.into_iter().find(|m| m.id == self.machine).unwrap()
    }

    async fn run(&self, packages: &[&str]) -> String {
        let s = patchcast::model::scenario::Scenario {
            name: format!("wine-{}", patchcast::server::random_hex(3).unwrap()),
            action: patchcast::core::pipeline::Action::Install,
            packages: packages.iter().map(|p| p.parse().unwrap()).collect(),
            machines: vec![self.machine.clone()],
            groups: vec![],
            max_concurrent: None,
            max_unverified_runs: 3,
            max_attempts: 1,
            retry_delay_ms: 0,
            allow_reboot: false,
            timeout_secs: None,
            when: None,
            versions: Default::default(),
            rollback: false,
        };
        self.server.admin().run_scenario(&s).await.unwrap().id
    }

    async fn rows(&self, scenario: &str) -> Vec<DeliveryRow> {
        let q = ResultsQuery {
            machine: None,
            package: None,
            scenario: Some(scenario.into()),
            history: true,
            lang: "en".into(),
        };
        self.server.admin().results(&q).await.unwrap().deliveries
    }

    /// Waits (a hang guard, not a timing check) until every delivery satisfies `done`.
    async fn settle(&self, scenario: &str, done: impl Fn(&State) -> bool) -> Vec<DeliveryRow> {
        let start = Instant::now();
        loop {
            let rows = self.rows(scenario).await;
            if !rows.is_empty() && rows.iter().all(|r| done(&r.state)) {
                return rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "scenario {scenario} did not settle: {rows:#?}\nagent log:\n{}",
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn row<'a>(rows: &'a [DeliveryRow], package: &str) -> &'a DeliveryRow {
    rows.iter()
        .find(|r| r.package_id == package)
        .unwrap_or_else(|| panic!("no delivery of {package}: {rows:#?}"))
}

/// Processes of this host whose command line holds `marker` (Wine runs each Windows process
/// as a host process named by its Windows command line).
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat[stat.rfind(')')? + 2..].starts_with('Z');
            (text.contains(marker) && !zombie).then_some(text)
        })
        .collect()
}

/// Leaves the prefix as a fresh one for the samples (a rerun by hand reuses it).
fn forget_samples(wine: &Wine) {
    let _ = wine.cmd(&format!("msiexec /x {MSI_PRODUCT} /qn"));
    wine.reg_delete("HKLM\\SOFTWARE\\patchcast samples");
    let mut reg32 = wine.command("reg");
    reg32.args([
        "delete",
        "HKLM\\SOFTWARE\\patchcast samples",
        "/f",
        "/reg:32",
    ]);
    Wine::output(reg32);
    for kb in ["KB5099001", "KB5099002", "KB5099003"] {
        wine.reg_delete(&servicing_key(kb));
    }
    let _ = std::fs::remove_dir_all(wine.drive_c().join("Program Files/patchcast sample tool"));
    wine.reg_delete("HKLM\\SYSTEM\\CurrentControlSet\\Control\\Windows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_under_wine_reports_the_machine_and_installs_real_packages() {
    let Some(wine) = Wine::get() else { return };
    let _prefix = PREFIX.lock().await;
    forget_samples(&wine);
    // What Windows would list: one update installed through component servicing, one whose
    // install waits for a restart (not applied yet), and Service Pack 1 in the registry.
    let state = |n| Some(("CurrentState", "REG_DWORD", n));
    wine.reg_add(&servicing_key("KB5099001"), state("112"));
    wine.reg_add(&servicing_key("KB5099003"), state("96"));
    wine.reg_add(
        "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Windows",
        Some(("CSDVersion", "REG_DWORD", "256")),
    );
    // A 32-bit installer's key, in the 32-bit view (WOW6432Node) only.
    let (ok, out) = wine.run(
        "reg",
        &[
            "add",
            "HKLM\\SOFTWARE\\patchcast samples\\wow32",
            "/v",
            "Version",
            "/t",
            "REG_SZ",
            "/d",
            "1.0",
            "/f",
            "/reg:32",
        ],
    );
    assert!(ok, "{out}");

    let mut site = WinSite::new(&wine, None).await;
    // Enrollment sent the inventory Windows reports, not the host's.
    let inv = site.view().await.inventory;
    assert_eq!(
        (inv.os.as_str(), inv.arch.as_str(), inv.language.as_str()),
        ("windows-10", "x64", "en"),
        "{inv:#?}"
    );
    assert!(!inv.emulated);
    assert!(inv.os_version.contains("Windows 10"), "{}", inv.os_version);
    assert_eq!(inv.system_drive, "C:", "{inv:#?}");
    assert!(inv.disk_total > 0 && inv.disk_free > 0 && inv.disk_free <= inv.disk_total);
    assert_eq!(inv.service_pack.as_deref(), Some("1.0"));
    let updates = &inv.installed_updates;
    assert!(updates.iter().any(|u| u == "KB5099001"), "{updates:?}");
    assert!(
        !updates.iter().any(|u| u == "KB5099003"),
        "an install pending a restart is not installed: {updates:?}"
    );
    // Wine's WMI answers one fixed Win32_QuickFixEngineering record.
    assert!(updates.iter().any(|u| u == "KB1234567"), "{updates:?}");

    let tmp = tempfile::tempdir().unwrap();
    let stub = std::fs::read(sample("ms10-046-ws2008-multi/Windows6.0-KB2286198-x86.exe")).unwrap();
    let seeded = package(
        tmp.path(),
        "kb5099001-seeded",
        &format!(
            "id: kb5099001-seeded\nkind: hotfix\ntitle: seeded update (KB5099001)\nversion: \"1.0\"\nkb: KB5099001\n{TARGETS}payload: [Windows10.0-KB5099001-x64.exe]\ninstall:\n  command: '\"{{{{payload.0}}}}\" /quiet'\n  timeout: 5m\n"
        ),
        &[("Windows10.0-KB5099001-x64.exe", &stub)],
    );
    // Installed by its own setup, which registers it with component servicing as Windows
    // Update does; the KB then appears in the installed-update list.
    let registering = package(
        tmp.path(),
        "kb5099002-registers",
        &format!(
            "id: kb5099002-registers\nkind: hotfix\ntitle: registering update (KB5099002)\nversion: \"1.0\"\nkb: KB5099002\n{TARGETS}payload: [Windows10.0-KB5099002-x64.exe]\ninstall:\n  command: '\"{{{{payload.0}}}}\" /quiet && reg add \"{}\" /v CurrentState /t REG_DWORD /d 112 /f /reg:64'\n  timeout: 5m\n",
            servicing_key("KB5099002")
        ),
        &[("Windows10.0-KB5099002-x64.exe", &stub)],
    );
    let sp1 = package(
        tmp.path(),
        "win10-sp1",
        &format!(
            "id: win10-sp1\nkind: service_pack\ntitle: Service Pack 1 (judged from the registry)\nversion: \"1.0\"\nservice_pack: {{ major: 1, minor: 0 }}\n{TARGETS}payload: [Windows10.0-KB5099009-x64.exe]\ninstall:\n  command: '\"{{{{payload.0}}}}\" /quiet'\n  timeout: 5m\n"
        ),
        &[("Windows10.0-KB5099009-x64.exe", &stub)],
    );
    // Identified by a key only the 32-bit view has: the agent reads both views.
    let wow32 = package(
        tmp.path(),
        "wow32-app",
        &format!(
            "id: wow32-app\nkind: application\ntitle: a 32-bit program's registry key\nversion: \"1.0\"\n{TARGETS}identification:\n  - registry: 'HKLM\\SOFTWARE\\patchcast samples\\wow32'\n    value: Version\n    data: \"1.0\"\npayload: [readme.txt]\ninstall:\n  command: 'type \"{{{{payload.0}}}}\"'\n  timeout: 1m\n"
        ),
        &[("readme.txt", b"already there\r\n")],
    );
    // Starts a second program in the background and waits on a third: the time limit must
    // end all of them (the job object), not only cmd.
    let hangs = package(
        tmp.path(),
        "hangs-with-children",
        &format!(
            "id: hangs-with-children\nkind: application\ntitle: an installer that never ends\nversion: \"1.0\"\n{TARGETS}identification:\n  - registry: 'HKLM\\SOFTWARE\\patchcast samples\\never'\npayload: [readme.txt]\ninstall:\n  command: 'start /b ping -n 3017 127.0.0.1 >nul & ping -n 3018 127.0.0.1 >nul'\n  timeout: 4s\n"
        ),
        &[("readme.txt", b"waits forever\r\n")],
    );
    for dir in [
        sample("win-sample-app-msi"),
        sample("win-sample-tool-exe"),
        seeded,
        registering,
        sp1,
        wow32,
        hangs,
    ] {
        publish(&site.server, &dir, &[]);
    }

    site.agent.start();
    let scenario = site
        .run(&[
            "win-sample-app-msi",
            "kb5099001-seeded",
            "kb5099002-registers",
            "win10-sp1",
            "wow32-app",
            "hangs-with-children",
        ])
        .await;
    let rows = site.settle(&scenario, State::is_terminal).await;
    let log = site.agent.log();
    for id in [
        "win-sample-app-msi",
        "kb5099001-seeded",
        "kb5099002-registers",
        "win10-sp1",
        "wow32-app",
    ] {
        assert_eq!(
            row(&rows, id).state,
            State::Applied,
            "{id}: {rows:#?}\n{log}"
        );
    }
    // msiexec really installed the MSI: the file and the Programs and Features entry.
    let dll = wine
        .drive_c()
        .join("Program Files/patchcast sample app/pcsample.dll");
    assert!(dll.is_file(), "{}", dll.display());
    let (ok, out) = wine.reg(&[
        "query",
        &format!("HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{MSI_PRODUCT}"),
        "/v",
        "DisplayVersion",
    ]);
    assert!(ok && out.contains("1.2.0"), "{out}");
    // Already applied ones ran nothing: their history has no execution.
    for id in ["kb5099001-seeded", "win10-sp1", "wow32-app"] {
        let r = row(&rows, id);
        let events: Vec<&str> = r
            .history
            .iter()
            .filter_map(|h| h.event["event"].as_str())
            .collect();
        assert!(
            !events.contains(&"executed"),
            "{id} was identified as applied before any run: {events:?}"
        );
    }
    let hung = row(&rows, "hangs-with-children");
    assert_eq!(
        hung.state,
        State::Failed {
            code: "E20".parse().unwrap()
        },
        "{hung:#?}\n{log}"
    );
    let rendered = hung.rendered.as_ref().expect("a message and remedy");
    assert!(!rendered.remedy.is_empty(), "{rendered:?}");
    wait_for("the installer's whole process tree to end", || {
        processes_with("-n 3017").is_empty() && processes_with("-n 3018").is_empty()
    })
    .await;

    // An EXE setup exiting 3010: installed, verified only after the restart it asks for.
    let boot = site.agent.root.join("boot-id");
    std::fs::write(&boot, "boot-1").unwrap();
    let boot_win = wine.windows_path(&boot);
    site.agent.sigkill();
    site.agent
        .start_with(&[("PATCHCAST_BOOT_ID_FILE", Path::new(&boot_win))]);
    let scenario = site.run(&["win-sample-tool-exe"]).await;
    let rows = site
        .settle(&scenario, |s| {
            matches!(s, State::RebootPending) || s.is_terminal()
        })
        .await;
    assert_eq!(
        row(&rows, "win-sample-tool-exe").state,
        State::RebootPending,
        "{rows:#?}\n{}",
        site.agent.log()
    );
    let tool = wine
        .drive_c()
        .join("Program Files/patchcast sample tool/pctool.dll");
    assert!(tool.is_file(), "the setup ran: {}", tool.display());
    // The server sees the restart pending; without its consent the agent does not restart.
    let start = Instant::now();
    while !site.view().await.inventory.pending_reboot {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no pending restart reported"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!site.agent.root.join("reboots.log").exists());
    // The machine restarts (a new boot id); the agent verifies at its first start.
    site.agent.sigkill();
    std::fs::write(&boot, "boot-2").unwrap();
    site.agent
        .start_with(&[("PATCHCAST_BOOT_ID_FILE", Path::new(&boot_win))]);
    let rows = site.settle(&scenario, State::is_terminal).await;
    assert_eq!(
        row(&rows, "win-sample-tool-exe").state,
        State::Applied,
        "{rows:#?}\n{}",
        site.agent.log()
    );
    forget_samples(&wine);
}

/// Stops and deletes the test's service however the test ends.
struct Service<'a> {
    wine: &'a Wine,
    name: &'static str,
    /// Wine ends its services when its last ordinary program exits (Windows would not): a
    /// program kept running for the test's length keeps the service's session alive.
    keeper: std::process::Child,
}

impl Service<'_> {
    /// Service `name` running `command`, created (after any leftover of that name is deleted)
    /// and started through `sc`.
    async fn start<'a>(wine: &'a Wine, name: &'static str, command: &str) -> Service<'a> {
        let service = Service {
            wine,
            name,
            keeper: wine
                .command("ping")
                .args(["-n", "3599", "127.0.0.1"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        };
        wait_for("the keeper to run", || {
            !processes_with("-n 3599").is_empty()
        })
        .await;
        service.sc(&["delete", name]);
        let (ok, out) = service.try_sc(&["create", name, "binpath=", command]);
        assert!(ok, "sc create: {out}");
        let (ok, out) = service.try_sc(&["start", name]);
        assert!(ok && out.contains("RUNNING"), "sc start: {out}");
        service
    }

    fn sc(&self, args: &[&str]) -> String {
        self.try_sc(args).1
    }

    /// `sc ARGS`: (success, output).
    fn try_sc(&self, args: &[&str]) -> (bool, String) {
        self.wine.run("sc", args)
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        self.sc(&["stop", self.name]);
        self.sc(&["delete", self.name]);
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_runs_as_a_service_under_wine() {
    let Some(wine) = Wine::get() else { return };
    let _prefix = PREFIX.lock().await;
    let site = WinSite::new(&wine, None).await;
    let enrolled = site.view().await.last_seen_ms;
    // Windows Update says a restart is pending: the inventory must say so too.
    wine.reg_add(REBOOT_REQUIRED, None);
    let command = format!(
        "{} run --root {}",
        wine.windows_path(&wine.agent),
        wine.windows_path(&site.agent.root)
    );
    let service = Service::start(&wine, "patchcast-agent", &command).await;

    // The Service Control Manager started it: it checks in and logs to its root.
    let start = Instant::now();
    while site.view().await.last_seen_ms <= enrolled {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the service never checked in: {}\n{}",
            service.sc(&["query", service.name]),
            std::fs::read_to_string(site.agent.root.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Read until the first lines are there: Wine's service process may still be writing them
    // when the check-in lands (seen once under a loaded CI run).
    let start = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(site.agent.root.join("agent.log")).unwrap_or_default();
        if !log.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let query = service.sc(&["query", service.name]);
    assert!(query.contains("RUNNING"), "{query}\n{log}");
    let inv = site.view().await.inventory;
    wine.reg_delete(REBOOT_REQUIRED);
    assert!(inv.pending_reboot, "{inv:#?}");
    assert!(!inv.interfaces.is_empty(), "{inv:#?}");
    assert!(
        !log.is_empty(),
        "the service logs to agent.log: {query}\n{:?}",
        std::fs::read_dir(&site.agent.root)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // Stop ends it cleanly (exit code 0), as SIGTERM does on Unix.
    service.sc(&["stop", service.name]);
    let start = Instant::now();
    loop {
        let query = service.sc(&["query", service.name]);
        if query.contains("STOPPED") {
            assert!(query.contains("WIN32_EXIT_CODE    : 0 "), "{query}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{query}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A tmpfs of `size` mounted at `dir` (unmounted on drop); `None` when this process may not
/// mount (not root, outside CI).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        if !crate::common::agent_harness::root_or_skip() {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: Wine may still hold a handle on the directory for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_under_wine_refuses_a_package_its_drive_cannot_hold() {
    let Some(wine) = Wine::get() else { return };
    // A drive of 32 MiB: its free space is what GetDiskFreeSpaceEx says under Wine.
    let dir = wine.drive_c().join(format!(
        "small-{}",
        patchcast::server::random_hex(3).unwrap()
    ));
    let Some(_disk) = SmallDisk::mount(&dir, "32m") else {
        return;
    };
    let mut site = WinSite::new(&wine, Some(dir.join("agent"))).await;
    let inv = site.view().await.inventory;
    assert!(
        inv.disk_total <= 32 << 20 && inv.disk_free > 0,
        "the agent measures the drive its root is on: {inv:#?}"
    );
    // 16 MiB that do not compress: three times that does not fit.
    let tmp = tempfile::tempdir().unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..(16 << 20) / 8)
        .flat_map(|_| {
            // xorshift64: cheap bytes no archive compression shrinks.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let dir_pkg = package(
        tmp.path(),
        "too-big",
        &format!(
            "id: too-big\nkind: application\ntitle: larger than the drive allows\nversion: \"1.0\"\n{TARGETS}identification:\n  - registry: 'HKLM\\SOFTWARE\\patchcast samples\\too-big'\npayload: [data.bin]\ninstall:\n  command: 'copy \"{{{{payload.0}}}}\" nul'\n  timeout: 5m\n"
        ),
        &[("data.bin", &big)],
    );
    publish(&site.server, &dir_pkg, &[]);
    site.agent.start();
    let scenario = site.run(&["too-big"]).await;
    let rows = site.settle(&scenario, State::is_terminal).await;
    let r = row(&rows, "too-big");
    assert_eq!(
        r.state,
        State::Failed {
            code: "E06".parse().unwrap()
        },
        "{r:#?}\n{}",
        site.agent.log()
    );
    let p = &r.detail.params;
    assert!(
        p.free_bytes.is_some() && p.required_bytes.is_some_and(|n| n >= 3 * (16 << 20)),
        "{p:?}"
    );
    site.agent.sigkill();
}

/// A copy of the Windows agent build carrying `stamp`, written to `out` by the build itself
/// under Wine; returns the version it reports.
fn stamped(wine: &Wine, stamp: &str, out: &Path) -> String {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut c = wine.command(&wine.agent);
    c.args(["stamp", stamp, "--out", &wine.windows_path(out)]);
    let o = Wine::output(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A Windows program that exits 1 at once: a "build" of the agent that is broken.
fn exits_1(dir: &Path) -> Vec<u8> {
    let src = dir.join("exit1.rs");
    std::fs::write(&src, "fn main() { std::process::exit(1) }\n").unwrap();
    let exe = dir.join("exit1.exe");
    let o = std::process::Command::new("rustc")
        .args(["--target", "x86_64-pc-windows-gnu", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&exe).unwrap()
}

/// Waits (a hang guard) until the server heard `version` from the site's agent.
async fn reports(site: &WinSite, version: &str, logs: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        let seen = site.view().await.inventory.agent_version;
        if seen == version {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the agent reports {seen}, not {version}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A `kind: agent` package for Windows: `binary` as its payload, identified by `version`.
fn windows_agent_package(dir: &Path, id: &str, version: &str, binary: &[u8]) -> PathBuf {
    package(
        dir,
        id,
        &format!(
            "id: {id}\nkind: agent\ntitle: {id}\nversion: '{version}'\n{TARGETS}payload: [patchcast-agent.exe]\ncheck_in_deadline: 2m\n"
        ),
        &[("patchcast-agent.exe", binary)],
    )
}

/// Publishes `binary` as the agent package `id` (`version`), delivers it to the site's agent
/// and returns its delivery once ended.
async fn deliver_agent(
    site: &WinSite,
    dir: &Path,
    id: &str,
    version: &str,
    binary: &[u8],
) -> DeliveryRow {
    publish(
        &site.server,
        &windows_agent_package(dir, id, version, binary),
        &[],
    );
    let scenario = site.run(&[id]).await;
    let rows = site.settle(&scenario, State::is_terminal).await;
    row(&rows, id).clone()
}

/// The Windows agent running as a service, started from a copy stamped `b1`, upgrades itself
/// to `b2` through the server: it renames its running binary aside, puts the new one in
/// place and ends; its watchdog (run from `.previous`) starts the service again through the
/// SCM, and the new build checks in. Then a "build" that exits 1 at once is rolled back: E30,
/// `b2` back byte for byte, the service running it again, the server hearing `b2`. SQLite
/// only: the SCM of the one Wine prefix is shared by the Wine tests, which take turns; the
/// server's side of the upgrade is agent_upgrade's, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_service_upgrades_itself_under_wine() {
    let Some(wine) = Wine::get() else { return };
    let _prefix = PREFIX.lock().await;
    let dir = wine
        .drive_c()
        .join("patchcast-tests")
        .join(patchcast::server::random_hex(4).unwrap());
    let exe = dir.join("bin/patchcast-agent.exe");
    let old = stamped(&wine, "b1", &exe);
    let build = dir.join("build/patchcast-agent.exe");
    let new = stamped(&wine, "b2", &build);
    assert!(old.ends_with("+b1") && new.ends_with("+b2"), "{old} {new}");
    let old_bytes = std::fs::read(&exe).unwrap();
    let new_bytes = std::fs::read(&build).unwrap();
    let site = WinSite::new(&wine, Some(dir.join("agent"))).await;
    let root = &site.agent.root;
    let command = format!(
        "{} run --root {}",
        wine.windows_path(&exe),
        wine.windows_path(root)
    );
    let service = Service::start(&wine, "patchcast-agent-upgrade", &command).await;
    let logs = || {
        format!(
            "{}\nagent.log:\n{}\nwatchdog.log:\n{}",
            service.sc(&["query", service.name]),
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default(),
            std::fs::read_to_string(root.join("watchdog.log")).unwrap_or_default()
        )
    };
    reports(&site, &old, &logs).await;

    let tmp = tempfile::tempdir().unwrap();
    let r = deliver_agent(&site, tmp.path(), "agent-b2", &new, &new_bytes).await;
    assert_eq!(r.state, State::Applied, "{r:#?}\n{}", logs());
    reports(&site, &new, &logs).await;
    let previous = dir.join("bin/patchcast-agent.exe.previous");
    assert!(std::fs::read(&exe).unwrap() == new_bytes, "b2 is in place");
    assert!(std::fs::read(&previous).unwrap() == old_bytes, "b1 is kept");
    assert!(!dir.join("bin/patchcast-agent.exe.new").exists());
    // The watchdog started the service through the SCM, and ends once it sees the claim (it
    // may log that after the server heard the new version).
    let watchdog = || std::fs::read_to_string(root.join("watchdog.log")).unwrap_or_default();
    wait_for("the watchdog to see the new agent's check-in", || {
        watchdog().contains("the new agent checked in")
    })
    .await;
    assert!(watchdog().contains("agent service started"), "{}", logs());
    assert!(
        service.sc(&["query", service.name]).contains("RUNNING"),
        "{}",
        logs()
    );

    // A build that exits 1 at once: the SCM cannot keep it running; rolled back.
    let broken = format!("{}+b3", new.split('+').next().unwrap());
    let broken_exe = exits_1(tmp.path());
    let r = deliver_agent(&site, tmp.path(), "agent-broken", &broken, &broken_exe).await;
    assert_eq!(
        r.state,
        State::Failed {
            code: "E30".parse().unwrap()
        },
        "{r:#?}\n{}",
        logs()
    );
    assert!(
        std::fs::read(&exe).unwrap() == new_bytes,
        "b2 is back byte for byte\n{}",
        logs()
    );
    reports(&site, &new, &logs).await;
    assert!(
        service.sc(&["query", service.name]).contains("RUNNING"),
        "{}",
        logs()
    );
}

/// Kills the host processes whose command line holds its marker (the Windows agents a
/// watchdog started on its own) when the test ends whichever way.
struct KillWith(String);

impl Drop for KillWith {
    fn drop(&mut self) {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.0) {
                // SAFETY: a Wine process this test started (through the agent's watchdog).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The same upgrade and rollback with the agent started from a console, not as a service:
/// the old agent's process ends, and the watchdog starts the new binary (then the restored
/// one) as a process of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_from_a_console_upgrades_itself_under_wine() {
    let Some(wine) = Wine::get() else { return };
    let _prefix = PREFIX.lock().await;
    let marker = patchcast::server::random_hex(4).unwrap();
    let dir = wine.drive_c().join("patchcast-tests").join(&marker);
    let _cleanup = KillWith(marker);
    let exe = dir.join("bin/patchcast-agent.exe");
    let old = stamped(&wine, "b1", &exe);
    let build = dir.join("build/patchcast-agent.exe");
    let new = stamped(&wine, "b2", &build);
    let new_bytes = std::fs::read(&build).unwrap();
    let b1 = Wine {
        agent: exe.clone(),
        ..wine.clone()
    };
    let mut site = WinSite::new(&b1, Some(dir.join("agent"))).await;
    site.agent.start();
    let log = || site.agent.log();
    reports(&site, &old, &log).await;

    let tmp = tempfile::tempdir().unwrap();
    let r = deliver_agent(&site, tmp.path(), "agent-b2", &new, &new_bytes).await;
    assert_eq!(r.state, State::Applied, "{r:#?}\n{}", log());
    reports(&site, &new, &log).await;
    assert!(std::fs::read(&exe).unwrap() == new_bytes, "b2 is in place");

    let broken = format!("{}+b3", new.split('+').next().unwrap());
    let broken_exe = exits_1(tmp.path());
    let r = deliver_agent(&site, tmp.path(), "agent-broken", &broken, &broken_exe).await;
    assert_eq!(
        r.state,
        State::Failed {
            code: "E30".parse().unwrap()
        },
        "{r:#?}\n{}",
        log()
    );
    assert!(std::fs::read(&exe).unwrap() == new_bytes, "b2 is back");
    reports(&site, &new, &log).await;
}
