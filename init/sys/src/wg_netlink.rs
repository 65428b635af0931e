//! The kernel WireGuard interface through netlink, without the `wg` tool: create the link
//! (rtnetlink `RTM_NEWLINK`, kind `wireguard`), configure it (generic netlink family
//! `wireguard`, `WG_CMD_SET_DEVICE`: private key, listen port, peers with endpoint, keepalive
//! and allowed IPs) and add routes (`RTM_NEWROUTE`). ABI: `include/uapi/linux/netlink.h`,
//! `rtnetlink.h`, `if_link.h`, `genetlink.h`, `wireguard.h`; endpoints are `sockaddr_in` (`in.h`)
//! or `sockaddr_in6` (`in6.h`).
//!
//! The message builders are pure (host-tested byte for byte); [`Netlink`] is the thin socket.
//! The private key only ever sits in a zeroized buffer.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use zeroize::Zeroizing;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const IFNAMSIZ: usize = 16;
const EEXIST: i32 = 17;

/// Errors of the netlink layer.
#[derive(Debug, thiserror::Error)]
pub enum WgNetlinkError {
    #[error("interface name {name:?} is empty, too long or not ASCII")]
    InterfaceName { name: String },
    #[error("open a netlink socket")]
    Open(#[source] io::Error),
    #[error("send a netlink {what} request")]
    Send {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("receive the netlink {what} reply")]
    Receive {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {what} was refused")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {what} reply is malformed")]
    Malformed { what: &'static str },
    #[error("the kernel has no wireguard generic netlink family (module not loaded?)")]
    NoWireGuardFamily,
    #[error("interface {name} has no index")]
    NoIndex {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its UDP endpoint (IPv4 or IPv6).
    pub endpoint: SocketAddr,
    /// Persistent keepalive (seconds, 0 = off).
    pub keepalive_secs: u16,
    /// Allowed IPv4 networks (address, prefix length).
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
}

/// The device configuration: replaces every peer.
pub struct WgDevice<'a> {
    /// Interface name.
    pub name: &'a str,
    /// Private key (the caller keeps it zeroized).
    pub private_key: &'a [u8; 32],
    /// UDP listen port.
    pub listen_port: u16,
    /// Peers.
    pub peers: &'a [WgPeer],
}

impl std::fmt::Debug for WgDevice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgDevice")
            .field("name", &self.name)
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// A netlink message being built (header filled in by [`Message::finish`]).
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Self { buf }
    }

    fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    /// Opens a nested attribute; returns its offset for [`Message::end_nested`].
    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn checked_name(name: &str) -> Result<&str, WgNetlinkError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WgNetlinkError::InterfaceName {
            name: name.to_owned(),
        });
    }
    Ok(name)
}

/// `RTM_NEWLINK` creating `name` of kind `wireguard` (`NLM_F_EXCL`: an existing link answers
/// `EEXIST`, which [`Netlink::create_wireguard_link`] accepts).
pub fn new_link_message(name: &str, seq: u32) -> Result<Vec<u8>, WgNetlinkError> {
    let name = checked_name(name)?;
    let mut m = Message::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    );
    // struct ifinfomsg: family, pad, type, index, flags, change.
    m.bytes(&[0, 0, 0, 0])
        .bytes(&0i32.to_ne_bytes())
        .bytes(&0u32.to_ne_bytes())
        .bytes(&0u32.to_ne_bytes());
    m.attr_str(IFLA_IFNAME, name);
    let info = m.begin_nested(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, WG_GENL_NAME.as_bytes());
    m.end_nested(info);
    Ok(m.finish())
}

/// `RTM_NEWROUTE`: `dst/prefix dev <ifindex> scope link` in the main table (replacing).
pub fn new_route_message(dst: Ipv4Addr, prefix: u8, ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = Message::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    );
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.bytes(&[
        AF_INET,
        prefix.min(32),
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes());
    m.attr(RTA_DST, &dst.octets());
    m.attr(RTA_OIF, &ifindex.to_ne_bytes());
    m.finish()
}

