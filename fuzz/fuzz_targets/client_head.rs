#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian::fuzz::client_head(data));
