//! The boot: `init_core::plan::BOOT_PLAN` as a straight line of typed stages. Each stage is one
//! function in `stages/` that takes exactly its inputs and returns its outputs, so a stage
//! cannot run before what it needs exists (the compiler checks the order, nothing at run time).
//! [`Runner::stage`] wraps each call with its `stage_started` / `stage_finished` records and
//! tags a failure with the stage.

use std::error::Error;
use std::process::Child;

use init_core::cmdline::Config;
use init_core::plan::Stage;
use init_core::results::Record;

use crate::results::Results;
use crate::stages;
use crate::stages::workloads::Workloads;

/// A stage failed: the boot ends here. The error's chain does not repeat the stage's name.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub(crate) stage: Stage,
    pub(crate) error: Box<dyn Error + 'static>,
}

/// What PID 1 keeps after a successful boot: the supervised processes.
#[derive(Debug)]
pub(crate) struct Booted {
    pub(crate) config: Config,
    pub(crate) guest_api: Child,
    /// How the supervisor starts the guest API again.
    pub(crate) guest_api_launch: stages::guest_api::Launch,
    pub(crate) workloads: Option<Workloads>,
}

/// Runs stages and reports them on the results channel.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) results: Results,
    /// The results port's name (the default until the command line is parsed): a fatal error
    /// before the `results` stage still opens it.
    results_port: String,
}

impl Runner {
    pub(crate) fn new(results: Results) -> Self {
        Self {
            results,
            results_port: Config::default().results_port,
        }
    }

    /// Runs one stage between its `stage_started` and `stage_finished` records.
    fn stage<T, E: Error + 'static>(
        &mut self,
        stage: Stage,
        run: impl FnOnce(&mut Results) -> Result<T, E>,
    ) -> Result<T, Fatal> {
        let started = init_sys::clock::monotonic_us();
        self.results.record(&Record::StageStarted {
            stage,
            mono_us: started,
        });
        stages::host_api::boot_progress(stage.name());
        let out = run(&mut self.results).map_err(|e| Fatal {
            stage,
            error: Box::new(e),
        })?;
        let finished = init_sys::clock::monotonic_us();
        let duration_us = finished.saturating_sub(started);
        self.results.record(&Record::StageFinished {
            stage,
            mono_us: finished,
            duration_us,
        });
        log::info!(
            "stage {stage} done in {}.{:03} ms",
            duration_us / 1000,
            duration_us % 1000
        );
        Ok(out)
    }

    /// After a fatal error in a stage before `results`: load what modules still can be and
    /// open the results port, so the failure reaches the channel and not only the console.
    pub(crate) fn open_results_best_effort(&mut self) {
        if self.results.is_open() {
            return;
        }
        stages::modules::load_best_effort();
        if let Err(e) = self.results.open(&self.results_port) {
            log::warn!("{}", init_core::error_chain::one_line(&e));
        }
    }
}

/// The boot plan, in the order of `BOOT_PLAN` (a test checks that this function calls the
/// stages in exactly that order).
pub(crate) fn boot(run: &mut Runner) -> Result<Booted, Fatal> {
    run.stage(Stage::Early, |_| stages::early::run())?;
    let config = run.stage(Stage::Cmdline, |_| stages::cmdline::run())?;
    run.results_port.clone_from(&config.results_port);
    run.stage(Stage::Mount, |_| stages::mount::run(Stage::Mount, &config))?;
    run.stage(Stage::Modules, |_| stages::modules::run())?;
    run.stage(Stage::MountLate, |_| {
        stages::mount::run(Stage::MountLate, &config)
    })?;
    run.stage(Stage::Results, |r| {
        stages::results::run(r, &config.results_port)
    })?;
    run.stage(Stage::KernelContract, |_| stages::kernel_contract::run())?;
    let share = run.stage(Stage::HostShare, |_| stages::host_share::run())?;
    stages::host_api::configure(&share);
    let share_copy = stages::host_share::copy_dir();
    let mut measured = run.stage(Stage::Measure, |r| {
        stages::measure::run(&share, config.gpu_driver.as_ref(), r)
    })?;
    // Before anything can fail on the identity: the VMM keeps the seed for the next boot, so
    // the instance id, and with it the KMS disk key, survives a reboot.
    stages::host_api::instance_info(&measured.identity);
    let network = run.stage(Stage::Network, |r| stages::network::run(&share, r))?;
    stages::host_api::network_up();
    let keys = run.stage(Stage::Keys, |r| {
        stages::keys::run(&share, &mut measured, network.as_ref(), &share_copy, r)
    })?;
    let disk = run.stage(Stage::Disk, |r| {
        let reformat = if share.app_compose.compose().allow_disk_reformat {
            cvm_disk::volume::Reformat::Allow
        } else {
            cvm_disk::volume::Reformat::Refuse
        };
        stages::disk::run(&config, keys.app_keys(), reformat, r)
    })?;
    let sealed = run.stage(Stage::SystemReady, |r| {
        stages::system_ready::run(&share, measured, &keys, disk.as_ref(), r)
    })?;
    run.stage(Stage::Gateway, |r| {
        stages::gateway::run(&share, sealed, &keys, network.as_ref(), &config, r)
    })?;
    let disk_mount = disk
        .as_ref()
        .map(|_| std::path::Path::new(stages::disk::MOUNT_POINT));
    let guest_api_launch = stages::guest_api::Launch {
        share_copy: share_copy.clone(),
        logs_dir: stages::workloads::logs_dir(&stages::workloads::data_dir(disk_mount)),
    };
    let guest_api = run.stage(Stage::GuestApi, |_| {
        stages::guest_api::run(&guest_api_launch)
    })?;
    let workloads = run.stage(Stage::Workloads, |r| {
        let digest_logs = config
            .test_dump
            .contains(&init_core::cmdline::TestDump::ContainerLogDigests);
        stages::workloads::run(
            &share,
            keys.env(),
            disk_mount,
            network.as_ref().map(|n| stages::workloads::Uplink {
                interface: n.interface.clone(),
                address: n.config.address,
                prefix_len: n.config.prefix_len,
            }),
            digest_logs,
            r,
        )
    })?;
    run.stage(Stage::Ready, |r| stages::ready::run(&config, r))?;
    Ok(Booted {
        config,
        guest_api,
        guest_api_launch,
        workloads,
    })
}

#[cfg(test)]
mod tests {
    use init_core::plan::BOOT_PLAN;

    /// `boot` is the plan: its `run.stage(Stage::…` calls, in source order, are `BOOT_PLAN`.
    #[test]
    fn boot_runs_the_plan_in_order() {
        let source = include_str!("boot.rs");
        let body = source
            .split("pub(crate) fn boot(")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap();
        let called: Vec<&str> = body
            .split("run.stage(Stage::")
            .skip(1)
            .map(|call| call.split(',').next().unwrap())
            .collect();
        let planned: Vec<String> = BOOT_PLAN.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(called, planned);
    }
}
