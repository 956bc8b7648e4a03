//! irqdiff-model: a spec-accurate reference model of the x86 IOAPIC (Intel
//! 82093AA, version 0x11, and the ICH-family IOAPIC, version 0x20) and of
//! the local APIC (Intel SDM vol. 3A, chapter "Advanced Programmable
//! Interrupt Controller"), with the processor's side of interrupt delivery.
//!
//! It depends on nothing else of irqdiff, so that other VMMs can use it, for
//! example as the userspace IOAPIC of a split irqchip. Every rule that
//! decides an outcome cites its section next to the code, and the model
//! records which rule decided each event ([`rules::Rule`]).
//!
//! # Choices where the spec is silent or implementations differ
//!
//! - Retyping an entry to edge clears its remote IRR (82093AA §3.2.4 bit 14
//!   calls it undefined for edge; KVM and QEMU clear it; catalogue G-5).
//! - A level message refused by a software-disabled local APIC (SDM
//!   §11.4.7.2) leaves remote IRR clear: it was not accepted (§3.2.4 bit 14
//!   "set when the local APIC(s) accept"), as KVM does; QEMU sets it (G-8).
//!   The IOAPIC does not retry a refused message; rewriting the entry of a
//!   still-asserted level pin (or unmasking it) sends it again.
//! - The EOI is matched against each entry's *current* vector, on every
//!   level pin with that vector (§3.2.4 bit 14; G-6, G-7).
//! - Delivery is instantaneous, so delivery status (bit 12) always reads 0.
//! - A logical destination of 0xFF is a broadcast in xAPIC and x2APIC mode,
//!   and an 8-bit physical 0xFF too (as KVM's `kvm_apic_broadcast`).
//! - An illegal vector (0-15) in a self IPI sets both ESR bits 5 and 6 (SDM
//!   §11.5.3 "... or via a self IPI"); in x2APIC mode a non-zero ESR write
//!   is #GP. Other x2APIC reserved-bit checks of §11.12.1.3 (TPR, SVR) are not
//!   modelled: those writes are masked, as KVM does.
//! - NMIs are taken whatever IF and the STI shadow say (the shadow's effect
//!   on NMIs is model-specific, catalogue AP-9); one NMI is held while NMIs
//!   are blocked, until IRET (SDM §6.7.1).
//! - SMI, INIT, ExtINT and reserved delivery modes are not modelled: the
//!   machine reports them ([`Machine::take_unmodelled`]) so that a run ends
//!   with an error instead of silently dropping them.

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
pub use rules::{Deviation, Deviations, Mode, Rule};
