//! Rules of [`crate::system::System`] (several CPUs on one bus) that the
//! tests next to the code leave open: each test names the SDM vol. 3A or
//! 82093AA section it checks. Kept in its own file so that work on
//! system.rs and on these tests does not collide.

use super::*;
use crate::ioapic::{IoapicVersion, IOREGSEL, IOWIN};
use crate::lapic::{ESR_ILLEGAL_REGISTER, ESR_SEND_ILLEGAL_VECTOR};
use crate::machine::Decision;
use crate::rules::{Deviation, Deviations};

fn system(ids: &[u32], x2apic: bool) -> System {
    with(ids, x2apic, Quirks::empty())
}

fn with(ids: &[u32], x2apic: bool, quirks: Quirks) -> System {
    System::new(
        MachineConfig {
            x2apic,
            quirks,
            ..MachineConfig::default()
        },
        ids,
        false,
    )
}

/// The CPUs with `vector` requested.
fn requested(s: &System, vector: u8) -> Vec<usize> {
    (0..s.cpus())
        .filter(|&i| s.nodes[i].lapic.irr()[vector as usize / 32] >> (vector % 32) & 1 == 1)
        .collect()
}

fn in_service(s: &System, cpu: usize, vector: u8) -> bool {
    s.nodes[cpu].lapic.isr()[vector as usize / 32] >> (vector % 32) & 1 == 1
}

/// A fixed, edge ICR low word (level bit set, as an assert).
fn fixed(vector: u8) -> u32 {
    vector as u32 | 1 << 14
}

const LOGICAL: u32 = 1 << 11;
const LOWEST: u32 = 1 << 8;
const NMI: u32 = 4 << 8;

fn route(s: &mut System, pin: u8, low: u32, dest: u8) {
    s.ioapic_mmio_write(IOREGSEL, 0x11 + 2 * pin as u32);
    s.ioapic_mmio_write(IOWIN, (dest as u32) << 24);
    s.ioapic_mmio_write(IOREGSEL, 0x10 + 2 * pin as u32);
    s.ioapic_mmio_write(IOWIN, low);
}

fn decided(rule: Rule, vector: u8) -> Decision {
    Decision { rule, vector }
}

/// Takes the highest deliverable interrupt of `cpu` (must be `vector`).
fn take_vector(s: &mut System, cpu: usize, vector: u8) -> bool {
    let (v, saved) = s.take(cpu, s.pending(cpu).expect("an interrupt pending"));
    assert_eq!(v, vector);
    saved
}

#[test]
fn a_32_bit_physical_x2apic_destination_names_one_apic_id() {
    // SDM §11.12.9: in x2APIC mode the ICR's destination is the 32-bit
    // x2APIC ID, so 0x100 reaches ID 0x100 and not ID 0 (its low byte).
    let mut s = system(&[0, 0x100, 2], true);
    s.send_icr(2, fixed(0x40), 0x100).unwrap();
    assert_eq!(requested(&s, 0x40), [1]);
    s.send_icr(2, fixed(0x41), 0x2).unwrap();
    assert_eq!(requested(&s, 0x41), [2]);
    s.send_icr(2, fixed(0x42), 0x1_0000).unwrap();
    assert_eq!(requested(&s, 0x42), [] as [usize; 0]);
}

#[test]
fn an_8_bit_logical_0xff_is_a_broadcast_in_x2apic_mode_too() {
    // The model's choice (lib.rs, KVM's kvm_apic_mda): an 8-bit logical
    // destination of 0xFF from the IOAPIC (82093AA §3.2.4 bits 63:56)
    // reaches every APIC, also those outside cluster 0 (§11.12.10.2).
    let mut s = system(&[0, 0x10, 0x21], true);
    route(&mut s, 3, 0x72 | LOGICAL, 0xff);
    s.set_irq(3, true);
    assert_eq!(requested(&s, 0x72), [0, 1, 2]);
    // An 8-bit physical destination of an MSI (SDM §11.11.1) names the ID.
    assert!(s.message(&InterruptMessage {
        vector: 0x73,
        delivery: DeliveryMode::Fixed,
        logical: false,
        dest: 0x21,
        level: false,
        rule: Rule::MsiDelivers,
    }));
    assert_eq!(requested(&s, 0x73), [2]);
}