/// `CTRL_CMD_GETFAMILY` for the `wireguard` family.
pub fn get_family_message(seq: u32) -> Vec<u8> {
    let mut m = Message::new(GENL_ID_CTRL, NLM_F_REQUEST, seq);
    m.bytes(&[CTRL_CMD_GETFAMILY, 1, 0, 0]);
    m.attr_str(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME);
    m.finish()
}

/// `struct sockaddr_in` (16 bytes): family (host order), port (network order), address,
/// 8 bytes of zero padding.
fn sockaddr_in(addr: SocketAddrV4) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..2].copy_from_slice(&u16::from(AF_INET).to_ne_bytes());
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    out[4..8].copy_from_slice(&addr.ip().octets());
    out
}

/// `struct sockaddr_in6` (28 bytes, `include/uapi/linux/in6.h`): `sin6_family` (host order),
/// `sin6_port` (`__be16`), `sin6_flowinfo` (`__be32`), `sin6_addr` (16 bytes), `sin6_scope_id`
/// (host order).
fn sockaddr_in6(addr: SocketAddrV6) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[..2].copy_from_slice(&u16::from(AF_INET6).to_ne_bytes());
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    out[4..8].copy_from_slice(&addr.flowinfo().to_be_bytes());
    out[8..24].copy_from_slice(&addr.ip().octets());
    out[24..28].copy_from_slice(&addr.scope_id().to_ne_bytes());
    out
}

/// `WGPEER_A_ENDPOINT`'s payload: a `sockaddr_in` or a `sockaddr_in6` (the kernel tells them
/// apart by length, `wireguard.h`).
fn endpoint_bytes(addr: SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(v4) => sockaddr_in(v4).to_vec(),
        SocketAddr::V6(v6) => sockaddr_in6(v6).to_vec(),
    }
}

/// `WG_CMD_SET_DEVICE` for `family` (the id from [`get_family_message`]'s reply): private
/// key, listen port, `WGDEVICE_F_REPLACE_PEERS`, and every peer with
/// `WGPEER_F_REPLACE_ALLOWEDIPS`. The buffer holds the private key: it is zeroized on drop.
pub fn set_device_message(
    family: u16,
    device: &WgDevice<'_>,
    seq: u32,
) -> Result<Zeroizing<Vec<u8>>, WgNetlinkError> {
    let name = checked_name(device.name)?;
    let mut m = Message::new(family, NLM_F_REQUEST | NLM_F_ACK, seq);
    m.bytes(&[WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0, 0]);
    m.attr_str(WGDEVICE_A_IFNAME, name);
    m.attr(WGDEVICE_A_PRIVATE_KEY, device.private_key);
    m.attr(WGDEVICE_A_LISTEN_PORT, &device.listen_port.to_ne_bytes());
    m.attr(WGDEVICE_A_FLAGS, &WGDEVICE_F_REPLACE_PEERS.to_ne_bytes());
    let peers = m.begin_nested(WGDEVICE_A_PEERS);
    for (i, peer) in device.peers.iter().enumerate() {
        let at = m.begin_nested(u16::try_from(i).unwrap_or(u16::MAX) & !NLA_F_NESTED);
        m.attr(WGPEER_A_PUBLIC_KEY, &peer.public_key);
        m.attr(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes());
        m.attr(WGPEER_A_ENDPOINT, &endpoint_bytes(peer.endpoint));
        m.attr(
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            &peer.keepalive_secs.to_ne_bytes(),
        );
        let ips = m.begin_nested(WGPEER_A_ALLOWEDIPS);
        for (j, (ip, prefix)) in peer.allowed_ips.iter().enumerate() {
            let one = m.begin_nested(u16::try_from(j).unwrap_or(u16::MAX) & !NLA_F_NESTED);
            m.attr(WGALLOWEDIP_A_FAMILY, &u16::from(AF_INET).to_ne_bytes());
            m.attr(WGALLOWEDIP_A_IPADDR, &ip.octets());
            m.attr(WGALLOWEDIP_A_CIDR_MASK, &[(*prefix).min(32)]);
            m.end_nested(one);
        }
        m.end_nested(ips);
        m.end_nested(at);
    }
    m.end_nested(peers);
    Ok(Zeroizing::new(m.finish()))
}

