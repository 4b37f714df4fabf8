#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| onehop_fuzz::sip_headers(data));
