#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| measure_fuzz::runtime_event_log(data));
