use super::*;

/// Splits a batch into (type, flags, seq, nfgenmsg family, res_id, attribute bytes).
fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, u8, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0, "messages stay 4-aligned");
        let m = &rest[..len];
        out.push((
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            u32::from_ne_bytes(m[8..12].try_into().unwrap()),
            m[16],
            u16::from_be_bytes(m[18..20].try_into().unwrap()),
            m[20..].to_vec(),
        ));
        rest = &rest[len..];
    }
    out
}

/// Top-level attributes as (type, payload).
fn attrs(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes(bytes[0..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(bytes[2..4].try_into().unwrap());
        out.push((kind, bytes[4..len].to_vec()));
        let padded = (len + 3) & !3;
        bytes = &bytes[padded.min(bytes.len())..];
    }
    out
}

#[test]
fn empty_ruleset_batch_has_the_kernel_layout() {
    let ruleset = Ruleset {
        family: NFPROTO_IPV4,
        table: "cvm".to_owned(),
        chains: Vec::new(),
        rules: Vec::new(),
    };
    let (bytes, acks) = replace_batch(&ruleset, 100);
    assert_eq!(acks, 3);
    // begin: nlmsghdr{len 20, type 0x10, flags REQUEST, seq 100, pid 0}, nfgenmsg{AF_UNSPEC, v0, res_id htons(10)}
    let begin: [u8; 20] = {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&20u32.to_ne_bytes());
        b[4..6].copy_from_slice(&0x10u16.to_ne_bytes());
        b[6..8].copy_from_slice(&1u16.to_ne_bytes());
        b[8..12].copy_from_slice(&100u32.to_ne_bytes());
        b[18..20].copy_from_slice(&[0, 10]);
        b
    };
    assert_eq!(&bytes[..20], &begin);
    let m = messages(&bytes);
    let kinds: Vec<u16> = m.iter().map(|m| m.0).collect();
    // NEWTABLE (10<<8|0), DELTABLE (10<<8|2), NEWTABLE, BATCH_END.
    assert_eq!(kinds, vec![0x10, 0x0a00, 0x0a02, 0x0a00, 0x11]);
    let seqs: Vec<u32> = m.iter().map(|m| m.2).collect();
    assert_eq!(seqs, vec![100, 101, 102, 103, 104]);
    // NEWTABLE: REQUEST|ACK|CREATE, family ip, NFTA_TABLE_NAME "cvm\0".
    assert_eq!(m[1].1, 0x0405);
    assert_eq!(m[1].3, 2);
    assert_eq!(m[1].5, vec![8, 0, 1, 0, b'c', b'v', b'm', 0]);
    assert_eq!(m[2].1, 0x0005, "the delete does not create");
    assert_eq!((m[4].3, m[4].4), (0, 10));
}

#[test]
fn chain_carries_hook_priority_policy_and_type() {
    let ruleset = Ruleset {
        family: NFPROTO_IPV4,
        table: "t".to_owned(),
        chains: vec![Chain {
            name: "pre".to_owned(),
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: -100,
            policy: Verdict::Accept,
        }],
        rules: Vec::new(),
    };
    let (bytes, acks) = replace_batch(&ruleset, 0);
    assert_eq!(acks, 4);
    let m = messages(&bytes);
    assert_eq!(m[4].0, 0x0a03);
    let a = attrs(&m[4].5);
    let kinds: Vec<u16> = a.iter().map(|a| a.0).collect();
    assert_eq!(kinds, vec![1, 3, 4 | 0x8000, 5, 7]);
    let hook = attrs(&a[2].1);
    assert_eq!(hook[0], (1, vec![0, 0, 0, 0]));
    assert_eq!(hook[1], (2, (-100i32).to_be_bytes().to_vec()));
    assert_eq!(a[3].1, vec![0, 0, 0, 1], "NF_ACCEPT, big-endian");
    assert_eq!(a[4].1, b"nat\0".to_vec());
}

#[test]
fn cmp_and_verdict_expressions_encode_as_nft_does() {
    let cmp = expr_attrs(&Expr::Cmp {
        sreg: Reg::R1,
        op: CmpOp::Neq,
        data: vec![0xab, 0xcd],
    });
    // NFTA_EXPR_NAME "cmp\0", NFTA_EXPR_DATA{SREG be32 1, OP be32 1, DATA{VALUE ab cd + pad}}
    let want: Vec<u8> = [
        &[8, 0, 1, 0][..],
        b"cmp\0",
        &[32, 0, 2, 0x80],
        &[8, 0, 1, 0, 0, 0, 0, 1],
        &[8, 0, 2, 0, 0, 0, 0, 1],
        &[12, 0, 3, 0x80, 6, 0, 1, 0, 0xab, 0xcd, 0, 0],
    ]
    .concat();
    assert_eq!(cmp.0, want);
    let accept = expr_attrs(&Expr::Verdict(Verdict::Accept));
    let a = attrs(&accept.0);
    assert_eq!(a[0].1, b"immediate\0".to_vec());
    let data = attrs(&a[1].1);
    assert_eq!(data[0], (1, vec![0, 0, 0, 0]), "NFT_REG_VERDICT");
    let verdict = attrs(&attrs(&data[1].1)[0].1);
    assert_eq!(attrs(&data[1].1)[0].0, 2 | 0x8000, "NFTA_DATA_VERDICT");
    assert_eq!(verdict, vec![(1, vec![0, 0, 0, 1])]);
    assert_eq!(
        expr_attrs(&Expr::Masquerade).0,
        [&[9, 0, 1, 0][..], b"masq\0\0\0\0"].concat()
    );
}

