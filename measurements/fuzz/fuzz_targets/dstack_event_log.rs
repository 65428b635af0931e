#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| measure_fuzz::dstack_event_log(data));
