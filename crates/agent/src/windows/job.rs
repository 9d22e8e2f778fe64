//! A job object around an installer. The process starts suspended and runs only once it is in
//! the job, so everything it starts is in the job too: the time limit ends the whole tree
//! (`TerminateJobObject`), and if the agent itself dies mid-install Windows closes the job and
//! kills the tree (what the journal's process-group kill does on Unix at the next start).
//! After a normal exit the kill-on-close limit is lifted, so a process the installer leaves
//! running survives, as it does on Unix.

use std::io;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{OpenThread, ResumeThread, THREAD_SUSPEND_RESUME};

pub struct Job(HANDLE);

// SAFETY: a job handle is a kernel object handle, usable from any thread.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn new() -> io::Result<Job> {
        // SAFETY: no security attributes and no name: an anonymous job for this process.
        let h = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        let job = Job(h);
        job.kill_on_close(true)?;
        Ok(job)
    }

    fn kill_on_close(&self, on: bool) -> io::Result<()> {
        // SAFETY: an all-zero limit structure is valid (no limits).
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        if on {
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        }
        // SAFETY: `info` lives across the call and the size matches the class.
        let ok = unsafe {
            SetInformationJobObject(
                self.0,
                JobObjectExtendedLimitInformation,
                (&raw const info).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts a process that was started suspended into a new job, then lets it run. It is
    /// resumed even when no job can hold it (a parent job that forbids nesting), so an install
    /// never hangs suspended; `None` then, with a warning that the tree is not contained.
    ///
    /// # Safety
    /// `process` must be a valid handle of the process `pid`, open for the whole call.
    pub unsafe fn contain(process: HANDLE, pid: u32) -> Option<Job> {
        let job = Job::new().and_then(|job| {
            // SAFETY: both handles are valid for the duration of the call.
            if unsafe { AssignProcessToJobObject(job.0, process) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(job)
        });
        if let Err(e) = resume_threads(pid) {
            tracing::error!(pid, error = %e, "could not resume the installer");
        }
        match job {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::warn!(pid, error = %e, "the installer runs outside a job: its time limit ends only the installer, not what it starts");
                None
            }
        }
    }

    /// Ends every process in the job.
    pub fn kill(&self) {
        // SAFETY: a valid job handle; exit code 1 for each process.
        unsafe {
            TerminateJobObject(self.0, 1);
        }
    }

    /// Lets the processes still in the job outlive it (the installer ended normally).
    pub fn release(self) {
        if let Err(e) = self.kill_on_close(false) {
            tracing::warn!(error = %e, "could not release the installer's job; its leftover processes end with it");
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the handle was created by this value and is closed once.
        unsafe {
            CloseHandle(self.0);
        }
    }
}

/// Resumes every thread of `pid` (a process created suspended has one).
fn resume_threads(pid: u32) -> io::Result<()> {
    // SAFETY: a thread snapshot of the whole system; closed below.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snap == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    let mut entry = THREADENTRY32 {
        dwSize: std::mem::size_of::<THREADENTRY32>() as u32,
        cntUsage: 0,
        th32ThreadID: 0,
        th32OwnerProcessID: 0,
        tpBasePri: 0,
        tpDeltaPri: 0,
        dwFlags: 0,
    };
    let mut resumed = 0;
    // SAFETY: `entry` has its size set, as Thread32First requires; `snap` is valid.
    let mut more = unsafe { Thread32First(snap, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: opening a thread by id; the handle is closed right after use.
            let t = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if !t.is_null() {
                // SAFETY: `t` was opened with THREAD_SUSPEND_RESUME.
                unsafe {
                    ResumeThread(t);
                    CloseHandle(t);
                }
                resumed += 1;
            }
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(snap, &mut entry) } != 0;
    }
    // SAFETY: closing the snapshot once.
    unsafe {
        CloseHandle(snap);
    }
    if resumed == 0 {
        return Err(io::Error::other(format!(
            "no thread of process {pid} to resume"
        )));
    }
    Ok(())
}

/// Whether process `pid` still runs (it exists and has no exit code yet).
pub fn process_alive(pid: u32) -> bool {
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    const STILL_ACTIVE: u32 = 259;
    // SAFETY: a handle opened, read and closed here.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if h.is_null() {
            return false;
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(h, &mut code) != 0;
        CloseHandle(h);
        ok && code == STILL_ACTIVE
    }
}

/// Ends process `pid` (exit code 1); nothing when it is gone already.
pub fn terminate(pid: u32) {
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: a handle opened, used and closed here.
    unsafe {
        let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !h.is_null() {
            TerminateProcess(h, 1);
            CloseHandle(h);
        }
    }
}
