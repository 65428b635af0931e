//! DHCPv4 (RFC 2131/2132) client messages: DISCOVER and REQUEST out, OFFER/ACK/NAK in.
//!
//! The init runs the exchange once per boot (DISCOVER → OFFER → REQUEST → ACK) with the
//! broadcast flag set, so the server broadcasts its replies and an unconfigured interface can
//! receive them on a UDP socket bound to port 68. Replies are untrusted bytes from the host
//! network: every field is bounds-checked, the transaction id and hardware address must match,
//! and the options the init relies on are validated.

use std::net::Ipv4Addr;

use super::{Ipv4Config, mask_to_prefix};

/// UDP port of DHCP servers.
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;
/// Largest reply the client reads (RFC 2131 minimum is 576; Ethernet MTU is the practical cap).
pub const MAX_MESSAGE_LEN: usize = 1500;

const OP_REQUEST: u8 = 1;
const OP_REPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Length of the fixed BOOTP header before the magic cookie.
const FIXED_LEN: usize = 236;
const OPTIONS_OFFSET: usize = FIXED_LEN + 4;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_OVERLOAD: u8 = 52;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETER_LIST: u8 = 55;
const OPT_MAX_MESSAGE_SIZE: u8 = 57;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    const fn code(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// Errors of [`parse_reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP message is {len} bytes, shorter than the {OPTIONS_OFFSET}-byte header")]
    Truncated { len: usize },
    #[error("DHCP message is {len} bytes, more than {MAX_MESSAGE_LEN}")]
    Oversized { len: usize },
    #[error("not a BOOTP reply (op {op})")]
    NotReply { op: u8 },
    #[error("DHCP magic cookie missing")]
    BadCookie,
    #[error("transaction id {actual:#010x} is not ours ({expected:#010x})")]
    WrongTransaction { expected: u32, actual: u32 },
    #[error("reply is for another hardware address")]
    WrongHardwareAddress,
    #[error("DHCP option {code} runs past the end of the message")]
    OptionOverrun { code: u8 },
    #[error("DHCP option {code} has invalid length {len}")]
    OptionLength { code: u8, len: usize },
    #[error("DHCP reply has no message type option")]
    NoMessageType,
    #[error("unknown DHCP message type {code}")]
    UnknownMessageType { code: u8 },
    #[error("DHCP {message_type:?} has no server identifier")]
    NoServerId { message_type: MessageType },
    #[error("DHCP {message_type:?} offers the unusable address {address}")]
    UnusableAddress {
        message_type: MessageType,
        address: Ipv4Addr,
    },
    #[error("DHCP subnet mask {mask} is not contiguous")]
    BadSubnetMask { mask: Ipv4Addr },
}

/// A parsed OFFER, ACK or NAK (any other type is returned too; the caller decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_type: MessageType,
    /// `yiaddr`: the address offered or acknowledged.
    pub your_address: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub lease_secs: Option<u32>,
}

impl Reply {
    /// The interface configuration an ACK grants. Without a subnet-mask option no classful
    /// default is guessed: the address is a /32 and the caller adds the gateway as an on-link
    /// route. Requires the server identifier and a usable unicast address.
    pub fn to_config(&self) -> Result<Ipv4Config, DhcpError> {
        let server = self.server_id.ok_or(DhcpError::NoServerId {
            message_type: self.message_type,
        })?;
        let address = self.your_address;
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(DhcpError::UnusableAddress {
                message_type: self.message_type,
                address,
            });
        }
        let prefix_len = match self.subnet_mask {
            Some(mask) => mask_to_prefix(mask).ok_or(DhcpError::BadSubnetMask { mask })?,
            None => 32,
        };
        Ok(Ipv4Config {
            address,
            prefix_len,
            gateway: self.routers.first().copied(),
            dns_servers: self.dns_servers.clone(),
            lease_secs: self.lease_secs.unwrap_or(u32::MAX),
            server,
        })
    }
}

/// The client side of one exchange: hardware address and transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    mac: [u8; 6],
    xid: u32,
    hostname: Option<String>,
}

impl Client {
    /// A client for `mac` using transaction id `xid` (random per boot).
    pub fn new(mac: [u8; 6], xid: u32) -> Self {
        Self {
            mac,
            xid,
            hostname: None,
        }
    }