#[test]
fn interface_names_match_exactly_or_by_prefix() {
    assert_eq!(ifname("eth0"), b"eth0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec());
    assert_eq!(ifname("cvmbr*"), b"cvmbr".to_vec());
}

#[test]
fn workload_ruleset_dnats_published_ports_and_isolates_the_bridges() {
    let bridges = [
        BridgeNet {
            bridge: "cvmbr0".to_owned(),
            network: Ipv4Addr::new(172, 30, 0, 0),
            prefix_len: 24,
            internal: false,
        },
        BridgeNet {
            bridge: "cvmbr1".to_owned(),
            network: Ipv4Addr::new(172, 30, 1, 0),
            prefix_len: 24,
            internal: true,
        },
    ];
    let forwards = [Forward {
        iif: None,
        protocol: 6,
        daddr: Ipv4Addr::new(10, 0, 2, 15),
        published: 18080,
        target: Ipv4Addr::new(172, 30, 0, 2),
        port: 8080,
    }];
    let rs = workload_ruleset("eth0", "cvmbr", &bridges, &forwards);
    let chains: Vec<(&str, Hook, i32)> = rs
        .chains
        .iter()
        .map(|c| (c.name.as_str(), c.hook, c.priority))
        .collect();
    assert_eq!(
        chains,
        vec![
            ("prerouting", Hook::Prerouting, -100),
            ("postrouting", Hook::Postrouting, 100),
            ("forward", Hook::Forward, 0)
        ]
    );
    let per_chain = |name: &str| rs.rules.iter().filter(|r| r.chain == name).count();
    assert_eq!(per_chain("prerouting"), 1);
    assert_eq!(
        per_chain("postrouting"),
        1,
        "no masquerade for the internal network"
    );
    // established/related, dnat, drop into the bridges, drop out of the internal one.
    assert_eq!(per_chain("forward"), 4);
    let dnat = &rs.rules[0].exprs;
    assert!(dnat.contains(&Expr::Cmp {
        sreg: Reg::R1,
        op: CmpOp::Eq,
        data: vec![0x46, 0xa0]
    }));
    assert!(dnat.contains(&Expr::Immediate {
        dreg: Reg::R2,
        data: vec![0x1f, 0x90]
    }));
    assert!(dnat.contains(&Expr::Immediate {
        dreg: Reg::R1,
        data: vec![172, 30, 0, 2]
    }));
    assert_eq!(
        dnat.last(),
        Some(&Expr::Dnat {
            addr: Reg::R1,
            port: Some(Reg::R2)
        })
    );
    let drop = rs
        .rules
        .iter()
        .find(|r| r.exprs.contains(&Expr::Verdict(Verdict::Drop)))
        .unwrap();
    assert_eq!(
        drop.exprs[1],
        Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: b"cvmbr".to_vec()
        }
    );
    let dnat_accept = &rs.rules[3].exprs;
    assert_eq!(
        dnat_accept[1],
        Expr::Bitwise {
            reg: Reg::R1,
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
            xor: vec![0; 4]
        }
    );
    // And the whole set encodes: 3 table messages + 3 chains + 6 rules.
    assert_eq!(replace_batch(&rs, 1).1, 12);
}

#[test]
fn a_forward_on_the_tunnel_matches_the_tunnel_interface() {
    let forward = |iif: Option<&str>| Forward {
        iif: iif.map(str::to_owned),
        protocol: 6,
        daddr: Ipv4Addr::new(10, 4, 0, 2),
        published: 8080,
        target: Ipv4Addr::new(172, 30, 0, 2),
        port: 8080,
    };
    let iif_of = |rs: &Ruleset| -> Vec<Vec<u8>> {
        rs.rules
            .iter()
            .filter(|r| r.chain == "prerouting")
            .filter_map(|r| match r.exprs.get(1) {
                Some(Expr::Cmp { data, .. }) => Some(data.clone()),
                _ => None,
            })
            .collect()
    };
    let rs = workload_ruleset(
        "eth0",
        "cvmbr",
        &[],
        &[forward(None), forward(Some("dstack-wg0"))],
    );
    assert_eq!(iif_of(&rs), vec![ifname("eth0"), ifname("dstack-wg0")]);
}
