//! `measure`: TDX measurement math shared by the init and the auditor (RTMR extend, event-log
//! codecs, quote parsing, expected values). No `unsafe`, no I/O beyond what callers pass in.
#![forbid(unsafe_code)]

pub mod bytes;
pub mod ccel;
pub mod dstack_event_log;
pub mod dstack_identity;
pub mod event_log;
pub mod expected;
pub mod image_bundle;
pub mod kernel;
pub mod quote;
#[cfg(feature = "dcap-verify")]
pub mod quote_verify;
pub mod replay;
pub mod rtmr;
pub mod runtime_event;
pub mod tdreport;
pub mod tdvf;
#[cfg(feature = "verify")]
pub mod verify;
pub mod verity;

#[cfg(test)]
mod tests {
    /// Deterministic xorshift64 so the smoke test needs no dependency and never flakes.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Every parser of untrusted bytes on random mutations of real inputs: none may panic.
    #[test]
    fn parsers_survive_random_mutations() {
        let seeds: [&[u8]; 5] = [
            include_bytes!("../testdata/dcap-qvl-tdx_quote"),
            &include_bytes!("../testdata/dstack-ccel.bin")[..2048],
            include_bytes!("../testdata/synthetic_tdvf.fd"),
            &include_bytes!("../testdata/synthetic_bzImage")[..1024],
            &include_bytes!("../testdata/dstack-tdx-lite-getquote.json")[..4096],
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..2000 {
            let seed = seeds[round % seeds.len()];
            let mut bytes = seed.to_vec();
            for _ in 0..(1 + next(&mut state) % 8) {
                let i = usize::try_from(next(&mut state) % bytes.len() as u64).unwrap();
                bytes[i] = u8::try_from(next(&mut state) & 0xFF).unwrap();
            }
            let cut = usize::try_from(next(&mut state) % (bytes.len() as u64 + 1)).unwrap();
            for input in [&bytes[..], &bytes[..cut]] {
                let _ = crate::quote::Quote::parse(input);
                let _ = crate::event_log::EventLog::parse(input);
                let _ = crate::tdvf::Tdvf::parse(input);
                let _ = crate::ccel::CcelTable::parse(input);
                let _ = crate::tdreport::TdReport::parse(input);
                let _ = crate::kernel::authenticode_sha384(input);
                let _ = crate::image_bundle::parse_sha256sum(input);
                let _ = crate::image_bundle::Metadata::parse(input);
                let text = String::from_utf8_lossy(input);
                let _ = crate::runtime_event::decode_log(&text);
                let _ = crate::dstack_event_log::parse_event_log(&text);
                let _ = crate::dstack_event_log::parse_get_quote_response(&text);
            }
        }
    }
}
