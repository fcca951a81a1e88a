#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidelane_fuzz::harness::run("ovsdb_update", data));
