//! Network configuration for the KMS and registry connections: a DHCPv4 client codec
//! ([`dhcp`]), a DNS stub-resolver codec ([`dns`]) and the parsing of `kms_urls`-style
//! endpoints ([`endpoint`]). The init has no glibc NSS: names resolve through [`dns`] against the
//! servers the DHCP lease names. Sockets and interface ioctls live in `init-sys::net`.

pub mod dhcp;
pub mod dns;
pub mod endpoint;
pub mod nft;
pub mod rtnl;

use std::net::Ipv4Addr;

/// An IPv4 configuration for one interface (from a DHCP lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    /// The interface address.
    pub address: Ipv4Addr,
    /// The prefix length of the subnet (from the subnet-mask option).
    pub prefix_len: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers, in preference order.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Lease time in seconds (`u32::MAX` = infinite).
    pub lease_secs: u32,
    /// The DHCP server that granted the lease.
    pub server: Ipv4Addr,
}

impl Ipv4Config {
    /// The subnet mask of [`Ipv4Config::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        prefix_to_mask(self.prefix_len)
    }
}

/// `24` → `255.255.255.0`; lengths over 32 saturate to 32.
pub fn prefix_to_mask(prefix_len: u8) -> Ipv4Addr {
    let len = u32::from(prefix_len.min(32));
    let bits = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(bits)
}

/// `255.255.255.0` → `Some(24)`; a mask with holes → `None`.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    // A contiguous mask has no bits after its leading ones.
    let rest = bits.checked_shl(ones).unwrap_or(0);
    if rest != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_prefixes_round_trip() {
        for len in 0..=32u8 {
            assert_eq!(mask_to_prefix(prefix_to_mask(len)), Some(len), "{len}");
        }
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
    }
}
