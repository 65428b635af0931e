//! Helpers shared by `workloads.rs`, `fault_net.rs` and `power_cuts.rs`: an app whose compose
//! runs busybox services from the loopback registry, network and data-disk VM options, record
//! queries.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};
use qemu_tests::registry::{Registry, RegistryError};
use qemu_tests::{Record, RunningVm, TestVm};

pub(crate) const TIMEOUT: Duration = Duration::from_secs(300);
/// The data-disk key of the test hook (no KMS in these apps).
pub(crate) const DISK_KEY: &str =
    "3333333333333333333333333333333333333333333333333333333333333333";

/// The records named `name` as JSON.
pub(crate) fn raw(records: &[Record], name: &str) -> Vec<serde_json::Value> {
    qemu_tests::results::raw_records(records, name)
}

/// The `container` records of `service`, in order.
pub(crate) fn containers(records: &[Record], service: &str) -> Vec<serde_json::Value> {
    raw(records, "container")
        .into_iter()
        .filter(|c| c["service"] == service)
        .collect()
}

/// `zombies_left` of the shutdown's `reaped` record.
pub(crate) fn zombies_left(records: &[Record]) -> Option<u64> {
    records.iter().find_map(|r| match r {
        Record::Reaped { zombies_left, .. } => Some(*zombies_left),
        _ => None,
    })
}

/// Starts the registry, or `None` (with a message) when it is not installed.
pub(crate) fn registry(dir: &Path, port: u16) -> Result<Option<Registry>> {
    match Registry::start_at(dir, port) {
        Ok(r) => Ok(Some(r)),
        Err(RegistryError::Missing) => {
            eprintln!("SKIP: {}", RegistryError::Missing);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A host share (the sample, key provider none) whose app runs `compose`, built under `dir`.
pub(crate) fn app_share(dir: &Path, compose: &str) -> Result<PathBuf> {
    app_share_with(dir, compose, &serde_json::json!({}))
}

/// [`app_share`] with the top-level app-compose fields of `extra` set.
pub(crate) fn app_share_with(
    dir: &Path,
    compose: &str,
    extra: &serde_json::Value,
) -> Result<PathBuf> {
    Ok(qemu_tests::host_share::app_share_with(dir, compose, extra)?)
}

/// User networking (the host is 10.0.2.2) and 1 GiB.
pub(crate) fn with_net(vm: TestVm<'_>) -> TestVm<'_> {
    vm.with_qemu_arg("-netdev")
        .with_qemu_arg("user,id=n0")
        .with_qemu_arg("-device")
        .with_qemu_arg("virtio-net-pci,netdev=n0")
        .with_memory("1G")
}

/// Attaches `disk` as the data disk with the test key.
pub(crate) fn with_disk<'a>(vm: TestVm<'a>, disk: &Path) -> TestVm<'a> {
    vm.with_qemu_arg("-drive")
        .with_qemu_arg(&qemu_tests::data_disk::drive_arg(disk))
        .with_cmdline(&format!("cvm.test_disk_key={DISK_KEY}"))
}

/// Waits for a `container` record of `service` in `state`.
pub(crate) fn wait_state(vm: &mut RunningVm, service: &str, state: &str) -> Result<Record> {
    Ok(
        vm.wait_for_record(&format!("{service} {state}"), TIMEOUT, |r| {
            matches!(r, Record::Other { event, line } if event == "container"
                && serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|c| c["service"] == service && c["state"] == state))
        })?,
    )
}

/// ACPI power-off, then the records and the console; requires a clean exit.
pub(crate) fn power_off(mut vm: RunningVm) -> Result<(Vec<Record>, String)> {
    vm.system_powerdown()?;
    vm.wait_for_event("power_off", TIMEOUT)?;
    let exit = vm.wait_for_exit(TIMEOUT)?;
    ensure!(exit.success(), "QEMU exit {exit:?}");
    Ok((vm.records()?, vm.console()))
}

/// Seconds between two records' `mono_us`.
pub(crate) fn secs_between(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let us = |v: &serde_json::Value| v["mono_us"].as_u64().unwrap_or(0) as f64;
    (us(b) - us(a)) / 1e6
}
