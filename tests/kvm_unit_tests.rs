//! The single-CPU interrupt tests of kvm-unit-tests, as scenarios
//! (`scenarios/kvm-unit-tests/`), run on the model: each trace must equal
//! the committed `NAME.expected.json`, and must pass the check that
//! kvm-unit-tests itself makes.

mod common;

use common::*;
use irqdiff::backend::{model::ModelBackend, Backend};
use irqdiff::trace::{EventKind, Outcome, Space, Trace};

fn run(name: &str) -> Trace {
    let path = root()
        .join("scenarios/kvm-unit-tests")
        .join(format!("{name}.irq"));
    ModelBackend::new().run(&load(&path)).expect("model runs")
}

fn reads(t: &Trace) -> Vec<u32> {
    t.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Read {
                space: Space::Ioapic,
                value,
                ..
            } => Some(value),
            _ => None,
        })
        .collect()
}

#[test]
fn every_scenario_matches_its_expected_trace() {
    let files = scenario_files("kvm-unit-tests");
    assert!(
        files.len() >= 20,
        "the kvm-unit-tests scenarios are present"
    );
    for path in files {
        let trace = ModelBackend::new().run(&load(&path)).expect("model runs");
        let expected = expected(&path, None)
            .unwrap_or_else(|| panic!("{} has no expected trace", path.display()));
        assert_eq!(trace, expected, "{}", path.display());
        assert_eq!(trace.outcome, Outcome::Completed, "{}", path.display());
    }
}

// What kvm-unit-tests asserts, test by test (catalogue numbers in brackets).

#[test]
fn edge_intr_delivers_once() {
    // [IO-4] count == 1
    assert_eq!(deliveries(&run("edge_intr")), [(1, 0x76)]);
}

#[test]
fn level_intr_delivers_once() {
    // [IO-5] count == 1
    assert_eq!(deliveries(&run("level_intr")), [(1, 0x77)]);
}

#[test]
fn simultaneous_higher_class_first_back_to_back() {
    // [IO-6] 0x78 before 0x66, both at the same point (after the sti).
    assert_eq!(deliveries(&run("simultaneous")), [(5, 0x78), (5, 0x66)]);
}

#[test]
fn level_coalesce_delivers_once() {
    // [IO-7] count == 1
    assert_eq!(deliveries(&run("level_coalesce")).len(), 1);
}

#[test]
fn level_sequential_delivers_twice() {
    // [IO-8] count == 2
    assert_eq!(deliveries(&run("level_sequential")), [(1, 0x99), (2, 0x99)]);
}

#[test]
fn level_retrigger_delivers_twice_waking_hlt() {
    // [IO-9] count == 2
    assert_eq!(deliveries(&run("level_retrigger")), [(3, 0x9a), (3, 0x9a)]);
}

#[test]
fn edge_mask_loses_the_masked_edge() {
    // [IO-10] 0 while masked, then 1.
    assert_eq!(deliveries(&run("edge_mask")), [(6, 0x81)]);
}

#[test]
fn level_mask_delivers_on_unmask() {
    // [IO-11] 0 while masked, then 1 at the unmask.
    assert_eq!(deliveries(&run("level_mask")), [(3, 0x82)]);
}

#[test]
fn level_retrigger_mask_delivers_again_on_unmask() {
    // [IO-12] count == 2
    assert_eq!(
        deliveries(&run("level_retrigger_mask")),
        [(1, 0x83), (3, 0x83)]
    );
}

#[test]
fn edge_and_level_tmr() {
    // [IO-13] edge: TMR clear before and inside the handler.
    let t = run("edge_tmr");
    assert!(!bit(&snapshot(&t, 0).tmr, 0x79));
    assert!(!bit(&snapshot(&t, 2).tmr, 0x79));
    // [IO-14] level: clear before, set inside the handler.
    let t = run("level_tmr");
    assert!(!bit(&snapshot(&t, 0).tmr, 0x79));
    assert!(bit(&snapshot(&t, 2).tmr, 0x79));
    // main()'s order: after the level runs, TMR is still set before the
    // last edge run, and clear in its handler.
    let t = run("tmr_sequence");
    let snaps: Vec<usize> = (0..t.events.len())
        .filter(|&i| matches!(t.events[i].kind, EventKind::Snapshot(_)))
        .collect();
    let before_last_edge = snaps[snaps.len() - 2];
    assert!(bit(&snapshot(&t, before_last_edge).tmr, 0x79));
    assert!(!bit(&snapshot(&t, *snaps.last().unwrap()).tmr, 0x79));
}

