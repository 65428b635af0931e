//! Identities a dstack verifier derives from a quote and its RTMR3 runtime events
//! (`specs/dstack-guest.md` §3.3 and §3.5): `mr_key_provider`, `mr_system`, `mr_aggregated`,
//! app-info lookups before `system-ready` and the boot-time RTMR3 (up to `boot-mr-done`).

use sha2::{Digest as _, Sha256};

use crate::quote::TdReportBody;
use crate::rtmr::{RtmrIndex, Sha384Digest};
use crate::runtime_event::{RuntimeEvent, replay_rtmr3};

/// Name of the event after which events are application-controlled.
pub const SYSTEM_READY: &str = "system-ready";
/// Name of the event that ends the boot-time measurements.
pub const BOOT_MR_DONE: &str = "boot-mr-done";
/// Name of the key-provider event.
pub const KEY_PROVIDER: &str = "key-provider";
/// Name of cvm-init's warning event: app-compose selects the KMS without pinning it
/// (`key_provider_id` empty), so the host chose the KMS. Not a dstack event.
pub const KEY_PROVIDER_UNPINNED: &str = "key-provider-unpinned";

/// The events the system emitted (those before `system-ready`; later ones are app-controlled).
pub fn system_events(events: &[RuntimeEvent]) -> &[RuntimeEvent] {
    let end = events
        .iter()
        .position(|e| e.name == SYSTEM_READY)
        .unwrap_or(events.len());
    events.get(..end).unwrap_or_default()
}

/// The first event named `name` before `system-ready`.
pub fn find_system_event<'a>(events: &'a [RuntimeEvent], name: &str) -> Option<&'a RuntimeEvent> {
    system_events(events).iter().find(|e| e.name == name)
}

/// RTMR3 after replaying up to and including `boot-mr-done` (what the KMS sees). `None` if the
/// log has no `boot-mr-done`.
pub fn boot_time_rtmr3(events: &[RuntimeEvent]) -> Option<Sha384Digest> {
    let end = events.iter().position(|e| e.name == BOOT_MR_DONE)?;
    Some(replay_rtmr3(events.get(..=end).unwrap_or_default()))
}

/// SHA-256 of the key-provider payload, or 32 zero bytes without one.
pub fn mr_key_provider(events: &[RuntimeEvent]) -> [u8; 32] {
    find_system_event(events, KEY_PROVIDER).map_or([0; 32], |e| Sha256::digest(&e.payload).into())
}

/// `SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ mr_key_provider)`.
pub fn mr_system(body: &TdReportBody, mr_key_provider: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(body.mr_td.0);
    for index in [RtmrIndex::R0, RtmrIndex::R1, RtmrIndex::R2] {
        hasher.update(body.rtmrs.register(index).0);
    }
    hasher.update(mr_key_provider);
    hasher.finalize().into()
}

/// `SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ rtmr3 [‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG])`, the
/// last three only if any of them is nonzero.
pub fn mr_aggregated(body: &TdReportBody, rtmr3: &Sha384Digest) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(body.mr_td.0);
    for index in [RtmrIndex::R0, RtmrIndex::R1, RtmrIndex::R2] {
        hasher.update(body.rtmrs.register(index).0);
    }
    hasher.update(rtmr3.0);
    let config = [body.mr_config_id, body.mr_owner, body.mr_owner_config];
    if config.iter().any(|d| !d.is_zero()) {
        for digest in config {
            hasher.update(digest.0);
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dstack_event_log::{DstackEvent, parse_get_quote_response};
    use crate::quote::Quote;

    const GET_QUOTE: &str = include_str!("../testdata/dstack-tdx-lite-getquote.json");

    /// Values from `vectors/dstack/crypto-and-appinfo-vectors.json` (`tdx_lite_fixture_app_info`).
    #[test]
    fn tdx_lite_fixture_identities() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        let quote = Quote::parse(&response.quote).unwrap();
        let events: Vec<_> = response
            .event_log
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect();
        let key_provider = mr_key_provider(&events);
        assert_eq!(
            hex::encode(key_provider),
            "4facf64384bf715c05d4dbf0251d72ebe32be4ec4c84ddc01548d70e21d3a512"
        );
        assert_eq!(
            hex::encode(mr_system(&quote.body, &key_provider)),
            "118f754a080ecb8527df65656ee4e7e97b891cf488ad6a38886ff0dbca0c8f70"
        );
        let rtmr3 = replay_rtmr3(&events);
        assert_eq!(
            hex::encode(mr_aggregated(&quote.body, &rtmr3)),
            "c758fa624b62536ca77504c4c52745e70880220a178a615a859c52f8b101d2ee"
        );
        let boot = boot_time_rtmr3(&events).unwrap();
        assert_eq!(
            boot.to_string(),
            "f3358e2e735973e425869f2985a5f469e59a116352fa1156ad34c8a10a93b27e614b2cf2d8319fb25405e553a8b05626"
        );
        assert_eq!(
            hex::encode(mr_aggregated(&quote.body, &boot)),
            "f4e6117e0fdea4b23b5f32a2a59e7b7b99b64df237a9536fb2cb5ca2a270145e"
        );
    }

    #[test]
    fn app_events_after_system_ready_are_ignored() {
        let mut events = vec![
            RuntimeEvent::new("system-preparing", vec![]),
            RuntimeEvent::new(SYSTEM_READY, vec![]),
            RuntimeEvent::new(KEY_PROVIDER, b"forged".to_vec()),
        ];
        assert_eq!(mr_key_provider(&events), [0; 32]);
        assert_eq!(find_system_event(&events, KEY_PROVIDER), None);
        assert_eq!(boot_time_rtmr3(&events), None);
        events.insert(1, RuntimeEvent::new(KEY_PROVIDER, b"real".to_vec()));
        assert_eq!(
            mr_key_provider(&events),
            <[u8; 32]>::from(Sha256::digest(b"real"))
        );
    }
}
