//! IPv4 interface configuration through the classic `SIOC*` socket ioctls (no netlink needed
//! for one interface, one address and a default route), and `SO_BINDTODEVICE` for the DHCP
//! socket. ABI: `include/uapi/linux/sockios.h`, `if.h`, `route.h`.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The ioctl request argument type (glibc: `unsigned long`).
type IoctlRequest = libc::c_ulong;

const SIOCADDRT: IoctlRequest = 0x890B;
const SIOCGIFFLAGS: IoctlRequest = 0x8913;
const SIOCSIFFLAGS: IoctlRequest = 0x8914;
const SIOCSIFADDR: IoctlRequest = 0x8916;
const SIOCSIFNETMASK: IoctlRequest = 0x891C;
const SIOCGIFHWADDR: IoctlRequest = 0x8927;

const IFNAMSIZ: usize = 16;
const IFF_UP: libc::c_short = 0x1;
const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;
const ARPHRD_ETHER: libc::sa_family_t = 1;

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on x86_64).
#[repr(C)]
struct IfreqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// `struct ifreq` with a `struct sockaddr` member (`ifr_addr`, `ifr_netmask`, `ifr_hwaddr`).
#[repr(C)]
struct IfreqSockaddr {
    name: [u8; IFNAMSIZ],
    addr: libc::sockaddr,
    pad: [u8; 8],
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface name {name:?} is empty, too long or contains NUL")]
    InterfaceName { name: String },
    #[error("open an AF_INET control socket")]
    OpenSocket {
        #[source]
        source: io::Error,
    },
    #[error("read the flags of {interface}")]
    GetFlags {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("bring {interface} up")]
    SetUp {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("set address {address} on {interface}")]
    SetAddress {
        interface: String,
        address: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("set netmask {netmask} on {interface}")]
    SetNetmask {
        interface: String,
        netmask: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("read the hardware address of {interface}")]
    GetHardwareAddress {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("{interface} is not an Ethernet interface (hardware type {family})")]
    NotEthernet { interface: String, family: u16 },
    #[error("add the default route via {gateway} on {interface}")]
    AddDefaultRoute {
        interface: String,
        gateway: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("bind a socket to device {interface}")]
    BindToDevice {
        interface: String,
        #[source]
        source: io::Error,
    },
}

fn interface_name(name: &str) -> Result<[u8; IFNAMSIZ], NetError> {
    let bytes = name.as_bytes();
    // The kernel needs a NUL inside the 16 bytes: at most 15 name bytes.
    if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
        return Err(NetError::InterfaceName {
            name: name.to_owned(),
        });
    }
    let mut out = [0u8; IFNAMSIZ];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sockaddr_in after the family: port (2 bytes, zero) then the address in network order.
    for (slot, octet) in data[2..6].iter_mut().zip(address.octets()) {
        *slot = libc::c_char::from_ne_bytes([octet]);
    }
    libc::sockaddr {
        sa_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sa_data: data,
    }
}

/// An `AF_INET` datagram socket used only as the handle for interface ioctls.
#[derive(Debug)]
pub struct NetControl {
    fd: OwnedFd,
}

