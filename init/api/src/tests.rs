//! Handler tests over `UnixStream` pairs against the simulated TEE.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvm_sim_tee::InsecureSimulatedTee;
use init_core::app_compose::StorageFs;
use init_core::identity::{AppId, AppIdentity, ComposeHash, InstanceId};
use init_core::tee::events::{
    EventLogSink, KeyProviderInfo, RuntimeEventLog, app_info_events, system_ready_events,
};
use init_core::tee::{BoxError, EventLogVersion, Rtmr, RtmrIndex, RuntimeEvent, Sha384Digest};
use measure::dstack_event_log::parse_event_log;
use measure::quote::Quote;
use measure::rtmr::extend;
use measure::runtime_event::replay_rtmr3;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use super::*;
use crate::state::{BoxSink, ResumeMode};

/// A sink whose lines the test can read afterwards.
#[derive(Debug, Clone, Default)]
struct SharedSink(Arc<Mutex<Vec<String>>>);

impl EventLogSink for SharedSink {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(line.to_owned());
        Ok(())
    }
}

fn identity() -> AppIdentity {
    AppIdentity {
        compose_hash: ComposeHash([0xc0; 32]),
        app_id: AppId([0xa1; 20]),
        instance_id_seed: Vec::new(),
        instance_id: Some(InstanceId([0x1d; 20])),
    }
}

/// Boots like the init: the simulated TEE, both plan phases, the log text.
fn booted(version: EventLogVersion) -> (InsecureSimulatedTee, String) {
    let mut tee = InsecureSimulatedTee::new();
    let sink = SharedSink::default();
    let mut log = RuntimeEventLog::new(&mut tee, sink.clone()).unwrap();
    log.emit_plan(app_info_events(&identity(), version))
        .unwrap();
    log.emit_plan(system_ready_events(
        Some(&[0x05; 32]),
        &KeyProviderInfo::none(),
        StorageFs::Ext4,
        version,
    ))
    .unwrap();
    drop(log);
    let text = sink.0.lock().unwrap().concat();
    (tee, text)
}

fn workload() -> WorkloadInfo {
    WorkloadInfo {
        app_name: "demo".into(),
        app_compose: r#"{"manifest_version":2,"name":"demo"}"#.into(),
        vm_config: r#"{"cpu_count":1}"#.into(),
        sys_config: r#"{"vm_config":"{\"cpu_count\":1}"}"#.into(),
        cloud_vendor: String::new(),
        cloud_product: String::new(),
        exposure: crate::worker::Exposure::default(),
    }
}

struct Fixture {
    state: ApiState<InsecureSimulatedTee>,
    appended: SharedSink,
    rtmr3: Sha384Digest,
}

fn fixture() -> Fixture {
    let (tee, text) = booted(EventLogVersion::V1);
    let rtmr3 = *tee.rtmrs().register(RtmrIndex::R3);
    let appended = SharedSink::default();
    let sink: BoxSink = Box::new(appended.clone());
    let state =
        ApiState::resume(tee, ResumeMode::RegistersHoldLog, &text, sink, workload()).unwrap();
    Fixture {
        state,
        appended,
        rtmr3,
    }
}

/// Sends `input` on one connection (then half-closes) and returns the raw reply bytes.
fn exchange_with(
    state: &ApiState<InsecureSimulatedTee>,
    service: Service,
    limits: &Limits,
    input: &[u8],
) -> (Vec<u8>, ConnectionOutcome) {
    let (mut client, server) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        // The handler owns the server end, so the client sees EOF when it returns.
        let handler = s.spawn(move || handle_connection(state, service, &server, limits));
        // The server may close early (e.g. on a head error); ignore a failed write.
        let _ = client.write_all(input);
        let _ = client.shutdown(Shutdown::Write);
        (read_all(&mut client), handler.join().unwrap())
    })
}

fn exchange(
    state: &ApiState<InsecureSimulatedTee>,
    service: Service,
    input: &[u8],
) -> Vec<(u16, Value)> {
    responses(&exchange_with(state, service, &Limits::default(), input).0)
}

