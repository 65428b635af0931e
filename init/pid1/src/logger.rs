//! The `log` backend of PID 1: every line goes to the console (stderr, which the kernel attached
//! to /dev/console) and to /dev/kmsg, prefixed with the monotonic time.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use init_core::cmdline::LogLevel;
use init_sys::kmsg::{Kmsg, Priority};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    kmsg: Mutex<Option<Kmsg>>,
    max: AtomicUsize,
}

static LOGGER: Logger = Logger {
    kmsg: Mutex::new(None),
    max: AtomicUsize::new(3),
};

/// Format one console line: `[    1.234567] cvm-init: message`.
pub(crate) fn format_line(mono_us: u64, message: &str) -> String {
    format!(
        "[{:5}.{:06}] cvm-init: {}",
        mono_us / 1_000_000,
        mono_us % 1_000_000,
        message
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        (metadata.level() as usize) <= self.max.load(Ordering::Relaxed)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let line = format_line(init_sys::clock::monotonic_us(), &message);
        // Console first: it is the operator's view. Errors writing logs cannot be reported
        // anywhere better, so they are dropped.
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
        // The line is already on the console; the kernel would echo any kmsg record below the
        // console log level (7 by default) a second time. Records therefore go to kmsg at debug
        // priority, with the real level spelled out in the text.
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info | Level::Debug | Level::Trace => "",
        };
        let priority = Priority::Debug;
        if let Ok(mut guard) = self.kmsg.lock()
            && let Some(kmsg) = guard.as_mut()
        {
            let _ = kmsg.write_line(priority, &format!("cvm-init: {level}{message}"));
        }
    }

    fn flush(&self) {}
}

/// Install the logger (console only until `attach_kmsg`).
pub(crate) fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}

/// Start copying lines to /dev/kmsg (once /dev is mounted).
pub(crate) fn attach_kmsg(path: &Path) -> std::io::Result<()> {
    let kmsg = Kmsg::open(path)?;
    if let Ok(mut guard) = LOGGER.kmsg.lock() {
        *guard = Some(kmsg);
    }
    Ok(())
}

pub(crate) fn set_level(level: LogLevel) {
    let max = match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warn,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
    };
    LOGGER.max.store(max as usize, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_format_has_monotonic_prefix() {
        assert_eq!(
            super::format_line(1_834_123, "ready"),
            "[    1.834123] cvm-init: ready"
        );
        assert_eq!(super::format_line(0, "x"), "[    0.000000] cvm-init: x");
    }
}