#[test]
fn an_8_bit_logical_destination_honours_the_x2apic_quirks() {
    // X2APIC_LDR_NOT_DERIVED breaks §11.12.10.2 for IOAPIC messages too:
    // with the LDR read as 0, logical cluster-0 member 0 matches nobody,
    // while the broadcast 0xFF still reaches everybody.
    let mut s = with(&[0, 1], true, Quirks::X2APIC_LDR_NOT_DERIVED);
    route(&mut s, 3, 0x72 | LOGICAL, 0x01);
    s.set_irq(3, true);
    assert_eq!(requested(&s, 0x72), [] as [usize; 0]);
    route(&mut s, 4, 0x73 | LOGICAL, 0xff);
    s.set_irq(4, true);
    assert_eq!(requested(&s, 0x73), [0, 1]);
}

#[test]
fn logical_matches_are_logged_only_for_the_apics_they_hit() {
    // §11.6.2.2: the flat model matched CPUs 0 and 2 only; each hit is
    // one LogicalFlatMatch decision, a miss is none, and a physical
    // destination logs no logical match.
    let mut s = system(&[0, 1, 2], false);
    for (i, ldr) in [0x01u32, 0x02, 0x04].iter().enumerate() {
        s.lapic_write(i, reg::LDR, ldr << 24).unwrap();
    }
    s.clear_decisions();
    assert_eq!(s.decisions(), []);
    s.send_icr(0, fixed(0x60) | LOGICAL, 0x05).unwrap();
    assert_eq!(
        s.decisions(),
        [
            decided(Rule::IpiDelivers, 0x60),
            decided(Rule::LogicalFlatMatch, 0),
            decided(Rule::LogicalFlatMatch, 0),
            decided(Rule::IpiDelivers, 0x60),
            decided(Rule::IpiDelivers, 0x60),
        ]
    );
    s.clear_decisions();
    s.send_icr(0, fixed(0x61), 1).unwrap();
    assert_eq!(
        s.decisions(),
        [
            decided(Rule::IpiDelivers, 0x61),
            decided(Rule::IpiDelivers, 0x61)
        ]
    );
    // The logical broadcast 0xFF is no logical match either.
    s.clear_decisions();
    s.send_icr(0, fixed(0x62) | LOGICAL, 0xff).unwrap();
    assert!(!s
        .decisions()
        .iter()
        .any(|d| d.rule == Rule::LogicalFlatMatch));
    assert_eq!(requested(&s, 0x62), [0, 1, 2]);
}

#[test]
fn a_32_bit_logical_x2apic_miss_logs_no_cluster_match() {
    // §11.12.10.2: only the APICs in cluster 1 with member bit 0 match.
    let mut s = system(&[0x10, 0x11, 0x00], true);
    s.clear_decisions();
    s.send_icr(2, fixed(0x40) | LOGICAL, 0x0001_0001).unwrap();
    assert_eq!(requested(&s, 0x40), [0]);
    let matches = s
        .decisions()
        .iter()
        .filter(|d| d.rule == Rule::X2apicClusterMatch)
        .count();
    assert_eq!(matches, 1);
}

#[test]
fn lowest_priority_chooses_among_the_addressed_apics_only() {
    // §11.6.2.4: the arbitration is among the processors the destination
    // names; CPU 0 has the lowest TPR but is not addressed.
    let mut s = system(&[0, 1, 2], false);
    for (i, ldr) in [0x01u32, 0x02, 0x04].iter().enumerate() {
        s.lapic_write(i, reg::LDR, ldr << 24).unwrap();
    }
    s.lapic_write(1, reg::TPR, 0x30).unwrap();
    s.lapic_write(2, reg::TPR, 0x20).unwrap();
    s.send_icr(0, fixed(0x80) | LOWEST | LOGICAL, 0x06).unwrap();
    assert_eq!(requested(&s, 0x80), [2]);
    assert!(s.take_lowest_choice());
    assert!(!s.take_lowest_choice(), "taken");
    // One addressed APIC: no open choice, even though others could accept.
    s.send_icr(0, fixed(0x81) | LOWEST | LOGICAL, 0x02).unwrap();
    assert_eq!(requested(&s, 0x81), [1]);
    assert!(!s.take_lowest_choice());
}