/// Reads until EOF, keeping what arrived before a reset.
fn read_all(client: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = client.read(&mut chunk) {
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Splits our own responses (always Content-Length framed).
fn responses(mut raw: &[u8]) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = std::str::from_utf8(&raw[..end]).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        if status == 100 {
            raw = &raw[end..];
            continue;
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        out.push((
            status,
            serde_json::from_slice(&raw[end..end + len]).unwrap(),
        ));
        raw = &raw[end + len..];
    }
    out
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn quote_of(reply: &Value) -> Quote {
    Quote::parse(&hex::decode(reply["quote"].as_str().unwrap()).unwrap()).unwrap()
}

#[test]
fn info_reports_identity_and_registers() {
    let f = fixture();
    let replies = exchange(&f.state, Service::DstackGuest, &post("/Info", "{}"));
    let [(200, info)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!(info["app_id"], hex::encode([0xa1; 20]));
    assert_eq!(info["instance_id"], hex::encode([0x1d; 20]));
    assert_eq!(info["compose_hash"], hex::encode([0xc0; 32]));
    assert_eq!(info["os_image_hash"], hex::encode([0x05; 32]));
    assert_eq!(info["key_provider_info"], r#"{"name":"none","id":""}"#);
    assert_eq!(info["app_name"], "demo");
    assert_eq!(info["vm_config"], r#"{"cpu_count":1}"#);
    let tcb: Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    assert_eq!(tcb["rtmr3"], f.rtmr3.to_string());
    assert_eq!(tcb["app_compose"], workload().app_compose);
    assert_eq!(tcb["mr_aggregated"], info["mr_aggregated"]);
    // The log in tcb_info replays to RTMR3 (marker first, then the plan).
    let events = parse_event_log(&tcb["event_log"].to_string()).unwrap();
    let runtime: Vec<_> = events.iter().filter_map(|e| e.runtime_event()).collect();
    assert_eq!(runtime[0].name, "insecure-simulated-tee");
    assert_eq!(replay_rtmr3(&runtime), f.rtmr3);
    // GET works too, on both sockets and all path spellings.
    for (service, path) in [
        (Service::DstackGuest, "/prpc/Info?json"),
        (Service::DstackGuest, "/prpc/DstackGuest.Info"),
        (Service::Tappd, "/prpc/Tappd.Info"),
        (Service::Tappd, "/prpc/Info"),
    ] {
        let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let replies = exchange(&f.state, service, get.as_bytes());
        assert_eq!(replies[0].0, 200, "{path}");
        assert_eq!(replies[0].1["app_id"], info["app_id"]);
    }
}

#[test]
fn mr_aggregated_matches_the_dstack_vector() {
    // TDX-lite fixture values from `shared/vectors/dstack/crypto-and-appinfo-vectors.json`.
    let vectors: Value =
        serde_json::from_str(include_str!("../testdata/crypto-and-appinfo-vectors.json")).unwrap();
    let fixture: Value =
        serde_json::from_str(include_str!("../testdata/tdx-lite-getquote.json")).unwrap();
    let quote = Quote::parse(&hex::decode(fixture["quote"].as_str().unwrap()).unwrap()).unwrap();
    let td_info = measure::tdreport::TdInfo {
        attributes: 0,
        xfam: 0,
        mr_td: quote.body.mr_td,
        mr_config_id: quote.body.mr_config_id,
        mr_owner: quote.body.mr_owner,
        mr_owner_config: quote.body.mr_owner_config,
        rtmrs: *quote.rtmrs(),
        servtd_hash: Sha384Digest::ZERO,
        reserved: [0; 64],
    };
    let want = vectors["tdx_lite_fixture_app_info"]["mr_aggregated_full_replay"]
        .as_str()
        .unwrap();
    assert_eq!(hex::encode(service::mr_aggregated(&td_info)), want);
}

#[test]
fn get_quote_binds_raw_report_data_and_returns_a_replayable_log() {
    let f = fixture();
    let replies = exchange(
        &f.state,
        Service::DstackGuest,
        &post("/GetQuote", r#"{"report_data":"deadbeef"}"#),
    );
    let (200, reply) = &replies[0] else {
        panic!("{replies:?}")
    };
    let quote = quote_of(reply);
    let mut want = [0u8; 64];
    want[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(quote.body.report_data.0, want);
    assert_eq!(reply["report_data"], hex::encode(want));
    assert_eq!(*quote.rtmrs().register(RtmrIndex::R3), f.rtmr3);
    assert_eq!(reply["vm_config"], r#"{"cpu_count":1}"#);
    let events = parse_event_log(reply["event_log"].as_str().unwrap()).unwrap();
    let runtime: Vec<_> = events.iter().filter_map(|e| e.runtime_event()).collect();
    assert_eq!(replay_rtmr3(&runtime), f.rtmr3);
    // Recorded digests agree with the recomputed ones.
    for e in &events {
        assert_eq!(e.digest, Some(e.runtime_event().unwrap().digest()));
    }
    // Exactly 64 bytes is fine, as is nothing at all.
    let full = post(
        "/GetQuote",
        &format!(r#"{{"report_data":"{}"}}"#, "ab".repeat(64)),
    );
    let replies = exchange(&f.state, Service::DstackGuest, &full);
    assert_eq!(quote_of(&replies[0].1).body.report_data.0, [0xab; 64]);
    let replies = exchange(&f.state, Service::DstackGuest, &post("/GetQuote", ""));
    assert_eq!(quote_of(&replies[0].1).body.report_data.0, [0; 64]);
    // The curl form from dstack's API docs: arguments in the query of a GET.
    let get = b"GET /GetQuote?report_data=1234deadbeaf HTTP/1.1\r\nHost: dstack\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let replies = exchange(&f.state, Service::DstackGuest, get);
    assert_eq!(
        quote_of(&replies[0].1).body.report_data.0[..6],
        [0x12, 0x34, 0xde, 0xad, 0xbe, 0xaf]
    );
}

#[test]
fn bad_requests_get_errors_and_the_connection_keeps_serving() {
    let f = fixture();
    let mut input = Vec::new();
    let too_long = format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65));
    let cases: [(Vec<u8>, u16, &str); 10] = [
        (post("/GetQuote", &too_long), 400, "at most 64"),
        (
            post("/GetQuote", r#"{"report_data":"xyz"}"#),
            400,
            "not hex",
        ),
        (
            post("/GetQuote", "{not json"),
            400,
            "decode GetQuote arguments",
        ),
        (
            post("/GetQuote", r#"{"report_data":7}"#),
            400,
            "decode GetQuote arguments",
        ),
        (post("/NoSuchMethod", "{}"), 404, "unknown method"),
        (post("/GetKey", "{}"), 501, "no app keys"),
        (post("/GetTlsKey", "{}"), 501, "no app keys"),
        (
            post("/Sign", r#"{"algorithm":"ed25519","data":"00"}"#),
            501,
            "no app keys",
        ),
        (
            post("/Verify", r#"{"algorithm":"rsa"}"#),
            400,
            "unsupported algorithm",
        ),
        (post("/TdxQuote", "{}"), 404, "unknown method"),
    ];
    for (request, _, _) in &cases {
        input.extend_from_slice(request);
    }
    input.extend_from_slice(&post("/GetQuote", r#"{"report_data":"01"}"#));
    let replies = exchange(&f.state, Service::DstackGuest, &input);
    assert_eq!(replies.len(), cases.len() + 1);
    for ((_, status, text), (got_status, body)) in cases.iter().zip(&replies) {
        assert_eq!(got_status, status, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(text), "{message:?} lacks {text:?}");
    }
    let (200, last) = replies.last().unwrap() else {
        panic!()
    };
    assert_eq!(quote_of(last).body.report_data.0[0], 1);
}

#[test]
fn get_key_derives_and_signs_with_the_app_key() {
    let (app_key, kms_signature) = cvm_keys::kdf::app_k256_key(&[9; 32], &[0xA1; 20]).unwrap();
    let app_public = cvm_keys::kdf::k256_public_key(app_key.expose()).unwrap();
    let keys = cvm_keys::kms::GuestKeys {
        k256_key: app_key,
        k256_signature: kms_signature.to_vec(),
        ca_cert_pem: String::new(),
        kms: None,
    };
    let state = fixture().state.with_app_keys(keys);
    let mut input = post("/GetKey", r#"{"path":"wallet/1","purpose":"signing"}"#);
    input.extend_from_slice(&post(
        "/GetKey",
        r#"{"path":"wallet/1","algorithm":"ed448"}"#,
    ));
    input.extend_from_slice(&post(
        "/GetKey",
        r#"{"path":"wallet/2","algorithm":"k256"}"#,
    ));
    let replies = exchange(&state, Service::DstackGuest, &input);
    let (200, body) = &replies[0] else {
        panic!("{replies:?}")
    };
    let key: [u8; 32] = hex::decode(body["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = cvm_keys::kdf::k256_public_key(&key).unwrap();
    let chain: Vec<Vec<u8>> = body["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    // Link 1: the app key signed "signing:<hex pubkey>".
    let message = format!("signing:{}", hex::encode(public));
    assert_eq!(
        cvm_keys::kdf::recover_keccak256_signer(message.as_bytes(), &chain[0]).unwrap(),
        app_public
    );
    // Link 2: the KMS root signed the app key.
    assert_eq!(chain[1], kms_signature.to_vec());
    assert_eq!(
        cvm_keys::kdf::recover_keccak256_signer(
            &cvm_keys::kdf::kms_signed_message(b"dstack-kms-issued", &[0xA1; 20], &app_public),
            &chain[1]
        )
        .unwrap(),
        cvm_keys::kdf::k256_public_key(&[9; 32]).unwrap()
    );
    assert_eq!(replies[1].0, 400);
    assert!(replies[1].1["error"].as_str().unwrap().contains("ed448"));
    let (200, other) = &replies[2] else {
        panic!("{replies:?}")
    };
    assert_ne!(other["key"], body["key"]);
}

#[test]
fn emit_event_follows_the_dstack_rules() {
    let f = fixture();
    let input = [
        post("/EmitEvent", r#"{"event":"app-id","payload":"00"}"#),
        post("/EmitEvent", r#"{"event":"system-ready","payload":""}"#),
        post("/EmitEvent", r#"{"event":"","payload":"00"}"#),
        post("/EmitEvent", r#"{"event":"x","payload":"zz"}"#),
        post("/EmitEvent", r#"{"event":"my-event","payload":"0102"}"#),
        post("/GetQuote", r#"{"report_data":""}"#),
    ]
    .concat();
    let replies = exchange(&f.state, Service::DstackGuest, &input);
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [403, 403, 400, 400, 200, 200]);
    assert!(
        replies[0].1["error"]
            .as_str()
            .unwrap()
            .contains("reserved for the system")
    );
    let event = RuntimeEvent::new("my-event", vec![1, 2]);
    let rtmr3 = extend(&f.rtmr3, &event.digest());
    assert_eq!(
        *quote_of(&replies[5].1).rtmrs().register(RtmrIndex::R3),
        rtmr3
    );
    // Exactly one new line in the log file, in the dstack format.
    assert_eq!(
        *f.appended.0.lock().unwrap(),
        ["{\"event\":\"my-event\",\"payload\":\"AQI=\"}\n"]
    );
    let events = parse_event_log(replies[5].1["event_log"].as_str().unwrap()).unwrap();
    assert_eq!(events.last().unwrap().runtime_event(), Some(event));
    // EmitEvent is not part of Tappd.
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.EmitEvent", "{}"),
    );
    assert_eq!(replies[0].0, 404);
}

#[test]
fn app_events_use_the_logs_digest_version() {
    let (tee, text) = booted(EventLogVersion::V2);
    let sink = SharedSink::default();
    let state = ApiState::resume(
        tee,
        ResumeMode::RegistersHoldLog,
        &text,
        Box::new(sink.clone()),
        workload(),
    )
    .unwrap();
    state.emit_event("v2-event", b"x").unwrap();
    assert!(sink.0.lock().unwrap()[0].contains("\"version\":2"));
}

#[test]
fn tappd_tdx_quote_hashes_like_dstack() {
    let f = fixture();
    let body = r#"{"report_data":"1234"}"#;
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.TdxQuote", body),
    );
    let (200, reply) = &replies[0] else {
        panic!("{replies:?}")
    };
    let want: [u8; 64] = Sha512::digest(b"app-data:\x12\x34").into();
    assert_eq!(quote_of(reply).body.report_data.0, want);
    assert_eq!(reply["hash_algorithm"], "sha512");
    assert_eq!(reply["prefix"], "app-data");
    assert_eq!(*quote_of(reply).rtmrs().register(RtmrIndex::R3), f.rtmr3);

    let body = r#"{"report_data":"1234","hash_algorithm":"sha256","prefix":"mine"}"#;
    let replies = exchange(&f.state, Service::Tappd, &post("/prpc/TdxQuote", body));
    let got = quote_of(&replies[0].1).body.report_data.0;
    assert_eq!(got[..32], *sha2::Sha256::digest(b"mine:\x12\x34"));
    assert_eq!(got[32..], [0; 32]);

    let raw = format!(
        r#"{{"report_data":"{}","hash_algorithm":"raw"}}"#,
        "07".repeat(64)
    );
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.TdxQuote", &raw),
    );
    assert_eq!(quote_of(&replies[0].1).body.report_data.0, [7; 64]);
    assert_eq!(replies[0].1["prefix"], "");
    let raw_quote = format!(r#"{{"report_data":"{}"}}"#, "08".repeat(64));
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.RawQuote", &raw_quote),
    );
    assert_eq!(quote_of(&replies[0].1).body.report_data.0, [8; 64]);

    for (body, text) in [
        (
            r#"{"report_data":"07","hash_algorithm":"raw"}"#,
            "exactly 64",
        ),
        (
            r#"{"report_data":"07","hash_algorithm":"md5"}"#,
            "invalid hash algorithm",
        ),
        (
            r#"{"report_data":"07","hash_algorithm":"SHA512"}"#,
            "invalid hash algorithm",
        ),
    ] {
        let replies = exchange(
            &f.state,
            Service::Tappd,
            &post("/prpc/Tappd.TdxQuote", body),
        );
        assert_eq!(replies[0].0, 400);
        assert!(replies[0].1["error"].as_str().unwrap().contains(text));
    }
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.GetQuote", "{}"),
    );
    assert_eq!(replies[0].0, 404);
    let replies = exchange(
        &f.state,
        Service::Tappd,
        &post("/prpc/Tappd.DeriveKey", "{}"),
    );
    assert_eq!(replies[0].0, 501);
}

#[test]
fn framing_errors_answer_and_close() {
    let f = fixture();
    let limits = Limits {
        max_head_bytes: 256,
        max_body_bytes: 128,
        ..Limits::default()
    };
    let huge_header = format!(
        "GET /Info HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(300)
    );
    let cases: [(Vec<u8>, u16); 5] = [
        (huge_header.into_bytes(), 431),
        (post("/GetQuote", &"x".repeat(200)), 413),
        (
            b"POST /Info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
        ),
        (b"GET /Info HTTP/1.1\n\n".to_vec(), 400),
        (b"PUT /Info HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405),
    ];
    for (mut input, status) in cases {
        // Anything after the bad request is never answered: the connection closes.
        input.extend_from_slice(&post("/Info", "{}"));
        let (raw, outcome) = exchange_with(&f.state, Service::DstackGuest, &limits, &input);
        let replies = responses(&raw);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0].0, status);
        assert!(matches!(outcome.end, ConnectionEnd::RequestFailed(_)));
    }
    // The state still serves.
    assert_eq!(
        exchange(&f.state, Service::DstackGuest, &post("/Info", ""))[0].0,
        200
    );
}

#[test]
fn slow_clients_time_out() {
    let f = fixture();
    let limits = &Limits {
        request_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let state = &f.state;
    let (mut client, server) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let handler =
            s.spawn(move || handle_connection(state, Service::DstackGuest, &server, limits));
        // Dribble a head and never finish it.
        client
            .write_all(b"POST /GetQuote HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _ = client.write_all(b"Content-Length: 10\r\n");
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        let replies = responses(&out);
        assert_eq!(replies[0].0, 408);
        let outcome = handler.join().unwrap();
        assert!(matches!(
            outcome.end,
            ConnectionEnd::RequestFailed(http::HttpError::RequestTimeout { .. })
        ));
    });
    // An idle keep-alive connection is closed quietly.
    let (mut client, server) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let handler =
            s.spawn(move || handle_connection(state, Service::DstackGuest, &server, limits));
        client.write_all(&post("/Info", "")).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        assert_eq!(responses(&out).len(), 1);
        assert!(matches!(
            handler.join().unwrap().end,
            ConnectionEnd::ClientDone
        ));
    });
}

#[test]
fn expect_continue_and_connection_close() {
    let f = fixture();
    let state = &f.state;
    let (mut client, server) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let handler = s.spawn(move || {
            handle_connection(state, Service::DstackGuest, &server, &Limits::default())
        });
        client
            .write_all(b"POST /Info HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"{}").unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(
            String::from_utf8_lossy(&out).contains("Connection: close\r\n"),
            "{out:?}"
        );
        let outcome = handler.join().unwrap();
        assert_eq!(outcome.requests, 1);
        assert!(matches!(outcome.end, ConnectionEnd::Closed));
    });
}

#[test]
fn handler_never_panics_on_truncated_or_garbage_input() {
    let f = fixture();
    let good = [
        post("/GetQuote", r#"{"report_data":"abcd"}"#),
        post("/prpc/Tappd.TdxQuote", r#"{"report_data":"abcd"}"#),
        post("/EmitEvent", r#"{"event":"e","payload":"00"}"#),
    ]
    .concat();
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for step in 0..300 {
        let mut input = good.clone();
        let cut = usize::try_from(next() % (input.len() as u64)).unwrap();
        if step % 2 == 0 {
            input.truncate(cut);
        } else {
            for _ in 0..4 {
                let pos = usize::try_from(next() % (input.len() as u64)).unwrap();
                input[pos] = next().to_le_bytes()[0];
            }
        }
        for service in [Service::DstackGuest, Service::Tappd] {
            let (raw, outcome) = exchange_with(&f.state, service, &limits, &input);
            // Every answer is a well-formed response.
            assert_eq!(responses(&raw).len(), outcome.requests);
        }
    }
    // Still serving and consistent.
    let replies = exchange(&f.state, Service::DstackGuest, &post("/GetQuote", ""));
    let quote = quote_of(&replies[0].1);
    let events = parse_event_log(replies[0].1["event_log"].as_str().unwrap()).unwrap();
    let runtime: Vec<_> = events.iter().filter_map(|e| e.runtime_event()).collect();
    assert_eq!(
        replay_rtmr3(&runtime),
        *quote.rtmrs().register(RtmrIndex::R3)
    );
}

#[test]
fn resume_checks_the_log_against_the_registers() {
    let (tee, text) = booted(EventLogVersion::V1);
    let sink = || -> BoxSink { Box::new(SharedSink::default()) };

    // A fresh simulated TEE in "hardware" mode: RTMR3 holds only the marker.
    let err = ApiState::resume(
        InsecureSimulatedTee::new(),
        ResumeMode::RegistersHoldLog,
        &text,
        sink(),
        workload(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::Rtmr3Mismatch { .. }), "{err:?}");

    // The same fresh TEE rebuilt from the log: what the separate API process does.
    let rebuilt = ApiState::resume(
        InsecureSimulatedTee::new(),
        ResumeMode::InsecureRebuildSimulator,
        &text,
        sink(),
        workload(),
    )
    .unwrap();
    let report = rebuilt.report().unwrap();
    assert_eq!(report.report.td_info.rtmrs, *tee.rtmrs());

    // Rebuilding real registers double-extends and is refused.
    let err = ApiState::resume(
        tee.clone(),
        ResumeMode::InsecureRebuildSimulator,
        &text,
        sink(),
        workload(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::Rtmr3Mismatch { .. }), "{err:?}");

    // A log without the simulator's marker cannot be rebuilt.
    let without_marker: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let err = ApiState::resume(
        InsecureSimulatedTee::new(),
        ResumeMode::InsecureRebuildSimulator,
        &without_marker,
        sink(),
        workload(),
    )
    .unwrap_err();
    assert!(
        matches!(err, StateError::LogLacksPreExtendedEvent { .. }),
        "{err:?}"
    );

    // Before system-ready the init still owns the log.
    let before_ready: String = text
        .lines()
        .filter(|l| !l.contains("system-ready"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = ApiState::resume(
        tee.clone(),
        ResumeMode::RegistersHoldLog,
        &before_ready,
        sink(),
        workload(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::LogNotSystemReady), "{err:?}");

    // A log that already holds app events resumes (a restarted API process) ...
    let mut tee_with_app = tee.clone();
    let app = RuntimeEvent::new("app-event", b"1".to_vec());
    tee_with_app
        .extend_rtmr(RtmrIndex::R3, &app.digest())
        .unwrap();
    let with_app = format!("{text}{{\"event\":\"app-event\",\"payload\":\"MQ==\"}}\n");
    ApiState::resume(
        tee_with_app.clone(),
        ResumeMode::RegistersHoldLog,
        &with_app,
        sink(),
        workload(),
    )
    .unwrap();
    // ... but not one where the workload used a system name after system-ready.
    let forged = format!("{text}{{\"event\":\"app-id\",\"payload\":\"MQ==\"}}\n");
    let err = ApiState::resume(
        tee_with_app,
        ResumeMode::RegistersHoldLog,
        &forged,
        sink(),
        workload(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::ReplayEvent { .. }), "{err:?}");

    let err =
        ApiState::resume(tee, ResumeMode::RegistersHoldLog, "{", sink(), workload()).unwrap_err();
    assert!(matches!(err, StateError::DecodeEventLog { .. }), "{err:?}");
}

#[test]
fn open_appends_to_the_log_file() {
    let (tee, text) = booted(EventLogVersion::V1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime_events.log");
    std::fs::write(&path, &text).unwrap();
    let state = ApiState::open(tee, ResumeMode::RegistersHoldLog, &path, workload()).unwrap();
    state.emit_event("file-event", b"").unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        after,
        format!("{text}{{\"event\":\"file-event\",\"payload\":\"\"}}\n")
    );
    let err = ApiState::open(
        InsecureSimulatedTee::new(),
        ResumeMode::RegistersHoldLog,
        &dir.path().join("missing"),
        workload(),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::ReadEventLog { .. }));
}

#[test]
fn parse_args_reads_the_init_command_line() {
    let args = [
        "--socket",
        "/run/a.sock",
        "--legacy-socket",
        "/run/b.sock",
        "--event-log",
        "/run/log",
        "--app-compose",
        "/run/ac.json",
    ]
    .map(OsString::from);
    let config = ServerConfig::parse_args(args).unwrap();
    assert_eq!(config.socket, PathBuf::from("/run/a.sock"));
    assert_eq!(config.legacy_socket, Some(PathBuf::from("/run/b.sock")));
    assert_eq!(config.event_log, PathBuf::from("/run/log"));
    assert_eq!(config.app_compose, Some(PathBuf::from("/run/ac.json")));
    assert_eq!(config.sys_config, None);
    let config = ServerConfig::parse_args(["--no-legacy-socket"].map(OsString::from)).unwrap();
    assert_eq!(config.legacy_socket, None);
    assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
    assert!(matches!(
        ServerConfig::parse_args(["--socket"].map(OsString::from)),
        Err(ApiError::ParseArgument { .. })
    ));
    assert!(matches!(
        ServerConfig::parse_args(["--bogus", "x"].map(OsString::from)),
        Err(ApiError::ParseArgument { .. })
    ));
}

#[test]
fn bind_replaces_stale_sockets_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(bind(&path, 0o600).unwrap());
    // The stale socket file stays behind and is replaced.
    drop(bind(&path, 0o600).unwrap());
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        bind(&file, 0o600),
        Err(ApiError::SocketPathOccupied { .. })
    ));
}

#[test]
fn workload_info_loads_the_host_share_copies() {
    let dir = tempfile::tempdir().unwrap();
    let compose = br#"{"manifest_version":2,"name":"my-app","runner":"docker-compose"}"#;
    let sys = serde_json::json!({
        "kms_urls": [],
        "vm_config": "{\"cpu_count\":2,\"os_image_hash\":\"ab\"}",
    });
    std::fs::write(dir.path().join("app-compose.json"), compose).unwrap();
    std::fs::write(dir.path().join(".sys-config.json"), sys.to_string()).unwrap();
    std::fs::create_dir(dir.path().join("dmi")).unwrap();
    std::fs::write(dir.path().join("dmi/sys_vendor"), "QEMU\n").unwrap();
    let info = WorkloadInfo::load(
        &dir.path().join("app-compose.json"),
        Some(&dir.path().join(".sys-config.json")),
        Some(&dir.path().join("dmi")),
    )
    .unwrap();
    assert_eq!(info.app_name, "my-app");
    assert_eq!(info.app_compose.as_bytes(), compose);
    assert_eq!(info.vm_config, "{\"cpu_count\":2,\"os_image_hash\":\"ab\"}");
    assert_eq!(info.cloud_vendor, "QEMU");
    assert_eq!(info.cloud_product, "");

    std::fs::write(dir.path().join("bad.json"), b"{").unwrap();
    let err = WorkloadInfo::load(&dir.path().join("bad.json"), None, None).unwrap_err();
    assert!(
        matches!(err, StateError::ParseWorkloadFile { .. }),
        "{err:?}"
    );
    let err = WorkloadInfo::load(&dir.path().join("missing.json"), None, None).unwrap_err();
    assert!(
        matches!(err, StateError::ReadWorkloadFile { .. }),
        "{err:?}"
    );
}

#[test]
fn run_fails_cleanly_without_an_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        socket: dir.path().join("d.sock"),
        legacy_socket: None,
        event_log: dir.path().join("missing.log"),
        ..ServerConfig::default()
    };
    let err = run(
        &config,
        InsecureSimulatedTee::new(),
        ResumeMode::RegistersHoldLog,
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            ApiError::PrepareState {
                source: StateError::ReadEventLog { .. }
            }
        ),
        "{err:?}"
    );
    // Nothing was bound.
    assert!(!config.socket.exists());
}

#[test]
fn connections_close_after_the_request_limit() {
    let f = fixture();
    let limits = Limits {
        max_requests_per_connection: 2,
        ..Limits::default()
    };
    let input = [post("/Info", ""), post("/Info", ""), post("/Info", "")].concat();
    let (raw, outcome) = exchange_with(&f.state, Service::DstackGuest, &limits, &input);
    assert_eq!(responses(&raw).len(), 2);
    assert_eq!(outcome.requests, 2);
    assert!(matches!(outcome.end, ConnectionEnd::Closed));
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("Connection: keep-alive").count(), 1);
    assert_eq!(text.matches("Connection: close").count(), 1);
}

/// `GetTlsKey` against the test KMS on loopback: the reply is a key and the chain
/// `[leaf, app CA, KMS root]` for it, with the requested names and usages; a KMS that refuses
/// the app gives a 503 with its reason; a boot whose key provider is not a KMS gives 501.
#[test]
fn get_tls_key_gets_a_chain_from_the_kms() {
    let (tee, text) = booted(EventLogVersion::V1);
    let trust = test_kms::QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec());
    let state = ApiState::resume(
        tee,
        ResumeMode::RegistersHoldLog,
        &text,
        Box::new(SharedSink::default()),
        workload(),
    )
    .unwrap();
    let kms_keys = Arc::new(test_kms::KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
    let start = |allowed: Option<Vec<[u8; 32]>>| {
        let policy = test_kms::Policy {
            allowed_compose_hashes: allowed,
            trust: trust.clone(),
            os_image_hash: None,
            allowed_os_image_hashes: None,
            gateway_app_id: String::new(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        test_kms::start(Arc::clone(&kms_keys), policy, listener).unwrap()
    };
    let allowing = start(Some(vec![[0xc0; 32]]));
    let refusing = start(Some(vec![[0x99; 32]]));
    let guest_keys = |url: &str| cvm_keys::kms::GuestKeys {
        k256_key: cvm_keys::secret::Secret::new([1; 32]),
        k256_signature: Vec::new(),
        ca_cert_pem: kms_keys.root_ca_pem.clone(),
        kms: Some(kms_keys.guest_access(url)),
    };
    let state = state.with_app_keys(guest_keys(&allowing.url()));
    let replies = exchange(
        &state,
        Service::DstackGuest,
        &post(
            "/GetTlsKey",
            r#"{"subject":"demo.example","alt_names":["demo.example"],"usage_ra_tls":true,"usage_server_auth":true,"usage_client_auth":false}"#,
        ),
    );
    let (200, body) = &replies[0] else {
        panic!("{replies:?}")
    };
    let key_pem = body["key"].as_str().unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    let chain: Vec<String> = body["certificate_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], kms_keys.root_ca_pem);
    let (leaf_der, leaf_spki) = cvm_keys::kms::certificate_der_and_spki(&chain[0]).unwrap();
    let (_, app_ca_spki) = cvm_keys::kms::certificate_der_and_spki(&chain[1]).unwrap();
    assert_eq!(app_ca_spki, kms_keys.app_ca_spki_der(&[0xa1; 20]).unwrap());
    let key = cvm_keys::kdf::p256_from_pem(key_pem).unwrap();
    assert_eq!(leaf_spki, cvm_keys::kdf::p256_spki_der(&key.public_key()));
    let (root_der, _) = cvm_keys::kms::certificate_der_and_spki(&kms_keys.root_ca_pem).unwrap();
    cvm_keys::sign_cert::verify_chain(&chain, &root_der, &leaf_spki, 1_800_000_000).unwrap();
    // RA-TLS: the leaf carries the quote binding its key and the log of this boot.
    let leaf = cvm_keys::ratls::RaTlsCert::parse(&leaf_der).unwrap();
    assert!(leaf.has_usage("app:custom"));
    assert_eq!(leaf.app_id.as_deref(), Some(&[0xa1; 20][..]));
    let (_, events) = leaf.verify_binding().unwrap();
    assert!(events.iter().any(|e| e.name == "compose-hash"));

    // Tappd DeriveKey: the P-256 key HKDF(k256 app key, path), certified the same way.
    let replies = exchange(
        &state,
        Service::Tappd,
        &post(
            "/prpc/Tappd.DeriveKey",
            r#"{"path":"my/path","subject":"derived.example","usage_server_auth":true}"#,
        ),
    );
    let (200, body) = &replies[0] else {
        panic!("{replies:?}")
    };
    let derived = cvm_keys::kdf::p256_from_pem(body["key"].as_str().unwrap()).unwrap();
    let want =
        cvm_keys::app_sign::tappd_p256_key(&cvm_keys::secret::Secret::new([1; 32]), "my/path")
            .unwrap();
    assert_eq!(derived.to_bytes(), want.to_bytes());
    let chain: Vec<String> = serde_json::from_value(body["certificate_chain"].clone()).unwrap();
    let (_, spki) = cvm_keys::kms::certificate_der_and_spki(&chain[0]).unwrap();
    assert_eq!(spki, cvm_keys::kdf::p256_spki_der(&want.public_key()));
    cvm_keys::sign_cert::verify_chain(&chain, &root_der, &spki, 1_800_000_000).unwrap();
    // The same path again gives the same key; random_seed a fresh one.
    let again = exchange(
        &state,
        Service::Tappd,
        &post("/DeriveKey", r#"{"path":"my/path"}"#),
    );
    assert_eq!(again[0].1["key"], body["key"]);
    let random = exchange(
        &state,
        Service::Tappd,
        &post("/DeriveKey", r#"{"path":"my/path","random_seed":true}"#),
    );
    assert_eq!(random[0].0, 200, "{:?}", random[0].1);
    assert_ne!(random[0].1["key"], body["key"]);

    // The KMS refuses this app: 503 with its reason.
    let state = state.with_app_keys(guest_keys(&refusing.url()));
    let replies = exchange(&state, Service::DstackGuest, &post("/GetTlsKey", "{}"));
    assert_eq!(replies[0].0, 503, "{:?}", replies[0].1);
    let message = replies[0].1["error"].as_str().unwrap();
    assert!(message.contains("compose hash"), "{message}");

    // App keys without a KMS key provider: 501.
    let mut keys = guest_keys("");
    keys.kms = None;
    let state = state.with_app_keys(keys);
    let replies = exchange(&state, Service::DstackGuest, &post("/GetTlsKey", "{}"));
    assert_eq!(replies[0].0, 501);
    let replies = exchange(&state, Service::Tappd, &post("/DeriveKey", "{}"));
    assert_eq!(replies[0].0, 501);
}

#[test]
fn check_arguments_decodes_like_dispatch_without_running() {
    use crate::http::parse_request;
    use crate::service::{check_arguments, dispatch};
    let fixture = fixture();
    let cases: &[(Service, Vec<u8>, Result<&str, u16>)] = &[
        (
            Service::DstackGuest,
            post("/GetQuote", r#"{"report_data":"00ff"}"#),
            Ok("GetQuote"),
        ),
        (
            Service::DstackGuest,
            post("/GetQuote", r#"{"report_data":"0g"}"#),
            Err(400),
        ),
        (
            Service::DstackGuest,
            post(
                "/GetQuote",
                &format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65)),
            ),
            Err(400),
        ),
        (
            Service::DstackGuest,
            post("/EmitEvent", r#"{"event":"x","payload":"01"}"#),
            Ok("EmitEvent"),
        ),
        (
            Service::DstackGuest,
            post("/EmitEvent", r#"{"event":"","payload":"01"}"#),
            Err(400),
        ),
        (
            Service::DstackGuest,
            post("/prpc/DstackGuest.Info", ""),
            Ok("Info"),
        ),
        (
            Service::DstackGuest,
            post("/GetKey", r#"{"path":1}"#),
            Err(400),
        ),
        (
            Service::DstackGuest,
            post("/GetTlsKey", r#"{"alt_names":"x"}"#),
            Err(400),
        ),
        (Service::DstackGuest, post("/Nope", "{}"), Err(404)),
        (
            Service::Tappd,
            post(
                "/prpc/Tappd.TdxQuote",
                r#"{"report_data":"aa","hash_algorithm":"md5"}"#,
            ),
            Err(400),
        ),
        (
            Service::Tappd,
            post("/prpc/Tappd.TdxQuote", r#"{"report_data":"aa"}"#),
            Ok("TdxQuote"),
        ),
        (
            Service::Tappd,
            post("/RawQuote", r#"{"report_data":"aa"}"#),
            Err(400),
        ),
        (
            Service::Tappd,
            b"GET /RawQuote?report_data=%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Err(400),
        ),
    ];
    for (service, bytes, expected) in cases {
        let (request, used) = parse_request(bytes, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let checked = check_arguments(*service, &request).map_err(|e| e.status().code());
        assert_eq!(&checked, expected, "{}", String::from_utf8_lossy(bytes));
        // Where the arguments are refused, the real call answers with the same status (the
        // key methods answer 501 first here: this fixture has no app keys).
        if let Err(code) = checked
            && !request.head.path.contains("Key")
        {
            let response = dispatch(&fixture.state, *service, &request);
            assert_eq!(
                response.status.code(),
                code,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

/// Clients that send absolute-form targets (`POST http://unix.socket/Info`) and no `Host`
/// header, pipelined on one connection, on both sockets.
#[test]
fn absolute_form_targets_and_no_host_are_served_pipelined() {
    let f = fixture();
    let mut input = b"POST http://unix.socket/Info HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    input.extend_from_slice(b"POST http://dstack/GetQuote HTTP/1.1\r\nHost: dstack\r\nContent-Length: 22\r\n\r\n{\"report_data\":\"0102\"}");
    input.extend_from_slice(b"GET /Version HTTP/1.1\r\n\r\n");
    input.extend_from_slice(
        b"GET HTTPS://localhost/prpc/DstackGuest.Info?json HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let replies = exchange(&f.state, Service::DstackGuest, &input);
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200], "{replies:?}");
    assert_eq!(replies[0].1["app_id"], hex::encode([0xa1; 20]));
    assert_eq!(
        replies[1].1["report_data"],
        format!("0102{}", "00".repeat(62))
    );
    assert_eq!(replies[3].1["app_id"], replies[0].1["app_id"]);
    let legacy = exchange(
        &f.state,
        Service::Tappd,
        b"POST http://localhost/prpc/Tappd.Info HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(legacy[0].0, 200);
    // Other forms still fail, and the server answers.
    let bad = exchange(
        &f.state,
        Service::DstackGuest,
        b"GET ftp://x/Info HTTP/1.1\r\n\r\n",
    );
    assert_eq!(bad[0].0, 400);
}

// ---- conformance with dstack's known answers ---------------------------------------------------

/// dstack's cross-SDK signature-chain vectors (`testdata/signature_chain.json`): the fake KMS
/// root scalar `"KMS-root-test-key-do-not-use!!!" ‖ 01` and the app id of the file.
fn vector_keys() -> (Value, cvm_keys::kms::GuestKeys) {
    let vectors: Value =
        serde_json::from_str(include_str!("../testdata/signature_chain.json")).unwrap();
    let app_id = hex::decode(vectors["app_id"].as_str().unwrap()).unwrap();
    let (k256_key, kms_signature) =
        cvm_keys::kdf::app_k256_key(b"KMS-root-test-key-do-not-use!!!\x01", &app_id).unwrap();
    let keys = cvm_keys::kms::GuestKeys {
        k256_key,
        k256_signature: kms_signature.to_vec(),
        ca_cert_pem: String::new(),
        kms: None,
    };
    (vectors, keys)
}

#[test]
fn sign_matches_the_dstack_signature_chain_vectors() {
    let (vectors, keys) = vector_keys();
    let f = fixture();
    let state = f.state.with_app_keys(keys);
    for case in vectors["cases"].as_array().unwrap() {
        let algorithm = case["algorithm"].as_str().unwrap();
        let body = json!({ "algorithm": algorithm, "data": case["data"] }).to_string();
        let replies = exchange(&state, Service::DstackGuest, &post("/Sign", &body));
        let (200, reply) = &replies[0] else {
            panic!("{algorithm}: {replies:?}")
        };
        assert_eq!(reply["signature"], case["signature"], "{algorithm}");
        assert_eq!(reply["public_key"], case["public_key"], "{algorithm}");
        assert_eq!(
            reply["signature_chain"], case["signature_chain"],
            "{algorithm}"
        );
        // Verify accepts it (no keys needed, either socket path spelling).
        let body = json!({
            "algorithm": algorithm,
            "data": case["data"],
            "signature": case["signature"],
            "public_key": case["public_key"],
        })
        .to_string();
        let replies = exchange(
            &state,
            Service::DstackGuest,
            &post("/prpc/DstackGuest.Verify", &body),
        );
        assert_eq!(replies[0], (200, json!({ "valid": true })), "{algorithm}");
    }
    for case in vectors["invalid_cases"].as_array().unwrap() {
        let body = json!({
            "algorithm": case["algorithm"],
            "data": case["data"],
            "signature": case["signature"],
            "public_key": case["public_key"],
        })
        .to_string();
        let replies = exchange(&state, Service::DstackGuest, &post("/Verify", &body));
        // Well-formed but not valid: 200 with `false`, as dstack (high-S included).
        assert_eq!(
            replies[0],
            (200, json!({ "valid": false })),
            "{}",
            case["name"]
        );
    }
    // A malformed key or signature is an error, as in dstack; a prehashed Sign needs 32 bytes.
    let replies = exchange(
        &state,
        Service::DstackGuest,
        &post(
            "/Verify",
            r#"{"algorithm":"ed25519","data":"00","signature":"00","public_key":"00"}"#,
        ),
    );
    assert_eq!(replies[0].0, 400);
    let replies = exchange(
        &state,
        Service::DstackGuest,
        &post(
            "/Sign",
            r#"{"algorithm":"secp256k1_prehashed","data":"00"}"#,
        ),
    );
    assert_eq!(replies[0].0, 400);
    assert!(
        replies[0].1["error"]
            .as_str()
            .unwrap()
            .contains("32-byte digest")
    );
}

#[test]
fn get_key_ed25519_and_secp256k1_match_the_dstack_chain() {
    let (vectors, keys) = vector_keys();
    let kms_root = hex::decode(vectors["kms_root_pubkey"].as_str().unwrap()).unwrap();
    let app_root = *keys.k256_key.expose();
    let f = fixture();
    let state = f.state.with_app_keys(keys);
    for (algorithm, case) in [("ed25519", 0), ("secp256k1", 1), ("k256", 1), ("", 1)] {
        let case = &vectors["cases"][case];
        let body = json!({ "path": "vms", "purpose": "signing", "algorithm": algorithm });
        let replies = exchange(
            &state,
            Service::DstackGuest,
            &post("/GetKey", &body.to_string()),
        );
        let (200, reply) = &replies[0] else {
            panic!("{algorithm}: {replies:?}")
        };
        // GetKey's chain is Sign's chain without the data signature.
        assert_eq!(reply["signature_chain"][0], case["signature_chain"][1]);
        assert_eq!(reply["signature_chain"][1], case["signature_chain"][2]);
        let key: [u8; 32] = hex::decode(reply["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let public = if algorithm == "ed25519" {
            cvm_keys::app_sign::ed25519_public_key(&key).to_vec()
        } else {
            cvm_keys::kdf::k256_public_key(&key).unwrap().to_vec()
        };
        assert_eq!(hex::encode(public), case["public_key"].as_str().unwrap());
        // Tappd DeriveK256Key: the same answer under dstack's legacy field names.
        let replies = exchange(
            &state,
            Service::Tappd,
            &post("/prpc/Tappd.DeriveK256Key", &body.to_string()),
        );
        assert_eq!(replies[0].1["k256_key"], reply["key"]);
        assert_eq!(
            replies[0].1["k256_signature_chain"],
            reply["signature_chain"]
        );
    }
    // The chain's links recover to the app root key and to the KMS root key.
    let kms_sig = hex::decode(vectors["cases"][0]["signature_chain"][2].as_str().unwrap()).unwrap();
    let app_id = hex::decode(vectors["app_id"].as_str().unwrap()).unwrap();
    let app_root_pub = cvm_keys::kdf::k256_public_key(&app_root).unwrap();
    assert_eq!(
        hex::encode(app_root_pub),
        vectors["app_root_pubkey"].as_str().unwrap()
    );
    let message = cvm_keys::kdf::kms_signed_message(b"dstack-kms-issued", &app_id, &app_root_pub);
    assert_eq!(
        cvm_keys::kdf::recover_keccak256_signer(&message, &kms_sig).unwrap()[..],
        kms_root[..]
    );
}

/// Decodes a SCALE `VersionedAttestation` with the CSR decoder of `cvm_keys::sign_cert` (the
/// attestation is the CSR's last field).
fn decode_attestation(bytes: &[u8]) -> cvm_keys::sign_cert::TdxAttestation {
    use cvm_keys::sign_cert::{CONFIRM, CertConfig, CertSigningRequest, TdxAttestation};
    let empty = CertSigningRequest {
        confirm: CONFIRM.into(),
        pubkey: Vec::new(),
        config: CertConfig::default(),
        attestation: TdxAttestation::default(),
    }
    .encode();
    let head = empty.len() - TdxAttestation::default().encode().len();
    let mut csr = empty[..head].to_vec();
    csr.extend_from_slice(bytes);
    CertSigningRequest::decode(&csr).unwrap().attestation
}

/// dstack's own guest-agent fixture (`testdata/guest-agent-attestation-v0.bin`) decodes and
/// re-encodes byte for byte with the codec `Attest` uses, and `Attest`'s answer has the same
/// shape: V0, DstackTdx, the quote for the padded report data, every event with its digest,
/// the runtime events again, and .sys-config.json as `config`.
#[test]
fn attest_answers_a_dstack_versioned_attestation() {
    let fixture_bytes = include_bytes!("../testdata/guest-agent-attestation-v0.bin");
    let upstream = decode_attestation(fixture_bytes);
    assert_eq!(upstream.encode(), fixture_bytes);
    assert_eq!(upstream.event_log.len(), 33);
    assert_eq!(upstream.runtime_events.len(), 9);
    assert!(upstream.config.starts_with(r#"{"kms_urls":"#));

    let f = fixture();
    let replies = exchange(
        &f.state,
        Service::DstackGuest,
        &post("/Attest", r#"{"report_data":"c0ffee"}"#),
    );
    let (200, reply) = &replies[0] else {
        panic!("{replies:?}")
    };
    let bytes = hex::decode(reply["attestation"].as_str().unwrap()).unwrap();
    assert_eq!(&bytes[..2], [0, 0]);
    let ours = decode_attestation(&bytes);
    assert_eq!(ours.encode(), bytes);
    let mut want = [0u8; 64];
    want[..3].copy_from_slice(&[0xc0, 0xff, 0xee]);
    assert_eq!(ours.report_data, want);
    let quote = Quote::parse(&ours.quote).unwrap();
    assert_eq!(quote.body.report_data.0, want);
    assert_eq!(*quote.rtmrs().register(RtmrIndex::R3), f.rtmr3);
    let runtime = ours.runtime_events();
    assert_eq!(replay_rtmr3(&runtime), f.rtmr3);
    let names: Vec<&str> = ours
        .runtime_events
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        names,
        runtime.iter().map(|e| e.name.as_str()).collect::<Vec<_>>()
    );
    assert!(ours.event_log.iter().all(|e| e.digest.len() == 48));
    assert_eq!(ours.config, workload().sys_config);
    // Like GetQuote: more than 64 bytes is refused.
    let long = format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65));
    let replies = exchange(&f.state, Service::DstackGuest, &post("/Attest", &long));
    assert_eq!(replies[0].0, 400);
    // A V2 event log would need dstack's MessagePack form: refused, not answered wrongly.
    let (tee, text) = booted(EventLogVersion::V2);
    let state = ApiState::resume(
        tee,
        ResumeMode::RegistersHoldLog,
        &text,
        Box::new(SharedSink::default()),
        workload(),
    )
    .unwrap();
    let replies = exchange(&state, Service::DstackGuest, &post("/Attest", "{}"));
    assert_eq!(replies[0].0, 501, "{:?}", replies[0].1);
}

/// `EmitEvent`'s reply is the JSON `null` of dstack's `google.protobuf.Empty`; `Version`
/// reports the dstack OS release; `GpuInfo` is the GPU attestation output verbatim or empty.
#[test]
fn emit_event_version_and_gpu_info_reply_as_dstack() {
    let f = fixture();
    let (raw, _) = exchange_with(
        &f.state,
        Service::DstackGuest,
        &Limits::default(),
        &post("/EmitEvent", r#"{"event":"app-started","payload":"01"}"#),
    );
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nnull"), "{text}");
    for service in [Service::DstackGuest, Service::Tappd] {
        let replies = exchange(&f.state, service, &post("/Version", ""));
        assert_eq!(
            replies[0],
            (200, json!({ "version": "0.5.11", "rev": "cvm-init-0.1.0" }))
        );
    }
    let replies = exchange(&f.state, Service::DstackGuest, &post("/GpuInfo", "{}"));
    assert_eq!(replies[0], (200, json!({ "attestation": "" })));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attestation.out");
    let state = f.state.with_gpu_attestation(path.clone());
    let replies = exchange(&state, Service::DstackGuest, &post("/GpuInfo", "{}"));
    assert_eq!(replies[0], (200, json!({ "attestation": "" })));
    let evidence = "{\"result_code\":0,\"claims\":[]}\n";
    std::fs::write(&path, evidence).unwrap();
    let replies = exchange(&state, Service::DstackGuest, &post("/GpuInfo", "{}"));
    assert_eq!(replies[0], (200, json!({ "attestation": evidence })));
    // Not a Tappd method.
    let replies = exchange(&state, Service::Tappd, &post("/GpuInfo", "{}"));
    assert_eq!(replies[0].0, 404);
}

/// Every hash dstack's `TdxQuote` accepts: `H("app-data:" ‖ content)` (or the given prefix)
/// zero-padded, the name echoed; Keccak-256 against an independent known answer.
#[test]
fn tdx_quote_accepts_every_dstack_hash() {
    use sha3::Digest as _;
    let f = fixture();
    let preimage = b"app-data:\x12\x34";
    let cases: [(&str, Vec<u8>); 9] = [
        ("sha256", sha2::Sha256::digest(preimage).to_vec()),
        ("sha384", sha2::Sha384::digest(preimage).to_vec()),
        ("sha512", sha2::Sha512::digest(preimage).to_vec()),
        ("sha3-256", sha3::Sha3_256::digest(preimage).to_vec()),
        ("sha3-384", sha3::Sha3_384::digest(preimage).to_vec()),
        ("sha3-512", sha3::Sha3_512::digest(preimage).to_vec()),
        ("keccak256", sha3::Keccak256::digest(preimage).to_vec()),
        ("keccak384", sha3::Keccak384::digest(preimage).to_vec()),
        ("keccak512", sha3::Keccak512::digest(preimage).to_vec()),
    ];
    for (name, digest) in cases {
        let body = json!({ "report_data": "1234", "hash_algorithm": name }).to_string();
        let replies = exchange(
            &f.state,
            Service::Tappd,
            &post("/prpc/Tappd.TdxQuote", &body),
        );
        let (200, reply) = &replies[0] else {
            panic!("{name}: {replies:?}")
        };
        let mut want = [0u8; 64];
        want[..digest.len()].copy_from_slice(&digest);
        assert_eq!(quote_of(reply).body.report_data.0, want, "{name}");
        assert_eq!(reply["hash_algorithm"], name);
        assert_eq!(reply["prefix"], "app-data");
    }
    // Keccak-256 (not SHA3-256): the Ethereum known answer for the empty input, and the
    // report data of an empty tag and content is Keccak-256(":").
    assert_eq!(
        hex::encode(sha3::Keccak256::digest(b"")),
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    );
    let colon = service::hashed_report_data("keccak256", "", b"").unwrap();
    assert_eq!(colon[..32], sha3::Keccak256::digest(b":")[..]);
    assert_eq!(colon[32..], [0; 32]);
}

/// One request to the Worker API over real TCP on loopback; the status line and body.
fn worker_get(
    state: &ApiState<InsecureSimulatedTee>,
    sources: &crate::worker::WorkerSources,
    request: &[u8],
) -> (String, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let raw = std::thread::scope(|s| {
        let handler = s.spawn(move || {
            serve_connection(&server, &Limits::default(), |r| {
                crate::worker::dispatch(state, sources, r)
            })
        });
        client.write_all(request).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        handler.join().unwrap();
        out
    });
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: vm:8090\r\nConnection: close\r\n\r\n").into_bytes()
}

#[test]
fn worker_info_hides_tcb_info_unless_public() {
    let f = fixture();
    let sources = crate::worker::WorkerSources::default();
    for path in ["/prpc/Worker.Info", "/prpc/Info?json"] {
        let (head, body) = worker_get(&f.state, &sources, &get(path));
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let info: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["app_id"], hex::encode([0xa1; 20]));
        assert_eq!(info["app_name"], "demo");
        assert_eq!(info["tcb_info"], "", "public_tcbinfo is false here");
        assert_eq!(info["vm_config"], "");
    }
    let mut state = f.state;
    state.workload_mut().exposure.tcbinfo = true;
    let (_, body) = worker_get(&state, &sources, &get("/prpc/Worker.Info"));
    let info: Value = serde_json::from_str(&body).unwrap();
    let tcb: Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    assert_eq!(tcb["rtmr3"].as_str().unwrap().len(), 96);
    assert_eq!(info["vm_config"], r#"{"cpu_count":1}"#);
    // The workloads' own socket always has the full Info, as in dstack.
    let replies = exchange(&state, Service::DstackGuest, &post("/Info", ""));
    assert_ne!(replies[0].1["tcb_info"], "");
    // Version; and nothing else of the workload API is reachable from outside.
    let (_, body) = worker_get(&state, &sources, &get("/prpc/Worker.Version"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "version": "0.5.11", "rev": "cvm-init-0.1.0" })
    );
    for path in [
        "/prpc/Worker.GetQuote",
        "/GetQuote",
        "/prpc/EmitEvent",
        "/GetKey",
        "/prpc/Worker.GetKey",
    ] {
        let (head, _) = worker_get(&state, &sources, &get(path));
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
    }
}

#[test]
fn worker_logs_and_metrics_only_when_public() {
    let f = fixture();
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(logs.path().join("web.log"), "line 1\nline 2\nline 3\n").unwrap();
    let proc_dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("meminfo", "MemTotal: 1024 kB\nMemAvailable: 512 kB\n"),
        ("loadavg", "0.00 0.01 0.05 1/80 99\n"),
        ("uptime", "12.5 20.0\n"),
        ("stat", "cpu 1\ncpu0 1\n"),
    ] {
        std::fs::write(proc_dir.path().join(name), text).unwrap();
    }
    let sources = crate::worker::WorkerSources {
        logs_dir: Some(logs.path().to_owned()),
        proc_dir: proc_dir.path().to_owned(),
    };
    let (head, body) = worker_get(&f.state, &sources, &get("/logs/web"));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("public_logs"), "{body}");
    assert!(!body.contains("line 1"));
    let (head, body) = worker_get(&f.state, &sources, &get("/metrics"));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("public_sysinfo"));
    let (head, page) = worker_get(&f.state, &sources, &get("/"));
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(page.contains(&hex::encode([0xa1; 20])));
    assert!(!page.contains("/logs/web"));

    let mut state = f.state;
    state.workload_mut().exposure = crate::worker::Exposure {
        logs: true,
        sysinfo: true,
        tcbinfo: false,
    };
    let (head, body) = worker_get(&state, &sources, &get("/logs/web"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert_eq!(body, "line 1\nline 2\nline 3\n");
    let (_, body) = worker_get(&state, &sources, &get("/logs/web?tail=1"));
    assert_eq!(body, "line 3\n");
    let (head, _) = worker_get(&state, &sources, &get("/logs/db"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = worker_get(&state, &sources, &get("/logs/..%2fsecret"));
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, body) = worker_get(&state, &sources, &get("/metrics"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("cvm_memory_total_bytes 1048576\n"), "{body}");
    assert!(body.contains("cvm_cpus 1\n"));
    let (_, page) = worker_get(&state, &sources, &get("/"));
    assert!(page.contains("<a href=\"/logs/web\">web</a>"), "{page}");
}

/// dstack's own vectors (`guest-agent/src/rpc_service.rs` tests): the app k256 key
/// `1a2b3c4d…` gives these report-data strings for `GetAttestationForAppKey`.
#[test]
fn attestation_for_app_key_matches_the_dstack_vectors() {
    let key: [u8; 32] = [
        0x1A, 0x2B, 0x3C, 0x4D, 0x5E, 0x6F, 0x7A, 0x8B, 0x9C, 0x0D, 0x1E, 0x2F, 0x3A, 0x4B, 0x5C,
        0x6D, 0x7E, 0x8F, 0x9A, 0x0B, 0x1C, 0x2D, 0x3E, 0x4F, 0x5A, 0x6B, 0x7C, 0x8D, 0x9E, 0x0F,
        0x1A, 0x2B,
    ];
    let f = fixture();
    let sources = crate::worker::WorkerSources::default();
    let call = |state: &ApiState<InsecureSimulatedTee>, algorithm: &str| {
        let (head, body) = worker_get(
            state,
            &sources,
            &get(&format!(
                "/prpc/Worker.GetAttestationForAppKey?algorithm={algorithm}"
            )),
        );
        (head, serde_json::from_str::<Value>(&body).unwrap())
    };
    let (head, _) = call(&f.state, "ed25519");
    assert!(
        head.starts_with("HTTP/1.1 4") || head.starts_with("HTTP/1.1 5"),
        "{head}"
    );
    let state = f.state.with_app_keys(cvm_keys::kms::GuestKeys {
        k256_key: cvm_keys::secret::SecretKey32::new(key),
        k256_signature: Vec::new(),
        ca_cert_pem: String::new(),
        kms: None,
    });
    for (algorithm, expected) in [
        (
            "ed25519",
            "dip1::ed25519-pk:5Pbre1Amf1hrp2V2bbfKlIfxpQb2pJAmrgmhxgVoG9s",
        ),
        (
            "secp256k1",
            "dip1::secp256k1c-pk:A6t_JdVkVdMAocH3f1f20WGT6JzdntxcXimUtEax8zc9",
        ),
    ] {
        let (head, reply) = call(&state, algorithm);
        assert!(head.starts_with("HTTP/1.1 200"), "{head} {reply}");
        let mut want = expected.as_bytes().to_vec();
        want.resize(64, 0);
        assert_eq!(reply["report_data"], hex::encode(&want), "{algorithm}");
        // The quote carries exactly that report data.
        assert_eq!(quote_of(&reply).body.report_data.0.to_vec(), want);
    }
    let (head, _) = call(&state, "rsa");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[test]
fn parse_args_reads_the_worker_options() {
    let args = [
        "--worker-listen",
        "0.0.0.0:8090",
        "--logs-dir",
        "/data/logs",
    ];
    let config = ServerConfig::parse_args(args.iter().map(OsString::from)).unwrap();
    assert_eq!(config.worker, Some("0.0.0.0:8090".parse().unwrap()));
    assert_eq!(
        config.logs_dir.as_deref(),
        Some(std::path::Path::new("/data/logs"))
    );
    let bad = ["--worker-listen", "8090"];
    ServerConfig::parse_args(bad.iter().map(OsString::from)).unwrap_err();
}

/// GetQuote's boot events follow dstack's exposed form: digests of every extended record, the
/// three RTMR0 ACPI events named `acpi-loader`, `acpi-rsdp`, `acpi-tables` with payload
/// `ACPI DATA` (as in dstack's TDX-lite fixture), other payloads stripped.
#[test]
fn boot_events_name_the_acpi_events_as_dstack() {
    let events = crate::state::boot_events(include_bytes!("../testdata/dstack-ccel.bin")).unwrap();
    assert_eq!(events.len(), 18);
    let named: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| !e.event.is_empty())
        .map(|e| (e.event.as_str(), e.event_payload.as_str()))
        .collect();
    let acpi_data = hex::encode("ACPI DATA");
    assert_eq!(
        named,
        [
            ("acpi-loader", acpi_data.as_str()),
            ("acpi-rsdp", acpi_data.as_str()),
            ("acpi-tables", acpi_data.as_str())
        ]
    );
    assert!(
        events
            .iter()
            .filter(|e| e.event.is_empty())
            .all(|e| e.event_payload.is_empty() && e.digest.len() == 96)
    );
    // The JSON shape dstack's verifier parses.
    let parsed = parse_event_log(&serde_json::to_string(&events).unwrap()).unwrap();
    assert_eq!(parsed.len(), 18);
    assert!(crate::state::boot_events(&[]).unwrap().is_empty());
}
