use super::*;
use crate::compose::{ComposePolicy, parse};

const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

fn app(yaml: &str) -> App {
    parse(None, yaml, &BTreeMap::new(), &ComposePolicy::default()).unwrap()
}

fn three() -> App {
    app(&format!(
        "services:
  db:
    image: busybox@{D}
    networks:
      back: {{aliases: [database]}}
  api:
    image: busybox@{D}
    container_name: api-1
    ports: [\"18080:8080\"]
    networks: [front, back]
    links: [\"db:pg\"]
    extra_hosts: [\"ext.local:10.9.9.9\"]
  web:
    image: busybox@{D}
    ports: [\"8081:8080/udp\"]
  tool:
    image: busybox@{D}
    network_mode: host
networks:
  front: {{}}
  back:
    internal: true
    ipam:
      config: [{{subnet: 10.99.0.0/16}}]
"
    ))
}

#[test]
fn bridges_get_subnets_around_the_uplink_and_declared_ones() {
    let a = three();
    let p = plan(&a, Some((Ipv4Addr::new(172, 30, 0, 15), 24))).unwrap();
    let nets: Vec<(&str, &str, Ipv4Addr, u8, bool)> = p
        .bridges
        .iter()
        .map(|b| {
            (
                b.network.as_str(),
                b.name.as_str(),
                b.subnet,
                b.prefix_len,
                b.internal,
            )
        })
        .collect();
    assert_eq!(
        nets,
        vec![
            ("back", "cvmbr0", Ipv4Addr::new(10, 99, 0, 0), 16, true),
            // 172.30.0.0/24 is the uplink's.
            ("default", "cvmbr1", Ipv4Addr::new(172, 30, 1, 0), 24, false),
            ("front", "cvmbr2", Ipv4Addr::new(172, 30, 2, 0), 24, false),
        ]
    );
    assert_eq!(p.bridges[1].gateway, Ipv4Addr::new(172, 30, 1, 1));
    assert!(!p.services.contains_key("tool"), "host mode: no namespace");
    let api = &p.services["api"];
    assert_eq!(api.netns, PathBuf::from("/run/netns/api"));
    let ifs: Vec<(&str, &str, Ipv4Addr)> = api
        .attachments
        .iter()
        .map(|a| (a.host_veth.as_str(), a.peer.as_str(), a.address))
        .collect();
    assert_eq!(
        ifs,
        vec![
            ("cv1n0", "eth0", Ipv4Addr::new(172, 30, 2, 2)),
            ("cv1n1", "eth1", Ipv4Addr::new(10, 99, 0, 3)),
        ]
    );
    // Default route through front (back is internal); db has only the internal network.
    assert_eq!(api.gateway, Some(Ipv4Addr::new(172, 30, 2, 1)));
    assert_eq!(p.services["db"].gateway, None);
    assert_eq!(
        p.services["db"].attachments[0].address,
        Ipv4Addr::new(10, 99, 0, 2)
    );
    assert_eq!(
        p.services["web"].attachments[0].address,
        Ipv4Addr::new(172, 30, 1, 2)
    );
}

#[test]
fn hosts_files_name_the_services_on_shared_networks() {
    let a = three();
    let p = plan(&a, Some((Ipv4Addr::new(10, 0, 2, 15), 24))).unwrap();
    let api = p.hosts_file(&a, a.service("api").unwrap());
    assert_eq!(
        api,
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.99.0.2\tdb database\n\
         172.30.1.2\tapi api-1\n\
         172.30.1.1\ttool\n\
         10.99.0.2\tpg\n\
         10.9.9.9\text.local\n"
    );
    // web shares no network with db or api: only itself and the host-mode tool (the VM).
    let web = p.hosts_file(&a, a.service("web").unwrap());
    assert!(!web.contains("db") && !web.contains("api"), "{web}");
    assert!(
        web.contains("172.30.0.2\tweb\n") && web.contains("172.30.0.1\ttool\n"),
        "{web}"
    );
    // The host-mode service reaches every bridged one by its first address.
    let tool = p.hosts_file(&a, a.service("tool").unwrap());
    assert!(
        tool.contains("10.99.0.2\tdb database\n") && tool.contains("127.0.0.1\ttool\n"),
        "{tool}"
    );
}

#[test]
fn published_ports_forward_to_the_first_address() {
    let a = three();
    let vm = Ipv4Addr::new(10, 0, 2, 15);
    let p = plan(&a, Some((vm, 24))).unwrap();
    let f = p.forwards(&a, vm);
    assert_eq!(
        f,
        vec![
            PortForward {
                service: "api".into(),
                protocol: Protocol::Tcp,
                daddr: vm,
                published: 18080,
                target: Ipv4Addr::new(172, 30, 1, 2),
                port: 8080
            },
            PortForward {
                service: "web".into(),
                protocol: Protocol::Udp,
                daddr: vm,
                published: 8081,
                target: Ipv4Addr::new(172, 30, 0, 2),
                port: 8080
            },
        ]
    );
}

#[test]
fn static_addresses_are_checked_against_the_subnet() {
    let yaml = |addr: &str, other: &str| {
        format!(
            "services:\n  a:\n    image: busybox@{D}\n    networks:\n      n: {{ipv4_address: {addr}}}\n  b:\n    image: busybox@{D}\n    networks:\n      n: {{ipv4_address: {other}}}\n  c:\n    image: busybox@{D}\n    networks: [n]\nnetworks:\n  n:\n    ipam:\n      config: [{{subnet: 192.168.50.0/29}}]\n"
        )
    };
    let ok = app(&yaml("192.168.50.2", "192.168.50.4"));
    let p = plan(&ok, None).unwrap();
    assert_eq!(
        p.services["a"].attachments[0].address,
        Ipv4Addr::new(192, 168, 50, 2)
    );
    // c takes the first address no static one holds.
    assert_eq!(
        p.services["c"].attachments[0].address,
        Ipv4Addr::new(192, 168, 50, 3)
    );
    for bad in ["192.168.50.1", "192.168.50.7", "192.168.51.2"] {
        let e = plan(&app(&yaml(bad, "192.168.50.4")), None).unwrap_err();
        assert!(
            matches!(e, NetworkPlanError::StaticAddress { ref service, .. } if service == "a"),
            "{bad}: {e}"
        );
    }
    let e = plan(&app(&yaml("192.168.50.4", "192.168.50.4")), None).unwrap_err();
    assert!(matches!(e, NetworkPlanError::AddressTaken { .. }), "{e}");
    // /29: hosts .2-.6 after the gateway; a fourth and fifth member still fit, a sixth not.
    let crowd = format!(
        "services:\n{}networks:\n  n:\n    ipam:\n      config: [{{subnet: 192.168.50.0/29}}]\n",
        (0..6)
            .map(|i| format!("  s{i}:\n    image: busybox@{D}\n    networks: [n]\n"))
            .collect::<String>()
    );
    assert!(matches!(
        plan(&app(&crowd), None),
        Err(NetworkPlanError::Exhausted { ref service, .. }) if service == "s5"
    ));
    let bad_subnet =
        yaml("192.168.50.2", "192.168.50.4").replace("192.168.50.0/29", "192.168.50.1/29");
    assert!(matches!(
        plan(&app(&bad_subnet), None),
        Err(NetworkPlanError::ParseSubnet { .. })
    ));
}
