//! rtnetlink requests the init sends to set up the workload networks: a bridge, a veth pair
//! whose peer is created inside a service's network namespace, an interface's controller and
//! up state, an IPv4 address, a default route. Built with `netlink-packet-route` (the crate
//! libcontainer already links), serialized here so the bytes are host-testable; the socket
//! that sends them and reads the acks is `init_sys::netlink`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

fn serialize(message: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `ip link add NAME type bridge`.
pub fn new_bridge(name: &str, seq: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    link.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    serialize(RouteNetlinkMessage::NewLink(link), CREATE, seq)
}

/// `ip link add HOST type veth peer name PEER netns FD`: the peer is created inside the
/// network namespace `netns` (an open nsfs file), so its name only has to be unique there.
pub fn new_veth(host: &str, peer: &str, netns: RawFd, seq: u32) -> Vec<u8> {
    let mut inner = LinkMessage::default();
    inner
        .attributes
        .push(LinkAttribute::IfName(peer.to_owned()));
    inner.attributes.push(LinkAttribute::NetNsFd(netns));
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(host.to_owned()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(inner))),
    ]));
    serialize(RouteNetlinkMessage::NewLink(link), CREATE, seq)
}

/// `ip link set dev INDEX up [master CONTROLLER]`.
pub fn set_up(index: u32, controller: Option<u32>, seq: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    if let Some(c) = controller {
        link.attributes.push(LinkAttribute::Controller(c));
    }
    serialize(RouteNetlinkMessage::SetLink(link), CHANGE, seq)
}

/// `ip addr add ADDRESS/PREFIX dev INDEX`.
pub fn add_address(index: u32, address: Ipv4Addr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(address)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(address)));
    let bits = u32::from(address) | !u32::from(super::prefix_to_mask(prefix_len));
    msg.attributes
        .push(AddressAttribute::Broadcast(Ipv4Addr::from(bits)));
    serialize(RouteNetlinkMessage::NewAddress(msg), CREATE, seq)
}

/// `ip route add default via GATEWAY`.
pub fn add_default_route(gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    serialize(RouteNetlinkMessage::NewRoute(msg), CREATE, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The attributes after a fixed header, as (type, payload).
    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = usize::from(u16_at(b, 0));
            out.push((u16_at(b, 2), b[4..len].to_vec()));
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        out
    }

    #[test]
    fn bridge_request_is_rtm_newlink_with_kind_bridge() {
        let b = new_bridge("cvmbr0", 7);
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(u16_at(&b, 4), 16, "RTM_NEWLINK");
        assert_eq!(u16_at(&b, 6), 0x0605, "REQUEST|ACK|EXCL|CREATE");
        assert_eq!(u32_at(&b, 8), 7);
        // ifinfomsg is 16 bytes after the 16-byte nlmsghdr.
        let a = attrs(&b[32..]);
        assert_eq!(a[0], (3, b"cvmbr0\0".to_vec()), "IFLA_IFNAME");
        assert_eq!(a[1].0 & 0x7fff, 18, "IFLA_LINKINFO");
        assert_eq!(
            attrs(&a[1].1)[0],
            (1, b"bridge\0".to_vec()),
            "IFLA_INFO_KIND"
        );
    }

    #[test]
    fn veth_peer_goes_into_the_namespace_fd() {
        let b = new_veth("cv0n0", "eth0", 42, 1);
        let a = attrs(&b[32..]);
        let info = attrs(&a[1].1);
        assert_eq!(info[0], (1, b"veth\0".to_vec()));
        assert_eq!(info[1].0 & 0x7fff, 2, "IFLA_INFO_DATA");
        let peer = attrs(&info[1].1);
        assert_eq!(peer[0].0 & 0x7fff, 1, "VETH_INFO_PEER");
        // The peer is an ifinfomsg (16 bytes) and its attributes.
        let peer_attrs = attrs(&peer[0].1[16..]);
        assert!(peer_attrs.contains(&(3, b"eth0\0".to_vec())));
        assert!(
            peer_attrs.contains(&(28, 42u32.to_ne_bytes().to_vec())),
            "IFLA_NET_NS_FD"
        );
    }

    #[test]
    fn set_up_sets_iff_up_and_the_controller() {
        let b = set_up(5, Some(3), 2);
        assert_eq!(u16_at(&b, 4), 19, "RTM_SETLINK");
        assert_eq!(u32_at(&b, 16 + 4), 5, "ifi_index");
        assert_eq!(u32_at(&b, 16 + 8) & 1, 1, "ifi_flags IFF_UP");
        assert_eq!(u32_at(&b, 16 + 12) & 1, 1, "ifi_change IFF_UP");
        assert_eq!(
            attrs(&b[32..]),
            vec![(10, 3u32.to_ne_bytes().to_vec())],
            "IFLA_MASTER"
        );
    }

    #[test]
    fn address_and_route_requests() {
        let b = add_address(4, Ipv4Addr::new(172, 30, 0, 2), 24, 3);
        assert_eq!(u16_at(&b, 4), 20, "RTM_NEWADDR");
        assert_eq!(&b[16..18], &[2, 24], "AF_INET /24");
        assert_eq!(u32_at(&b, 20), 4);
        let a = attrs(&b[24..]);
        assert!(a.contains(&(2, vec![172, 30, 0, 2])), "IFA_LOCAL");
        assert!(a.contains(&(4, vec![172, 30, 0, 255])), "IFA_BROADCAST");
        let r = add_default_route(Ipv4Addr::new(172, 30, 0, 1), 4);
        assert_eq!(u16_at(&r, 4), 24, "RTM_NEWROUTE");
        // rtmsg: family, dst_len 0, src_len, tos, table main, protocol boot, scope universe, type unicast
        assert_eq!(&r[16..24], &[2, 0, 0, 0, 254, 3, 0, 1]);
        assert_eq!(
            attrs(&r[28..]),
            vec![(5, vec![172, 30, 0, 1])],
            "RTA_GATEWAY"
        );
    }
}
