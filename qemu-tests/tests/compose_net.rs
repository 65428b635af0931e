//! Per-service networking in QEMU (issue 15): three services from the loopback registry, each
//! in its own network namespace on the `default` bridge. `backend` and `frontend` both listen
//! on container port 8080 without clashing; `frontend` is published remapped (`18080:8080`)
//! and reached from the host through a QEMU hostfwd to the VM's 18080; the VM's own 8080
//! (both services' unpublished container port) answers nothing from outside; `frontend`
//! fetches from `backend` by service name, `checker` by network alias, `links` alias and name,
//! and reaches the host's registry through the masqueraded uplink; `backend`'s HEALTHCHECK
//! comes from its image config and gates `frontend` (`condition: service_healthy`).
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

mod fault_common;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::fault_common::{app_share_with, power_off, raw, registry, wait_state};
    use anyhow::{Result, ensure};
    use qemu_tests::CvmSetup;
    use qemu_tests::demo::http_get;
    use qemu_tests::registry::{busybox_layer, free_port, work_dir};

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn three_services_on_a_bridge_with_a_remapped_port() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = work_dir("net");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let reg_port = free_port()?;
        let Some(reg) = registry(&dir.join("registry"), reg_port)? else {
            return Ok(());
        };
        let layer = busybox_layer(&setup.artifacts.busybox)?;
        let plain = reg.push_image(
            "plain",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )?;
        // The HEALTHCHECK of a Dockerfile, as the image config carries it.
        let checked = reg.push_image(
            "checked",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"],
                "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/"],
                                "Interval": 1_000_000_000u64, "Timeout": 5_000_000_000u64, "Retries": 60}}),
        )?;
        let compose = format!(
            r#"services:
  backend:
    image: {checked}
    command: ["sleep 3; mkdir -p /www; echo backend-$$(hostname) > /www/index.html; exec busybox httpd -f -p 8080 -h /www"]
    networks:
      default:
        aliases: [api]
  frontend:
    image: {plain}
    ports: ["18080:8080"]
    depends_on:
      backend:
        condition: service_healthy
    command: ["mkdir -p /www; until wget -q -O /www/up http://backend:8080/; do sleep 1; done; echo frontend-got-$$(cat /www/up) > /www/index.html; exec busybox httpd -f -p 8080 -h /www"]
  checker:
    image: {plain}
    restart: "no"
    links: ["backend:be"]
    depends_on: [frontend]
    command: ["i=0; until wget -q -O /tmp/a http://api:8080/ && wget -q -O /tmp/b http://be:8080/ && wget -q -O /tmp/c http://frontend:8080/; do i=$$((i+1)); test $$i -gt 120 && exit 3; sleep 1; done; wget -q -O /tmp/r http://10.0.2.2:{reg_port}/v2/ || exit 5; busybox grep -q backend-backend /tmp/a && busybox grep -q backend-backend /tmp/b && busybox grep -q frontend-got-backend /tmp/c && echo checker-ok && exit 0; exit 4"]
"#
        );
        let share = app_share_with(&dir, &compose, &serde_json::json!({"public_logs": true}))?;
        let (published, unpublished) = (free_port()?, free_port()?);
        let mut vm = setup
            .vm_with_share("compose-net", &share)
            .with_qemu_arg("-netdev")
            .with_qemu_arg(&format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{published}-:18080,hostfwd=tcp:127.0.0.1:{unpublished}-:8080"
            ))
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-net-pci,netdev=n0")
            .with_memory("1G")
            .with_cmdline("cvm.on_ready=wait")
            .boot()?;
        vm.wait_for_event("ready", TIMEOUT)?;
        wait_state(&mut vm, "checker", "exited")?;
        // The remapped published port answers from the host; the body shows that frontend
        // fetched from backend by service name.
        let deadline = Instant::now() + TIMEOUT;
        let body = loop {
            match http_get(published, "/") {
                Ok((200, body)) => break body,
                other if Instant::now() > deadline => {
                    anyhow::bail!("published port: {other:?}\n{}", vm.report())
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        ensure!(
            body.trim() == "frontend-got-backend-backend",
            "published port body {body:?}"
        );
        // The VM's 8080, where both services listen in their own namespaces, is not published:
        // nothing answers.
        let direct = http_get(unpublished, "/");
        ensure!(
            direct.is_err(),
            "unpublished port 8080 answered: {direct:?}"
        );
        let (records, console) = power_off(vm)?;
        let containers = raw(&records, "container");
        let pos = |svc: &str, st: &str| {
            containers
                .iter()
                .position(|c| c["service"] == svc && c["state"] == st)
        };
        ensure!(
            pos("backend", "healthy").is_some()
                && pos("backend", "healthy") < pos("frontend", "starting"),
            "frontend started before backend's image HEALTHCHECK passed: {containers:?}"
        );
        let exited = containers
            .iter()
            .find(|c| c["service"] == "checker" && c["state"] == "exited");
        ensure!(
            exited.is_some_and(|c| c["code"] == 0),
            "checker (name, alias and link lookups, egress): {exited:?}\n{console}"
        );
        ensure!(console.contains("checker| checker-ok"), "{console}");
        ensure!(
            console.contains("network namespace /run/netns/backend"),
            "no namespace line: {console}"
        );
        Ok(())
    }
}
