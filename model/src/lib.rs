//! irqdiff-model: a spec-accurate reference model of the x86 IOAPIC and local APIC.
