//! irqdiff-model: a spec-accurate reference model of the x86 IOAPIC (Intel
//! 82093AA, version 0x11, and the ICH-family IOAPIC, version 0x20) and of
//! the local APIC (Intel SDM vol. 3A, chapter "Advanced Programmable
//! Interrupt Controller"), with the processor's side of interrupt delivery.
//!
//! It depends on nothing else of irqdiff, so that other VMMs can use it, for
//! example as the userspace IOAPIC of a split irqchip. Every rule that
//! decides an outcome cites its section next to the code, and the model
//! records which rule decided each event ([`rules::Rule`]).

pub mod cpu;
pub mod ioapic;
pub mod lapic;
pub mod machine;
pub mod msi;
pub mod quirks;
pub mod rules;

pub use ioapic::{InterruptMessage, InterruptSink, Ioapic, IoapicVersion};
pub use lapic::Lapic;
pub use machine::{Interrupt, Machine, MachineConfig};
pub use quirks::Quirks;
pub use rules::Rule;
