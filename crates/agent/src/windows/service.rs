//! The service wrapper: the Service Control Manager starts `patchcast-agent run` as a service;
//! Stop and Shutdown end it as SIGTERM does on Unix.

use crate::service::Options;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

pub const SERVICE_NAME: &str = "patchcast-agent";
/// Error 1063: the process was not started by the Service Control Manager.
const NOT_A_SERVICE: i32 = 1063;

static OPTIONS: OnceLock<Options> = OnceLock::new();

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

fn service_main(_arguments: Vec<OsString>) {
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
