//! Netlink sockets for requests that the kernel acknowledges: rtnetlink (links, addresses,
//! routes) and nfnetlink (nftables batches). The bytes come from `init_core::net::{rtnl, nft}`;
//! this module sends them and reads the `NLMSG_ERROR` replies (error 0 is the ack). ABI:
//! `include/uapi/linux/netlink.h` (`struct nlmsghdr`, `struct nlmsgerr`). Safe code over nix.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// How long one request may wait for its acks.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open a netlink socket")]
    Open(#[source] Errno),
    #[error("send a netlink request")]
    Send(#[source] Errno),
    #[error("send a netlink request: {sent} of {len} bytes sent")]
    ShortSend { sent: usize, len: usize },
    #[error("read the netlink reply")]
    Receive(#[source] Errno),
    #[error("the netlink reply is truncated or malformed")]
    Malformed,
    #[error("the kernel refused request {seq}")]
    Refused {
        seq: u32,
        #[source]
        errno: Errno,
    },
}

/// One reply message: `Ok(seq)` for an ack, `Err((seq, errno))` for a refusal; other
/// messages are skipped.
type Reply = Result<u32, (u32, i32)>;

/// The `NLMSG_ERROR` replies in `buf`.
fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let word = |at: usize| -> Result<[u8; 4], NetlinkError> {
            buf.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(NetlinkError::Malformed)
        };
        let len = u32::from_ne_bytes(word(0)?) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes(word(8)?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetlinkError::Malformed);
        }
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes(word(NLMSG_HDRLEN)?);
            out.push(if code == 0 {
                Ok(seq)
            } else {
                Err((seq, -code))
            });
        }
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(out)
}

/// A netlink socket of one protocol, bound to a kernel-chosen port id.
#[derive(Debug)]
pub struct NetlinkSocket(OwnedFd);

impl NetlinkSocket {
    fn open(protocol: SockProtocol) -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(NetlinkError::Open)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NetlinkError::Open)?;
        let timeout = TimeVal::new(i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(5), 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(NetlinkError::Open)?;
        Ok(Self(fd))
    }

    /// `NETLINK_ROUTE`, in the caller's current network namespace.
    pub fn route() -> Result<Self, NetlinkError> {
        Self::open(SockProtocol::NetlinkRoute)
    }

    /// `NETLINK_NETFILTER`.
    pub fn netfilter() -> Result<Self, NetlinkError> {
        Self::open(SockProtocol::NetlinkNetFilter)
    }

    /// Sends `bytes` (one or more messages, in one datagram) and waits for `acks` acks; the
    /// first refusal is the error.
    pub fn request(&self, bytes: &[u8], acks: u32) -> Result<(), NetlinkError> {
        let sent =
            send(self.0.as_raw_fd(), bytes, MsgFlags::empty()).map_err(NetlinkError::Send)?;
        if sent != bytes.len() {
            return Err(NetlinkError::ShortSend {
                sent,
                len: bytes.len(),
            });
        }
        let mut seen = 0;
        let mut buf = vec![0u8; 64 << 10];
        while seen < acks {
            let n = loop {
                match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Err(Errno::EINTR) => {}
                    other => break other.map_err(NetlinkError::Receive)?,
                }
            };
            for reply in parse_replies(buf.get(..n).unwrap_or_default())? {
                match reply {
                    Ok(_) => seen += 1,
                    Err((seq, code)) => {
                        return Err(NetlinkError::Refused {
                            seq,
                            errno: Errno::from_raw(code),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_msg(seq: u32, code: i32) -> Vec<u8> {
        // nlmsghdr (16) + nlmsgerr { int error; struct nlmsghdr msg } (20)
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn acks_and_refusals_are_read_from_nlmsgerr() {
        let mut buf = error_msg(7, 0);
        buf.extend(error_msg(8, -17));
        assert_eq!(parse_replies(&buf).unwrap(), vec![Ok(7), Err((8, 17))]);
        assert!(matches!(
            parse_replies(&buf[..20]),
            Err(NetlinkError::Malformed)
        ));
    }

    #[test]
    fn other_messages_are_skipped() {
        let mut done = error_msg(1, 0);
        done[4..6].copy_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        assert_eq!(parse_replies(&done).unwrap(), vec![]);
    }
}
