//! Differential fuzzing of this host's KVM against the model: panics on a
//! divergence that no documented KVM behaviour explains.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| irqdiff::fuzzing::diff("kvm", data));
