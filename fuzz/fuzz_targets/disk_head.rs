#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian::fuzz::disk_head(data));
