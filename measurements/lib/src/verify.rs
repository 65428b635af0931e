//! The auditor's verification policy: which checks a TD's evidence must pass, as typed checks
//! and one verdict. `cvm-measure verify` loads the inputs and renders the result; the decisions
//! are made here.
//!
//! Evidence from cvm-init's INSECURE simulated TEE (QEMU test builds) is recognised by its QE
//! vendor id or its marker event: every platform check is then [`Status::Simulated`], never a
//! pass, and the verdict is a rejection whatever else passes.

use serde::Serialize;
use sha2::Digest as _;

use crate::dstack_identity;
use crate::quote::Quote;
use crate::quote_verify::{self, Collateral, QuoteVerdict};
use crate::rtmr::{RtmrIndex, Sha384Digest};
use crate::runtime_event::RuntimeEvent;

/// QE vendor id of quotes from cvm-init's INSECURE simulated TEE (test builds only).
pub const SIMULATED_QE_VENDOR_ID: &[u8; 16] = b"INSECURE-SIM-TEE";
/// The event the simulated TEE extends into RTMR3 before anything else.
pub const SIMULATED_TEE_EVENT: &str = "insecure-simulated-tee";

/// The part of the checklist a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The TDX platform: quote signature, TCB, firmware and OS measurements.
    Platform,
    /// The app: compose file, images, RTMR3, freshness.
    Application,
    /// The KMS the app's keys come from.
    KeyManagement,
}

impl Section {
    /// The section's heading.
    pub fn name(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Application => "application",
            Self::KeyManagement => "key management",
        }
    }
}

/// Every check of the checklist, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckId {
    /// Only over simulated evidence: says that it is simulated (always [`Status::Simulated`]).
    RealTdxModule,
    /// The quote's signature chains to Intel's root (with stored collateral).
    QuoteSignature,
    /// The TCB status is `UpToDate`.
    TcbUpToDate,
    /// MRTD and RTMR0-2 equal the build's expected values.
    PlatformMeasurements,
    /// The `os-image-hash` event is on the whitelist.
    OsImageWhitelisted,
    /// The `compose-hash` event is the SHA-256 of the given app-compose.json.
    ComposeHash,
    /// Every image of the compose file is pinned by digest (the init's compose parser decides).
    ImagesPinned,
    /// The RTMR3 event log replays to the quote's RTMR3.
    Rtmr3Replay,
    /// reportData contains the verifier's challenge.
    Challenge,
    /// The `key-provider` event names the expected KMS.
    KeyProvider,
    /// The KMS's own quote binds its identity and verifies.
    KmsAttestation,
}

impl CheckId {
    /// The section the check is listed under.
    pub fn section(self) -> Section {
        match self {
            Self::RealTdxModule
            | Self::QuoteSignature
            | Self::TcbUpToDate
            | Self::PlatformMeasurements
            | Self::OsImageWhitelisted => Section::Platform,
            Self::ComposeHash | Self::ImagesPinned | Self::Rtmr3Replay | Self::Challenge => {
                Section::Application
            }
            Self::KeyProvider | Self::KmsAttestation => Section::KeyManagement,
        }
    }

    /// What the check asserts, as the checklist prints it.
    pub fn title(self) -> &'static str {
        match self {
            Self::RealTdxModule => "evidence from a real TDX module",
            Self::QuoteSignature => "quote signature valid",
            Self::TcbUpToDate => "TCB status up to date",
            Self::PlatformMeasurements => "MRTD and RTMR0-2 match expected",
            Self::OsImageWhitelisted => "OS image hash whitelisted",
            Self::ComposeHash => "compose-hash matches app-compose.json",
            Self::ImagesPinned => "every image pinned by sha256 digest",
            Self::Rtmr3Replay => "RTMR3 event log replays to the quote",
            Self::Challenge => "reportData contains the challenge",
            Self::KeyProvider => "key-provider matches the expected KMS identity",
            Self::KmsAttestation => "KMS attestation valid",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// The check holds.
    Pass,
    /// The check does not hold: the evidence is rejected.
    Fail,
    /// Its input was not given.
    Skipped,
    /// A platform check over evidence from the INSECURE simulated TEE: never a pass.
    Simulated,
}

/// An outcome with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Pass, fail, skipped or simulated.
    pub status: Status,
    /// What was compared, or why it failed.
    pub reason: String,
}

