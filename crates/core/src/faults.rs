//! Faults met while carrying a delivery out, as typed data, and the result code each one is
//! reported with. Carriers sort what went wrong into a `Fault` from typed values (an
//! `io::ErrorKind`, a step's outcome, an HTTP status), never from message text; this module
//! alone decides the code, so the agent, the emulated endpoint, the SSH worker and the server
//! cannot give one fault two codes.
//!
//! The FAQ's codes were written for a push product (the server opens a connection to each
//! client and streams files to it); patchcast pulls (agents poll, fetch content and report).
//! Each FAQ code is mapped onto the place in the pull pipeline that fails the same way; the
//! table with the tests that produce each fault is in ARCHITECTURE.md ("Every code from a
//! real fault").

use crate::errors::{Code, Params};
use crate::pipeline::Refusal;
use std::io::ErrorKind;

/// A fault, named for what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// E01: the server cannot prepare the delivery: the archive is missing from its content
    /// store or unreadable when the work is handed out.
    ContentUnavailable,
    /// E02: the connection was reset during the transfer, on every quick retry.
    TransferReset,
    /// E03: the server or a source could not be connected to.
    Unreachable,
    /// E05: the agent took the work and went silent before the transfer ended, past the
    /// deadline (it lost the server and did not come back in time).
    LostDuringTransfer,
    /// E06: the machine's disk is short of space for staging.
    DiskFull,
    /// E07: the staging directory for the transfer cannot be created (read-only file system,
    /// permissions, a file in the way).
    StagingDirectory,
    /// E08: the transfer ended before its last byte (the sender closed, the task died), on
    /// every quick retry.
    TransferCut,
    /// E09: the transfer stalled: no byte for the idle limit, on every quick retry.
    TransferStalled,
    /// E10: the source answered that it does not have the content (404, wrong size).
    ContentMissing,
    /// E11: a destination file is busy (a running executable: ETXTBSY on Linux, a sharing
    /// violation on Windows).
    DestinationBusy,
    /// E12: the installer cannot be started (not found, not executable, wrong format).
    InstallerNotStarted,
    /// E13: the agent went silent after the transfer (installing or verifying), past the
    /// deadline: no "auto-update finished" reply.
    NoFinishReply,
    /// E14: a host name does not resolve.
    UnknownHost,
    /// E26: the server's TLS certificate is not the one pinned at enrollment: never talk to it.
    PinMismatch,
    /// E17: the server's own disk is below its reserve while it works (FAQ Q3): no new
    /// delivery is handed out that the server could not record.
    ServerDiskFull,
}

impl Fault {
    pub fn code(self) -> Code {
        match self {
            Fault::ContentUnavailable => Code::E01,
            Fault::TransferReset => Code::E02,
            Fault::Unreachable => Code::E03,
            Fault::LostDuringTransfer => Code::E05,
            Fault::DiskFull => Code::E06,
            Fault::StagingDirectory => Code::E07,
            Fault::TransferCut => Code::E08,
            Fault::TransferStalled => Code::E09,
            Fault::ContentMissing => Code::E10,
            Fault::DestinationBusy => Code::E11,
            Fault::InstallerNotStarted => Code::E12,
            Fault::NoFinishReply => Code::E13,
            Fault::UnknownHost => Code::E14,
            Fault::PinMismatch => Code::E26,
            Fault::ServerDiskFull => Code::E17,
        }
    }

    /// The refusal reporting this fault, its message naming `file` (when known) and `detail`.
    pub fn refusal(self, file: Option<String>, detail: impl Into<String>) -> Refusal {
        Refusal::new(
            self.code(),
            Params {
                file,
                detail: Some(detail.into()),
                ..Params::default()
            },
        )
    }
}