#[test]
fn lowest_priority_skips_apics_that_cannot_accept() {
    // §11.4.7.2: a software-disabled APIC takes no fixed interrupt, so it
    // is not chosen although its TPR is the lowest; §11.4.7.3: neither is
    // a CPU waiting for SIPI, even with its APIC software-enabled.
    let mut s = System::new(MachineConfig::default(), &[0, 1, 2], true);
    s.lapic_write(2, reg::SVR, 0x1ff).unwrap();
    assert!(s.nodes[2].lapic.software_enabled() && s.nodes[2].waiting_for_sipi);
    s.lapic_write(0, reg::TPR, 0x20).unwrap();
    s.send_icr(0, fixed(0x80) | LOWEST, 0xff).unwrap();
    assert_eq!(requested(&s, 0x80), [0]);
    assert!(!s.take_lowest_choice(), "CPU 0 was the only eligible one");
    // Software-disabled but running: not chosen either.
    let mut s = system(&[0, 1, 2], false);
    s.lapic_write(0, reg::TPR, 0x20).unwrap();
    s.lapic_write(1, reg::SVR, 0xff).unwrap();
    s.lapic_write(2, reg::SVR, 0xff).unwrap();
    s.send_icr(0, fixed(0x81) | LOWEST, 0xff).unwrap();
    assert_eq!(requested(&s, 0x81), [0]);
    // Hardware-disabled (IA32_APIC_BASE bit 11 clear, §11.4.3): not chosen.
    let mut s = system(&[0, 1], false);
    s.lapic_write(0, reg::TPR, 0x20).unwrap();
    s.write_apic_base(1, 0xfee0_0000).unwrap();
    assert!(!s.nodes[1].lapic.hw_enabled());
    s.send_icr(0, fixed(0x82) | LOWEST, 0xff).unwrap();
    assert_eq!(requested(&s, 0x82), [0]);
}

#[test]
fn a_lowest_priority_message_nobody_can_take_is_refused_once() {
    // §11.6.2.4 with §11.4.7.2: no addressed APIC can accept; the model
    // offers the message to the first addressed one only, which refuses it
    // with its reason (one decision), and a level message then leaves
    // remote IRR clear (82093AA §3.2.4 bit 14: set on acceptance).
    let mut s = system(&[0, 1, 2, 3], false);
    for i in 0..4 {
        s.lapic_write(i, reg::SVR, 0xff).unwrap();
    }
    s.clear_decisions();
    route(&mut s, 5, 0x90 | 1 << 8 | 1 << 15, 0xff);
    s.set_irq(5, true);
    assert_eq!(requested(&s, 0x90), [] as [usize; 0]);
    let refusals: Vec<_> = s
        .decisions()
        .iter()
        .filter(|d| d.rule == Rule::ApicSoftwareDisabled)
        .collect();
    assert_eq!(refusals, [&decided(Rule::ApicSoftwareDisabled, 0x90)]);
    assert!(!s.ioapic.entry(5).remote_irr());
}

#[test]
fn a_level_message_two_apics_accept_sets_remote_irr() {
    // 82093AA §3.2.4 bit 14: remote IRR is set when the local APIC(s)
    // accept the level interrupt, however many of them do.
    let mut s = system(&[0, 1], false);
    route(&mut s, 6, 0x91 | 1 << 15, 0xff);
    s.set_irq(6, true);
    assert_eq!(requested(&s, 0x91), [0, 1]);
    assert!(s.ioapic.entry(6).remote_irr());
    // The same with one acceptor of two addressed (CPU 1 disabled).
    let mut s = system(&[0, 1], false);
    s.lapic_write(1, reg::SVR, 0xff).unwrap();
    route(&mut s, 6, 0x91 | 1 << 15, 0xff);
    s.set_irq(6, true);
    assert_eq!(requested(&s, 0x91), [0]);
    assert!(s.ioapic.entry(6).remote_irr());
    // MSIs report acceptance the same way (two accept: true).
    let mut s = system(&[0, 1], false);
    let msi = |dest| InterruptMessage {
        vector: 0x92,
        delivery: DeliveryMode::Fixed,
        logical: false,
        dest,
        level: false,
        rule: Rule::MsiDelivers,
    };
    assert!(s.message(&msi(0xff)));
    assert!(!s.message(&msi(7)), "no APIC with ID 7");
}

