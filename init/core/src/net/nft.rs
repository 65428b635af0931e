//! An nftables rule set as nfnetlink bytes: the typed pieces the init uses (one table, base
//! chains, rules of `meta`/`payload`/`cmp`/`bitwise`/`ct`/`immediate`/`nat`/`masq` expressions)
//! and the batch encoder (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`, one `sendmsg`, applied
//! atomically by the kernel). Constants are those of the kernel uapi
//! `linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h` and `linux/netlink.h`; values
//! the kernel reads as `NLA_BE32` are written big-endian. The socket is `init_sys::netlink`.

use std::net::Ipv4Addr;

/// `NFNL_SUBSYS_NFTABLES`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` (= `NLMSG_MIN_TYPE`).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
/// `AF_UNSPEC` / `NFPROTO_IPV4`.
const AF_UNSPEC: u8 = 0;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// A 16-byte nftables register (`NFT_REG_1` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// `NFT_REG_1`.
    R1 = 1,
    /// `NFT_REG_2`.
    R2 = 2,
}

/// `enum nft_meta_keys` (the ones used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// `NFT_META_IIFNAME`.
    IifName = 6,
    /// `NFT_META_OIFNAME`.
    OifName = 7,
    /// `NFT_META_L4PROTO`.
    L4Proto = 16,
}

/// `enum nft_payload_bases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// `NFT_PAYLOAD_NETWORK_HEADER`.
    Network = 1,
    /// `NFT_PAYLOAD_TRANSPORT_HEADER`.
    Transport = 2,
}

/// `enum nft_cmp_ops` (the ones used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `NFT_CMP_EQ`.
    Eq = 0,
    /// `NFT_CMP_NEQ`.
    Neq = 1,
}

/// `enum nft_ct_keys` (the ones used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    /// `NFT_CT_STATE` (a host-order u32 bit set).
    State = 0,
    /// `NFT_CT_STATUS` (a host-order u32 of `IPS_*` bits).
    Status = 2,
}

/// `ct state` bits (`NF_CT_STATE_BIT(IP_CT_ESTABLISHED)`, `…RELATED`).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
/// See [`CT_STATE_ESTABLISHED`].
pub const CT_STATE_RELATED: u32 = 1 << 2;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`.
pub const IPS_DST_NAT: u32 = 1 << 5;

/// Verdicts (`NF_DROP`, `NF_ACCEPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_DROP`.
    Drop = 0,
    /// `NF_ACCEPT`.
    Accept = 1,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load <key> => reg`.
    Meta {
        /// Key.
        key: MetaKey,
        /// Destination.
        dreg: Reg,
    },
    /// `payload load <len>b @ <base> + <offset> => reg`.
    Payload {
        /// Header.
        base: PayloadBase,
        /// Byte offset in the header.
        offset: u32,
        /// Length in bytes.
        len: u32,
        /// Destination.
        dreg: Reg,
    },
    /// `cmp <op> reg <data>` (breaks the rule when false).
    Cmp {
        /// Source.
        sreg: Reg,
        /// Operator.
        op: CmpOp,
        /// Compared bytes (their length is the compared length).
        data: Vec<u8>,
    },
    /// `bitwise reg = (reg & mask) ^ xor`.
    Bitwise {
        /// Source and destination.
        reg: Reg,
        /// Mask (its length is the operand length).
        mask: Vec<u8>,
        /// Xor, as long as `mask`.
        xor: Vec<u8>,
    },
    /// `ct load <key> => reg`.
    Ct {
        /// Key.
        key: CtKey,
        /// Destination.
        dreg: Reg,
    },
    /// `immediate reg <data>`.
    Immediate {
        /// Destination.
        dreg: Reg,
        /// Bytes.
        data: Vec<u8>,
    },
    /// The rule's verdict (`immediate` into the verdict register).
    Verdict(Verdict),
    /// `nat dnat ip addr_reg [proto_reg]`.
    Dnat {
        /// Register with the IPv4 address.
        addr: Reg,
        /// Register with the port (big-endian u16).
        port: Option<Reg>,
    },
    /// `masq`.
    Masquerade,
}

/// Chain types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
        }
    }
}

/// Netfilter hooks (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING`.
    Prerouting = 0,
    /// `NF_INET_FORWARD`.
    Forward = 2,
    /// `NF_INET_POST_ROUTING`.
    Postrouting = 4,
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Priority (`-100` dstnat, `100` srcnat, `0` filter).
    pub priority: i32,
    /// Policy (accept unless said).
    pub policy: Verdict,
}