    /// Sends option 12 (host name), truncated to 63 bytes of `[A-Za-z0-9-]`.
    #[must_use]
    pub fn with_hostname(mut self, hostname: &str) -> Self {
        let clean: String = hostname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(63)
            .collect();
        self.hostname = (!clean.is_empty()).then_some(clean);
        self
    }

    /// The transaction id.
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// A DHCPDISCOVER.
    pub fn discover(&self) -> Vec<u8> {
        self.message(MessageType::Discover, &[])
    }

    /// A DHCPREQUEST (SELECTING state) for the address `offer` offered by its server.
    pub fn request(&self, offer: &Reply) -> Vec<u8> {
        let mut extra = Vec::new();
        push_option(&mut extra, OPT_REQUESTED_IP, &offer.your_address.octets());
        if let Some(server) = offer.server_id {
            push_option(&mut extra, OPT_SERVER_ID, &server.octets());
        }
        self.message(MessageType::Request, &extra)
    }

    fn message(&self, message_type: MessageType, extra: &[u8]) -> Vec<u8> {
        let mut msg = vec![0u8; FIXED_LEN];
        msg[0] = OP_REQUEST;
        msg[1] = HTYPE_ETHERNET;
        msg[2] = HLEN_ETHERNET;
        msg[4..8].copy_from_slice(&self.xid.to_be_bytes());
        msg[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        msg[28..34].copy_from_slice(&self.mac);
        msg.extend_from_slice(&MAGIC_COOKIE);
        push_option(&mut msg, OPT_MESSAGE_TYPE, &[message_type.code()]);
        let mut client_id = vec![HTYPE_ETHERNET];
        client_id.extend_from_slice(&self.mac);
        push_option(&mut msg, OPT_CLIENT_ID, &client_id);
        push_option(
            &mut msg,
            OPT_MAX_MESSAGE_SIZE,
            &u16::try_from(MAX_MESSAGE_LEN)
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        push_option(
            &mut msg,
            OPT_PARAMETER_LIST,
            &[OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_LEASE_TIME],
        );
        if let Some(hostname) = &self.hostname {
            push_option(&mut msg, OPT_HOSTNAME, hostname.as_bytes());
        }
        msg.extend_from_slice(extra);
        msg.push(OPT_END);
        // Pad to the 300-byte BOOTP minimum some servers expect.
        if msg.len() < 300 {
            msg.resize(300, OPT_PAD);
        }
        msg
    }

    /// Parses a reply and checks it answers this client.
    pub fn parse_reply(&self, bytes: &[u8]) -> Result<Reply, DhcpError> {
        parse_reply(bytes, self.xid, &self.mac)
    }
}

fn push_option(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    // Every option this client sends is far below 255 bytes (hostname capped at 63).
    let len = u8::try_from(value.len()).unwrap_or(u8::MAX);
    out.push(code);
    out.push(len);
    out.extend_from_slice(value.get(..usize::from(len)).unwrap_or(value));
}

/// Parses a server reply for transaction `xid` and hardware address `mac`.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Result<Reply, DhcpError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DhcpError::Oversized { len: bytes.len() });
    }
    let header = bytes
        .get(..OPTIONS_OFFSET)
        .ok_or(DhcpError::Truncated { len: bytes.len() })?;
    if header[0] != OP_REPLY {
        return Err(DhcpError::NotReply { op: header[0] });
    }
    let actual = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if actual != xid {
        return Err(DhcpError::WrongTransaction {
            expected: xid,
            actual,
        });
    }
    if header[1] != HTYPE_ETHERNET || header[2] != HLEN_ETHERNET || header[28..34] != mac[..] {
        return Err(DhcpError::WrongHardwareAddress);
    }
    if header[FIXED_LEN..OPTIONS_OFFSET] != MAGIC_COOKIE {
        return Err(DhcpError::BadCookie);
    }
    let your_address = Ipv4Addr::new(header[16], header[17], header[18], header[19]);