/// The refusal for a delivery about to be handed out while the server has `free` bytes left
/// and keeps `reserve` (E17 with both figures), or None when there is room.
pub fn server_disk(free: u64, reserve: u64) -> Option<Refusal> {
    (free < reserve).then(|| {
        Refusal::new(
            Fault::ServerDiskFull.code(),
            Params {
                free_bytes: Some(free),
                required_bytes: Some(reserve),
                ..Params::default()
            },
        )
    })
}

/// How a transfer's body ended early, as the carrier saw it on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The peer reset the connection (RST, aborted, broken pipe).
    Reset,
    /// The stream ended before the expected length (a clean close, an EOF, a short body).
    Cut,
    /// Nothing arrived for the idle limit.
    Stalled,
}

impl Broken {
    /// The socket error kind of a broken body: a reset, else a cut.
    pub fn of_io(kind: ErrorKind) -> Broken {
        match kind {
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Broken::Reset
            }
            ErrorKind::TimedOut => Broken::Stalled,
            _ => Broken::Cut,
        }
    }

    /// The fault once the quick retries are spent.
    pub fn fault(self) -> Fault {
        match self {
            Broken::Reset => Fault::TransferReset,
            Broken::Cut => Fault::TransferCut,
            Broken::Stalled => Fault::TransferStalled,
        }
    }
}

/// Creating the staging directory failed with `kind`: a full disk is E06, anything else
/// (read-only, permissions, a file in the way) E07.
pub fn staging_fault(kind: ErrorKind) -> Fault {
    match kind {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Fault::DiskFull,
        _ => Fault::StagingDirectory,
    }
}

/// Writing a file on the machine failed with `kind`: a busy destination is E11, a read-only
/// file system E07, anything else a disk short of space (E06, as before this table).
pub fn write_fault(kind: ErrorKind) -> Fault {
    match kind {
        ErrorKind::ExecutableFileBusy | ErrorKind::ResourceBusy => Fault::DestinationBusy,
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => Fault::StagingDirectory,
        _ => Fault::DiskFull,
    }
}

/// The shell an install command ran under, which decides what its exit code can mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shell {
    /// `sh -c`: POSIX reserves 126 (found, cannot be executed) and 127 (not found).
    #[default]
    Posix,
    /// `cmd /C` on Windows, or an emulated installer: every exit code is the installer's.
    Other,
}

/// Whether an install that exited `exit` under `shell` never started: the shell's own "cannot
/// execute" (126) or "not found" (127), unless the package lists that code as its own.
pub fn not_started(shell: Shell, exit: i32, listed: bool) -> Option<&'static str> {
    if shell != Shell::Posix || listed {
        return None;
    }
    match exit {
        126 => Some(
            "the shell found the installer but could not execute it (exit 126: not executable or wrong format)",
        ),
        127 => Some("the shell could not find the installer (exit 127: no such command or file)"),
        _ => None,
    }
}

/// Why a delivery in flight got no reply in time, by the state it was left in: the agent
/// lost during the transfer (E05), or silent after it (E13).
pub fn no_reply(transferring: bool) -> Fault {
    if transferring {
        Fault::LostDuringTransfer
    } else {
        Fault::NoFinishReply
    }
}

/// A server's HTTP `Date` (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) in unix ms.
pub fn http_date_ms(date: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(date.trim())
        .ok()
        .map(|d| d.timestamp_millis())
}

