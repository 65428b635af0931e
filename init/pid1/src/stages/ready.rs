//! The `ready` stage: everything before succeeded. Test builds (`insecure-test-hooks`) dump
//! the logs named by `cvm.test_dump` and spawn `cvm.test_orphans` orphans here; the `ready`
//! record itself follows the stage (`main`).

use init_core::cmdline::Config;

use crate::results::Results;

/// Errors of the ready stage (only test hooks can fail).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadyStageError {
    #[cfg(feature = "insecure-test-hooks")]
    #[error("read {path}")]
    ReadDump {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "insecure-test-hooks")]
    #[error("test hook: spawn orphans")]
    SpawnOrphans(#[source] init_sys::signals::SignalsError),
}

/// Runs the stage.
#[cfg(feature = "insecure-test-hooks")]
pub(crate) fn run(config: &Config, results: &mut Results) -> Result<(), ReadyStageError> {
    use init_core::results::Record;
    for (dump, path) in config.test_dump.iter().filter_map(|d| Some((d, d.path()?))) {
        let bytes = std::fs::read(path).map_err(|source| ReadyStageError::ReadDump {
            path: std::path::PathBuf::from(path),
            source,
        })?;
        log::warn!("test hook: dumping {path} ({} bytes)", bytes.len());
        results.record(&Record::TestDump {
            name: dump.name().into(),
            hex: hex::encode(&bytes),
            mono_us: init_sys::clock::monotonic_us(),
        });
    }
    if config.test_orphans > 0 {
        log::warn!("test hook: spawning {} orphans", config.test_orphans);
        init_sys::signals::spawn_orphans(config.test_orphans, 300)
            .map_err(ReadyStageError::SpawnOrphans)?;
    }
    Ok(())
}

/// Runs the stage (nothing to do without test hooks).
#[cfg(not(feature = "insecure-test-hooks"))]
#[allow(clippy::unnecessary_wraps)]
pub(crate) fn run(config: &Config, results: &mut Results) -> Result<(), ReadyStageError> {
    let _ = (config, results);
    Ok(())
}
