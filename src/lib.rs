//! irqdiff: a reference-model differential fuzzer for x86 interrupt
//! controllers. See docs/design.md for the pipeline:
//! scenario → backend → trace → oracle → minimiser → repro.

pub mod backend;
pub mod bench;
pub mod campaign;
pub mod cli;
pub mod diagnose;
pub mod differ;
pub mod findings;
pub mod fuzzing;
pub mod guest;
pub mod known;
pub mod minimize;
pub mod oracle;
pub mod real_bugs;
pub mod repro;
pub mod scenario;
pub mod trace;

pub use irqdiff_model as model;
