//! `cvm-measure compose check` on fixtures: what the init would run, every refusal, exit codes.

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    use sha2::{Digest as _, Sha256};

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/compose")
            .join(name)
    }

    fn example(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../init/compose/testdata/dstack-examples")
            .join(name)
    }

    fn check(path: &std::path::Path, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cvm-measure"))
            .args(["compose", "check", path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    }

    fn out(output: &Output) -> String {
        String::from_utf8(output.stdout.clone()).unwrap()
    }

    fn err(output: &Output) -> String {
        String::from_utf8(output.stderr.clone()).unwrap()
    }

    #[test]
    fn a_runnable_app_compose_prints_order_ports_and_compose_hash() {
        let path = fixture("app-compose-pinned.json");
        let output = check(&path, &[]);
        assert!(output.status.success(), "{}", err(&output));
        let text = out(&output);
        let hash = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert!(text.contains(&format!("compose-hash: {hash}\n")), "{text}");
        assert!(
            text.contains(&format!("app-id:       {} ", &hash[..40])),
            "{text}"
        );
        let db = text.find("1. db").unwrap();
        let web = text.find("2. web").unwrap();
        assert!(db < web, "{text}");
        assert!(
            text.contains("ports: 8080/tcp, 9000/udp, 9001/udp"),
            "{text}"
        );
        assert!(text.contains("after: db (healthy)"), "{text}");
        assert!(
            text.contains("image: ghcr.io/example/web@sha256:f1f1"),
            "{text}"
        );
    }

    #[test]
    fn a_remap_runs_and_is_refused_only_under_host_networking() {
        let output = check(&fixture("app-compose-remap.json"), &[]);
        assert!(output.status.success(), "{}", err(&output));
        assert!(
            out(&output).contains("ports: 8080->80/tcp"),
            "{}",
            out(&output)
        );
        let output = check(&fixture("app-compose-host-remap.json"), &[]);
        assert!(!output.status.success());
        let text = out(&output);
        assert!(
            text.contains(
                "refused when started: port 8080:80 remaps a port under network_mode: host"
            ),
            "{text}"
        );
        assert!(
            err(&output).contains("would refuse 1 service setting"),
            "{}",
            err(&output)
        );
    }

    #[test]
    fn every_refusal_is_listed_and_exits_non_zero() {
        let output = check(
            &example("custom-domain__dstack-ingress__docker-compose.loadbalanced.yaml"),
            &[],
        );
        assert_eq!(output.status.code(), Some(1));
        let text = out(&output);
        assert!(
            !text.contains("compose-hash"),
            "a plain compose file has none: {text}"
        );
        assert!(text.contains("refused (4):"), "{text}");
        assert_eq!(
            text.matches("build and push the image, then pin it by digest")
                .count(),
            2,
            "{text}"
        );
        assert!(text.contains("there is no container daemon"), "{text}");
        assert!(err(&output).contains("4 refusal(s)"), "{}", err(&output));
    }

    #[test]
    fn tag_only_images_carry_the_pin_hint() {
        let output = check(&example("tsm-shim__docker-compose.yaml"), &[]);
        assert!(!output.status.success());
        let text = out(&output);
        assert_eq!(
            text.matches("run `cvm-measure compose pin` to pin it")
                .count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn env_supplies_required_variables() {
        let path = example("postgres-r2__docker-compose.yml");
        let text = out(&check(&path, &[]));
        assert!(
            text.contains("required variable WALG_S3_PREFIX is missing"),
            "{text}"
        );
        let vars = [
            "WALG_S3_PREFIX",
            "AWS_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ]
        .map(|k| format!("--env={k}=x"));
        let args: Vec<&str> = vars.iter().map(String::as_str).collect();
        let output = check(&path, &args);
        let text = out(&output);
        assert!(text.contains("refused (1):"), "{text}");
        assert!(
            text.contains("image \"postgres:17\" is not pinned by digest"),
            "{text}"
        );
    }
}
