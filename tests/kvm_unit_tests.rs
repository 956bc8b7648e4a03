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

// Issue 19: the missing single-CPU cases and the corrected forms.

fn exceptions(t: &Trace) -> Vec<usize> {
    t.events
        .iter()
        .filter(|e| e.kind == EventKind::Exception { vector: 13 })
        .map(|e| e.op)
        .collect()
}

fn lapic_reads(t: &Trace) -> Vec<(u32, u32)> {
    t.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Read {
                space: Space::Lapic,
                reg,
                value,
            } => Some((reg, value)),
            _ => None,
        })
        .collect()
}

#[test]
fn lapic_existence_reads_an_integrated_apic_version() {
    // apic.c test_lapic_existence: (u8)LVR in 0x10-0x15, in both modes.
    for name in ["lapic_existence", "lapic_existence_x2apic"] {
        let [(0x30, version)] = lapic_reads(&run(name))[..] else {
            panic!("{name}: one version read");
        };
        assert!((0x10..=0x15).contains(&(version & 0xff)), "{name}");
    }
}

#[test]
fn enable_x2apic_faults_on_exactly_the_invalid_transitions() {
    // apic.c test_enable_x2apic: #GP for EXTD alone, x2APIC -> xAPIC,
    // disabled -> invalid, disabled -> x2APIC, xAPIC -> invalid.
    let t = run("enable_x2apic");
    assert_eq!(exceptions(&t), [1, 2, 4, 5, 7]);
    assert_eq!(t.outcome, Outcome::Completed);
}

#[test]
fn apicbase_relocates_and_faults_on_reserved_low_bits() {
    // apic.c test_apicbase: "relocate apic" and "reserved low bits".
    let t = run("apicbase");
    assert_eq!(
        lapic_reads(&t),
        [(0x30, 0x50014), (0x30, 0x50014), (0x30, 0x50014)]
    );
    assert_eq!(exceptions(&t), [4]);
}

#[test]
fn physical_broadcast_reaches_the_one_cpu_twice() {
    // apic.c test_physical_broadcast: the 0xff destination and the
    // all-including-self shorthand each deliver once per CPU.
    assert_eq!(
        deliveries(&run("physical_broadcast")),
        [(1, 0xcf), (3, 0xcf)]
    );
}

#[test]
fn pending_nmi_is_received_twice() {
    // apic.c test_pending_nmi: nmi_received == 2.
    assert_eq!(deliveries(&run("pending_nmi")), [(1, 2), (1, 2)]);
}

#[test]
fn ioapic_self_reconfigure_services_both_and_clears_remote_irr() {
    // ioapic.c test_ioapic_self_reconfigure, both modes: remote IRR set in
    // the handler, both ISRs run once, both remote IRRs clear at the end.
    for name in ["ioapic_self_reconfigure", "ioapic_self_reconfigure_x2apic"] {
        let t = run(name);
        assert_eq!(deliveries(&t), [(2, 0x64), (2, 0x84)], "{name}");
        let remote_irr: Vec<bool> = reads(&t).iter().map(|v| v & 1 << 14 != 0).collect();
        assert_eq!(remote_irr, [true, true, false, false], "{name}");
    }
}

#[test]
fn x2apic_register_checks_fault_where_msr_c_expects() {
    // msr.c __test_x2apic_msrs(true): every fault the test expects is a
    // #GP event, and nothing else faults.
    let t = run("msr_x2apic_regs");
    let scenario = load(&root().join("scenarios/kvm-unit-tests/msr_x2apic_regs.irq"));
    assert_eq!(t.outcome, Outcome::Completed);
    // RDMSR of the write-only EOI (0x80B) and SELF IPI (0x83F), WRMSR of
    // reserved SELF IPI bits: the ops with those offsets.
    let faulting: Vec<usize> = scenario
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            matches!(
                op,
                irqdiff::scenario::Op::LapicRead(0x0b0 | 0x3f0)
                    | irqdiff::scenario::Op::LapicWrite {
                        offset: 0x3f0,
                        value: 0x100 | 0xff00 | 0xff00_0000
                    }
            )
        })
        .map(|(k, _)| k)
        .collect();
    let gp = exceptions(&t);
    for k in &faulting {
        assert!(gp.contains(k), "op {k} should fault");
    }
    // Every write of 0 to a read-only or reserved register faults; the
    // reads of readable registers and the writes of 0 to EOI and SELF IPI
    // do not.
    assert_eq!(gp.len() + lapic_reads(&t).len(), scenario.ops.len() - 2);
}

