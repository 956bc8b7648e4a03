//! No input panics the parser; whatever parses prints and parses back.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| irqdiff::fuzzing::parse(data));
