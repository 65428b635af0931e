//! The thin typed syscall layer of cvm-init: the only crate allowed `unsafe`. One module per kernel
//! interface; raw ABI structs and ioctl numbers stay private, the public surface is typed owners.
#![allow(unsafe_code)]

pub mod bpf;
pub mod ccel;
pub mod clock;
pub mod console;
pub mod devnode;
pub mod input;
pub mod kmod;
pub mod kmsg;
pub mod mount;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod power;
pub mod proc_scan;
pub mod signals;
pub mod switch_root;
pub mod tdx_guest;
pub mod tsm_report;
pub mod tsm_rtmr;
pub mod virtio_port;
pub mod vsock;
pub mod wg_netlink;
