//! The auditor's verification policy: which checks a TD's evidence must pass, as typed checks
//! and one verdict. `cvm-measure verify` loads the inputs and renders the result; the decisions
//! are made here.
//!
//! The checklist fails closed: a check whose input was not given is a failure, unless the
//! auditor named it in [`References::skip`] (`--skip <name>`, [`CheckId::name`]); only then is
//! it [`Status::Skipped`]. A skip accepts a check that cannot be made or that failed (the line
//! keeps the reason, as a warning); it never turns simulated evidence into a pass.
//!
//! Evidence from cvm-init's INSECURE simulated TEE (QEMU test builds) is recognised by its QE
//! vendor id or its marker event: every platform check is then [`Status::Simulated`], never a
//! pass, and the verdict is a rejection whatever else passes or is skipped.

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
/// The event every cvm-init test build (`insecure-*` features) extends first, whatever the
/// TEE: a test image on real TDX hardware is rejected like simulated evidence.
pub const TEST_BUILD_EVENT: &str = "insecure-test-build";
/// The event cvm-init extends into RTMR3 when app-compose selects the KMS key provider without
/// pinning it (`key_provider_id` empty): the host chose the KMS (see [`CheckId::KeyProviderPinned`]).
pub const KEY_PROVIDER_UNPINNED_EVENT: &str = dstack_identity::KEY_PROVIDER_UNPINNED;
/// TDATTRIBUTES bit 0: the TD is debuggable (the host can read and write its memory).
pub const TD_ATTRIBUTES_DEBUG: u64 = 1;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CheckId {
    /// Only over simulated evidence: says that it is simulated (always [`Status::Simulated`]).
    RealTdxModule,
    /// The quote's signature chains to Intel's root (with stored collateral).
    QuoteSignature,
    /// The TCB status is `UpToDate`.
    TcbUpToDate,
    /// MRTD and RTMR0-2 equal the build's expected values.
    PlatformMeasurements,
    /// The OS measurement computed from the quote ([`os_measurement`]) is on the whitelist.
    ///
    /// Not the `os-image-hash` event: its payload is whatever the KMS's `GetAppKey` reply
    /// said (`AppKeyResponse.os_image_hash`), a claim the TD never checked, and dstack's image
    /// hash (SHA-256 of the image's `sha256sum.txt`) cannot be recomputed from a quote. The
    /// registers the quote signs can: the whitelist lists [`os_measurement`] values, which the
    /// checklist prints for a known-good TD.
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
    /// A KMS key provider is pinned by app-compose's `key_provider_id` (and the init did not
    /// record [`KEY_PROVIDER_UNPINNED_EVENT`]); unpinned, the host chooses the KMS and learns
    /// the disk key and every `GetKey` output.
    KeyProviderPinned,
    /// The KMS's own quote binds the app's KMS identity, comes from a non-debug TD with the
    /// expected KMS measurements, and verifies ([`kms_attestation`]).
    KmsAttestation,
}

impl CheckId {
    /// Every check, in checklist order.
    pub const ALL: [Self; 12] = [
        Self::RealTdxModule,
        Self::QuoteSignature,
        Self::TcbUpToDate,
        Self::PlatformMeasurements,
        Self::OsImageWhitelisted,
        Self::ComposeHash,
        Self::ImagesPinned,
        Self::Rtmr3Replay,
        Self::Challenge,
        Self::KeyProvider,
        Self::KeyProviderPinned,
        Self::KmsAttestation,
    ];

    /// The checks `--skip` may name: all but [`CheckId::RealTdxModule`] (simulated evidence
    /// is never accepted).
    pub fn skippable() -> impl Iterator<Item = Self> {
        Self::ALL
            .into_iter()
            .filter(|id| *id != Self::RealTdxModule)
    }

