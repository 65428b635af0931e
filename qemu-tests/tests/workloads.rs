//! Workloads in QEMU (issue 7): images built from Debian's busybox-static are pushed to a real
//! `docker-registry` on host loopback, the guest pulls them by digest over slirp (10.0.2.2),
//! unpacks them and runs the services through libcontainer; each container's output reaches
//! the console as `<service>| <line>`, its state changes reach the results channel as
//! `container` records.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

mod fault_common;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::fault_common::{
        app_share as share, power_off, raw, registry, wait_state, with_net, zombies_left,
    };
    use anyhow::{Context, Result, ensure};
    use qemu_tests::data_disk;
    use qemu_tests::registry::{busybox_layer, free_port, work_dir};
    use qemu_tests::{CvmSetup, Record};

    const TIMEOUT: Duration = Duration::from_secs(240);
    const KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// The container records of `service`, in order, as `state` names.
    fn states(records: &[Record], service: &str) -> Vec<String> {
        raw(records, "container")
            .iter()
            .filter(|c| c["service"] == service)
            .filter_map(|c| c["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// Step 1: one busybox service from the loopback registry writes a line and exits 0
    /// (`restart: "no"`): pulled, started, exited with code 0, `ready` after the launch.
    #[test]
    fn one_service_from_loopback_registry() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = work_dir("one");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let Some(reg) = registry(&dir.join("registry"), free_port()?)? else {
            return Ok(());
        };
        let layer = busybox_layer(&setup.artifacts.busybox)?;
        let image = reg.push_image(
            "hello",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )?;
        let compose = format!(
            "services:\n  hello:\n    image: {image}\n    command: [\"echo hello-from-container uid=$$(id -u); exit 0\"]\n    restart: \"no\"\n  flaky:\n    image: {image}\n    command: [\"echo try; exit 1\"]\n    restart: on-failure:3\n"
        );
        let share = share(&dir, &compose)?;
        let mut vm = with_net(setup.vm_with_share("workloads-one", &share))
            .with_cmdline("cvm.on_ready=wait")
            .boot()?;
        vm.wait_for_event("ready", TIMEOUT)?;
        wait_state(&mut vm, "hello", "exited")?;
        wait_state(&mut vm, "flaky", "exited")?;
        let (records, console) = power_off(vm)?;
        let workloads = raw(&records, "workloads");
        let [w] = workloads.as_slice() else {
            anyhow::bail!("want one workloads record: {workloads:?}");
        };
        ensure!(
            w["services"] == serde_json::json!(["hello", "flaky"]) && w["skipped"] == "",
            "{w}"
        );
        ensure!(w["persistent"] == false, "no data disk: tmpfs store: {w}");
        let s = states(&records, "hello");
        ensure!(
            s.first().map(String::as_str) == Some("starting") && s.contains(&"exited".into()),
            "states {s:?}"
        );
        let exited = raw(&records, "container")
            .into_iter()
            .find(|c| c["service"] == "hello" && c["state"] == "exited")
            .context("no exited record")?;
        ensure!(exited["code"] == 0 && exited["restarts"] == 0, "{exited}");
        ensure!(
            console.contains("hello| hello-from-container uid=0"),
            "console lacks the container's line"
        );
        // on-failure:3: three restarts with backoff, then left stopped.
        let flaky = states(&records, "flaky");
        let restarting = flaky.iter().filter(|s| *s == "restarting").count();
        ensure!(restarting == 3, "flaky states {flaky:?}");
        let last = raw(&records, "container")
            .into_iter()
            .rfind(|c| c["service"] == "flaky")
            .context("no flaky record")?;
        ensure!(
            last["state"] == "exited" && last["code"] == 1 && last["restarts"] == 3,
            "{last}"
        );
        ensure!(
            console.matches("flaky| try").count() == 4,
            "flaky ran {} times",
            console.matches("flaky| try").count()
        );
        // Four runs of `flaky` and one of `hello`, each container init an orphaned grandchild
        // of PID 1: all reaped.
        ensure!(
            zombies_left(&records) == Some(0),
            "zombies left: {:?}",
            zombies_left(&records)
        );
        // `ready` comes after the workloads stage launched the service.
        let names: Vec<&str> = records.iter().map(Record::event).collect();
        let ready = names.iter().position(|n| *n == "ready");
        let started = names.iter().position(|n| *n == "container");
        ensure!(started < ready, "ready before the launch: {names:?}");
        Ok(())
    }

    /// Three services on the encrypted data disk: `writer` waits for `base`'s healthcheck and
    /// writes to a named volume; ACPI power-off stops `watcher` before `base` (reverse
    /// dependency order) and leaves no zombie; a reboot with the registry stopped
    /// reuses the cached images and `writer` finds its file.
    #[test]
    fn two_services_volume_and_offline_reboot() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = work_dir("two");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let Some(reg) = registry(&dir.join("registry"), port)? else {
            return Ok(());
        };
        let layer = busybox_layer(&setup.artifacts.busybox)?;
        let image = reg.push_image(
            "app",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )?;
        let compose = |first: &str| {
            format!(
                "services:\n  base:\n    image: {image}\n    command: [\"echo base-up; touch /tmp/ready; while true; do sleep 1; done\"]\n    stop_grace_period: 3s\n    healthcheck:\n      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ready\"]\n      interval: 1s\n      timeout: 10s\n      retries: 3\n  writer:\n    image: {image}\n    command: [\"{first}\"]\n    restart: \"no\"\n    depends_on:\n      base:\n        condition: service_healthy\n    volumes: [\"data:/data\"]\n  watcher:\n    image: {image}\n    command: [\"trap 'echo watcher-term; exit 0' TERM; echo watcher-up; while true; do sleep 1; done\"]\n    stop_grace_period: 5s\n    depends_on: [base]\nvolumes:\n  data: {{}}\n"
            )
        };
        let disk = data_disk::create(&dir.join("data.img"), 64)?;
        let run = |name: &str, compose: &str, sub: &str| -> Result<(Vec<Record>, String)> {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)?;
            let share = share(&d, compose)?;
            let mut vm = with_net(setup.vm_with_share(name, &share))
                .with_qemu_arg("-drive")
                .with_qemu_arg(&data_disk::drive_arg(&disk))
                .with_cmdline(&format!("cvm.on_ready=wait cvm.test_disk_key={KEY}"))
                .boot()?;
            vm.wait_for_event("ready", TIMEOUT)?;
            wait_state(&mut vm, "writer", "exited")?;
            wait_state(&mut vm, "watcher", "running")?;
            power_off(vm)
        };
        let (records, console) = run(
            "workloads-two",
            &compose("echo kept-$$(date +%s) > /data/f; cat /data/f"),
            "boot1",
        )?;
        let w = raw(&records, "workloads");
        ensure!(w.first().is_some_and(|w| w["persistent"] == true), "{w:?}");
        ensure!(console.contains("base| base-up"), "base did not run");
        ensure!(console.contains("writer| kept-"), "writer did not write");
        let names: Vec<(String, String)> = raw(&records, "container")
            .iter()
            .map(|c| (c["service"].to_string(), c["state"].to_string()))
            .collect();
        let pos = |svc: &str, st: &str| {
            names
                .iter()
                .position(|(a, b)| a == &format!("\"{svc}\"") && b == &format!("\"{st}\""))
        };
        ensure!(
            pos("base", "healthy").is_some() && pos("base", "healthy") < pos("writer", "starting"),
            "writer started before base was healthy: {names:?}"
        );
        ensure!(
            pos("base", "stopped").is_some() || pos("base", "exited").is_some(),
            "power-off did not stop base: {names:?}"
        );
        // Reverse dependency order: `watcher` (depends on `base`) is asked to stop and is gone
        // before `base` is asked to stop; its TERM trap ran.
        let watcher_gone = pos("watcher", "stopped").or(pos("watcher", "exited"));
        ensure!(
            pos("watcher", "stopping").is_some()
                && watcher_gone.is_some()
                && watcher_gone < pos("base", "stopping"),
            "not stopped in reverse dependency order: {names:?}"
        );
        ensure!(
            console.contains("watcher| watcher-term"),
            "watcher did not get its stop signal"
        );
        // Each container's init is libcontainer's orphaned grandchild, reparented to PID 1:
        // after the shutdown nothing is left unreaped.
        ensure!(
            zombies_left(&records) == Some(0),
            "zombies left: {:?}",
            zombies_left(&records)
        );

        // Second boot: registry stopped, same pinned image, the file is still there.
        drop(reg);
        let (records, console) = run("workloads-two-offline", &compose("cat /data/f"), "boot2")?;
        let exited = raw(&records, "container")
            .into_iter()
            .find(|c| c["service"] == "writer" && c["state"] == "exited")
            .context("writer did not exit")?;
        ensure!(exited["code"] == 0, "{exited}");
        ensure!(
            console.contains("writer| kept-"),
            "the volume lost B's file across the reboot"
        );
        Ok(())
    }
}