impl Outcome {
    /// A pass (`holds`) or a failure.
    pub fn new(holds: bool, reason: impl Into<String>) -> Self {
        Self {
            status: if holds { Status::Pass } else { Status::Fail },
            reason: reason.into(),
        }
    }

    fn skipped(reason: &str) -> Self {
        Self {
            status: Status::Skipped,
            reason: reason.to_owned(),
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Which check.
    pub id: CheckId,
    /// Its outcome.
    pub status: Status,
    /// What was compared, or why it failed or was skipped.
    pub reason: String,
}

impl Check {
    fn new(id: CheckId, outcome: Option<Outcome>) -> Self {
        let Outcome { status, reason } =
            outcome.unwrap_or_else(|| Outcome::skipped("input not given"));
        Self { id, status, reason }
    }
}

/// What the TD presented: its quote and its RTMR3 event log.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The quote as received (for the signature check).
    pub quote_bytes: &'a [u8],
    /// The same quote, parsed.
    pub quote: &'a Quote,
    /// The runtime (RTMR3) events of the event log, in order.
    pub runtime_events: &'a [RuntimeEvent],
    /// RTMR3 replayed from the whole event log.
    pub replayed_rtmr3: Sha384Digest,
}

/// What the auditor compares the evidence with; a `None` skips its check.
#[derive(Debug, Clone, Copy, Default)]
pub struct References<'a> {
    /// Verification time in Unix seconds (signature and TCB checks).
    pub now: u64,
    /// Stored collateral for the quote's signature and TCB.
    pub collateral: Option<&'a Collateral>,
    /// The build's expected measurements (`cvm-measure expected --json`: `mrtd` and
    /// `rtmr{0,1,2}.value` as hex).
    pub expected: Option<&'a serde_json::Value>,
    /// Whitelisted OS image hashes, hex, one per line.
    pub os_image_whitelist: Option<&'a str>,
    /// The app-compose.json the TD was started with.
    pub app_compose: Option<&'a [u8]>,
    /// A challenge that must appear in reportData.
    pub challenge: Option<&'a [u8]>,
    /// The expected KMS identity: hex of the KMS root-CA SubjectPublicKeyInfo.
    pub kms_identity: Option<&'a str>,
    /// The KMS quote's outcome ([`kms_attestation`]).
    pub kms_attestation: Option<&'a Outcome>,
}

/// What the verdict decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every check passed or was skipped.
    Accept,
    /// These checks failed.
    RejectFailed(Vec<CheckId>),
    /// Nothing failed, but the evidence comes from the INSECURE simulated TEE.
    RejectSimulated,
}

/// The checklist over one TD's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The evidence comes from the INSECURE simulated TEE.
    pub simulated: bool,
    /// Every check, in checklist order.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// Accept, or reject with the failed checks, or reject simulated evidence.
    pub fn decision(&self) -> Decision {
        let failed: Vec<CheckId> = self.failed().map(|c| c.id).collect();
        if !failed.is_empty() {
            Decision::RejectFailed(failed)
        } else if self.simulated {
            Decision::RejectSimulated
        } else {
            Decision::Accept
        }
    }
}

/// Whether the evidence comes from cvm-init's INSECURE simulated TEE.
pub fn is_simulated(quote: &Quote, runtime_events: &[RuntimeEvent]) -> bool {
    quote.header.qe_vendor_id == *SIMULATED_QE_VENDOR_ID
        || runtime_events.iter().any(|e| e.name == SIMULATED_TEE_EVENT)
}