#[test]
fn what_a_cpu_waiting_for_sipi_ignores_is_logged_with_its_vector() {
    // §11.4.7.3: a CPU waiting for SIPI takes neither an NMI (logged as
    // vector 2) nor a fixed interrupt (logged with its vector).
    let mut s = System::new(MachineConfig::default(), &[0, 1], true);
    s.clear_decisions();
    s.send_icr(0, NMI | 1 << 14, 1).unwrap();
    assert_eq!(
        s.decisions().last(),
        Some(&decided(Rule::WaitForSipiIgnores, NMI_VECTOR))
    );
    s.send_icr(0, fixed(0x45), 1).unwrap();
    assert_eq!(
        s.decisions().last(),
        Some(&decided(Rule::WaitForSipiIgnores, 0x45))
    );
    assert_eq!(s.pending(1), None);
    assert!(!s.nodes[1].cpu.nmi_pending, "the NMI is dropped");
}

#[test]
fn an_nmi_while_nmis_are_blocked_is_held_until_iret() {
    // SDM §6.7.1: while an NMI handler runs, a second NMI is held (one),
    // and taken after the IRET that ends the first.
    let mut s = system(&[0, 1], false);
    s.send_icr(0, NMI | 1 << 14, 1).unwrap();
    assert_eq!(
        s.decisions().last(),
        Some(&decided(Rule::NmiDelivers, NMI_VECTOR))
    );
    let (v, saved) = s.take(1, Interrupt::Nmi);
    assert_eq!(v, NMI_VECTOR);
    assert_eq!(s.pending(1), None);
    s.send_icr(0, NMI | 1 << 14, 1).unwrap();
    assert_eq!(
        s.decisions().last(),
        Some(&decided(Rule::NmiBlocked, NMI_VECTOR))
    );
    assert_eq!(s.pending(1), None, "held while NMIs are blocked");
    s.iret(1, saved);
    assert_eq!(s.pending(1), Some(Interrupt::Nmi));
    // An NMI is taken even with IF = 0 (§6.8.1): CPU 0 with IF clear.
    s.nodes[0].cpu.cli();
    s.send_icr(1, NMI | 1 << 14, 0).unwrap();
    assert_eq!(s.pending(0), Some(Interrupt::Nmi));
}

#[test]
fn held_reason_says_whether_ppr_or_if_holds_a_request() {
    // §11.8.3: a vector whose class is not above the PPR is held by it;
    // SDM §6.8.1: with IF = 0 a deliverable vector is held by IF.
    let mut s = system(&[0, 1], false);
    assert_eq!(s.held_reason(1), None, "nothing requested");
    s.lapic_write(1, reg::TPR, 0x50).unwrap();
    s.send_icr(0, fixed(0x45), 1).unwrap();
    assert_eq!(s.held_reason(1), Some((Rule::HeldByPpr, 0x45)));
    assert_eq!(s.pending(1), None);
    s.lapic_write(1, reg::TPR, 0).unwrap();
    assert_eq!(s.nodes[1].lapic.tpr(), 0, "a TPR write of 0 is no EOI");
    s.nodes[1].cpu.cli();
    assert_eq!(s.held_reason(1), Some((Rule::HeldByIf, 0x45)));
    s.nodes[1].cpu.sti();
    s.nodes[1].cpu.end_of_instruction();
    assert_eq!(s.held_reason(1), None);
    assert_eq!(s.pending(1), Some(Interrupt::Maskable(0x45)));
}

#[test]
fn only_an_eoi_write_ends_an_interrupt_and_only_an_icr_low_write_sends() {
    // §11.8.5: the EOI register ends the highest in-service interrupt; a
    // write of another register (TPR, LDR) does not. §11.6.1: only the
    // write of the ICR's low dword sends the IPI it holds.
    for x2apic in [false, true] {
        let mut s = system(&[0, 1], x2apic);
        s.send_icr(0, fixed(0x40), 1).unwrap();
        take_vector(&mut s, 1, 0x40);
        assert!(in_service(&s, 1, 0x40));
        s.clear_decisions();
        s.lapic_write(1, reg::TPR, 0x10).unwrap();
        s.lapic_write(0, reg::TPR, 0x10).unwrap();
        s.lapic_write(0, reg::TPR, 0).unwrap();
        assert!(in_service(&s, 1, 0x40), "x2apic {x2apic}");
        assert_eq!(requested(&s, 0x40), [] as [usize; 0], "not sent again");
        assert!(
            !s.decisions().iter().any(|d| d.rule == Rule::IpiDelivers),
            "x2apic {x2apic}"
        );
        s.lapic_write(1, reg::EOI, 0).unwrap();
        assert!(!in_service(&s, 1, 0x40));
    }
}