/// The outcome of one reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `NLMSG_ERROR` with error 0.
    Ack,
    /// `NLMSG_ERROR` with this (positive) errno.
    Error(i32),
    /// Another message: its type and payload (after the 16-byte header).
    Data { kind: u16, payload: &'a [u8] },
}

/// The first message of a reply datagram.
pub fn parse_reply(buf: &[u8]) -> Option<Reply<'_>> {
    let len = usize::try_from(u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?)).ok()?;
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    let msg = buf.get(..len)?;
    let payload = msg.get(NLMSG_HDRLEN..)?;
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
        return Some(if errno == 0 {
            Reply::Ack
        } else {
            Reply::Error(errno.saturating_neg())
        });
    }
    Some(Reply::Data { kind, payload })
}

/// The family id in a `CTRL_CMD_GETFAMILY` reply payload (genl header, then attributes).
pub fn parse_family_id(payload: &[u8]) -> Option<u16> {
    let mut attrs = payload.get(4..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes(attrs[..2].try_into().ok()?));
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == CTRL_ATTR_FAMILY_ID && len >= 6 {
            return Some(u16::from_ne_bytes(attrs[4..6].try_into().ok()?));
        }
        let next = len.div_ceil(4) * 4;
        attrs = attrs.get(next..).unwrap_or_default();
    }
    None
}

