//! irqdiff-model: a spec-accurate reference model of the x86 IOAPIC (Intel
//! 82093AA, version 0x11, and the ICH-family IOAPIC, version 0x20) and of
//! the local APIC (Intel SDM vol. 3A, chapter "Advanced Programmable
//! Interrupt Controller"), with the processor's side of interrupt delivery,
//! and of the PC's 8259A PIC pair with the PIIX/ICH ELCR ([`pic`], wired to
//! the one-CPU machine's LINT0 and IOAPIC pin 0; docs/pic.md).
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
//!   is #GP, and so is an ICR write with reserved bits set (§11.12.1.3).
//!   Other x2APIC reserved-bit checks of §11.12.1.3 (TPR, SVR) are not
//!   modelled: those writes are masked, as KVM does.
//! - NMIs are taken whatever IF and the STI shadow say (the shadow's effect
//!   on NMIs is model-specific, catalogue AP-9); one NMI is held while NMIs
//!   are blocked, until IRET (SDM §6.7.1).
//! - An APIC hardware-disabled (IA32_APIC_BASE bit 11 cleared) and then
//!   re-enabled comes back in its power-up state, software-disabled (SVR
//!   0xFF, LVTs masked, IRR/ISR/TMR empty): SDM §11.4.3 says a disabled
//!   APIC's state is lost. Implementations differ: KVM's
//!   `kvm_lapic_set_base` keeps the registers and only resets the xAPIC ID
//!   on re-enable; QEMU's `apic_set_base` clears SVR's enable bit on
//!   disable and keeps the rest; bhyve's `vlapic_set_apicbase` refuses any
//!   change of the MSR.
//! - The xAPIC ID register is read-only (SDM §11.4.6 leaves it
//!   model-specific whether software can change it), as bhyve's
//!   `vlapic_id_write_handler` resets it; KVM (`kvm_apic_set_xapic_id`)
//!   and QEMU (`apic_mem_write`) take the written ID.
//! - A level-triggered IOAPIC entry in NMI delivery mode sets remote IRR
//!   when the NMI is taken, and with no EOI for an NMI it stays set until
//!   the entry is retyped edge: as KVM (`ioapic_service`), QEMU
//!   (`ioapic_service`) and bhyve (`vioapic_send_intr`) do. The 82093AA
//!   (§3.2.4, delivery mode 100) treats NMI as edge-triggered and requires
//!   the entry to be programmed edge, so a level NMI entry is a guest error
//!   with no defined remote IRR.
//! - The trigger-mode bit of an ICR write is not used: a fixed IPI is
//!   accepted as edge (TMR cleared, its EOI not broadcast). SDM §11.6.1
//!   gives the bit a meaning only for INIT level de-assert. bhyve
//!   (`vlapic_icrlo_write_handler`, `lapic_intr_edge`) does the same; KVM
//!   (`kvm_apic_send_ipi` into `__apic_accept_irq`) and QEMU (`apic_deliver`
//!   into `apic_set_irq`) set the TMR bit for a level IPI.
//! - A DFR model other than flat (1111b) or cluster (0000b) matches no
//!   logical destination (SDM §11.6.2.2 defines only those two); the
//!   broadcast 0xFF still reaches the APIC. KVM
//!   (`kvm_apic_match_logical_addr`), QEMU (`apic_get_delivery_bitmask`)
//!   and bhyve (`vlapic_calcdest`, "bad logical model") match nothing too.
//! - LVT entries keep only their writable bits (SDM Figure 11-8):
//!   delivery status and LINT remote IRR read 0. KVM (`apic_lvt_mask`) and
//!   bhyve (`vlapic_lvt_write_handler`) mask reserved bits but store those
//!   two read-only bits as written; QEMU stores the whole value.
//! - Every error (SDM §11.5.3) raises the LVT Error interrupt unless it is
//!   masked: fixed, edge, straight into this APIC's IRR. An illegal vector
//!   in the LVT Error entry sets the receive-illegal-vector bit (6) and
//!   raises nothing more; bhyve (`vlapic_set_error`, `vlapic_fire_lvt`)
//!   sets the send bit (5) there instead.
//! - An xAPIC access to an unimplemented register (reserved offsets of SDM
//!   Table 11-1, SELF IPI, LVT CMCI) reads 0, ignores writes and sets ESR
//!   bit 7, as QEMU's `apic_mem_read`/`apic_mem_write` do; in x2APIC mode
//!   it is #GP.
//! - IA32_APIC_BASE writes with reserved bits 7:0 or 9 set are #GP (SDM
//!   §11.4.4; KVM's `kvm_apic_set_base`). The model takes the low 32 bits
//!   only, so the bits above MAXPHYADDR are not checked.
//! - An access that faults is an explicit `Err(GeneralProtection)` from
//!   the register functions, for the caller to raise as the guest's #GP.
//! - SMI, INIT and reserved delivery modes are not modelled on one CPU:
//!   the machine reports them ([`Machine::take_unmodelled`]) so that a run
//!   ends with an error instead of silently dropping them. ExtINT is an
//!   INTA to the 8259 pair ([`Machine::pic_unmodelled`] reports what the
//!   pair cannot answer). On several CPUs ([`system::System`]) INIT and
//!   STARTUP are modelled (the wait-for-SIPI state); SMI and ExtINT are
//!   still reported.
//! - An external interrupt (ExtINT) is taken before the local APIC's fixed
//!   interrupts and is not held by TPR/PPR (SDM §11.8.1: it bypasses the
//!   IRR): KVM's `kvm_cpu_get_interrupt` asks the PIC first, QEMU's
//!   `cpu_get_pic_interrupt` the APIC.
//! - Several CPUs ([`system::System`]): lowest-priority arbitration picks
//!   the lowest TPR, then the lowest CPU index (SDM §11.6.2.4 leaves it
//!   model-specific; the oracle allows any eligible CPU); a CPU waiting
//!   for SIPI takes no interrupt and no NMI; a SIPI to a running CPU is
//!   ignored; an x2APIC ICR destination is 32 bits (0xFF is cluster 0, not
//!   a broadcast). See the module's documentation.

pub mod cpu;
pub mod device;
pub mod ioapic;
pub mod lapic;
pub mod lapic_device;
pub mod lapic_timer;
pub mod machine;
pub mod msi;
pub mod pic;
pub mod pic_device;
pub mod quirks;
pub mod rules;
pub mod system;
pub mod undefined;

pub use device::{IoapicDevice, MessageQueue, MsiSink, Unsupported};
pub use ioapic::{InterruptMessage, InterruptSink, Ioapic, IoapicVersion};
pub use lapic::Lapic;
pub use lapic_device::{ApicBusMessage, LapicDevice, LapicUnsupported};
pub use machine::{Interrupt, Machine, MachineConfig};
pub use pic::{EdgeRequests, Pic, PicConfig, PicRule};
pub use pic_device::{ModelPic, PicDevice, PicProfile, PicUnsupported};
pub use quirks::Quirks;
pub use rules::{Deviation, Deviations, Mode, Rule};
pub use system::System;