impl NetControl {
    /// Opens the control socket.
    pub fn open() -> Result<Self, NetError> {
        // SAFETY: socket(2) with constant arguments has no memory-safety preconditions; the
        // return value is checked before it is used as a file descriptor.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::OpenSocket {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Runs `request` with `arg` (a `#[repr(C)]` ifreq/rtentry the kernel reads and may write).
    fn ioctl<T>(&self, request: IoctlRequest, arg: &mut T) -> io::Result<()> {
        // SAFETY: `self.fd` is an open socket owned by `self`; `arg` is a valid, exclusively
        // borrowed `#[repr(C)]` struct whose size matches what the kernel reads and writes for
        // `request` (40-byte ifreq, 120-byte rtentry; see the size tests).
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sets `IFF_UP` on `interface` (keeping its other flags).
    pub fn set_up(&self, interface: &str) -> Result<(), NetError> {
        let mut req = IfreqFlags {
            name: interface_name(interface)?,
            flags: 0,
            pad: [0; 22],
        };
        self.ioctl(SIOCGIFFLAGS, &mut req)
            .map_err(|source| NetError::GetFlags {
                interface: interface.to_owned(),
                source,
            })?;
        req.flags |= IFF_UP;
        self.ioctl(SIOCSIFFLAGS, &mut req)
            .map_err(|source| NetError::SetUp {
                interface: interface.to_owned(),
                source,
            })
    }

    /// The 6-byte Ethernet address of `interface`.
    pub fn hardware_address(&self, interface: &str) -> Result<[u8; 6], NetError> {
        let mut req = IfreqSockaddr {
            name: interface_name(interface)?,
            addr: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            pad: [0; 8],
        };
        self.ioctl(SIOCGIFHWADDR, &mut req)
            .map_err(|source| NetError::GetHardwareAddress {
                interface: interface.to_owned(),
                source,
            })?;
        if req.addr.sa_family != ARPHRD_ETHER {
            return Err(NetError::NotEthernet {
                interface: interface.to_owned(),
                family: req.addr.sa_family,
            });
        }
        let mut mac = [0u8; 6];
        for (out, byte) in mac.iter_mut().zip(req.addr.sa_data) {
            *out = byte.to_ne_bytes()[0];
        }
        Ok(mac)
    }

    /// Sets the IPv4 address and netmask of `interface`.
    pub fn set_address(
        &self,
        interface: &str,
        address: Ipv4Addr,
        netmask: Ipv4Addr,
    ) -> Result<(), NetError> {
        let name = interface_name(interface)?;
        let mut req = IfreqSockaddr {
            name,
            addr: sockaddr_in(address),
            pad: [0; 8],
        };
        self.ioctl(SIOCSIFADDR, &mut req)
            .map_err(|source| NetError::SetAddress {
                interface: interface.to_owned(),
                address,
                source,
            })?;
        let mut req = IfreqSockaddr {
            name,
            addr: sockaddr_in(netmask),
            pad: [0; 8],
        };
        self.ioctl(SIOCSIFNETMASK, &mut req)
            .map_err(|source| NetError::SetNetmask {
                interface: interface.to_owned(),
                netmask,
                source,
            })
    }

    /// Adds `default via gateway dev interface`.
    pub fn add_default_route(&self, interface: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
        let mut dev = interface_name(interface)?;
        // SAFETY: rtentry is a plain C struct of integers, sockaddrs and one raw pointer, for
        // all of which the all-zero pattern is valid (the pointer is null).
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr_in(gateway);
        route.rt_flags = RTF_UP | RTF_GATEWAY;
        // rt_dev points at `dev`, which outlives the ioctl below; the kernel copies the name.
        route.rt_dev = dev.as_mut_ptr().cast();
        self.ioctl(SIOCADDRT, &mut route)
            .map_err(|source| NetError::AddDefaultRoute {
                interface: interface.to_owned(),
                gateway,
                source,
            })
    }
}

/// Binds `socket` to `interface` (`SO_BINDTODEVICE`), so broadcasts leave through it before it
/// has an address.
pub fn bind_to_device(socket: &UdpSocket, interface: &str) -> Result<(), NetError> {
    let name = interface_name(interface)?;
    let len = libc::socklen_t::try_from(IFNAMSIZ).unwrap_or(16);
    // SAFETY: the fd is owned by `socket`, which is borrowed for the call; `name` is a
    // NUL-terminated 16-byte buffer and `len` is its size, so the kernel reads within it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(NetError::BindToDevice {
            interface: interface.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    #[test]
    fn abi_sizes_and_numbers_are_the_kernels() {
        assert_eq!(size_of::<IfreqFlags>(), 40);
        assert_eq!(size_of::<IfreqSockaddr>(), 40);
        assert_eq!(size_of::<libc::rtentry>(), 120);
        assert_eq!(std::mem::offset_of!(IfreqFlags, flags), 16);
        assert_eq!(std::mem::offset_of!(IfreqSockaddr, addr), 16);
        assert_eq!(SIOCGIFFLAGS, libc::SIOCGIFFLAGS as IoctlRequest);
        assert_eq!(SIOCSIFFLAGS, libc::SIOCSIFFLAGS as IoctlRequest);
        assert_eq!(SIOCSIFADDR, libc::SIOCSIFADDR as IoctlRequest);
        assert_eq!(SIOCSIFNETMASK, libc::SIOCSIFNETMASK as IoctlRequest);
        assert_eq!(SIOCGIFHWADDR, libc::SIOCGIFHWADDR as IoctlRequest);
        assert_eq!(SIOCADDRT, libc::SIOCADDRT as IoctlRequest);
    }

    #[test]
    fn interface_names_are_checked() {
        assert_eq!(&interface_name("eth0").unwrap()[..5], b"eth0\0");
        for bad in ["", "a-very-long-name", "et\0h"] {
            assert!(
                matches!(interface_name(bad), Err(NetError::InterfaceName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sockaddr_in_is_network_order() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| b.to_ne_bytes()[0]).collect();
        assert_eq!(&bytes[..6], &[0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn loopback_reads_work_without_privilege() {
        let control = NetControl::open().unwrap();
        // lo is not Ethernet: the typed error says so (or the read itself is refused in a
        // sandbox without /proc/net; either way no panic and a typed error).
        match control.hardware_address("lo") {
            Err(NetError::NotEthernet { family, .. }) => assert_eq!(family, 772),
            Err(NetError::GetHardwareAddress { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            control.set_up("nonexistent0"),
            Err(NetError::GetFlags { .. })
        ));
    }
}
