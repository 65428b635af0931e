//! reboot(2) and sync(2): the end of every boot.

use std::convert::Infallible;

use nix::errno::Errno;
use nix::sys::reboot::RebootMode;

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("disable ctrl-alt-del reboot")]
    DisableCad(#[source] Errno),
    #[error("power off")]
    PowerOff(#[source] Errno),
}

/// Make ctrl-alt-del send SIGINT to PID 1 instead of rebooting at once.
pub fn route_ctrl_alt_del_to_sigint() -> Result<(), PowerError> {
    nix::sys::reboot::set_cad_enabled(false).map_err(PowerError::DisableCad)
}

/// Flush every filesystem.
pub fn sync() {
    nix::unistd::sync();
}

/// Power the machine off. Returns only on failure.
pub fn power_off() -> Result<Infallible, PowerError> {
    nix::sys::reboot::reboot(RebootMode::RB_POWER_OFF).map_err(PowerError::PowerOff)
}
