//! Signals and children: PID 1 blocks the signals it handles and reads them from a signalfd,
//! reaps every child (it is the reaper of orphans), and stops all processes at shutdown.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error("block the signals PID 1 handles")]
    Block(#[source] Errno),
    #[error("create signalfd")]
    CreateSignalFd(#[source] Errno),
    #[error("read signalfd")]
    ReadSignalFd(#[source] Errno),
    #[error("send {signal} to all processes")]
    KillAll {
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("fork a test orphan")]
    Fork(#[source] Errno),
}

/// A signal PID 1 acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A child changed state: reap.
    Child,
    /// SIGTERM: orderly shutdown.
    Terminate,
    /// SIGINT: ctrl-alt-del (with CAD disabled) — orderly shutdown.
    Interrupt,
    /// SIGPWR / SIGUSR2 style power requests — orderly shutdown.
    Power,
    /// Anything else in the mask (ignored).
    Other(i32),
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// The signalfd through which PID 1 receives its signals.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Block the handled signals for this (single-threaded) process and open a signalfd for them.
    pub fn install() -> Result<Self, SignalsError> {
        let set = handled();
        set.thread_block().map_err(SignalsError::Block)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(SignalsError::CreateSignalFd)?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Drain pending signals.
    pub fn read_all(&mut self) -> Result<Vec<Event>, SignalsError> {
        let mut out = Vec::new();
        while let Some(info) = self.fd.read_signal().map_err(SignalsError::ReadSignalFd)? {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(-1);
            out.push(match Signal::try_from(signo) {
                Ok(Signal::SIGCHLD) => Event::Child,
                Ok(Signal::SIGTERM) => Event::Terminate,
                Ok(Signal::SIGINT) => Event::Interrupt,
                Ok(Signal::SIGPWR) => Event::Power,
                _ => Event::Other(signo),
            });
        }
        Ok(out)
    }
}

/// A reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub code: i32,
}

/// Whether PID 1 still has children after a reaping pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Children exist that are still running.
    Running,
    /// No child is left (ECHILD).
    None,
}

/// Reap every child that has exited, without blocking, and say whether any are left.
pub fn reap_exited() -> (Vec<Reaped>, ChildState) {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push(Reaped {
                pid: pid.as_raw(),
                code,
            }),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                out.push(Reaped {
                    pid: pid.as_raw(),
                    code: 128 + sig as i32,
                });
            }
            Ok(WaitStatus::StillAlive) => return (out, ChildState::Running),
            Err(Errno::EINTR) | Ok(_) => continue,
            Err(_) => return (out, ChildState::None),
        }
    }
}

/// Send `signal` to every process except PID 1 itself and kernel threads (kill(-1)). ESRCH
/// (nobody to signal) is success.
pub fn kill_all(signal: Signal) -> Result<(), SignalsError> {
    match kill(Pid::from_raw(-1), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(SignalsError::KillAll { signal, source }),
    }
}

/// Test hook: create `count` orphans. Each forked child forks a grandchild and exits at once,
/// so the grandchild is re-parented to PID 1; the grandchild sleeps `linger_ms` and exits.
#[cfg(feature = "insecure-test-hooks")]
pub fn spawn_orphans(count: u16, linger_ms: u32) -> Result<(), SignalsError> {
    use nix::unistd::ForkResult;
    for _ in 0..count {
        // SAFETY: PID 1 is single-threaded (it never spawns threads), so the child may run any
        // code; the child and grandchild below only call nanosleep and _exit, both
        // async-signal-safe, and never return into the caller's stack frames.
        match unsafe { nix::unistd::fork() }.map_err(SignalsError::Fork)? {
            ForkResult::Parent { .. } => {}
            ForkResult::Child => {
                let empty = SigSet::empty();
                // Children must not inherit PID 1's blocked signals, or SIGTERM could not stop
                // them. sigprocmask is async-signal-safe.
                let _ = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&empty),
                    None,
                );
                // SAFETY: as above; this process is single-threaded (a fork child has one thread).
                if let Ok(ForkResult::Child) = unsafe { nix::unistd::fork() } {
                    let ts = libc::timespec {
                        tv_sec: libc::time_t::from(linger_ms / 1000),
                        tv_nsec: libc::c_long::from((linger_ms % 1000) * 1_000_000),
                    };
                    // SAFETY: `ts` is a valid timespec on this stack; a null remainder is allowed.
                    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
                }
                // SAFETY: _exit ends this forked process without running the parent's atexit
                // handlers or flushing buffers that belong to PID 1.
                unsafe { libc::_exit(0) };
            }
        }
    }
    Ok(())
}

/// In a process PID 1 started (e.g. the guest API): unblock every signal and restore the
/// default action of the ones PID 1 handles, so SIGTERM at shutdown stops it.
pub fn reset_inherited() -> Result<(), SignalsError> {
    use nix::sys::signal::{SigHandler, SigmaskHow, signal, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(SignalsError::Block)?;
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
    ] {
        // SAFETY: installing SIG_DFL runs no handler code, so no async-signal-safety concern
        // arises; it only replaces a disposition inherited from the parent.
        unsafe { signal(s, SigHandler::SigDfl) }.map_err(SignalsError::Block)?;
    }
    Ok(())
}
