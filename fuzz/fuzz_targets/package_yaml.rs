#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchcast::fuzzing::package_yaml(data));
