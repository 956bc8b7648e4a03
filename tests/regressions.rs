//! Regression tests written by `irqdiff emit FILE --as rust-test`, kept as
//! generated (tests/repro.rs checks each is what the emitter writes today).

#[path = "regressions/smp_apic_physical_broadcast.rs"]
mod smp_apic_physical_broadcast;
