//! Windows only: the service wrapper (the Service Control Manager starts `patchcast-agent run`
//! as a service; Stop ends it like SIGTERM does on Unix), and the facts only Windows has —
//! registry values, the installed-update list and the service pack level. PE file versions are
//! read by the portable `pack::pe`.

use patchcast_core::identify::Facts;
use patchcast_core::model::package::SpLevel;
use patchcast_core::model::types::UpdateId;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};
use winreg::RegKey;
use winreg::enums::*;

pub const SERVICE_NAME: &str = "patchcast-agent";
/// Error 1063: the process was not started by the Service Control Manager.
const NOT_A_SERVICE: i32 = 1063;

struct ServiceArgs {
    root: PathBuf,
    allow_real_reboot: bool,
}

static ARGS: OnceLock<ServiceArgs> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Runs as a Windows service when the Service Control Manager started this process; `None`
/// when it was started from a console (the caller then runs in the foreground).
pub fn try_run_as_service(root: PathBuf, allow_real_reboot: bool) -> Option<ExitCode> {
    let _ = ARGS.set(ServiceArgs {
        root,
        allow_real_reboot,
    });
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(NOT_A_SERVICE) => None,
        Err(e) => {
            eprintln!("error: starting the Windows service failed: {e}");
            Some(ExitCode::FAILURE)
        }
    }
}

fn status(state: ServiceState, accept: ServiceControlAccept, code: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code: ServiceExitCode::Win32(code),
        checkpoint: 0,
        wait_hint: Duration::default(),
        process_id: None,
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(args) = ARGS.get() else { return };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = std::sync::Mutex::new(Some(stop_tx));
    let handler = move |event| -> ServiceControlHandlerResult {
        match event {
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(tx) = stop_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
                ServiceControlHandlerResult::NoError
            }
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let _ = handle.set_service_status(status(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    ));
    let opts = super::service::Options {
        root: args.root.clone(),
        allow_real_reboot: args.allow_real_reboot,
        backoff_max: Duration::from_secs(60),
        heartbeat: super::deliver::HEARTBEAT,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                tokio::select! {
                    r = super::service::run(opts) => r,
                    _ = stop_rx => Ok(()),
                }
            })
        });
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "the agent service stopped");
            1
        }
    };
    let _ = handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        code,
    ));
}

fn hklm_current_version() -> Option<RegKey> {
    RegKey::predef(HKEY_LOCAL_MACHINE)
        .open_subkey("SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion")
        .ok()
}

/// OS (catalog id), architecture and language of this Windows machine.
pub fn machine() -> Facts {
    let cv = hklm_current_version();
    let product: String = cv
        .as_ref()
        .and_then(|k| k.get_value("ProductName").ok())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        _ => "x86",
    };
    Facts {
        os: catalog_id(&product),
        arch: arch.into(),
        language: language(),
        service_pack: service_pack(),
        ..Facts::default()
    }
}

/// `Windows Server 2008 R2 Enterprise` → `windows-server-2008-r2`; unknown names are kept,
/// lowercased and hyphenated, so the catalog lookup reports them as unknown.
fn catalog_id(product: &str) -> String {
    let p = product.to_ascii_lowercase();
    let words: Vec<&str> = p.split_whitespace().collect();
    let mut id = Vec::new();
    for w in words {
        if [
            "enterprise",
            "standard",
            "datacenter",
            "professional",
            "pro",
            "home",
            "edition",
            "(tm)",
        ]
        .contains(&w)
        {
            continue;
        }
        id.push(w.trim_matches(|c: char| !c.is_ascii_alphanumeric()));
    }
    id.join("-")
}

/// The install language from its LCID (HKLM\SYSTEM\CurrentControlSet\Control\Nls\Language).
fn language() -> String {
    let lcid: String = RegKey::predef(HKEY_LOCAL_MACHINE)
        .open_subkey("SYSTEM\\CurrentControlSet\\Control\\Nls\\Language")
        .and_then(|k| k.get_value("InstallLanguage"))
        .unwrap_or_default();
    match lcid.to_ascii_lowercase().as_str() {
        "0411" => "ja",
        "0409" | "0809" => "en",
        "0407" => "de",
        "040c" => "fr",
        "0804" => "zh-CN",
        "0404" => "zh-TW",
        "0412" => "ko",
        _ => "en",
    }
    .into()
}

/// `CSDVersion` = `Service Pack 2` → 2.0; no value means no service pack (0.0).
pub fn service_pack() -> Option<SpLevel> {
    let cv = hklm_current_version()?;
    let csd: String = cv.get_value("CSDVersion").unwrap_or_default();
    let major = csd
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(SpLevel { major, minor: 0 })
}

/// Installed updates as `wmic qfe` lists them (HotFixID column).
pub fn installed_updates() -> Option<BTreeSet<UpdateId>> {
    let out = std::process::Command::new("wmic")
        .args(["qfe", "get", "HotFixID"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    )
}

/// A registry value as text: `HKLM\SOFTWARE\Vendor\Product\Value` (`(Default)` for the key's
/// default value). `None` when the key or value does not exist.
pub fn registry(key_and_value: &str) -> Option<String> {
    let (key, value) = key_and_value.rsplit_once('\\')?;
    let (hive, path) = key.split_once('\\').unwrap_or((key, ""));
    let root = match hive.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => HKEY_LOCAL_MACHINE,
        "HKCU" | "HKEY_CURRENT_USER" => HKEY_CURRENT_USER,
        "HKCR" | "HKEY_CLASSES_ROOT" => HKEY_CLASSES_ROOT,
        "HKU" | "HKEY_USERS" => HKEY_USERS,
        _ => return None,
    };
    let k = RegKey::predef(root).open_subkey(path).ok()?;
    let name = if value == "(Default)" { "" } else { value };
    let raw = k.get_raw_value(name).ok()?;
    Some(raw.to_string())
}
