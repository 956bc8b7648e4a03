//! Differential fuzzing of `sim:hvf-known` against the model (a quick check
//! that the pipeline finds the seeded bugs); panics on a divergence.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| irqdiff::fuzzing::diff("sim:hvf-known", data));