    /// The stable kebab-case name (`--skip <name>`, the JSON `name` field).
    pub fn name(self) -> &'static str {
        match self {
            Self::RealTdxModule => "real-tdx-module",
            Self::QuoteSignature => "quote-signature",
            Self::TcbUpToDate => "tcb-up-to-date",
            Self::PlatformMeasurements => "platform-measurements",
            Self::OsImageWhitelisted => "os-image-whitelisted",
            Self::ComposeHash => "compose-hash",
            Self::ImagesPinned => "images-pinned",
            Self::Rtmr3Replay => "rtmr3-replay",
            Self::Challenge => "challenge",
            Self::KeyProvider => "key-provider",
            Self::KeyProviderPinned => "key-provider-pinned",
            Self::KmsAttestation => "kms-attestation",
        }
    }

    /// The skippable check called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::skippable().find(|id| id.name() == name)
    }

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
            Self::KeyProvider | Self::KeyProviderPinned | Self::KmsAttestation => {
                Section::KeyManagement
            }
        }
    }

    /// What the check asserts, as the checklist prints it.
    pub fn title(self) -> &'static str {
        match self {
            Self::RealTdxModule => "evidence from a real TDX module",
            Self::QuoteSignature => "quote signature valid",
            Self::TcbUpToDate => "TCB status up to date",
            Self::PlatformMeasurements => "MRTD and RTMR0-2 match expected",
            Self::OsImageWhitelisted => "OS image whitelisted",
            Self::ComposeHash => "compose-hash matches app-compose.json",
            Self::ImagesPinned => "every image pinned by sha256 digest",
            Self::Rtmr3Replay => "RTMR3 event log replays to the quote",
            Self::Challenge => "reportData contains the challenge",
            Self::KeyProvider => "key-provider matches the expected KMS identity",
            Self::KeyProviderPinned => "key-provider pinned",
            Self::KmsAttestation => "KMS attestation valid",
        }
    }

    /// The command-line input the check needs, for the "input not given" reason.
    fn input(self) -> &'static str {
        match self {
            Self::QuoteSignature | Self::TcbUpToDate => "--collateral",
            Self::PlatformMeasurements => "--expected",
            Self::OsImageWhitelisted => "--os-image-whitelist",
            Self::ComposeHash | Self::ImagesPinned => "--app-compose",
            Self::KeyProviderPinned => "--app-compose, or a key-provider-unpinned event",
            Self::Challenge => "--challenge",
            Self::KeyProvider => "--kms-identity",
            Self::KmsAttestation => "--kms-quote",
            Self::RealTdxModule | Self::Rtmr3Replay => "the quote and event log",
        }
    }

    /// Whether `skip` names this check. `--skip quote-signature` covers `tcb-up-to-date`
    /// too: without a verified quote there is no TCB status.
    fn skipped_by(self, skip: &[Self]) -> bool {
        skip.contains(&self) || (self == Self::TcbUpToDate && skip.contains(&Self::QuoteSignature))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// The check holds.
    Pass,
    /// The check does not hold, or its input was not given: the evidence is rejected.
    Fail,
    /// Not decided, on the auditor's request (`--skip`): its input was not given or it did
    /// not hold, and the reason says which. Shown as "SKIPPED (requested)".
    Skipped,
    /// A platform check over evidence from the INSECURE simulated TEE: never a pass.
    Simulated,
}

