//! The service wrapper: the Service Control Manager starts `patchcast-agent run` as a service;
//! Stop and Shutdown end it as SIGTERM does on Unix. The agent's self-upgrade starts and stops
//! it through the SCM (`start`, `stop`, `running`) and ends its own process as a stopped
//! service (`exit`), so the SCM can start it again.

use crate::service::Options;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState,
    ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

pub const SERVICE_NAME: &str = "patchcast-agent";
/// Error 1063: the process was not started by the Service Control Manager.
const NOT_A_SERVICE: i32 = 1063;

static OPTIONS: OnceLock<Options> = OnceLock::new();
/// The name this process runs as (the SCM passes it first to `service_main`) and its status
/// handle; unset when started from a console.
static RUNNING: OnceLock<(String, ServiceStatusHandle)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Runs as a Windows service when the Service Control Manager started this process; `None`
/// when it was started from a console (the caller then runs in the foreground).
pub fn try_run_as_service(opts: &Options) -> Option<ExitCode> {
    let _ = OPTIONS.set(opts.clone());
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

fn service_main(arguments: Vec<OsString>) {
    let Some(opts) = OPTIONS.get().cloned() else {
        return;
    };
    crate::cli::init_logging_to_file(&crate::config::Root(opts.root.clone()).service_log());
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
    let name = arguments
        .first()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| SERVICE_NAME.to_string());
    let _ = RUNNING.set((name, handle));
    let _ = handle.set_service_status(status(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    ));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                tokio::select! {
                    r = crate::service::run(opts) => r,
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

/// The service this process runs as; `None` when it was started from a console.
pub fn running_as() -> Option<&'static str> {
    RUNNING.get().map(|(name, _)| name.as_str())
}

/// Ends this process with `code`, first reporting the service stopped when it is one (the SCM
/// then starts it again on request instead of waiting for a process that is gone).
pub fn exit(code: u32) -> ! {
    if let Some((_, handle)) = RUNNING.get() {
        let _ = handle.set_service_status(status(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            code,
        ));
    }
    std::process::exit(code as i32)
}

fn open(name: &str) -> windows_service::Result<windows_service::service::Service> {
    ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?.open_service(
        name,
        ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
    )
}

/// Starts service `name` through the SCM (its configured binary and arguments).
pub fn start(name: &str) -> anyhow::Result<()> {
    open(name)?.start::<&str>(&[])?;
    Ok(())
}

/// The state of service `name` and the process it runs in (`None` when it runs in none).
pub fn state(name: &str) -> anyhow::Result<(ServiceState, Option<u32>)> {
    let s = open(name)?.query_status()?;
    Ok((s.current_state, s.process_id))
}

/// Whether service `name` runs or is starting (an unknown state counts as running: the
/// watchdog's deadline still ends the wait).
pub fn running(name: &str) -> bool {
    match state(name) {
        Ok((s, _)) => !matches!(s, ServiceState::Stopped),
        Err(e) => {
            tracing::warn!(service = name, error = %e, "querying the service failed");
            true
        }
    }
}

/// Stops service `name` and waits up to `wait` for it to stop; its process is ended when it
/// does not.
pub fn stop(name: &str, wait: Duration) -> anyhow::Result<()> {
    let service = open(name)?;
    let _ = service.stop();
    let start = std::time::Instant::now();
    loop {
        let s = service.query_status()?;
        if s.current_state == ServiceState::Stopped {
            return Ok(());
        }
        if start.elapsed() > wait {
            if let Some(pid) = s.process_id {
                tracing::warn!(
                    service = name,
                    pid,
                    "the service did not stop; ending its process"
                );
                super::job::terminate(pid);
                // TerminateProcess returns before the image is let go of.
                let ended = std::time::Instant::now();
                while super::job::process_alive(pid) && ended.elapsed() < wait {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