#[test]
fn a_non_zero_x2apic_eoi_faults_and_ends_nothing() {
    // SDM §11.12.1.3: in x2APIC mode a non-zero write to the EOI MSR is
    // #GP; the interrupt stays in service. In xAPIC mode any value ends it
    // (§11.8.5).
    let mut s = system(&[0, 1], true);
    s.send_icr(0, fixed(0x40), 1).unwrap();
    take_vector(&mut s, 1, 0x40);
    assert_eq!(s.lapic_write(1, reg::EOI, 1), Err(GeneralProtection));
    assert!(in_service(&s, 1, 0x40));
    let mut s = system(&[0, 1], false);
    s.send_icr(0, fixed(0x40), 1).unwrap();
    take_vector(&mut s, 1, 0x40);
    assert_eq!(s.lapic_write(1, reg::EOI, 1), Ok(()));
    assert!(!in_service(&s, 1, 0x40));
}

#[test]
fn x2apic_faults_are_raised_unless_the_gp_ignored_quirk_swallows_them() {
    // SDM §11.12.1.3: RDMSR of a write-only register (EOI) and WRMSR of a
    // read-only one (version) are #GP; X2APIC_GP_IGNORED reads 0 and drops
    // the write instead, logged as the quirk.
    let mut s = system(&[0, 1], true);
    assert_eq!(s.lapic_read(1, reg::EOI), Err(GeneralProtection));
    assert_eq!(
        s.lapic_write(1, reg::VERSION, 0x1234),
        Err(GeneralProtection)
    );
    assert_eq!(s.lapic_read(1, reg::LDR), Ok(1 << 1), "cluster 0, bit 1");
    let mut q = with(&[0, 1], true, Quirks::X2APIC_GP_IGNORED);
    q.clear_decisions();
    assert_eq!(q.lapic_read(1, reg::EOI), Ok(0));
    assert_eq!(q.lapic_write(1, reg::VERSION, 0x1234), Ok(()));
    assert_eq!(
        q.decisions(),
        [decided(Rule::Quirk, 0), decided(Rule::Quirk, 0)]
    );
    assert_eq!(q.lapic_read(1, reg::LDR), Ok(1 << 1));
    assert_eq!(q.lapic_read(1, reg::VERSION), s.lapic_read(1, reg::VERSION));
}

#[test]
fn the_x2apic_self_ipi_msr_requests_a_vector_on_the_writing_cpu() {
    // SDM §11.12.11: a write of SELF IPI sends a fixed, edge IPI of bits
    // 7:0 to the writing APIC only; an illegal vector (below 16) is not
    // sent (§11.5.3) unless the QEMU quirk delivers it anyway.
    let mut s = system(&[0, 1], true);
    s.lapic_write(1, reg::SELF_IPI, 0x55).unwrap();
    assert_eq!(requested(&s, 0x55), [1]);
    assert_eq!(s.decisions().last(), Some(&decided(Rule::SelfIpi, 0x55)));
    s.lapic_write(1, reg::SELF_IPI, 0x10).unwrap();
    assert_eq!(requested(&s, 0x10), [1], "16 is legal");
    s.lapic_write(1, reg::SELF_IPI, 0x0f).unwrap();
    assert_eq!(requested(&s, 0x0f), [] as [usize; 0]);
    // §11.5.3: a write of the ESR latches the errors for reading.
    s.lapic_write(1, reg::ESR, 0).unwrap();
    assert_ne!(
        s.lapic_read(1, reg::ESR).unwrap() & ESR_SEND_ILLEGAL_VECTOR,
        0
    );
    let mut q = with(&[0, 1], true, Quirks::QEMU_LAPIC);
    q.lapic_write(1, reg::SELF_IPI, 0x0f).unwrap();
    assert_eq!(requested(&q, 0x0f), [1]);
    // QEMU_LAPIC also sends an illegal vector through the ICR.
    q.send_icr(1, fixed(0x0e), 0).unwrap();
    assert_eq!(requested(&q, 0x0e), [0]);
}