/// A rule: expressions appended to `chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Chain name.
    pub chain: String,
    /// Expressions, in order.
    pub exprs: Vec<Expr>,
}

/// One table with its chains and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Family (`NFPROTO_IPV4`).
    pub family: u8,
    /// Table name.
    pub table: String,
    /// Base chains.
    pub chains: Vec<Chain>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// An attribute writer (`struct nlattr` + payload, padded to 4).
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }

    fn put_be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, inner: Attrs) {
        self.put(kind | NLA_F_NESTED, &inner.0);
    }
}

fn expr_attrs(expr: &Expr) -> Attrs {
    let (name, data) = match expr {
        Expr::Meta { key, dreg } => {
            let mut a = Attrs::default();
            a.put_be32(1, *dreg as u32); // NFTA_META_DREG
            a.put_be32(2, *key as u32); // NFTA_META_KEY
            ("meta", a)
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let mut a = Attrs::default();
            a.put_be32(1, *dreg as u32); // NFTA_PAYLOAD_DREG
            a.put_be32(2, *base as u32); // NFTA_PAYLOAD_BASE
            a.put_be32(3, *offset); // NFTA_PAYLOAD_OFFSET
            a.put_be32(4, *len); // NFTA_PAYLOAD_LEN
            ("payload", a)
        }
        Expr::Cmp { sreg, op, data } => {
            let mut a = Attrs::default();
            a.put_be32(1, *sreg as u32); // NFTA_CMP_SREG
            a.put_be32(2, *op as u32); // NFTA_CMP_OP
            a.nest(3, value(data)); // NFTA_CMP_DATA
            ("cmp", a)
        }
        Expr::Bitwise { reg, mask, xor } => {
            let mut a = Attrs::default();
            a.put_be32(1, *reg as u32); // NFTA_BITWISE_SREG
            a.put_be32(2, *reg as u32); // NFTA_BITWISE_DREG
            a.put_be32(3, u32::try_from(mask.len()).unwrap_or(0)); // NFTA_BITWISE_LEN
            a.nest(4, value(mask)); // NFTA_BITWISE_MASK
            a.nest(5, value(xor)); // NFTA_BITWISE_XOR
            ("bitwise", a)
        }
        Expr::Ct { key, dreg } => {
            let mut a = Attrs::default();
            a.put_be32(1, *dreg as u32); // NFTA_CT_DREG
            a.put_be32(2, *key as u32); // NFTA_CT_KEY
            ("ct", a)
        }
        Expr::Immediate { dreg, data } => {
            let mut a = Attrs::default();
            a.put_be32(1, *dreg as u32); // NFTA_IMMEDIATE_DREG
            a.nest(2, value(data)); // NFTA_IMMEDIATE_DATA
            ("immediate", a)
        }
        Expr::Verdict(verdict) => {
            let mut code = Attrs::default();
            code.put_be32(NFTA_VERDICT_CODE, *verdict as u32);
            let mut data = Attrs::default();
            data.nest(NFTA_DATA_VERDICT, code);
            let mut a = Attrs::default();
            a.put_be32(1, 0); // NFTA_IMMEDIATE_DREG = NFT_REG_VERDICT
            a.nest(2, data);
            ("immediate", a)
        }
        Expr::Dnat { addr, port } => {
            let mut a = Attrs::default();
            a.put_be32(1, 1); // NFTA_NAT_TYPE = NFT_NAT_DNAT
            a.put_be32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
            a.put_be32(3, *addr as u32); // NFTA_NAT_REG_ADDR_MIN
            if let Some(port) = port {
                a.put_be32(5, *port as u32); // NFTA_NAT_REG_PROTO_MIN
            }
            ("nat", a)
        }
        Expr::Masquerade => ("masq", Attrs::default()),
    };
    let mut out = Attrs::default();
    out.put_str(NFTA_EXPR_NAME, name);
    if !data.0.is_empty() {
        out.nest(NFTA_EXPR_DATA, data);
    }
    out
}

fn value(bytes: &[u8]) -> Attrs {
    let mut a = Attrs::default();
    a.put(NFTA_DATA_VALUE, bytes);
    a
}

/// One netlink message: `nlmsghdr` + `nfgenmsg` + attributes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, a: &Attrs) {
    let len = u32::try_from(16 + 4 + a.0.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(&a.0);
}

