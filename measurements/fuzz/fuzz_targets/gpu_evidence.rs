#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| measure_fuzz::gpu_evidence(data));