/// This machine's clock (`local_ms`, taken when the reply arrived) against the server's
/// (`server_ms`, from its `Date`: whole seconds, so a second of the difference may be
/// rounding): E28 naming the signed difference (positive: the machine is ahead) when it is
/// over `CLOCK_SKEW_LIMIT_SECS`.
pub fn clock_skew(local_ms: i64, server_ms: i64) -> Option<Refusal> {
    let skew_s = (local_ms - server_ms) / 1000;
    (skew_s.unsigned_abs() > crate::errors::CLOCK_SKEW_LIMIT_SECS)
        .then(|| Refusal::detail(Code::E28, format!("{skew_s:+} s")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_past_five_minutes_is_e28_with_its_sign() {
        let server = http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(server, 784_111_777_000);
        assert_eq!(http_date_ms("yesterday"), None);
        assert_eq!(clock_skew(server + 300_999, server), None);
        assert_eq!(clock_skew(server - 300_999, server), None);
        let ahead = clock_skew(server + 301_000, server).unwrap();
        assert_eq!(
            (ahead.code, ahead.params.detail.as_deref()),
            (Code::E28, Some("+301 s"))
        );
        let behind = clock_skew(server - 3_600_000, server).unwrap();
        assert_eq!(behind.params.detail.as_deref(), Some("-3600 s"));
    }

    #[test]
    fn each_fault_has_its_own_code() {
        let all = [
            Fault::ContentUnavailable,
            Fault::TransferReset,
            Fault::Unreachable,
            Fault::LostDuringTransfer,
            Fault::DiskFull,
            Fault::StagingDirectory,
            Fault::TransferCut,
            Fault::TransferStalled,
            Fault::ContentMissing,
            Fault::DestinationBusy,
            Fault::InstallerNotStarted,
            Fault::NoFinishReply,
            Fault::UnknownHost,
            Fault::PinMismatch,
            Fault::ServerDiskFull,
        ];
        let codes: std::collections::HashSet<Code> = all.iter().map(|f| f.code()).collect();
        assert_eq!(codes.len(), all.len());
        // E04 is decided from identification (every package not applicable), not a fault.
        assert!(!codes.contains(&Code::E04));
    }

    #[test]
    fn socket_errors_sort_into_reset_cut_and_stall() {
        for (kind, want) in [
            (ErrorKind::ConnectionReset, Code::E02),
            (ErrorKind::ConnectionAborted, Code::E02),
            (ErrorKind::BrokenPipe, Code::E02),
            (ErrorKind::UnexpectedEof, Code::E08),
            (ErrorKind::Other, Code::E08),
            (ErrorKind::TimedOut, Code::E09),
        ] {
            assert_eq!(Broken::of_io(kind).fault().code(), want, "{kind:?}");
        }
    }

    #[test]
    fn file_errors_sort_by_kind() {
        assert_eq!(
            staging_fault(ErrorKind::ReadOnlyFilesystem).code(),
            Code::E07
        );
        assert_eq!(staging_fault(ErrorKind::PermissionDenied).code(), Code::E07);
        assert_eq!(staging_fault(ErrorKind::NotADirectory).code(), Code::E07);
        assert_eq!(staging_fault(ErrorKind::StorageFull).code(), Code::E06);
        assert_eq!(write_fault(ErrorKind::ExecutableFileBusy).code(), Code::E11);
        assert_eq!(write_fault(ErrorKind::StorageFull).code(), Code::E06);
        assert_eq!(write_fault(ErrorKind::ReadOnlyFilesystem).code(), Code::E07);
    }

    #[test]
    fn shell_exit_codes_126_and_127_mean_not_started_only_under_sh() {
        assert!(not_started(Shell::Posix, 126, false).is_some());
        assert!(not_started(Shell::Posix, 127, false).is_some());
        assert!(not_started(Shell::Posix, 1, false).is_none());
        assert!(not_started(Shell::Posix, 127, true).is_none());
        assert!(not_started(Shell::Other, 127, false).is_none());
    }

    #[test]
    fn server_disk_below_its_reserve_is_e17_with_both_figures() {
        assert_eq!(server_disk(100, 100), None);
        let r = server_disk(99, 100).unwrap();
        assert_eq!(r.code, Code::E17);
        assert_eq!(
            (r.params.free_bytes, r.params.required_bytes),
            (Some(99), Some(100))
        );
    }

    #[test]
    fn silence_during_the_transfer_is_e05_after_it_e13() {
        assert_eq!(no_reply(true).code(), Code::E05);
        assert_eq!(no_reply(false).code(), Code::E13);
    }
}
