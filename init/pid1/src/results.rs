//! The results channel: records go to the `cvm.results` virtio-serial port, buffered until the
//! port exists.

use std::path::Path;

use init_core::results::{Backlog, Record};
use init_sys::virtio_port::{VirtioPort, find_port};

const SYS_CLASS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

#[derive(Debug, Default)]
pub(crate) struct Results {
    port: Option<VirtioPort>,
    backlog: Backlog,
    port_failed: bool,
}

impl Results {
    pub(crate) fn record(&mut self, record: &Record) {
        match self.port.as_mut() {
            Some(port) => {
                if let Err(e) = port.write_line(&record.to_line()) {
                    if !self.port_failed {
                        log::warn!("{}", init_core::error_chain::one_line(&e));
                    }
                    self.port_failed = true;
                }
            }
            None => self.backlog.push(record),
        }
    }

    /// Open the port called `name` and flush the backlog. `Ok(false)`: this VM has no such port
    /// (production VMs normally don't), which is fine.
    pub(crate) fn open(
        &mut self,
        name: &str,
    ) -> Result<bool, init_sys::virtio_port::VirtioPortError> {
        if self.port.is_some() {
            return Ok(true);
        }
        let Some(path) = find_port(Path::new(SYS_CLASS_VIRTIO_PORTS), Path::new("/dev"), name)
        else {
            return Ok(false);
        };
        let mut port = VirtioPort::open(&path, name)?;
        let (lines, dropped) = self.backlog.drain();
        for line in lines {
            port.write_line(&line)?;
        }
        if dropped > 0 {
            log::warn!("{dropped} early results records were dropped");
        }
        self.port = Some(port);
        Ok(true)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.port.is_some()
    }
}