#[test]
fn an_ipi_to_self_is_accepted_as_a_self_ipi() {
    // §11.6.1 shorthand 01 (self): the acceptance is logged as SelfIpi, a
    // message to another CPU as IpiDelivers.
    let mut s = system(&[0, 1], false);
    s.send_icr(1, fixed(0x50) | 1 << 18, 0).unwrap();
    assert_eq!(s.decisions().last(), Some(&decided(Rule::SelfIpi, 0x50)));
    s.send_icr(1, fixed(0x51), 0).unwrap();
    assert_eq!(
        s.decisions().last(),
        Some(&decided(Rule::IpiDelivers, 0x51))
    );
}

#[test]
fn an_edge_fixed_ipi_goes_to_its_destination_only() {
    // §11.6.1: the level bit (14) matters only for INIT; a fixed IPI with
    // it clear is an ordinary IPI to its destination, not an INIT level
    // de-assert (which would go to everybody).
    let mut s = system(&[0, 1, 2], false);
    s.send_icr(0, 0x40, 1).unwrap();
    assert_eq!(requested(&s, 0x40), [1]);
    s.send_icr(0, 0x41 | 1 << 15, 2).unwrap();
    assert_eq!(requested(&s, 0x41), [2]);
}

#[test]
fn an_smi_ipi_is_reported_as_unmodelled() {
    // §11.6.1 delivery mode 010 (SMI) is not modelled: the system reports
    // it once, for the caller to end the run.
    let mut s = system(&[0, 1], false);
    assert_eq!(s.take_unmodelled(), None);
    s.send_icr(0, 2 << 8 | 1 << 14, 1).unwrap();
    assert_eq!(s.take_unmodelled(), Some(DeliveryMode::Smi));
    assert_eq!(s.take_unmodelled(), None);
}

#[test]
fn the_ioapic_is_reachable_directly_and_indirectly() {
    // 82093AA §3.1: IOREGSEL selects, IOWIN reads and writes; the version
    // register (index 1) reads 0x00170011 on the 82093AA.
    let mut s = System::new(
        MachineConfig {
            ioapic: IoapicVersion::V11,
            ..MachineConfig::default()
        },
        &[0, 1],
        false,
    );
    s.ioapic_mmio_write(IOREGSEL, 1);
    assert_eq!(s.ioapic_mmio_read(IOWIN), 0x0017_0011);
    assert_eq!(s.ioapic_read_indirect(1), 0x0017_0011);
    s.ioapic_write_indirect(0x10 + 2 * 7, 0x9a);
    assert_eq!(s.ioapic.entry(7).vector(), 0x9a);
    assert_eq!(s.ioapic_read_indirect(0x10 + 2 * 7), 0x9a);
    s.ioapic_write_indirect(0x11 + 2 * 7, 1 << 24);
    s.set_irq(7, true);
    assert_eq!(requested(&s, 0x9a), [1]);
}

#[test]
fn ioapic_decisions_reach_the_system_log() {
    // 82093AA §3.2.4 bit 16: an edge on a masked pin is lost, and the
    // IOAPIC notes it in the system's decision log.
    let mut s = system(&[0, 1], false);
    route(&mut s, 2, 0x30 | 1 << 16, 0);
    s.clear_decisions();
    s.set_irq(2, true);
    assert_eq!(s.decisions(), [decided(Rule::EdgeMaskedLost, 0x30)]);
    s.note(Rule::Quirk, 7);
    assert_eq!(s.decisions().last(), Some(&decided(Rule::Quirk, 7)));
}

#[test]
fn ioapic_status_reports_remote_irr_per_pin() {
    // 82093AA §3.2.4 bit 14 (remote IRR), bit 12 (delivery status, always
    // idle in the model: delivery is instantaneous).
    let mut s = system(&[0, 1], false);
    route(&mut s, 9, 0x99 | 1 << 15, 1);
    s.set_irq(9, true);
    let (remote_irr, delivery_status) = s.ioapic_status();
    let mut expected = [false; 24];
    expected[9] = true;
    assert_eq!(remote_irr, expected);
    assert_eq!(delivery_status, [false; 24]);
}

