#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| init_fuzz::ratls_cert(data));