/// The batch that replaces table `ruleset.table` atomically: begin, create the table (so the
/// delete cannot fail), delete it (and whatever it held), create it again with its chains and
/// rules, end. Messages are numbered from `seq`; all but begin/end ask for an ack. Returns the
/// bytes and the number of acks to expect.
pub fn replace_batch(ruleset: &Ruleset, seq: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let mut n = seq;
    let mut next = || {
        n = n.wrapping_add(1);
        n
    };
    let f = ruleset.family;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &Attrs::default(),
    );
    let ty = |t: u16| (NFNL_SUBSYS_NFTABLES << 8) | t;
    let mut table = Attrs::default();
    table.put_str(NFTA_TABLE_NAME, &ruleset.table);
    let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    let mut acks = 0;
    message(&mut out, ty(NFT_MSG_NEWTABLE), create, next(), f, 0, &table);
    message(
        &mut out,
        ty(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        next(),
        f,
        0,
        &table,
    );
    message(&mut out, ty(NFT_MSG_NEWTABLE), create, next(), f, 0, &table);
    acks += 3;
    for chain in &ruleset.chains {
        let mut a = Attrs::default();
        a.put_str(NFTA_CHAIN_TABLE, &ruleset.table);
        a.put_str(NFTA_CHAIN_NAME, &chain.name);
        let mut hook = Attrs::default();
        hook.put_be32(NFTA_HOOK_HOOKNUM, chain.hook as u32);
        hook.put(NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes());
        a.nest(NFTA_CHAIN_HOOK, hook);
        a.put_be32(NFTA_CHAIN_POLICY, chain.policy as u32);
        a.put_str(NFTA_CHAIN_TYPE, chain.kind.name());
        message(&mut out, ty(NFT_MSG_NEWCHAIN), create, next(), f, 0, &a);
        acks += 1;
    }
    for rule in &ruleset.rules {
        let mut a = Attrs::default();
        a.put_str(NFTA_RULE_TABLE, &ruleset.table);
        a.put_str(NFTA_RULE_CHAIN, &rule.chain);
        let mut list = Attrs::default();
        for expr in &rule.exprs {
            list.nest(NFTA_LIST_ELEM, expr_attrs(expr));
        }
        a.nest(NFTA_RULE_EXPRESSIONS, list);
        message(
            &mut out,
            ty(NFT_MSG_NEWRULE),
            create | NLM_F_APPEND,
            next(),
            f,
            0,
            &a,
        );
        acks += 1;
    }
    let end = next();
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &Attrs::default(),
    );
    (out, acks)
}

/// An interface name as `meta iifname/oifname` compares it: NUL-padded to `IFNAMSIZ` (16)
/// for an exact match; `prefix*` compares only the prefix's bytes.
pub fn ifname(name: &str) -> Vec<u8> {
    match name.strip_suffix('*') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => {
            let mut bytes = name.as_bytes().to_vec();
            bytes.resize(16, 0);
            bytes
        }
    }
}

/// A published port: traffic to `daddr:published` arriving on the uplink (or on `iif`) goes to
/// `target:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The interface it arrives on when not the uplink (the dstack-gateway tunnel).
    pub iif: Option<String>,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub protocol: u8,
    /// The VM address it is published on.
    pub daddr: Ipv4Addr,
    /// Host (VM) port.
    pub published: u16,
    /// The service's address.
    pub target: Ipv4Addr,
    /// Container port.
    pub port: u16,
}

/// A bridge network for the rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    /// Bridge name.
    pub bridge: String,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// `internal: true`: no egress.
    pub internal: bool,
}

fn meta_cmp(key: MetaKey, op: CmpOp, data: Vec<u8>) -> [Expr; 2] {
    [
        Expr::Meta { key, dreg: Reg::R1 },
        Expr::Cmp {
            sreg: Reg::R1,
            op,
            data,
        },
    ]
}

