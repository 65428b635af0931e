//! `AF_VSOCK` stream sockets (`include/uapi/linux/vm_sockets.h`): a connect bounded in time, for
//! the dstack host API (`vsock://2:<port>`, CID 2 = the host). Everything goes through nix's
//! typed `VsockAddr` / `socket` / `connect` / `poll` / `sockopt` wrappers, so this module has no
//! `unsafe` of its own; it owns the fd and hands out a [`VsockStream`] with read and write
//! timeouts set.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, VsockAddr, connect, getsockopt, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// The host's context id (`VMADDR_CID_HOST`).
pub const CID_HOST: u32 = 2;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("open an AF_VSOCK socket")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("connect to vsock {cid}:{port}")]
    Connect {
        cid: u32,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("connect to vsock {cid}:{port}: no answer within {timeout:?}")]
    ConnectTimeout {
        cid: u32,
        port: u32,
        timeout: Duration,
    },
    #[error("set the timeouts of the vsock socket")]
    SetTimeout {
        #[source]
        source: io::Error,
    },
}

/// A connected `AF_VSOCK` stream (blocking, with read and write timeouts).
#[derive(Debug)]
pub struct VsockStream {
    fd: std::fs::File,
}

impl VsockStream {
    /// Connects to `cid:port`, giving up after `timeout`; the stream's read and write timeouts
    /// are `io_timeout`.
    pub fn connect(
        cid: u32,
        port: u32,
        timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Self, VsockError> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| VsockError::Open { source: e.into() })?;
        let connect_err = |e: Errno| VsockError::Connect {
            cid,
            port,
            source: e.into(),
        };
        match connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)) {
            Ok(()) => {}
            Err(Errno::EINPROGRESS) => wait_connected(&fd, timeout).map_err(|e| match e {
                Wait::TimedOut => VsockError::ConnectTimeout { cid, port, timeout },
                Wait::Failed(e) => connect_err(e),
            })?,
            Err(e) => return Err(connect_err(e)),
        }
        // Back to blocking, bounded by the socket timeouts.
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(&connect_err)?;
        let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(&connect_err)?;
        let tv = timeval(io_timeout);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)
            .and_then(|()| setsockopt(&fd, sockopt::SendTimeout, &tv))
            .map_err(|e| VsockError::SetTimeout { source: e.into() })?;
        Ok(Self {
            fd: std::fs::File::from(fd),
        })
    }

    /// Sets the read timeout (at least 1 ms: a zero `SO_RCVTIMEO` would mean "forever").
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &timeval(timeout)).map_err(io::Error::from)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fd.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Wait {
    TimedOut,
    Failed(Errno),
}

/// Waits for a non-blocking connect to finish, then reads its result (`SO_ERROR`).
fn wait_connected(fd: &impl AsFd, timeout: Duration) -> Result<(), Wait> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Wait::TimedOut);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(Wait::Failed(e)),
        }
    }
    match getsockopt(fd, sockopt::SocketError) {
        Ok(0) => Ok(()),
        Ok(code) => Err(Wait::Failed(Errno::from_raw(code))),
        Err(e) => Err(Wait::Failed(e)),
    }
}

/// A `timeval` of `d`, never zero (zero disables the socket timeouts).
fn timeval(d: Duration) -> TimeVal {
    let d = d.max(Duration::from_millis(1));
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    TimeVal::new(secs, i64::from(d.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeval_is_never_zero() {
        assert_eq!(timeval(Duration::ZERO), TimeVal::new(0, 1000));
        assert_eq!(
            timeval(Duration::from_millis(5500)),
            TimeVal::new(5, 500_000)
        );
    }

    /// Without a vsock transport (a host with no vhost-vsock, a container) the connect fails
    /// promptly with a typed error rather than hanging.
    #[test]
    fn connect_fails_promptly_without_a_listener() {
        let started = Instant::now();
        let err = VsockStream::connect(
            CID_HOST,
            1,
            Duration::from_millis(500),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    }
}