/// Runs every check of the checklist.
pub fn verify(evidence: &Evidence<'_>, references: &References<'_>) -> Verdict {
    let body = &evidence.quote.body;
    let simulated = is_simulated(evidence.quote, evidence.runtime_events);
    let system = dstack_identity::system_events(evidence.runtime_events);
    let event = |name: &str| system.iter().find(|e| e.name == name);
    let now = references.now;
    let mut checks = Vec::new();

    // Platform.
    let verdict = references
        .collateral
        .map(|c| quote_verify::verify_quote(evidence.quote_bytes, c, now));
    checks.push(Check::new(
        CheckId::QuoteSignature,
        verdict.as_ref().map(|v| match v {
            QuoteVerdict::Verified { .. } => {
                Outcome::new(true, format!("verified against Intel SGX Root CA at {now}"))
            }
            QuoteVerdict::Rejected { reason, detail } => {
                Outcome::new(false, format!("{reason:?}: {detail}"))
            }
        }),
    ));
    checks.push(Check::new(
        CheckId::TcbUpToDate,
        verdict.as_ref().map(|v| match v {
            QuoteVerdict::Verified {
                tcb_status,
                advisory_ids,
            } => Outcome::new(
                tcb_status == "UpToDate",
                format!("{tcb_status} {}", advisory_ids.join(","))
                    .trim()
                    .to_owned(),
            ),
            QuoteVerdict::Rejected { .. } => Outcome::new(false, "quote not verified"),
        }),
    ));
    checks.push(Check::new(
        CheckId::PlatformMeasurements,
        references
            .expected
            .map(|e| platform_measurements(evidence.quote, e)),
    ));
    checks.push(Check::new(
        CheckId::OsImageWhitelisted,
        references
            .os_image_whitelist
            .map(|list| match event("os-image-hash") {
                None => Outcome::new(false, "no os-image-hash event before system-ready"),
                Some(e) => {
                    let hash = hex::encode(&e.payload);
                    let listed = list.lines().any(|l| l.trim().eq_ignore_ascii_case(&hash));
                    Outcome::new(listed, format!("os-image-hash {hash}"))
                }
            }),
    ));

    // Application.
    checks.push(Check::new(
        CheckId::ComposeHash,
        references.app_compose.map(|bytes| {
            let hash: [u8; 32] = sha2::Sha256::digest(bytes).into();
            match event("compose-hash") {
                None => Outcome::new(false, "no compose-hash event before system-ready"),
                Some(e) if e.payload == hash => {
                    Outcome::new(true, format!("compose-hash {}", hex::encode(hash)))
                }
                Some(e) => Outcome::new(
                    false,
                    format!(
                        "event {} file {}",
                        hex::encode(&e.payload),
                        hex::encode(hash)
                    ),
                ),
            }
        }),
    ));
    checks.push(Check::new(
        CheckId::ImagesPinned,
        references.app_compose.map(images_pinned),
    ));
    let rtmr3 = evidence.replayed_rtmr3;
    let quote_rtmr3 = *body.rtmrs.register(RtmrIndex::R3);
    checks.push(Check::new(
        CheckId::Rtmr3Replay,
        Some(if rtmr3 == quote_rtmr3 {
            Outcome::new(
                true,
                format!("{} events, RTMR3 {rtmr3}", evidence.runtime_events.len()),
            )
        } else {
            Outcome::new(false, format!("replayed {rtmr3}, quote {quote_rtmr3}"))
        }),
    ));
    checks.push(Check::new(
        CheckId::Challenge,
        references.challenge.map(|c| {
            let data = &body.report_data.0;
            let found =
                !c.is_empty() && c.len() <= data.len() && data.windows(c.len()).any(|w| w == c);
            Outcome::new(found, format!("reportData {}", hex::encode(data)))
        }),
    ));

    // Key management.
    checks.push(Check::new(
        CheckId::KeyProvider,
        references
            .kms_identity
            .map(|want| match event(dstack_identity::KEY_PROVIDER) {
                None => Outcome::new(false, "no key-provider event before system-ready"),
                Some(e) => {
                    let value: serde_json::Value =
                        serde_json::from_slice(&e.payload).unwrap_or_default();
                    let field = |name: &str| {
                        value
                            .get(name)
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    Outcome::new(
                        field("name") == "kms" && field("id").eq_ignore_ascii_case(want.trim()),
                        format!("key-provider {}", String::from_utf8_lossy(&e.payload)),
                    )
                }
            }),
    ));
    checks.push(Check::new(
        CheckId::KmsAttestation,
        Some(
            references
                .kms_attestation
                .cloned()
                .unwrap_or_else(|| Outcome::skipped("input not given (--kms-quote)")),
        ),
    ));

    if simulated {
        for check in checks
            .iter_mut()
            .filter(|c| c.id.section() == Section::Platform)
        {
            check.status = Status::Simulated;
            check.reason = format!(
                "INSECURE simulated TEE (QEMU test build), not TDX hardware: {}",
                check.reason
            );
        }
        checks.insert(
            0,
            Check {
                id: CheckId::RealTdxModule,
                status: Status::Simulated,
                reason: format!(
                    "the {SIMULATED_TEE_EVENT} event / QE vendor id INSECURE-SIM-TEE mark \
                     this evidence as simulated: it proves nothing and is always rejected"
                ),
            },
        );
    }
    Verdict { simulated, checks }
}

/// MRTD and RTMR0-2 of the quote against `cvm-measure expected --json` output.
fn platform_measurements(quote: &Quote, expected: &serde_json::Value) -> Outcome {
    let body = &quote.body;
    let mut diffs = Vec::new();
    let actual = [
        ("MRTD", &body.mr_td, expected.get("mrtd")),
        (
            "RTMR0",
            body.rtmrs.register(RtmrIndex::R0),
            expected.pointer("/rtmr0/value"),
        ),
        (
            "RTMR1",
            body.rtmrs.register(RtmrIndex::R1),
            expected.pointer("/rtmr1/value"),
        ),
        (
            "RTMR2",
            body.rtmrs.register(RtmrIndex::R2),
            expected.pointer("/rtmr2/value"),
        ),
    ];
    for (name, value, want) in actual {
        match want.and_then(serde_json::Value::as_str) {
            Some(want) if want == value.to_string() => {}
            Some(want) => diffs.push(format!("{name} quote {value} expected {want}")),
            None => diffs.push(format!("{name} missing from expected")),
        }
    }
    if diffs.is_empty() {
        Outcome::new(true, "all four match")
    } else {
        Outcome::new(false, diffs.join("; "))
    }
}

/// Every image of app-compose's `docker_compose_file` pinned by digest, decided by the init's
/// own compose parser (`cvm-compose`) as the auditor can run it: without the encrypted
/// environment, so an image chosen by interpolation is not pinned.
fn images_pinned(app_compose: &[u8]) -> Outcome {
    use cvm_compose::ComposeError;
    use cvm_compose::digest::DigestError;

    let value: serde_json::Value = serde_json::from_slice(app_compose).unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let compose_file = field("docker_compose_file").unwrap_or_default();
    if compose_file.is_empty() {
        return Outcome::new(false, "app-compose.json has no docker_compose_file");
    }
    const PINNED: &str = "all image: lines use @sha256";
    if compose_file.trim().is_empty() {
        // The init runs nothing.
        return Outcome::new(true, PINNED);
    }
    match cvm_compose::parse_without_environment(field("runner"), compose_file) {
        Ok(_) => Outcome::new(true, PINNED),
        // `services: {}` (dstack's empty app): the init runs nothing.
        Err(ComposeError::InvalidValue { path, reason })
            if path == "services" && reason == "no services" =>
        {
            Outcome::new(true, PINNED)
        }
        Err(ComposeError::ParseImage {
            source: DigestError::MissingDigest { text },
            ..
        }) => Outcome::new(false, format!("unpinned: {text}")),
        Err(ComposeError::ParseImage { service, source }) => Outcome::new(
            false,
            format!("unpinned: services.{service}.image: {source}"),
        ),
        Err(error @ ComposeError::RefuseImageInterpolation { .. }) => {
            Outcome::new(false, format!("unpinned: {error}"))
        }
        Err(error) => Outcome::new(
            false,
            format!("the init's compose parser refuses docker_compose_file: {error}"),
        ),
    }
}

/// The KMS's quote: reportData must bind the expected KMS root-CA key (`kms-root-ca` content
/// type, SHA-512), and the quote must verify against stored collateral with an up-to-date TCB.
/// `collateral` is asked for only once the binding holds.
pub fn kms_attestation<E>(
    quote_bytes: &[u8],
    quote: &Quote,
    identity_spki: &[u8],
    now: u64,
    collateral: impl FnOnce() -> Result<Option<Collateral>, E>,
) -> Result<Outcome, E> {
    let mut hasher = sha2::Sha512::new();
    hasher.update(b"kms-root-ca:");
    hasher.update(identity_spki);
    let want: [u8; 64] = hasher.finalize().into();
    if quote.body.report_data.0 != want {
        return Ok(Outcome::new(
            false,
            format!(
                "KMS quote reportData {} is not SHA-512(\"kms-root-ca:\" ‖ KMS identity)",
                hex::encode(quote.body.report_data.0)
            ),
        ));
    }
    let Some(collateral) = collateral()? else {
        return Ok(Outcome::new(
            false,
            "KMS quote binds the KMS identity but was not verified: give --kms-collateral",
        ));
    };
    Ok(
        match quote_verify::verify_quote(quote_bytes, &collateral, now) {
            QuoteVerdict::Verified { tcb_status, .. } => Outcome::new(
                tcb_status == "UpToDate",
                format!(
                    "KMS quote verified at {now}, TCB {tcb_status}, reportData binds the KMS identity"
                ),
            ),
            QuoteVerdict::Rejected { reason, detail } => {
                Outcome::new(false, format!("KMS quote rejected: {reason:?}: {detail}"))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn app_compose(compose: &str) -> Vec<u8> {
        serde_json::json!({ "docker_compose_file": compose })
            .to_string()
            .into_bytes()
    }

    fn pinned(compose: &str) -> Outcome {
        images_pinned(&app_compose(compose))
    }

    #[test]
    fn pinned_is_decided_by_the_compose_parser() {
        assert_eq!(
            pinned(&format!("services:\n  a:\n    image: nginx@{D}\n")).status,
            Status::Pass
        );
        let out = pinned(&format!(
            "services:\n  a:\n    image: nginx@{D}\n  b:\n    image: redis:7\n"
        ));
        assert_eq!(out, Outcome::new(false, "unpinned: redis:7"));
        // Flow style and merge keys: an `image:` line grep could not see.
        let out = pinned("services: {a: {image: redis}}\n");
        assert_eq!(out, Outcome::new(false, "unpinned: redis"));
        let out = pinned(&format!(
            "x-base: &base\n  image: redis:7\nservices:\n  a:\n    <<: *base\n  b:\n    image: nginx@{D}\n"
        ));
        assert_eq!(out.status, Status::Fail);
        // An `image:` inside an x- extension or a string is no service image.
        assert_eq!(
            pinned(&format!(
                "x-note: \"image: redis\"\nservices:\n  a:\n    image: nginx@{D}\n"
            ))
            .status,
            Status::Pass
        );
        // The environment would choose this image.
        let out = pinned(&format!(
            "services:\n  a:\n    image: \"${{IMG:-nginx@{D}}}\"\n"
        ));
        assert_eq!(out.status, Status::Fail);
        assert!(out.reason.contains("interpolated"), "{}", out.reason);
        // Nothing to run.
        assert_eq!(pinned("services: {}\n").status, Status::Pass);
        assert_eq!(
            images_pinned(b"{}"),
            Outcome::new(false, "app-compose.json has no docker_compose_file")
        );
        // A file the init refuses is not passed.
        let out = pinned(&format!(
            "services:\n  a:\n    image: nginx@{D}\n    tty: true\n"
        ));
        assert_eq!(out.status, Status::Fail);
        assert!(out.reason.contains("unknown key"), "{}", out.reason);
        let bash = serde_json::json!({
            "runner": "bash",
            "docker_compose_file": format!("services:\n  a:\n    image: nginx@{D}\n"),
        });
        assert_eq!(
            images_pinned(bash.to_string().as_bytes()).status,
            Status::Fail
        );
    }

    #[test]
    fn verdict_decides_failed_then_simulated() {
        let check = |id, status| Check {
            id,
            status,
            reason: String::new(),
        };
        let verdict = Verdict {
            simulated: true,
            checks: vec![
                check(CheckId::QuoteSignature, Status::Simulated),
                check(CheckId::ComposeHash, Status::Fail),
                check(CheckId::Challenge, Status::Pass),
            ],
        };
        assert_eq!(
            verdict.decision(),
            Decision::RejectFailed(vec![CheckId::ComposeHash])
        );
        let verdict = Verdict {
            simulated: true,
            checks: vec![check(CheckId::Challenge, Status::Pass)],
        };
        assert_eq!(verdict.decision(), Decision::RejectSimulated);
        let verdict = Verdict {
            simulated: false,
            checks: vec![check(CheckId::Challenge, Status::Skipped)],
        };
        assert_eq!(verdict.decision(), Decision::Accept);
    }

    #[test]
    fn sections_and_titles() {
        assert_eq!(CheckId::KmsAttestation.section().name(), "key management");
        assert_eq!(CheckId::ImagesPinned.section(), Section::Application);
        assert_eq!(CheckId::RealTdxModule.section(), Section::Platform);
        assert_eq!(
            CheckId::ImagesPinned.title(),
            "every image pinned by sha256 digest"
        );
    }
}