fn masked_neq_zero(load: Expr, mask: u32) -> [Expr; 3] {
    [
        load,
        Expr::Bitwise {
            reg: Reg::R1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ]
}

/// The init's rule set (table `ip cvm`), as `nft` would write it:
///
/// ```text
/// chain prerouting { type nat hook prerouting priority -100;
///   iifname UPLINK ip daddr D meta l4proto P th dport PUB dnat to T:PORT }   # per Forward
/// chain postrouting { type nat hook postrouting priority 100;
///   oifname UPLINK ip saddr NET/LEN masquerade }                              # per non-internal bridge
/// chain forward { type filter hook forward priority 0; policy accept;
///   ct state established,related accept
///   ct status dnat accept
///   oifname "BRIDGE_PREFIX*" drop
///   iifname BRIDGE drop }                                                     # per internal bridge
/// ```
///
/// So from outside only published ports reach a service; services reach out through the
/// uplink (masqueraded) unless their network is internal.
pub fn workload_ruleset(
    uplink: &str,
    bridge_prefix: &str,
    bridges: &[BridgeNet],
    forwards: &[Forward],
) -> Ruleset {
    let chain = |name: &str, kind, hook, priority| Chain {
        name: name.to_owned(),
        kind,
        hook,
        priority,
        policy: Verdict::Accept,
    };
    let mut rules = Vec::new();
    for f in forwards {
        let mut exprs = Vec::new();
        let iif = f.iif.as_deref().unwrap_or(uplink);
        exprs.extend(meta_cmp(MetaKey::IifName, CmpOp::Eq, ifname(iif)));
        exprs.push(Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: Reg::R1,
        });
        exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: f.daddr.octets().to_vec(),
        });
        exprs.extend(meta_cmp(MetaKey::L4Proto, CmpOp::Eq, vec![f.protocol]));
        exprs.push(Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: Reg::R1,
        });
        exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: f.published.to_be_bytes().to_vec(),
        });
        exprs.push(Expr::Immediate {
            dreg: Reg::R1,
            data: f.target.octets().to_vec(),
        });
        exprs.push(Expr::Immediate {
            dreg: Reg::R2,
            data: f.port.to_be_bytes().to_vec(),
        });
        exprs.push(Expr::Dnat {
            addr: Reg::R1,
            port: Some(Reg::R2),
        });
        rules.push(Rule {
            chain: "prerouting".to_owned(),
            exprs,
        });
    }
    for b in bridges.iter().filter(|b| !b.internal) {
        let mut exprs = Vec::new();
        exprs.extend(meta_cmp(MetaKey::OifName, CmpOp::Eq, ifname(uplink)));
        exprs.push(Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: Reg::R1,
        });
        exprs.push(Expr::Bitwise {
            reg: Reg::R1,
            mask: super::prefix_to_mask(b.prefix_len).octets().to_vec(),
            xor: vec![0; 4],
        });
        exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: b.network.octets().to_vec(),
        });
        exprs.push(Expr::Masquerade);
        rules.push(Rule {
            chain: "postrouting".to_owned(),
            exprs,
        });
    }
    let forward = |exprs: Vec<Expr>| Rule {
        chain: "forward".to_owned(),
        exprs,
    };
    let mut est: Vec<Expr> = masked_neq_zero(
        Expr::Ct {
            key: CtKey::State,
            dreg: Reg::R1,
        },
        CT_STATE_ESTABLISHED | CT_STATE_RELATED,
    )
    .into();
    est.push(Expr::Verdict(Verdict::Accept));
    rules.push(forward(est));
    let mut dnat: Vec<Expr> = masked_neq_zero(
        Expr::Ct {
            key: CtKey::Status,
            dreg: Reg::R1,
        },
        IPS_DST_NAT,
    )
    .into();
    dnat.push(Expr::Verdict(Verdict::Accept));
    rules.push(forward(dnat));
    let mut into: Vec<Expr> = meta_cmp(
        MetaKey::OifName,
        CmpOp::Eq,
        ifname(&format!("{bridge_prefix}*")),
    )
    .into();
    into.push(Expr::Verdict(Verdict::Drop));
    rules.push(forward(into));
    for b in bridges.iter().filter(|b| b.internal) {
        let mut out: Vec<Expr> = meta_cmp(MetaKey::IifName, CmpOp::Eq, ifname(&b.bridge)).into();
        out.push(Expr::Verdict(Verdict::Drop));
        rules.push(forward(out));
    }
    Ruleset {
        family: NFPROTO_IPV4,
        table: "cvm".to_owned(),
        chains: vec![
            chain("prerouting", ChainType::Nat, Hook::Prerouting, -100),
            chain("postrouting", ChainType::Nat, Hook::Postrouting, 100),
            chain("forward", ChainType::Filter, Hook::Forward, 0),
        ],
        rules,
    }
}

#[cfg(test)]
mod tests;
