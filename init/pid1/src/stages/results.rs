//! The `results` stage: open the `cvm.results` virtio-serial port (`virtio_console` is loaded
//! now) and flush the records buffered so far. A VM without the port logs to the console only.

use init_sys::virtio_port::VirtioPortError;

use crate::results::Results;

/// Runs the stage for the port called `name` (`cvm.results`). The error names the port.
pub(crate) fn run(results: &mut Results, name: &str) -> Result<(), VirtioPortError> {
    if !results.open(name)? {
        log::info!("no virtio port {name}: results go to the console only");
    }
    Ok(())
}