/// An outcome with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Pass or fail (a check never skips itself; see [`Status::Skipped`]).
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
    /// The line for `id`: `outcome` (`None`: its input was not given) settled against the
    /// auditor's `skip` list. A missing input fails unless skipped; a failure named in `skip`
    /// is skipped, keeping its reason; a pass stays a pass.
    pub fn settle(id: CheckId, outcome: Option<Outcome>, skip: &[CheckId]) -> Self {
        let requested = id.skipped_by(skip);
        let (status, reason) = match outcome {
            Some(Outcome {
                status: Status::Pass,
                reason,
            }) => (Status::Pass, reason),
            Some(Outcome { reason, .. }) if requested => {
                (Status::Skipped, format!("requested; not holding: {reason}"))
            }
            Some(Outcome { status, reason }) => (status, reason),
            None if requested => (
                Status::Skipped,
                format!("requested; input not given ({})", id.input()),
            ),
            None => (
                Status::Fail,
                format!(
                    "input not given ({}); pass --skip {} to accept that",
                    id.input(),
                    id.name()
                ),
            ),
        };
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

/// What the auditor compares the evidence with; a `None` input fails its check unless the
/// check is in `skip`.
#[derive(Debug, Clone, Copy, Default)]
pub struct References<'a> {
    /// Verification time in Unix seconds (signature and TCB checks).
    pub now: u64,
    /// Stored collateral for the quote's signature and TCB.
    pub collateral: Option<&'a Collateral>,
    /// The build's expected measurements (`cvm-measure expected --json`: `mrtd` and
    /// `rtmr{0,1,2}.value` as hex).
    pub expected: Option<&'a serde_json::Value>,
    /// Whitelisted OS measurements ([`os_measurement`]), hex, one per line.
    pub os_image_whitelist: Option<&'a str>,
    /// The app-compose.json the TD was started with.
    pub app_compose: Option<&'a [u8]>,
    /// A challenge that must appear in reportData.
    pub challenge: Option<&'a [u8]>,
    /// The expected KMS identity: hex of the KMS root-CA SubjectPublicKeyInfo.
    pub kms_identity: Option<&'a str>,
    /// The KMS quote's outcome ([`kms_attestation`]).
    pub kms_attestation: Option<&'a Outcome>,
    /// The checks the auditor accepts undecided (`--skip`).
    pub skip: &'a [CheckId],
}

/// What the verdict decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every check passed or was skipped on the auditor's request ([`References::skip`]); a
    /// check whose input is missing is a failure, never an accept.
    Accept,
    /// These checks failed (a missing, unskipped input counts as failed).
    RejectFailed(Vec<CheckId>),
    /// Nothing failed, but the evidence comes from the INSECURE simulated TEE: rejected
    /// whatever was skipped.
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

    /// Accept, or reject with the failed checks, or reject simulated evidence (also when a
    /// [`Status::Simulated`] line appears without the flag: simulated is never accepted).
    pub fn decision(&self) -> Decision {
        let failed: Vec<CheckId> = self.failed().map(|c| c.id).collect();
        if !failed.is_empty() {
            Decision::RejectFailed(failed)
        } else if self.simulated || self.checks.iter().any(|c| c.status == Status::Simulated) {
            Decision::RejectSimulated
        } else {
            Decision::Accept
        }
    }
}

/// Whether the evidence comes from cvm-init's INSECURE simulated TEE or from an INSECURE test
/// build of cvm-init (on any TEE).
pub fn is_simulated(quote: &Quote, runtime_events: &[RuntimeEvent]) -> bool {
    quote.header.qe_vendor_id == *SIMULATED_QE_VENDOR_ID
        || runtime_events
            .iter()
            .any(|e| e.name == SIMULATED_TEE_EVENT || e.name == TEST_BUILD_EVENT)
}

/// The OS measurement the whitelist lists: `SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2)` of the
/// quote, i.e. firmware, kernel, command line and initramfs as the TDX module measured them
/// (dstack's `mr_system` without the key provider). Computed from the signed quote, never
/// taken from an event.
pub fn os_measurement(quote: &Quote) -> [u8; 32] {
    let body = &quote.body;
    let mut hasher = sha2::Sha256::new();
    hasher.update(body.mr_td.0);
    for index in [RtmrIndex::R0, RtmrIndex::R1, RtmrIndex::R2] {
        hasher.update(body.rtmrs.register(index).0);
    }
    hasher.finalize().into()
}