#[test]
fn the_eoi_broadcast_is_lost_only_when_a_quirk_or_deviation_says_so() {
    // §11.8.5: the EOI of a level vector is broadcast to the IOAPIC, which
    // clears remote IRR (82093AA §3.2.4 bit 14). SPLIT_EOI_LOST loses it
    // only with the IOAPIC in userspace; the eoi-broadcast/skipped deviation
    // loses it always.
    let run = |split, quirks, deviations| {
        let mut s = System::new(
            MachineConfig {
                split,
                quirks,
                deviations,
                ..MachineConfig::default()
            },
            &[0, 1],
            false,
        );
        route(&mut s, 14, 0x84 | 1 << 15, 1);
        s.set_irq(14, true);
        let saved = take_vector(&mut s, 1, 0x84);
        s.set_irq(14, false);
        s.lapic_write(1, reg::EOI, 0).unwrap();
        s.iret(1, saved);
        s.ioapic.entry(14).remote_irr()
    };
    let none = Deviations::default();
    let skipped = Deviations::of(&[Deviation::new(Rule::EoiBroadcast, Mode::Skipped)]);
    assert!(!run(false, Quirks::empty(), none));
    assert!(!run(true, Quirks::empty(), none), "split alone");
    assert!(!run(false, Quirks::SPLIT_EOI_LOST, none), "not split");
    assert!(run(true, Quirks::SPLIT_EOI_LOST, none));
    assert!(run(false, Quirks::empty(), skipped));
}

#[test]
fn the_stale_route_quirk_keeps_the_eoi_of_a_pin_that_still_targets_the_cpu() {
    // EOI_STALE_ROUTE_LOST drops the EOI only when no level pin with that
    // vector targets the EOIing CPU now: a physical destination with its
    // ID, a logical one it matches (§11.6.2.2) or the broadcast 0xFF still
    // targets it, and those EOIs clear remote IRR (§11.8.5).
    let run = |low: u32, dest: u8, other: Option<(u8, u32, u8)>| {
        let mut s = with(&[0, 1], false, Quirks::EOI_STALE_ROUTE_LOST);
        s.lapic_write(1, reg::LDR, 0x02 << 24).unwrap();
        s.lapic_write(0, reg::LDR, 0x01 << 24).unwrap();
        route(&mut s, 14, low, dest);
        if let Some((pin, low, dest)) = other {
            route(&mut s, pin, low, dest);
        }
        s.set_irq(14, true);
        let saved = take_vector(&mut s, 1, 0x84);
        s.set_irq(14, false);
        s.lapic_write(1, reg::EOI, 0).unwrap();
        s.iret(1, saved);
        s.ioapic.entry(14).remote_irr()
    };
    let level = 0x84 | 1 << 15;
    assert!(!run(level, 1, None), "physical, its ID");
    assert!(!run(level | LOGICAL, 0x02, None), "logical, its LDR bit");
    assert!(!run(level | LOGICAL, 0x03, None), "logical, both");
    assert!(!run(level, 0xff, None), "broadcast");
    // Pin 14 is routed to CPU 1; another pin with the vector then keeps or
    // loses the EOI by its own route (the quirk checks current routes).
    assert!(!run(level, 1, Some((15, level | 1 << 16, 1))));
}

#[test]
fn the_stale_route_quirk_needs_a_level_pin_with_that_vector() {
    // The quirk's route check counts level pins with the EOI's vector only:
    // an edge pin or a pin with another vector routed to the CPU does not
    // save the EOI of a level pin that now targets someone else.
    let run = |other_low: u32| {
        let mut s = with(&[0, 1], false, Quirks::EOI_STALE_ROUTE_LOST);
        route(&mut s, 14, 0x84 | 1 << 15, 1);
        s.set_irq(14, true);
        let saved = take_vector(&mut s, 1, 0x84);
        s.set_irq(14, false);
        route(&mut s, 14, 0x84 | 1 << 15, 0);
        route(&mut s, 15, other_low | 1 << 16, 1);
        s.lapic_write(1, reg::EOI, 0).unwrap();
        s.iret(1, saved);
        s.ioapic.entry(14).remote_irr()
    };
    assert!(run(0x84), "an edge pin with the vector");
    assert!(run(0x85 | 1 << 15), "a level pin with another vector");
    assert!(!run(0x84 | 1 << 15), "a masked level pin with the vector");
}