    let mut reply = Reply {
        message_type: MessageType::Nak,
        your_address,
        server_id: None,
        subnet_mask: None,
        routers: Vec::new(),
        dns_servers: Vec::new(),
        lease_secs: None,
    };
    let mut message_type = None;
    let options = bytes.get(OPTIONS_OFFSET..).unwrap_or_default();
    let mut at = 0usize;
    while let Some(&code) = options.get(at) {
        match code {
            OPT_PAD => {
                at += 1;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let len = usize::from(
            *options
                .get(at + 1)
                .ok_or(DhcpError::OptionOverrun { code })?,
        );
        let value = options
            .get(at + 2..at + 2 + len)
            .ok_or(DhcpError::OptionOverrun { code })?;
        at += 2 + len;
        match code {
            OPT_MESSAGE_TYPE => {
                let [value] = value else {
                    return Err(DhcpError::OptionLength { code, len });
                };
                message_type = Some(
                    MessageType::from_code(*value)
                        .ok_or(DhcpError::UnknownMessageType { code: *value })?,
                );
            }
            OPT_SERVER_ID => reply.server_id = Some(single_address(code, value)?),
            OPT_SUBNET_MASK => reply.subnet_mask = Some(single_address(code, value)?),
            OPT_ROUTER => reply.routers = address_list(code, value)?,
            OPT_DNS => reply.dns_servers = address_list(code, value)?,
            OPT_LEASE_TIME => {
                let array: [u8; 4] = value
                    .try_into()
                    .map_err(|_| DhcpError::OptionLength { code, len })?;
                reply.lease_secs = Some(u32::from_be_bytes(array));
            }
            // Option overload would put more options in sname/file; the values the init needs
            // are always in the options field in practice, so overloaded fields are ignored.
            OPT_OVERLOAD => {}
            _ => {}
        }
    }
    reply.message_type = message_type.ok_or(DhcpError::NoMessageType)?;
    Ok(reply)
}

fn single_address(code: u8, value: &[u8]) -> Result<Ipv4Addr, DhcpError> {
    let octets: [u8; 4] = value.try_into().map_err(|_| DhcpError::OptionLength {
        code,
        len: value.len(),
    })?;
    Ok(Ipv4Addr::from(octets))
}

fn address_list(code: u8, value: &[u8]) -> Result<Vec<Ipv4Addr>, DhcpError> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return Err(DhcpError::OptionLength {
            code,
            len: value.len(),
        });
    }
    Ok(value
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

/// Builds a server reply (for tests and fuzz seeds): the answer a server would send to a
/// message of `client`.
#[cfg(any(test, feature = "testing"))]
pub fn server_reply(
    client: &Client,
    message_type: MessageType,
    your_address: Ipv4Addr,
    options: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut msg = vec![0u8; FIXED_LEN];
    msg[0] = OP_REPLY;
    msg[1] = HTYPE_ETHERNET;
    msg[2] = HLEN_ETHERNET;
    msg[4..8].copy_from_slice(&client.xid.to_be_bytes());
    msg[16..20].copy_from_slice(&your_address.octets());
    msg[28..34].copy_from_slice(&client.mac);
    msg.extend_from_slice(&MAGIC_COOKIE);
    push_option(&mut msg, OPT_MESSAGE_TYPE, &[message_type.code()]);
    for (code, value) in options {
        push_option(&mut msg, *code, value);
    }
    msg.push(OPT_END);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn slirp_options() -> Vec<(u8, Vec<u8>)> {
        vec![
            (OPT_SERVER_ID, vec![10, 0, 2, 2]),
            (OPT_SUBNET_MASK, vec![255, 255, 255, 0]),
            (OPT_ROUTER, vec![10, 0, 2, 2]),
            (OPT_DNS, vec![10, 0, 2, 3]),
            (OPT_LEASE_TIME, 86_400u32.to_be_bytes().to_vec()),
        ]
    }

    #[test]
    fn discover_layout_is_rfc2131() {
        let client = Client::new(MAC, 0xdead_beef).with_hostname("cvm init!");
        let msg = client.discover();
        assert_eq!(msg.len(), 300);
        assert_eq!(&msg[..4], &[1, 1, 6, 0]);
        assert_eq!(&msg[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&msg[10..12], &[0x80, 0x00], "broadcast flag");
        assert_eq!(&msg[28..34], &MAC);
        assert_eq!(&msg[236..240], &MAGIC_COOKIE);
        assert_eq!(&msg[240..243], &[OPT_MESSAGE_TYPE, 1, 1]);
        // The hostname lost its space and '!'.
        let needle = [OPT_HOSTNAME, 7, b'c', b'v', b'm', b'i', b'n', b'i', b't'];
        assert!(msg.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn request_names_the_offer_and_its_server() {
        let client = Client::new(MAC, 7);
        let offer_bytes = server_reply(
            &client,
            MessageType::Offer,
            Ipv4Addr::new(10, 0, 2, 15),
            &slirp_options(),
        );
        let offer = client.parse_reply(&offer_bytes).unwrap();
        let request = client.request(&offer);
        assert_eq!(&request[240..243], &[OPT_MESSAGE_TYPE, 1, 3]);
        let requested = [OPT_REQUESTED_IP, 4, 10, 0, 2, 15];
        let server = [OPT_SERVER_ID, 4, 10, 0, 2, 2];
        assert!(request.windows(6).any(|w| w == requested));
        assert!(request.windows(6).any(|w| w == server));
    }

    #[test]
    fn ack_becomes_a_config() {
        let client = Client::new(MAC, 7);
        let ack = server_reply(
            &client,
            MessageType::Ack,
            Ipv4Addr::new(10, 0, 2, 15),
            &slirp_options(),
        );
        let reply = client.parse_reply(&ack).unwrap();
        assert_eq!(reply.message_type, MessageType::Ack);
        let config = reply.to_config().unwrap();
        assert_eq!(
            config,
            Ipv4Config {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
                lease_secs: 86_400,
                server: Ipv4Addr::new(10, 0, 2, 2),
            }
        );
    }

    #[test]
    fn foreign_and_malformed_replies_are_refused() {
        let client = Client::new(MAC, 7);
        let addr = Ipv4Addr::new(10, 0, 2, 15);
        let good = server_reply(&client, MessageType::Ack, addr, &slirp_options());

        let other = Client::new(MAC, 8);
        assert_eq!(
            other.parse_reply(&good),
            Err(DhcpError::WrongTransaction {
                expected: 8,
                actual: 7
            })
        );
        let other_mac = Client::new([0; 6], 7);
        assert_eq!(
            other_mac.parse_reply(&good),
            Err(DhcpError::WrongHardwareAddress)
        );
        assert_eq!(
            client.parse_reply(&good[..100]),
            Err(DhcpError::Truncated { len: 100 })
        );
        let mut not_reply = good.clone();
        not_reply[0] = 1;
        assert_eq!(
            client.parse_reply(&not_reply),
            Err(DhcpError::NotReply { op: 1 })
        );
        let mut bad_cookie = good.clone();
        bad_cookie[236] = 0;
        assert_eq!(client.parse_reply(&bad_cookie), Err(DhcpError::BadCookie));

        // An option whose length runs past the end.
        let mut overrun = good[..OPTIONS_OFFSET].to_vec();
        overrun.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, 5, OPT_DNS, 200, 1, 2]);
        assert_eq!(
            client.parse_reply(&overrun),
            Err(DhcpError::OptionOverrun { code: OPT_DNS })
        );
        let bad_dns = server_reply(&client, MessageType::Ack, addr, &[(OPT_DNS, vec![1, 2, 3])]);
        assert_eq!(
            client.parse_reply(&bad_dns),
            Err(DhcpError::OptionLength {
                code: OPT_DNS,
                len: 3
            })
        );
        let mut no_type = good[..OPTIONS_OFFSET].to_vec();
        no_type.push(OPT_END);
        assert_eq!(client.parse_reply(&no_type), Err(DhcpError::NoMessageType));
        assert_eq!(
            client.parse_reply(&vec![0u8; MAX_MESSAGE_LEN + 1]),
            Err(DhcpError::Oversized {
                len: MAX_MESSAGE_LEN + 1
            })
        );
    }

    #[test]
    fn unusable_leases_are_refused() {
        let client = Client::new(MAC, 7);
        let zero = server_reply(
            &client,
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            &slirp_options(),
        );
        assert!(matches!(
            client.parse_reply(&zero).unwrap().to_config(),
            Err(DhcpError::UnusableAddress { .. })
        ));
        let no_server = server_reply(
            &client,
            MessageType::Ack,
            Ipv4Addr::new(10, 0, 2, 15),
            &[(OPT_SUBNET_MASK, vec![255, 255, 255, 0])],
        );
        assert_eq!(
            client.parse_reply(&no_server).unwrap().to_config(),
            Err(DhcpError::NoServerId {
                message_type: MessageType::Ack
            })
        );
        let holey = server_reply(
            &client,
            MessageType::Ack,
            Ipv4Addr::new(10, 0, 2, 15),
            &[
                (OPT_SERVER_ID, vec![10, 0, 2, 2]),
                (OPT_SUBNET_MASK, vec![255, 0, 255, 0]),
            ],
        );
        assert_eq!(
            client.parse_reply(&holey).unwrap().to_config(),
            Err(DhcpError::BadSubnetMask {
                mask: Ipv4Addr::new(255, 0, 255, 0)
            })
        );
    }
}