#[test]
fn tpr_by_cr8_holds_then_releases_the_self_ipi() {
    // vmexit.c self_ipi_tpr*: apic_set_tpr() is MOV to CR8.
    assert_eq!(deliveries(&run("vmexit_tpr_cr8")), [(2, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_tpr_sti_nop_cr8")), [(4, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_tpr_sti_hlt_cr8")), [(4, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_x2apic_tpr_cr8")), [(2, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_x2apic_tpr_sti_nop")), [(4, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_x2apic_tpr_sti_hlt")), [(4, 0xb0)]);
    assert_eq!(deliveries(&run("vmexit_x2apic_sti_nop")), [(2, 0xb0)]);
}

#[test]
fn self_ipi_x2apic_by_the_icr_delivers_once() {
    // apic.c test_self_ipi_x2apic: ipi_count == 1 through MSR 0x830.
    assert_eq!(deliveries(&run("self_ipi_x2apic_icr")), [(0, 0xf1)]);
}

#[test]
fn the_ioapic_tests_give_the_same_deliveries_in_x2apic_mode() {
    // ioapic.c main() enables x2APIC: the EOIs become MSR writes, the
    // outcome of each test is the same.
    for path in scenario_files("kvm-unit-tests") {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let Some(xapic) = stem.strip_suffix("_x2apic") else {
            continue;
        };
        if !root()
            .join(format!("scenarios/kvm-unit-tests/{xapic}.irq"))
            .exists()
            || !std::fs::read_to_string(&path)
                .unwrap()
                .contains("x86/ioapic.c")
        {
            continue;
        }
        let (a, b) = (run(xapic), run(&stem));
        assert_eq!(deliveries(&a), deliveries(&b), "{stem}");
        assert_eq!(reads(&a), reads(&b), "{stem}");
    }
}

// The LAPIC timer cases of x86/apic.c (issue 15), in the format's waits
// (docs/scenario-format.md "The LAPIC timer").

/// (op, space, reg, value) of each read.
fn all_reads(t: &Trace) -> Vec<(usize, Space, u32, u32)> {
    t.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Read { space, reg, value } => Some((e.op, space, reg, value)),
            _ => None,
        })
        .collect()
}

#[test]
fn apic_timer_one_shot_delivers_once() {
    // test_apic_timer_one_shot: lvtt_counter == 1; the count then stays 0.
    let t = run("apic_timer_one_shot");
    assert_eq!(deliveries(&t), [(1, 0xee)]);
    assert_eq!(all_reads(&t), [(3, Space::Lapic, 0x390, 0)]);
}

#[test]
fn tsc_deadline_timer_fires_at_a_passed_deadline_and_clears_the_msr() {
    // test_tsc_deadline_timer: tdt_count == 1 after the write and a nop;
    // rdmsr(MSR_IA32_TSCDEADLINE) == 0.
    let t = run("tsc_deadline_timer");
    assert_eq!(deliveries(&t), [(1, 0xef)]);
    assert_eq!(all_reads(&t), [(3, Space::Msr, 0x6e0, 0)]);
}

#[test]
fn apic_change_mode_keeps_tmict_and_the_count_going() {
    // test_apic_change_mode: TMICT kept; TMCCT non-zero, 0, non-zero after
    // the change to periodic (not reset), non-zero after the reload, 0
    // after TMICT = 0.
    let t = run("apic_change_mode");
    let reads: Vec<(usize, u32, bool)> = all_reads(&t)
        .into_iter()
        .map(|(op, _, reg, value)| (op, reg, value != 0))
        .collect();
    assert_eq!(
        reads,
        [
            (2, 0x380, true),
            (5, 0x390, true),
            (7, 0x390, false),
            (10, 0x390, true),
            (12, 0x390, true),
            (14, 0x390, false)
        ]
    );
    assert_eq!(all_reads(&t)[0].3, 0x999999, "TMICT value reset");
    assert_eq!(deliveries(&t), [(6, 0xee), (11, 0xee)]);
}

#[test]
fn timer_mode_read_reads_each_mode_back() {
    // test_timer_mode_read: LVT timer bits 18:17 as written.
    let t = run("timer_mode_read");
    let values: Vec<u32> = all_reads(&t).iter().map(|r| r.3).collect();
    assert_eq!(values, [0x100ee, 0x300ee, 0x500ee]);
}

#[test]
fn periodic_timer_expires_at_every_wait_until_stopped() {
    let t = run("timer_periodic");
    assert_eq!(deliveries(&t), [(1, 0xe0), (2, 0xe0), (3, 0xe0)]);
    assert_eq!(all_reads(&t), [(6, Space::Lapic, 0x390, 0)]);
}

#[test]
fn a_masked_expiry_is_not_held_for_the_unmask() {
    let t = run("timer_masked_pending");
    assert_eq!(deliveries(&t), [(6, 0xe1)]);
    assert_eq!(all_reads(&t), [(2, Space::Lapic, 0x390, 0)]);
    assert!(!bit(&snapshot(&t, 1).irr, 0xe1), "nothing held");
}

#[test]
fn the_timer_wakes_sti_hlt() {
    let t = run("timer_hlt");
    assert_eq!(deliveries(&t), [(2, 0xee)]);
    assert_eq!(t.outcome, Outcome::Completed);
}

#[test]
fn rewriting_the_initial_count_restarts_and_zero_stops() {
    let t = run("timer_initial_count_restart");
    assert_eq!(deliveries(&t), [(2, 0xee)]);
}

#[test]
fn a_disarmed_deadline_never_fires() {
    let t = run("tsc_deadline_disarm");
    assert_eq!(deliveries(&t), []);
    assert_eq!(
        all_reads(&t),
        [(2, Space::Msr, 0x6e0, 1), (8, Space::Msr, 0x6e0, 0)]
    );
}
