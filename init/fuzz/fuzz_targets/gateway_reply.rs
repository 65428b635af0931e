#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| init_fuzz::gateway_reply(data));