#[test]
fn ioapic_id_version_arbitration_registers() {
    // [IO-1] version read-only.
    assert_eq!(reads(&run("reg_version")), [0x0017_0011, 0x0017_0011]);
    // [IO-2] v ^ v2 == 0x0f000000.
    let r = reads(&run("reg_id"));
    assert_eq!(r[0] ^ r[1], 0x0f00_0000);
    // [IO-3] arbitration loaded from the ID, read-only.
    assert_eq!(reads(&run("arbitration_id")), [0x0f00_0000, 0x0f00_0000]);
}

#[test]
fn self_ipis_deliver_once() {
    // [AP-4], [AP-5]
    assert_eq!(deliveries(&run("self_ipi_xapic")), [(0, 0xf1)]);
    assert_eq!(deliveries(&run("self_ipi_x2apic")), [(0, 0xf1)]);
}

#[test]
fn eventinj_order_and_tpr() {
    // [EV-2] 33 before 32.
    assert_eq!(
        deliveries(&run("eventinj_vec32_33")),
        [(4, 0x21), (4, 0x20)]
    );
    // [EV-4] 62 at TPR 0x20, then 32 at TPR 0.
    assert_eq!(deliveries(&run("eventinj_tpr")), [(5, 0x3e), (7, 0x20)]);
    // [EV-1] count == 1, before the cli.
    assert_eq!(deliveries(&run("eventinj_vec33")), [(1, 0x21)]);
}

#[test]
fn eventinj_nested_nmi_waits_for_iret() {
    // [EV-5] count == 2; the handler's snapshot (after its nested NMI was
    // sent) comes before the second delivery: it waited for the IRET.
    let t = run("eventinj_nmi");
    assert_eq!(deliveries(&t), [(1, 2), (1, 2)]);
    assert!(matches!(t.events[1].kind, EventKind::Snapshot(_)));
}

#[test]
fn vmexit_self_ipi_cases() {
    // [VX-2] the pending interrupt wakes sti; hlt.
    assert_eq!(deliveries(&run("vmexit_sti_hlt")), [(2, 0xb0)]);
    // [VX-3] delivered when the TPR drops.
    assert_eq!(deliveries(&run("vmexit_tpr")), [(2, 0xb0)]);
    // [VX-5]
    assert_eq!(deliveries(&run("vmexit_tpr_sti_hlt")), [(4, 0xb0)]);
    // [VX-1] after the STI shadow, so it carries the `sti`.
    assert_eq!(deliveries(&run("vmexit_sti_nop")), [(2, 0xb0)]);
    // [VX-4]
    assert_eq!(deliveries(&run("vmexit_tpr_sti_nop")), [(4, 0xb0)]);
    // x2APIC SELF IPI variants of VX-2 and VX-3.
    assert_eq!(deliveries(&run("vmexit_x2apic_sti_hlt")), [(2, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_x2apic_tpr")), [(2, 0xb0)]);
}

#[test]
fn tpr_threshold_holds_then_delivers_once() {
    // [VM-2] 0xE1 held in the IRR at TPR 0 with IF = 0, then one delivery.
    let t = run("vmx_tpr_threshold");
    assert!(bit(&snapshot(&t, 0).irr, 0xe1));
    assert_eq!(deliveries(&t), [(5, 0xe1)]);
}

#[test]
fn remote_irr_survives_deassert_until_eoi() {
    // [VM-1] remote IRR set after the deassert, clear after the EOI.
    let t = run("vmx_apic_passthrough");
    assert!(snapshot(&t, 1).remote_irr[15]);
    assert!(!snapshot(&t, 2).remote_irr[15]);
}