/// A netlink socket (`NETLINK_ROUTE` or `NETLINK_GENERIC`).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open(protocol: libc::c_int) -> Result<Self, WgNetlinkError> {
        // SAFETY: socket(2) with constant arguments has no memory-safety preconditions; the
        // result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(WgNetlinkError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `fd` is open; `timeout` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
            )
        };
        if rc < 0 {
            return Err(WgNetlinkError::Open(io::Error::last_os_error()));
        }
        Ok(Self { fd, seq: 1 })
    }

    /// A `NETLINK_ROUTE` socket.
    pub fn route() -> Result<Self, WgNetlinkError> {
        Self::open(libc::NETLINK_ROUTE)
    }

    /// A `NETLINK_GENERIC` socket.
    pub fn generic() -> Result<Self, WgNetlinkError> {
        Self::open(libc::NETLINK_GENERIC)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, what: &'static str, msg: &[u8]) -> Result<(), WgNetlinkError> {
        // SAFETY: all-zero is a valid sockaddr_nl (family set below; pid 0 = the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or(16);
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; `addr` is a valid sockaddr_nl
        // of the size passed; the fd is open.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or(12),
            )
        };
        if rc < 0 {
            return Err(WgNetlinkError::Send {
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn receive(&self, what: &'static str, buf: &mut [u8]) -> Result<usize, WgNetlinkError> {
        // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes.
        let rc = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(rc).map_err(|_| WgNetlinkError::Receive {
            what,
            source: io::Error::last_os_error(),
        })
    }

    /// Sends `msg` and waits for its ack; `accept` errnos count as success.
    fn request_ack(
        &self,
        what: &'static str,
        msg: &[u8],
        accept: &[i32],
    ) -> Result<(), WgNetlinkError> {
        self.send(what, msg)?;
        let mut buf = vec![0u8; 8192];
        let len = self.receive(what, &mut buf)?;
        match parse_reply(&buf[..len]) {
            Some(Reply::Ack) => Ok(()),
            Some(Reply::Error(errno)) if accept.contains(&errno) => Ok(()),
            Some(Reply::Error(errno)) => Err(WgNetlinkError::Refused {
                what,
                source: io::Error::from_raw_os_error(errno),
            }),
            _ => Err(WgNetlinkError::Malformed { what }),
        }
    }

    /// Creates a WireGuard link `name` (an existing one is kept).
    pub fn create_wireguard_link(&mut self, name: &str) -> Result<(), WgNetlinkError> {
        let seq = self.next_seq();
        self.request_ack("RTM_NEWLINK", &new_link_message(name, seq)?, &[EEXIST])
    }

    /// Adds (or replaces) `dst/prefix dev ifindex`.
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        ifindex: u32,
    ) -> Result<(), WgNetlinkError> {
        let seq = self.next_seq();
        self.request_ack(
            "RTM_NEWROUTE",
            &new_route_message(dst, prefix, ifindex, seq),
            &[],
        )
    }

    /// The `wireguard` generic netlink family id.
    pub fn wireguard_family(&mut self) -> Result<u16, WgNetlinkError> {
        let what = "CTRL_CMD_GETFAMILY";
        let seq = self.next_seq();
        self.send(what, &get_family_message(seq))?;
        let mut buf = vec![0u8; 8192];
        let len = self.receive(what, &mut buf)?;
        match parse_reply(&buf[..len]) {
            Some(Reply::Data { payload, .. }) => {
                parse_family_id(payload).ok_or(WgNetlinkError::Malformed { what })
            }
            Some(Reply::Error(_)) => Err(WgNetlinkError::NoWireGuardFamily),
            _ => Err(WgNetlinkError::Malformed { what }),
        }
    }

    /// Configures the device (`WG_CMD_SET_DEVICE`, replacing every peer).
    pub fn set_wireguard_device(
        &mut self,
        family: u16,
        device: &WgDevice<'_>,
    ) -> Result<(), WgNetlinkError> {
        let seq = self.next_seq();
        let msg = set_device_message(family, device, seq)?;
        self.request_ack("WG_CMD_SET_DEVICE", &msg, &[])
    }
}

/// The index of interface `name`.
pub fn interface_index(name: &str) -> Result<u32, WgNetlinkError> {
    let name = checked_name(name)?;
    let mut c = [0u8; IFNAMSIZ];
    c[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `c` is a NUL-terminated string (checked_name keeps it under IFNAMSIZ bytes).
    let index = unsafe { libc::if_nametoindex(c.as_ptr().cast()) };
    if index == 0 {
        return Err(WgNetlinkError::NoIndex {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn new_link_is_an_ifinfomsg_with_name_and_kind() {
        let m = new_link_message("dstack-wg0", 7).unwrap();
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), 0x1 | 0x4 | 0x400 | 0x200);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        // ifinfomsg is 16 bytes of zeros; then IFLA_IFNAME "dstack-wg0\0" (len 15, padded 16).
        assert!(m[16..32].iter().all(|b| *b == 0));
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (15, IFLA_IFNAME));
        assert_eq!(&m[36..47], b"dstack-wg0\0");
        // IFLA_LINKINFO (nested) { IFLA_INFO_KIND "wireguard" }.
        assert_eq!(u16_at(&m, 48), 4 + 4 + 9 + 3);
        assert_eq!(u16_at(&m, 50), IFLA_LINKINFO | NLA_F_NESTED);
        assert_eq!((u16_at(&m, 52), u16_at(&m, 54)), (13, IFLA_INFO_KIND));
        assert_eq!(&m[56..65], b"wireguard");
        assert_eq!(m.len(), 68);
        assert!(matches!(
            new_link_message("a-name-that-is-too-long", 1),
            Err(WgNetlinkError::InterfaceName { .. })
        ));
        new_link_message("", 1).unwrap_err();
    }

    #[test]
    fn route_is_a_link_scope_rtmsg() {
        let m = new_route_message(Ipv4Addr::new(10, 4, 0, 1), 32, 5, 9);
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(&m[16..24], &[2, 32, 0, 0, 254, 3, 253, 1]);
        assert_eq!((u16_at(&m, 28), u16_at(&m, 30)), (8, RTA_DST));
        assert_eq!(&m[32..36], &[10, 4, 0, 1]);
        assert_eq!((u16_at(&m, 36), u16_at(&m, 38)), (8, RTA_OIF));
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().unwrap()), 5);
        assert_eq!(m.len(), 44);
    }

    #[test]
    fn set_device_nests_peers_and_allowed_ips_as_uapi_wireguard_h() {
        let key = [0x11u8; 32];
        let peers = [WgPeer {
            public_key: [0x22; 32],
            endpoint: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 51820)),
            keepalive_secs: 25,
            allowed_ips: vec![(Ipv4Addr::new(10, 4, 0, 1), 32)],
        }];
        let dev = WgDevice {
            name: "dstack-wg0",
            private_key: &key,
            listen_port: 9182,
            peers: &peers,
        };
        let m = set_device_message(0x1d, &dev, 3).unwrap();
        assert_eq!(u16_at(&m, 4), 0x1d);
        assert_eq!(&m[16..20], &[WG_CMD_SET_DEVICE, 1, 0, 0]);
        let mut at = 20;
        let mut next = |m: &[u8]| {
            let (len, kind) = (u16_at(m, at), u16_at(m, at + 2));
            let here = at;
            at += usize::from(len).div_ceil(4) * 4;
            (here, len, kind)
        };
        let (_, _, kind) = next(&m);
        assert_eq!(kind, WGDEVICE_A_IFNAME);
        let (p, len, kind) = next(&m);
        assert_eq!((len, kind), (36, WGDEVICE_A_PRIVATE_KEY));
        assert_eq!(&m[p + 4..p + 36], &key);
        let (p, _, kind) = next(&m);
        assert_eq!(kind, WGDEVICE_A_LISTEN_PORT);
        assert_eq!(u16_at(&m, p + 4), 9182);
        let (p, _, kind) = next(&m);
        assert_eq!(kind, WGDEVICE_A_FLAGS);
        assert_eq!(u32::from_ne_bytes(m[p + 4..p + 8].try_into().unwrap()), 1);
        let (p, len, kind) = next(&m);
        assert_eq!(kind, WGDEVICE_A_PEERS | NLA_F_NESTED);
        assert_eq!(p + usize::from(len), m.len());
        // Peer 0 (nested), then its attributes.
        assert_eq!(u16_at(&m, p + 6), NLA_F_NESTED);
        let peer = p + 8;
        assert_eq!(
            (u16_at(&m, peer), u16_at(&m, peer + 2)),
            (36, WGPEER_A_PUBLIC_KEY)
        );
        assert_eq!(&m[peer + 4..peer + 36], &[0x22; 32]);
        let flags = peer + 36;
        assert_eq!(u16_at(&m, flags + 2), WGPEER_A_FLAGS);
        let endpoint = flags + 8;
        assert_eq!(
            (u16_at(&m, endpoint), u16_at(&m, endpoint + 2)),
            (20, WGPEER_A_ENDPOINT)
        );
        assert_eq!(u16_at(&m, endpoint + 4), 2);
        assert_eq!(&m[endpoint + 6..endpoint + 12], &[0xca, 0x6c, 10, 0, 2, 2]);
        let keepalive = endpoint + 20;
        assert_eq!(
            u16_at(&m, keepalive + 2),
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL
        );
        assert_eq!(u16_at(&m, keepalive + 4), 25);
        let ips = keepalive + 8;
        assert_eq!(u16_at(&m, ips + 2), WGPEER_A_ALLOWEDIPS | NLA_F_NESTED);
        let one = ips + 4;
        assert_eq!(u16_at(&m, one + 2), NLA_F_NESTED);
        assert_eq!(u16_at(&m, one + 6), WGALLOWEDIP_A_FAMILY);
        assert_eq!(u16_at(&m, one + 8), 2);
        assert_eq!(u16_at(&m, one + 14), WGALLOWEDIP_A_IPADDR);
        assert_eq!(&m[one + 16..one + 20], &[10, 4, 0, 1]);
        assert_eq!(u16_at(&m, one + 22), WGALLOWEDIP_A_CIDR_MASK);
        assert_eq!(m[one + 24], 32);
        assert_eq!(one + 28, m.len());
    }

    /// An IPv6 endpoint is a 28-byte `sockaddr_in6` in `WGPEER_A_ENDPOINT` (attribute length
    /// 32), laid out as `include/uapi/linux/in6.h` and glibc's `struct sockaddr_in6` agree;
    /// the attributes after it stay aligned.
    #[test]
    fn ipv6_endpoint_is_a_sockaddr_in6() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<libc::sockaddr_in6>(), 28);
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_family), 0);
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_port), 2);
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_flowinfo), 4);
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_addr), 8);
        assert_eq!(offset_of!(libc::sockaddr_in6, sin6_scope_id), 24);
        assert_eq!(size_of::<libc::sockaddr_in>(), 16);
        assert_eq!(libc::AF_INET6, i32::from(AF_INET6));
        let addr = SocketAddrV6::new("fd00::1:2".parse().unwrap(), 51820, 0x0001_2345, 7);
        let b = sockaddr_in6(addr);
        assert_eq!(&b[..2], &10u16.to_ne_bytes());
        assert_eq!(&b[2..4], &[0xca, 0x6c]);
        assert_eq!(&b[4..8], &[0x00, 0x01, 0x23, 0x45]);
        assert_eq!(
            &b[8..24],
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]
        );
        assert_eq!(&b[24..28], &7u32.to_ne_bytes());

        let peers = [WgPeer {
            public_key: [0x22; 32],
            endpoint: SocketAddr::V6(SocketAddrV6::new("fd00::1".parse().unwrap(), 9, 0, 0)),
            keepalive_secs: 25,
            allowed_ips: vec![(Ipv4Addr::new(10, 4, 0, 1), 32)],
        }];
        let key = [0x11u8; 32];
        let dev = WgDevice {
            name: "dstack-wg0",
            private_key: &key,
            listen_port: 9182,
            peers: &peers,
        };
        let m = set_device_message(0x1d, &dev, 3).unwrap();
        // ifname (16), private key (36), listen port (8), flags (8) after the genl header;
        // then the peers list, peer 0, its public key (36) and flags (8).
        let endpoint = 20 + 16 + 36 + 8 + 8 + 4 + 4 + 36 + 8;
        assert_eq!(
            (u16_at(&m, endpoint), u16_at(&m, endpoint + 2)),
            (32, WGPEER_A_ENDPOINT)
        );
        assert_eq!(u16_at(&m, endpoint + 4), 10);
        assert_eq!(&m[endpoint + 6..endpoint + 8], &[0, 9]);
        assert_eq!(&m[endpoint + 8..endpoint + 12], &[0; 4]);
        assert_eq!(m[endpoint + 12], 0xfd);
        assert_eq!(m[endpoint + 27], 1);
        assert_eq!(&m[endpoint + 28..endpoint + 32], &[0; 4]);
        let keepalive = endpoint + 32;
        assert_eq!(
            (u16_at(&m, keepalive), u16_at(&m, keepalive + 2)),
            (6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL)
        );
        assert_eq!(u16_at(&m, keepalive + 4), 25);
        let ips = keepalive + 8;
        assert_eq!(u16_at(&m, ips + 2), WGPEER_A_ALLOWEDIPS | NLA_F_NESTED);
        assert_eq!(ips + 4 + 28, m.len());
    }

    #[test]
    fn replies_parse_and_bad_ones_are_none() {
        let mut ack = vec![0u8; 36];
        ack[..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_reply(&ack), Some(Reply::Ack));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_reply(&ack), Some(Reply::Error(17)));
        assert_eq!(parse_reply(&ack[..10]), None);
        assert_eq!(parse_reply(&[]), None);
        // CTRL_CMD_NEWFAMILY payload: genl header, FAMILY_NAME, FAMILY_ID.
        let mut payload = vec![1, 2, 0, 0];
        payload.extend_from_slice(&14u16.to_ne_bytes());
        payload.extend_from_slice(&CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
        payload.extend_from_slice(b"wireguard\0\0\0");
        payload.extend_from_slice(&6u16.to_ne_bytes());
        payload.extend_from_slice(&CTRL_ATTR_FAMILY_ID.to_ne_bytes());
        payload.extend_from_slice(&0x22u16.to_ne_bytes());
        payload.extend_from_slice(&[0, 0]);
        assert_eq!(parse_family_id(&payload), Some(0x22));
        assert_eq!(parse_family_id(&payload[..8]), None);
        assert_eq!(parse_family_id(&[0, 0, 0, 0, 2, 0, 1, 0]), None);
    }
}
