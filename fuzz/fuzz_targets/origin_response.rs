#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian::fuzz::origin_response(data));