/// The `id` of a `kms` key-provider event before `system-ready` (hex SPKI), if there is one.
pub fn kms_key_provider_id(runtime_events: &[RuntimeEvent]) -> Option<String> {
    let event = dstack_identity::find_system_event(runtime_events, dstack_identity::KEY_PROVIDER)?;
    let value: serde_json::Value = serde_json::from_slice(&event.payload).ok()?;
    if value.get("name").and_then(serde_json::Value::as_str) != Some("kms") {
        return None;
    }
    value
        .get("id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// Runs every check of the checklist.
pub fn verify(evidence: &Evidence<'_>, references: &References<'_>) -> Verdict {
    let body = &evidence.quote.body;
    let simulated = is_simulated(evidence.quote, evidence.runtime_events);
    let system = dstack_identity::system_events(evidence.runtime_events);
    let event = |name: &str| system.iter().find(|e| e.name == name);
    let now = references.now;
    let skip = references.skip;
    let mut checks = Vec::new();
    let mut push = |id, outcome| checks.push(Check::settle(id, outcome, skip));

    // Platform.
    let verdict = references
        .collateral
        .map(|c| quote_verify::verify_quote(evidence.quote_bytes, c, now));
    push(
        CheckId::QuoteSignature,
        verdict.as_ref().map(|v| match v {
            QuoteVerdict::Verified { .. } => {
                Outcome::new(true, format!("verified against Intel SGX Root CA at {now}"))
            }
            QuoteVerdict::Rejected { reason, detail } => {
                Outcome::new(false, format!("{reason:?}: {detail}"))
            }
        }),
    );
    push(
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
    );
    push(
        CheckId::PlatformMeasurements,
        references
            .expected
            .map(|e| platform_measurements(evidence.quote, e)),
    );
    push(
        CheckId::OsImageWhitelisted,
        references
            .os_image_whitelist
            .map(|list| os_image_whitelisted(evidence.quote, system, list)),
    );

    // Application.
    push(
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
    );
    push(
        CheckId::ImagesPinned,
        references.app_compose.map(images_pinned),
    );
    let rtmr3 = evidence.replayed_rtmr3;
    let quote_rtmr3 = *body.rtmrs.register(RtmrIndex::R3);
    push(
        CheckId::Rtmr3Replay,
        Some(if rtmr3 == quote_rtmr3 {
            Outcome::new(
                true,
                format!("{} events, RTMR3 {rtmr3}", evidence.runtime_events.len()),
            )
        } else {
            Outcome::new(false, format!("replayed {rtmr3}, quote {quote_rtmr3}"))
        }),
    );
    push(
        CheckId::Challenge,
        references.challenge.map(|c| {
            let data = &body.report_data.0;
            let found =
                !c.is_empty() && c.len() <= data.len() && data.windows(c.len()).any(|w| w == c);
            Outcome::new(found, format!("reportData {}", hex::encode(data)))
        }),
    );

    // Key management.
    push(
        CheckId::KeyProvider,
        references
            .kms_identity
            .map(|want| match event(dstack_identity::KEY_PROVIDER) {
                None => Outcome::new(false, "no key-provider event before system-ready"),
                Some(e) => Outcome::new(
                    kms_key_provider_id(system)
                        .is_some_and(|id| id.eq_ignore_ascii_case(want.trim())),
                    format!("key-provider {}", String::from_utf8_lossy(&e.payload)),
                ),
            }),
    );
    push(
        CheckId::KeyProviderPinned,
        key_provider_pinned(references.app_compose, system),
    );
    push(CheckId::KmsAttestation, references.kms_attestation.cloned());

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
                    "the {SIMULATED_TEE_EVENT} / {TEST_BUILD_EVENT} events or QE vendor id \
                     INSECURE-SIM-TEE mark this evidence as simulated or from a test build: it \
                     proves nothing and is always rejected"
                ),
            },
        );
    }
    Verdict { simulated, checks }
}

/// The quote's [`os_measurement`] against the whitelist (hex, one per line). The
/// `os-image-hash` event is only quoted in the reason: the KMS supplied it.
fn os_image_whitelisted(quote: &Quote, system: &[RuntimeEvent], list: &str) -> Outcome {
    let measurement = hex::encode(os_measurement(quote));
    let listed = list
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case(&measurement));
    let claim = system
        .iter()
        .find(|e| e.name == "os-image-hash")
        .map(|e| {
            format!(
                " (os-image-hash event {} is the KMS's claim, not checked)",
                hex::encode(&e.payload)
            )
        })
        .unwrap_or_default();
    Outcome::new(
        listed,
        format!("OS measurement SHA-256(MRTD ‖ RTMR0-2) {measurement}{claim}"),
    )
}

