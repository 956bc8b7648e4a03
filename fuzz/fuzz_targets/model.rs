//! The model never panics and its invariants hold on any scenario.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| irqdiff::fuzzing::model(data));