#[test]
fn an_apic_base_write_acts_on_the_writing_cpu_and_checks_reserved_bits() {
    // SDM §11.4.4: bits 7:0 and 9 of IA32_APIC_BASE are reserved (#GP);
    // clearing bit 11 disables that CPU's APIC only (§11.4.3).
    let mut s = system(&[0, 1], false);
    assert_eq!(s.write_apic_base(1, 0xfee0_0901), Err(GeneralProtection));
    assert!(s.nodes[1].lapic.hw_enabled());
    assert_eq!(s.decisions().last().unwrap().rule, Rule::ApicBaseTransition);
    s.write_apic_base(1, 0xfee0_0000).unwrap();
    assert!(!s.nodes[1].lapic.hw_enabled());
    assert!(s.nodes[0].lapic.hw_enabled());
    // A disabled APIC takes nothing; an EOI or ICR write there does nothing.
    s.send_icr(0, fixed(0x40), 1).unwrap();
    assert_eq!(requested(&s, 0x40), [] as [usize; 0]);
    s.clear_decisions();
    s.lapic_write(1, reg::EOI, 0).unwrap();
    s.lapic_write(1, reg::ICR_LOW, fixed(0x41) | 2 << 18)
        .unwrap();
    assert_eq!(requested(&s, 0x41), [] as [usize; 0]);
    assert_eq!(s.decisions(), []);
}

#[test]
fn an_unimplemented_xapic_register_raises_the_error_interrupt() {
    // SDM §11.5.3: an access to an unimplemented register sets ESR bit 7
    // and, with LVT Error unmasked, raises the error interrupt on that CPU.
    for write in [false, true] {
        let mut s = system(&[0, 1], false);
        s.lapic_write(1, reg::LVT_ERROR, 0xe3).unwrap();
        if write {
            s.lapic_write(1, 0x3f0, 1).unwrap();
        } else {
            assert_eq!(s.lapic_read(1, 0x3f0), Ok(0));
        }
        assert_eq!(requested(&s, 0xe3), [1], "write {write}");
        assert!(s
            .decisions()
            .contains(&decided(Rule::ApicErrorInterrupt, 0xe3)));
        s.lapic_write(1, reg::ESR, 0).unwrap();
        assert_ne!(s.lapic_read(1, reg::ESR).unwrap() & ESR_ILLEGAL_REGISTER, 0);
    }
}

#[test]
fn the_config_the_system_was_built_with_is_kept() {
    let config = MachineConfig {
        x2apic: true,
        split: true,
        directed_eoi: true,
        quirks: Quirks::QEMU_LAPIC,
        ..MachineConfig::default()
    };
    let s = System::new(config, &[0], false);
    assert_eq!(s.config(), config);
    assert_eq!(s.cpus(), 1);
}

#[test]
fn init_and_nmi_ipis_carry_no_vector() {
    // SDM §11.6.1: for NMI and INIT the vector field is ignored (must be
    // 00H for INIT): an INIT assert with 0xFF there still resets its
    // destination only (it is no INIT de-assert), and an NMI is logged as
    // an IPI with vector 0.
    let mut s = system(&[0, 1, 2], false);
    s.send_icr(0, 5 << 8 | 1 << 14 | 0xff, 1).unwrap();
    assert_eq!(s.take_inited(), 0b010);
    assert!(s.nodes[1].waiting_for_sipi);
    assert!(!s.nodes[2].waiting_for_sipi);
    s.clear_decisions();
    s.send_icr(0, NMI | 1 << 14 | 0x30, 2).unwrap();
    assert_eq!(s.decisions()[0], decided(Rule::IpiDelivers, 0));
    assert_eq!(s.pending(2), Some(Interrupt::Nmi));
}

#[test]
fn the_ldr_quirk_changes_the_ldr_read_only() {
    // X2APIC_LDR_NOT_DERIVED reads the LDR as 0 (breaking §11.12.10.2);
    // every other register reads as it does without the quirk.
    let mut q = with(&[0, 1], true, Quirks::X2APIC_LDR_NOT_DERIVED);
    let mut s = system(&[0, 1], true);
    assert_eq!(q.lapic_read(1, reg::LDR), Ok(0));
    assert_eq!(s.lapic_read(1, reg::LDR), Ok(1 << 1));
    for offset in [reg::ID, reg::VERSION, reg::SVR] {
        let plain = s.lapic_read(1, offset).unwrap();
        assert_ne!(plain, 0, "{offset:#x}");
        assert_eq!(q.lapic_read(1, offset), Ok(plain), "{offset:#x}");
    }
}