/// Whether a KMS key provider is pinned: the init's [`KEY_PROVIDER_UNPINNED_EVENT`] fails it
/// whatever else is given; otherwise app-compose decides (`key_provider`, or the legacy
/// `kms_enabled` / `local_key_provider_enabled`, and `key_provider_id`). `None` without
/// either. The file is bound to the quote only by [`CheckId::ComposeHash`].
fn key_provider_pinned(app_compose: Option<&[u8]>, system: &[RuntimeEvent]) -> Option<Outcome> {
    if let Some(e) = system
        .iter()
        .find(|e| e.name == KEY_PROVIDER_UNPINNED_EVENT)
    {
        return Some(Outcome::new(
            false,
            format!(
                "the init recorded {KEY_PROVIDER_UNPINNED_EVENT} ({}): the host chose the KMS",
                String::from_utf8_lossy(&e.payload)
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(app_compose?).unwrap_or_default();
    let flag = |name: &str| value.get(name).and_then(serde_json::Value::as_bool) == Some(true);
    let kind = match value
        .get("key_provider")
        .and_then(serde_json::Value::as_str)
    {
        Some(kind) => kind,
        None if flag("kms_enabled") => "kms",
        None if flag("local_key_provider_enabled") => "local",
        None => "none",
    };
    let id = value
        .get("key_provider_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    Some(match kind {
        "kms" if id.is_empty() => Outcome::new(
            false,
            "app-compose selects the KMS with an empty key_provider_id: the host chooses the \
             KMS and learns the disk key and every GetKey output",
        ),
        "kms" => match kms_key_provider_id(system) {
            Some(used) if !used.eq_ignore_ascii_case(id) => Outcome::new(
                false,
                format!("key_provider_id {id} but the key-provider event names {used}"),
            ),
            _ => Outcome::new(true, format!("key_provider_id {id}")),
        },
        other => Outcome::new(true, format!("key provider {other}: no KMS")),
    })
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

/// The KMS's own quote and what it is compared with ([`kms_attestation`]).
#[derive(Debug, Clone, Copy)]
pub struct KmsEvidence<'a> {
    /// The KMS quote as received.
    pub quote_bytes: &'a [u8],
    /// The same quote, parsed.
    pub quote: &'a Quote,
    /// The auditor's expected KMS identity (`--kms-identity`, hex of the root-CA SPKI), if given.
    pub identity: Option<&'a str>,
    /// The app's RTMR3 events: their `key-provider` event names the KMS the app used.
    pub app_events: &'a [RuntimeEvent],
    /// The KMS build's expected MRTD and RTMR0-2 (`cvm-measure expected --json` for the KMS
    /// image), if given.
    pub expected: Option<&'a serde_json::Value>,
    /// Verification time in Unix seconds.
    pub now: u64,
}

/// The KMS's quote, checked in this order:
/// 1. the identity: the app's `key-provider` event id (the KMS it took its keys from) and
///    `--kms-identity`, which must agree when both are there;
/// 2. reportData must bind that identity (`kms-root-ca` content type, SHA-512 of
///    `"kms-root-ca:"` ‖ SPKI DER), so a quote of any other key fails;
/// 3. which VM made it: not a debug TD, and MRTD/RTMR0-2 equal the KMS build's expected values
///    (a public key hash is no secret: any TD could put it in reportData, so only the
///    measurements say the quote comes from the KMS VM);
/// 4. it must verify against stored collateral with an up-to-date TCB.
///
/// `collateral` is asked for only once 1-3 hold.
pub fn kms_attestation<E>(
    kms: &KmsEvidence<'_>,
    collateral: impl FnOnce() -> Result<Option<Collateral>, E>,
) -> Result<Outcome, E> {
    let fail = |reason: String| Ok(Outcome::new(false, reason));
    let used = kms_key_provider_id(kms.app_events);
    let identity = match (kms.identity.map(str::trim), used.as_deref()) {
        (Some(want), Some(used)) if !want.eq_ignore_ascii_case(used) => {
            return fail(format!(
                "--kms-identity {want} is not the KMS of the app's key-provider event {used}"
            ));
        }
        (Some(want), _) => want,
        (None, Some(used)) => used,
        (None, None) => {
            return fail(
                "no KMS identity: no kms key-provider event and no --kms-identity".to_owned(),
            );
        }
    };
    let Ok(spki) = hex::decode(identity.trim_start_matches("0x")) else {
        return fail(format!("KMS identity {identity} is not hex"));
    };
    let body = &kms.quote.body;
    let mut hasher = sha2::Sha512::new();
    hasher.update(b"kms-root-ca:");
    hasher.update(&spki);
    let want: [u8; 64] = hasher.finalize().into();
    if body.report_data.0 != want {
        return fail(format!(
            "KMS quote reportData {} is not SHA-512(\"kms-root-ca:\" ‖ KMS identity {identity}): \
             the quote is not the KMS's",
            hex::encode(body.report_data.0)
        ));
    }
    if body.td_attributes & TD_ATTRIBUTES_DEBUG != 0 {
        return fail(format!(
            "KMS quote comes from a debug TD (TDATTRIBUTES {:#018x}): the host can read its keys",
            body.td_attributes
        ));
    }
    let Some(expected) = kms.expected else {
        return fail(
            "KMS quote binds the KMS identity, but which VM made it is not checked: give \
             --kms-expected"
                .to_owned(),
        );
    };
    let measured = platform_measurements(kms.quote, expected);
    if measured.status != Status::Pass {
        return fail(format!(
            "KMS quote is not from the expected KMS VM: {}",
            measured.reason
        ));
    }
    let Some(collateral) = collateral()? else {
        return fail(
            "KMS quote binds the KMS identity and has the expected measurements, but was not \
             verified: give --kms-collateral"
                .to_owned(),
        );
    };
    let now = kms.now;
    Ok(
        match quote_verify::verify_quote(kms.quote_bytes, &collateral, now) {
            QuoteVerdict::Verified { tcb_status, .. } => Outcome::new(
                tcb_status == "UpToDate",
                format!(
                    "KMS quote verified at {now}, TCB {tcb_status}, reportData binds the KMS \
                     identity, measurements match"
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
        // A Simulated line rejects even without the flag.
        let verdict = Verdict {
            simulated: false,
            checks: vec![check(CheckId::QuoteSignature, Status::Simulated)],
        };
        assert_eq!(verdict.decision(), Decision::RejectSimulated);
    }

    #[test]
    fn missing_input_fails_unless_skipped() {
        let missing = Check::settle(CheckId::QuoteSignature, None, &[]);
        assert_eq!(missing.status, Status::Fail);
        assert_eq!(
            missing.reason,
            "input not given (--collateral); pass --skip quote-signature to accept that"
        );
        let skipped = Check::settle(CheckId::QuoteSignature, None, &[CheckId::QuoteSignature]);
        assert_eq!(skipped.status, Status::Skipped);
        assert_eq!(skipped.reason, "requested; input not given (--collateral)");
        // The signature skip covers the TCB status, nothing else.
        let skip = [CheckId::QuoteSignature];
        assert_eq!(
            Check::settle(CheckId::TcbUpToDate, None, &skip).status,
            Status::Skipped
        );
        assert_eq!(
            Check::settle(CheckId::Challenge, None, &skip).status,
            Status::Fail
        );
        assert_eq!(
            Check::settle(CheckId::QuoteSignature, None, &[CheckId::TcbUpToDate]).status,
            Status::Fail
        );
        // A skipped failure keeps its reason; a pass stays a pass.
        let failed = Check::settle(
            CheckId::KeyProviderPinned,
            Some(Outcome::new(false, "unpinned")),
            &[CheckId::KeyProviderPinned],
        );
        assert_eq!(failed.status, Status::Skipped);
        assert_eq!(failed.reason, "requested; not holding: unpinned");
        let failed = Check::settle(
            CheckId::KeyProviderPinned,
            Some(Outcome::new(false, "unpinned")),
            &[],
        );
        assert_eq!(failed.status, Status::Fail);
        let passed = Check::settle(
            CheckId::Challenge,
            Some(Outcome::new(true, "ok")),
            &[CheckId::Challenge],
        );
        assert_eq!(
            (passed.status, passed.reason.as_str()),
            (Status::Pass, "ok")
        );
    }

    #[test]
    fn check_names_are_stable_and_unique() {
        let names: Vec<&str> = CheckId::skippable().map(CheckId::name).collect();
        assert_eq!(
            names,
            [
                "quote-signature",
                "tcb-up-to-date",
                "platform-measurements",
                "os-image-whitelisted",
                "compose-hash",
                "images-pinned",
                "rtmr3-replay",
                "challenge",
                "key-provider",
                "key-provider-pinned",
                "kms-attestation",
            ]
        );
        for id in CheckId::skippable() {
            assert_eq!(CheckId::from_name(id.name()), Some(id));
        }
        // Simulated evidence cannot be skipped into a pass.
        assert_eq!(CheckId::from_name("real-tdx-module"), None);
        assert_eq!(CheckId::from_name("quote_signature"), None);
    }

    fn event(name: &str, payload: &[u8]) -> RuntimeEvent {
        RuntimeEvent::new(name, payload.to_vec())
    }

    const SPKI: &str = "3059301306072a8648ce3d0201";

    fn key_provider(id: &str) -> RuntimeEvent {
        event(
            dstack_identity::KEY_PROVIDER,
            format!(r#"{{"name":"kms","id":"{id}"}}"#).as_bytes(),
        )
    }

    #[test]
    fn unpinned_kms_fails_key_provider_pinned() {
        let pinned = |compose: serde_json::Value, events: &[RuntimeEvent]| {
            key_provider_pinned(Some(compose.to_string().as_bytes()), events)
                .unwrap()
                .status
        };
        let kms = |id: &str| serde_json::json!({"key_provider": "kms", "key_provider_id": id});
        assert_eq!(pinned(kms(""), &[]), Status::Fail);
        assert_eq!(
            pinned(serde_json::json!({"kms_enabled": true}), &[]),
            Status::Fail
        );
        assert_eq!(pinned(kms(SPKI), &[key_provider(SPKI)]), Status::Pass);
        assert_eq!(pinned(kms(SPKI), &[key_provider("00")]), Status::Fail);
        assert_eq!(
            pinned(serde_json::json!({"key_provider": "none"}), &[]),
            Status::Pass
        );
        // The init's event fails the line even with a pinned-looking file, or without one.
        let warned = [event(KEY_PROVIDER_UNPINNED_EVENT, b"x")];
        assert_eq!(pinned(kms(SPKI), &warned), Status::Fail);
        assert_eq!(
            key_provider_pinned(None, &warned).map(|o| o.status),
            Some(Status::Fail)
        );
        assert_eq!(key_provider_pinned(None, &[]), None);
    }

    const KMS_QUOTE: &[u8] = include_bytes!("../testdata/dcap-qvl-tdx_quote");

    #[test]
    fn a_test_build_on_real_tdx_counts_as_simulated() {
        let quote = Quote::parse(KMS_QUOTE).unwrap();
        let plain = [RuntimeEvent::new("system-preparing", Vec::new())];
        assert!(!is_simulated(&quote, &plain));
        let marked = [
            RuntimeEvent::new(TEST_BUILD_EVENT, b"insecure-test-hooks".to_vec()),
            RuntimeEvent::new("system-preparing", Vec::new()),
        ];
        assert!(is_simulated(&quote, &marked));
        // The init's name and the verifier's are one.
        assert_eq!(TEST_BUILD_EVENT, "insecure-test-build");
    }

    fn expected_of(quote: &Quote) -> serde_json::Value {
        let r = quote.rtmrs().values();
        serde_json::json!({
            "mrtd": quote.body.mr_td.to_string(),
            "rtmr0": {"value": r[0].to_string()},
            "rtmr1": {"value": r[1].to_string()},
            "rtmr2": {"value": r[2].to_string()},
        })
    }

    /// The sample quote with reportData bound to `spki` (its signature no longer verifies).
    fn kms_quote_for(spki: &str) -> Quote {
        let mut quote = Quote::parse(KMS_QUOTE).unwrap();
        let mut hasher = sha2::Sha512::new();
        hasher.update(b"kms-root-ca:");
        hasher.update(hex::decode(spki).unwrap());
        quote.body.report_data.0 = hasher.finalize().into();
        quote
    }

    fn kms_outcome(
        quote: &Quote,
        identity: Option<&str>,
        events: &[RuntimeEvent],
        expected: Option<&serde_json::Value>,
    ) -> Outcome {
        let bytes = quote.to_bytes().unwrap();
        let kms = KmsEvidence {
            quote_bytes: &bytes,
            quote,
            identity,
            app_events: events,
            expected,
            now: 1_750_377_600,
        };
        kms_attestation(&kms, || Ok::<_, ()>(None)).unwrap()
    }

    #[test]
    fn kms_quote_must_come_from_the_apps_kms() {
        let quote = kms_quote_for(SPKI);
        let expected = expected_of(&quote);
        let app = [key_provider(SPKI)];
        // Matching: identity from the key-provider event, or given and equal; the binding
        // and measurements hold, so only the collateral is missing.
        for identity in [None, Some(SPKI)] {
            let out = kms_outcome(&quote, identity, &app, Some(&expected));
            assert_eq!(out.status, Status::Fail);
            assert!(
                out.reason.contains("give --kms-collateral"),
                "{}",
                out.reason
            );
        }
        // A quote of another VM's key: the binding fails.
        let other = kms_quote_for("3059301306072a8648ce3d0202");
        let out = kms_outcome(&other, None, &app, Some(&expected));
        assert!(out.reason.contains("is not SHA-512"), "{}", out.reason);
        // --kms-identity names another KMS than the app used.
        let out = kms_outcome(&quote, Some("00"), &app, Some(&expected));
        assert!(
            out.reason.contains("is not the KMS of the app"),
            "{}",
            out.reason
        );
        // No identity at all.
        let out = kms_outcome(&quote, None, &[], Some(&expected));
        assert!(out.reason.starts_with("no KMS identity"), "{}", out.reason);
        // The right key in a quote with other measurements, or without expected values.
        let mut moved = expected.clone();
        moved["rtmr1"]["value"] = serde_json::Value::String("00".repeat(48));
        let out = kms_outcome(&quote, None, &app, Some(&moved));
        assert!(
            out.reason.contains("not from the expected KMS VM"),
            "{}",
            out.reason
        );
        let out = kms_outcome(&quote, None, &app, None);
        assert!(out.reason.contains("give --kms-expected"), "{}", out.reason);
        // A debug TD.
        let mut debug = quote.clone();
        debug.body.td_attributes |= TD_ATTRIBUTES_DEBUG;
        let out = kms_outcome(&debug, None, &app, Some(&expected));
        assert!(out.reason.contains("debug TD"), "{}", out.reason);
    }

    #[test]
    fn os_image_whitelist_uses_the_quote_not_the_event() {
        let quote = Quote::parse(KMS_QUOTE).unwrap();
        let measurement = hex::encode(os_measurement(&quote));
        let claim = event("os-image-hash", &[0x07; 32]);
        let out = os_image_whitelisted(&quote, std::slice::from_ref(&claim), &measurement);
        assert_eq!(out.status, Status::Pass, "{}", out.reason);
        assert!(out.reason.contains("KMS's claim"), "{}", out.reason);
        // Whitelisting the event's value passes nothing.
        let out = os_image_whitelisted(&quote, &[claim], &"07".repeat(32));
        assert_eq!(out.status, Status::Fail);
        // Another platform register, another measurement.
        let mut other = quote.clone();
        other.body.mr_td.0[0] ^= 1;
        assert_ne!(os_measurement(&other), os_measurement(&quote));
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
