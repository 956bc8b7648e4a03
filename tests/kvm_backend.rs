//! The `kvm` and `kvm-split` backends on this host's /dev/kvm. Every test
//! prints a SKIPPED line and passes when KVM is unavailable.
//!
//! This host's KVM diverges from the model in documented ways
//! (docs/known-divergences.md); where it does, the scenario has a committed
//! `NAME.<backend>.expected.json` with what KVM does, and the test holds KVM
//! to exactly that.
// KVM exists only on Linux: elsewhere (the macOS type check of all
// targets) these tests, which reach the kvm backend's own API, are not built.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use irqdiff::backend::{self, Backend};
use irqdiff::scenario::parse;
use irqdiff::trace::{Outcome, Trace};

/// Scenarios whose snapshots inside handlers vary from run to run on this
/// KVM (the IRR bit of the vector being handled; docs/known-divergences.md,
/// "IRR while in service"): their deliveries and outcome are compared exactly,
/// their snapshots are not.
const FLAKY_SNAPSHOTS: &[&str] = &[
    "tmr_sequence",
    "level_tmr",
    "edge_tmr",
    "tmr_sequence_x2apic",
    "level_tmr_x2apic",
    "edge_tmr_x2apic",
    "vmx_apic_passthrough",
];

fn open(name: &str) -> Box<dyn Backend> {
    backend::open(name).unwrap_or_else(|e| panic!("{e}"))
}

/// This KVM injects a pending interrupt at whichever VM entry comes next,
/// including entries after host-side exits (timer ticks, preemption), so a
/// stale IRR bit is re-delivered, and an early EOI lands, at a time that
/// varies from run to run (docs/known-divergences.md, "Timing"). Each
/// scenario gets this many runs to show its documented trace. Measured
/// under two busy loops (150 runs of each scenario): the documented trace
/// in at least 90% of runs, the worst 135/150 (`tmr_sequence_x2apic` on
/// `kvm`); three attempts were not enough under CI's load
/// (`level_retrigger_mask_x2apic` on `kvm-split` showed its early-EOI
/// re-send inside the handler three times in a row).
const ATTEMPTS: usize = 10;

fn check_against_expected(backend_name: &str) {
    let mut b = open(backend_name);
    for path in scenario_files("kvm-unit-tests") {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let scenario = load(&path);
        let (expected, _) = expected_for(&path, backend_name);
        let mut observed = b.run(&scenario).unwrap_or_else(|e| panic!("{stem}: {e}"));
        for _ in 1..ATTEMPTS {
            let same = if FLAKY_SNAPSHOTS.contains(&stem.as_str()) {
                (deliveries(&observed), observed.outcome)
                    == (deliveries(&expected), expected.outcome)
            } else {
                agrees(&expected, &observed, &scenario)
            };
            if same {
                break;
            }
            eprintln!("{backend_name} {stem}: timing-dependent run, trying again");
            observed = b.run(&scenario).unwrap_or_else(|e| panic!("{stem}: {e}"));
        }
        let (expected, source) = expected_for(&path, backend_name);
        assert_eq!(
            (deliveries(&observed), observed.outcome),
            (deliveries(&expected), expected.outcome),
            "{backend_name} {stem}: deliveries differ from {source}"
        );
        if !FLAKY_SNAPSHOTS.contains(&stem.as_str()) {
            assert!(
                agrees(&expected, &observed, &scenario),
                "{backend_name} {stem}: trace differs from {source}: {observed:?}"
            );
        }
    }
}

/// The traces are equal; with LAPIC timer ops, the oracle agrees (the
/// current count's value is the host's timing, compared as zero or not).
fn agrees(expected: &Trace, observed: &Trace, scenario: &irqdiff::scenario::Scenario) -> bool {
    if scenario.uses_timer_ops() {
        irqdiff::oracle::compare(expected, observed) == irqdiff::oracle::Verdict::Agree
    } else {
        observed == expected
    }
}

#[test]
fn kvm_matches_the_model_or_its_documented_divergence() {
    if kvm_or_skip("kvm_matches_the_model_or_its_documented_divergence") {
        check_against_expected("kvm");
    }
}

#[test]
fn kvm_split_matches_the_model_or_its_documented_divergence() {
    if kvm_or_skip("kvm_split_matches_the_model_or_its_documented_divergence") {
        check_against_expected("kvm-split");
    }
}

/// The documented trace of `path` on `backend_name`, else the model's.
fn expected_for(path: &std::path::Path, backend_name: &str) -> (Trace, &'static str) {
    match expected(path, Some(backend_name)) {
        Some(t) => (t, "documented KVM behaviour"),
        None => {
            let mut t = expected(path, None).expect("model expectation");
            t.backend = backend_name.to_string().into();
            (t, "the model")
        }
    }
}

fn scenario(text: &str) -> irqdiff::scenario::Scenario {
    parse(text).expect("test scenario parses")
}

/// Deterministic on this KVM (every delivery happens at an exit to
/// userspace), and sensitive to leftovers: a stale IRR/ISR/TMR bit, remote
/// IRR, line level, mask or delivery count would show in its events.
const PROBE: &str = "handler 0x76#2: snapshot; eoi\nroute 14 vector=0x76\npulse 14\nmsi vector=0x76\nroute 3 vector=0x90 level masked\nassert 3\nsnapshot\nioapic-read 0x16\n";
/// Each handler enables interrupts and sends the other vector: a storm on
/// the model and on this KVM alike (which injects only at exits with IF = 1).
const STORM: &str = "handler 0x40: sti; msi vector=0x50; eoi\nhandler 0x50: sti; msi vector=0x40; eoi\nmsi vector=0x40\nnop\n";
const HANG: &str = "route 2 vector=0x50 level\nassert 2\ncli\nhlt\n";

#[test]
fn reset_is_complete_after_itself_a_storm_and_a_hang() {
    if !kvm_or_skip("reset_is_complete_after_itself_a_storm_and_a_hang") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let mut b = open(name);
        let probe = scenario(PROBE);
        let first: Trace = b.run(&probe).unwrap();
        assert_eq!(b.run(&probe).unwrap(), first, "{name}: after itself");
        assert_eq!(
            b.run(&scenario(STORM)).unwrap().outcome,
            Outcome::Storm,
            "{name}"
        );
        assert_eq!(b.run(&probe).unwrap(), first, "{name}: after a storm");
        assert_eq!(
            b.run(&scenario(HANG)).unwrap().outcome,
            Outcome::Hang,
            "{name}"
        );
        assert_eq!(b.run(&probe).unwrap(), first, "{name}: after a hang");
        // And on a fresh VM.
        assert_eq!(open(name).run(&probe).unwrap(), first, "{name}: fresh VM");
    }
}

#[test]
fn hang_is_detected_and_reported_with_its_op() {
    if !kvm_or_skip("hang_is_detected_and_reported_with_its_op") {
        return;
    }
    let mut b = open("kvm");
    for (text, op) in [
        ("nop\ncli\nhlt\nnop\n", 2),
        ("nop\nsti-hlt\n", 1),
        ("hlt\n", 0),
    ] {
        let t = b.run(&scenario(text)).unwrap();
        assert_eq!((t.outcome, t.hang_op), (Outcome::Hang, Some(op)), "{text}");
    }
    // The VM is usable afterwards.
    let t = b
        .run(&scenario("route 1 vector=0x60\npulse 1\nnop\n"))
        .unwrap();
    assert_eq!(deliveries(&t), [(1, 0x60)]);
}

#[test]
fn storm_stops_at_the_65th_delivery() {
    if !kvm_or_skip("storm_stops_at_the_65th_delivery") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let t = open(name).run(&scenario(STORM)).unwrap();
        assert_eq!(t.outcome, Outcome::Storm, "{name}");
        assert_eq!(deliveries(&t).len(), irqdiff::trace::STORM_LIMIT, "{name}");
        assert!(deliveries(&t).iter().all(|&(op, _)| op == 0), "{name}");
    }
}

#[test]
fn msi_and_edge_are_delivered_once_with_their_op() {
    if !kvm_or_skip("msi_and_edge_are_delivered_once_with_their_op") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let t = open(name)
            .run(&scenario(
                "route 3 vector=0x61\nmsi vector=0x42\npulse 3\nmsi vector=0x43 dest=7\nnop\n",
            ))
            .unwrap();
        // The MSI to destination 7 matches no APIC.
        assert_eq!(deliveries(&t), [(1, 0x42), (2, 0x61)], "{name}");
    }
}

#[test]
fn polarity_low_pin_is_driven_inverted() {
    if !kvm_or_skip("polarity_low_pin_is_driven_inverted") {
        return;
    }
    // `assert` means "interrupt requested" whatever the polarity.
    for name in ["kvm", "kvm-split"] {
        let t = open(name)
            .run(&scenario("route 5 vector=0x55 low\nassert 5\nnop\n"))
            .unwrap();
        assert_eq!(deliveries(&t), [(1, 0x55)], "{name}");
    }
}

#[test]
fn unsupported_config_is_an_error_not_a_different_run() {
    if !kvm_or_skip("unsupported_config_is_an_error_not_a_different_run") {
        return;
    }
    let mut b = open("kvm");
    let t = b.run_to_trace(&scenario("ioapic-eoi 0x20\n"));
    assert_eq!(t.outcome, Outcome::Error);
    assert!(t.error.unwrap().contains("version 0x11"));
    let t = b.run_to_trace(&scenario("config directed-eoi=on\nnop\n"));
    assert_eq!(t.outcome, Outcome::Error);
}

/// Every committed scenario, whatever its directory, on both KVM shapes:
/// it agrees with the model, or its divergence is one this host's KVM is
/// documented (and probed) to have; none is refused.
fn every_scenario_agrees_or_is_documented_on(backend_name: &str) {
    let tally = every_scenario_agrees_or_is_documented(backend_name, false);
    assert_eq!(tally.refused, [], "{backend_name}");
}

#[test]
fn kvm_runs_every_scenario_as_the_model_or_documented() {
    if kvm_or_skip("kvm_runs_every_scenario_as_the_model_or_documented") {
        every_scenario_agrees_or_is_documented_on("kvm");
    }
}

#[test]
fn kvm_split_runs_every_scenario_as_the_model_or_documented() {
    if kvm_or_skip("kvm_split_runs_every_scenario_as_the_model_or_documented") {
        every_scenario_agrees_or_is_documented_on("kvm-split");
    }
}

#[test]
fn the_in_kernel_ioapic_latch_is_kvms_and_not_the_split_shapes() {
    if !kvm_or_skip("the_in_kernel_ioapic_latch_is_kvms_and_not_the_split_shapes") {
        return;
    }
    let path = root().join("scenarios/qemu-divergences/latch-reroute-to-level.irq");
    let scenario = load(&path);
    let observed = open("kvm").run(&scenario).unwrap();
    assert!(!observed.deliveries().any(|(_, v)| v == 0x22));
    // This host also defers injection to the next exit, and which of the two
    // explains a run depends on when the vCPU exits (2 runs in 30 gave the
    // deferred label under load). Every run must be one of the two, and the
    // latch must show within a few runs.
    let mut differ = irqdiff::differ::Differ::open("kvm").unwrap();
    let labels: Vec<_> = (0..6)
        .map(|_| {
            let judgement = differ.diff(&scenario);
            let sig = judgement.signature().expect("diverges");
            irqdiff::known::label("kvm", sig, &scenario, &judgement.observed).map(|k| k.id)
        })
        .collect();
    assert!(
        labels
            .iter()
            .all(|l| matches!(l, Some("kvm-ioapic-latch" | "kvm-deferred-injection"))),
        "{labels:?}"
    );
    assert!(labels.contains(&Some("kvm-ioapic-latch")), "{labels:?}");
    // With the model's IOAPIC on KVM's local APIC, 0x22 is sent at the re-route.
    let split = open("kvm-split").run(&scenario).unwrap();
    assert!(split.deliveries().any(|(op, v)| (op, v) == (2, 0x22)));
}

/// Issue 12: a kick that lands while the vCPU thread is between marking an
/// entry and making it (a thread preempted just before `KVM_RUN`) must not be
/// lost, or the next `KVM_RUN` blocks on the halted vCPU for good. The test
/// hook pauses there after every kick, for ten kick periods; the halted
/// guest must still end as a hang at its `hlt`, with both kick mechanisms
/// and both irqchip shapes. The 30 s bound only catches a run that never
/// returns; it is no measure of speed.
#[test]
fn a_kick_landing_before_entry_still_ends_a_halted_guest_as_a_hang() {
    use irqdiff::backend::kvm::{KickMechanism, KvmBackend, KICK};
    use std::time::Duration;
    if !kvm_or_skip("a_kick_landing_before_entry_still_ends_a_halted_guest_as_a_hang") {
        return;
    }
    for mechanism in [KickMechanism::ImmediateExit, KickMechanism::SignalMask] {
        for split in [false, true] {
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut b = KvmBackend::open(split).unwrap_or_else(|e| panic!("{e}"));
                if mechanism == KickMechanism::ImmediateExit
                    && b.kick_mechanism() != KickMechanism::ImmediateExit
                {
                    eprintln!("SKIPPED immediate-exit kicks: no KVM_CAP_IMMEDIATE_EXIT here");
                    return done.send(None).unwrap();
                }
                b.force_kick_mechanism(mechanism);
                // The two-kick rule, whose re-entries the window is in: the
                // halt judgement would end this hang at the first kick.
                b.judge_halts(false);
                b.delay_entry_after_kick(Some(KICK * 10));
                let t = b.run(&scenario(HANG)).unwrap();
                done.send(Some((
                    (t.outcome, t.hang_op),
                    b.kicks_before_entry(),
                    b.kicks_without_entry(),
                )))
                .unwrap();
            });
            let Some((ended, kicks_before_entry, kicks_without_entry)) = result
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| {
                    panic!("{mechanism:?} split={split}: the run never ended ({e})")
                })
            else {
                continue;
            };
            assert_eq!(
                ended,
                (Outcome::Hang, Some(3)),
                "{mechanism:?} split={split}"
            );
            assert!(
                kicks_before_entry >= 1,
                "{mechanism:?} split={split}: no kick landed before an entry, so the window was not tested"
            );
            // The immediate exit tells a kick that ended an entry never
            // made, and does not count it as one that found the vCPU halted
            // after a re-entry.
            if mechanism == KickMechanism::ImmediateExit {
                assert!(kicks_without_entry >= 1, "split={split}");
            }
        }
    }
}

/// A hang inside the NMI handler: the vCPU is left halted with NMIs blocked.
const NMI_HANG: &str = "handler 2: cli; hlt\nmsi vector=2 nmi\nnop\n";

/// Issue 12, the hang detection's wait: a halted vCPU that nothing can wake
/// (IF = 0, or nothing deliverable in its local APIC, and no NMI pending)
/// is a hang at the first kick that finds it halted; one that something
/// might still wake (an armed LAPIC timer, an unmasked LINT0) is left to
/// the two-kick rule, and still ends as a hang. Either way the trace is
/// the one the two-kick rule alone gives.
#[test]
fn a_halt_nothing_can_wake_is_a_hang_at_once_and_others_wait_for_two_kicks() {
    use irqdiff::backend::kvm::{HangRule, KvmBackend};
    if !kvm_or_skip("a_halt_nothing_can_wake_is_a_hang_at_once_and_others_wait_for_two_kicks") {
        return;
    }
    let cases: [(&str, &str, usize, HangRule); 9] = [
        ("IF = 0", "nop\ncli\nhlt\n", 2, HangRule::HaltFinal),
        ("IF = 0, a level interrupt in the IRR", HANG, 3, HangRule::HaltFinal),
        ("NMIs blocked in the NMI handler", NMI_HANG, 0, HangRule::HaltFinal),
        ("IF = 1, nothing pending", "sti-hlt\n", 0, HangRule::HaltFinal),
        (
            "IF = 1, the pending vector below the TPR",
            "tpr 0x60\nroute 2 vector=0x50 level\nassert 2\nsti-hlt\n",
            3,
            HangRule::HaltFinal,
        ),
        (
            "IF = 1, the APIC disabled and enabled again through its base",
            "apic-base 0xfee00000\napic-base 0xfee00800\nsvr 0x1ff\nsti-hlt\n",
            3,
            HangRule::HaltFinal,
        ),
        (
            "IF = 1, the APIC left disabled (the 8259 may reach it)",
            "apic-base 0xfee00000\nsti-hlt\n",
            1,
            HangRule::TwoKicks,
        ),
        (
            "IF = 1, LINT0 unmasked as ExtINT (the 8259 masked)",
            "lapic-write 0x350 0x700\nsti-hlt\n",
            1,
            HangRule::TwoKicks,
        ),
        (
            "IF = 1, the LAPIC timer counting for minutes",
            "lapic-write 0x3e0 0xa\nlapic-write 0x320 0x40\nlapic-write 0x380 0xffffffff\nsti-hlt\n",
            3,
            HangRule::TwoKicks,
        ),
    ];
    for split in [false, true] {
        let mut judged = KvmBackend::open(split).unwrap();
        let mut two_kicks = KvmBackend::open(split).unwrap();
        two_kicks.judge_halts(false);
        for (what, text, op, rule) in cases {
            // The events before the hang can vary from run to run (a stale
            // IRR vector re-delivered at a host-side exit, ATTEMPTS): the
            // two rules must agree on some pair of runs.
            let mut runs = Vec::new();
            for _ in 0..ATTEMPTS {
                let t = judged.run(&scenario(text)).unwrap();
                assert_eq!(
                    (t.outcome, t.hang_op),
                    (Outcome::Hang, Some(op)),
                    "split={split} {what}: {:?}",
                    t.error
                );
                assert_eq!(judged.last_hang_rule(), Some(rule), "split={split} {what}");
                let slow = two_kicks.run(&scenario(text)).unwrap();
                assert_eq!(two_kicks.last_hang_rule(), Some(HangRule::TwoKicks));
                let same = t == slow;
                runs.push((t, slow));
                if same {
                    break;
                }
            }
            let (t, slow) = runs.pop().unwrap();
            assert_eq!(t, slow, "split={split} {what}: the two rules' traces");
        }
    }
}
/// Depends on NMIs being unblocked at the start (the vCPU events).
const NMI_PROBE: &str = "msi vector=2 nmi\nnop\n";
/// Depends on LVT LINT0, LINT1 and Error being masked at the start (the
/// stub no longer masks LINT0 and LINT1 itself on KVM).
const LVT_PROBE: &str = "lapic-read 0x350\nlapic-read 0x360\nlapic-read 0x370\n";

/// Issue 12, the per-exit overhead: a reset writes only what the previous
/// run can have changed, and the general registers, the vCPU events (and
/// after a hang the segments) through `kvm_run` (`KVM_CAP_SYNC_REGS`)
/// rather than by ioctl. Each kind of end is followed by probes that
/// depend on the defaults of what it dirtied (IF and the registers, the
/// IRR/ISR/TMR, the lines and routes, NMI blocking, the LVTs, the APIC
/// mode and base), and every probe's trace must be exactly the one it has
/// on a fresh VM. The vCPU ioctls of the reset after each end are counted
/// too: one (`KVM_SET_LAPIC`) after a run that ended at the stub's end
/// port, one more (`KVM_SET_MP_STATE`) after a hang, and `KVM_SET_SREGS`
/// first after a run that changed the APIC mode or base.
#[test]
fn each_kind_of_end_is_undone_by_the_next_reset_with_only_the_calls_it_needs() {
    use irqdiff::backend::kvm::KvmBackend;
    if !kvm_or_skip("each_kind_of_end_is_undone_by_the_next_reset_with_only_the_calls_it_needs") {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let wanted = kvm_bindings::KVM_SYNC_X86_REGS
        | kvm_bindings::KVM_SYNC_X86_SREGS
        | kvm_bindings::KVM_SYNC_X86_EVENTS;
    let synced =
        kvm.check_extension_int(kvm_ioctls::Cap::SyncRegs).max(0) as u32 & wanted == wanted;
    // (scenario, its outcome, the vCPU ioctls of the next reset with and
    // without KVM_CAP_SYNC_REGS).
    let dirtiers: [(&str, &str, Outcome, u32, u32); 7] = [
        ("clean", "nop\n", Outcome::Completed, 1, 3),
        ("hang", HANG, Outcome::Hang, 2, 5),
        ("hang in the NMI handler", NMI_HANG, Outcome::Hang, 2, 5),
        ("storm", STORM, Outcome::Storm, 1, 3),
        (
            "LVTs unmasked",
            "lapic-write 0x350 0x700\nlapic-write 0x360 0x400\nlapic-write 0x370 0x33\n",
            Outcome::Completed,
            1,
            3,
        ),
        (
            "x2APIC",
            "config apic=x2apic\nmsi vector=0x40\nlapic-read 0x20\ntpr 0x20\n",
            Outcome::Completed,
            3,
            5,
        ),
        (
            "APIC base written",
            "apic-base 0xfee00900\nmsi vector=0x40\n",
            Outcome::Completed,
            3,
            5,
        ),
    ];
    for split in [false, true] {
        let probes: Vec<(&str, Trace)> = [PROBE, NMI_PROBE, LVT_PROBE]
            .into_iter()
            .map(|p| {
                let mut fresh = KvmBackend::open(split).unwrap();
                (p, fresh.run(&scenario(p)).unwrap())
            })
            .collect();
        assert_eq!(
            probes[1].1.deliveries().collect::<Vec<_>>(),
            [(0, 2)],
            "split={split}: the NMI probe"
        );
        let mut b = KvmBackend::open(split).unwrap();
        for (what, text, outcome, with_sync, without_sync) in dirtiers {
            for (probe, fresh) in &probes {
                let t = b.run(&scenario(text)).unwrap();
                assert_eq!(t.outcome, outcome, "split={split} {what}: {:?}", t.error);
                let after = b.run(&scenario(probe)).unwrap();
                assert_eq!(
                    b.last_calls.reset_vcpu,
                    if synced { with_sync } else { without_sync },
                    "split={split}: vCPU ioctls of the reset after {what}"
                );
                assert_eq!(
                    &after, fresh,
                    "split={split}: {probe:?} after {what} differs from a fresh VM's"
                );
            }
        }
    }
}

/// The split shape mirrors the userspace IOAPIC's routes into KVM's GSI
/// routing only for KVM's EOI exits, which only level-triggered routes make
/// (kvm_scan_ioapic_routes skips edge ones): edge routes cost no
/// `KVM_SET_GSI_ROUTING`, a level route one per change of the entry seen
/// at an entry (two when its low dword goes first with the old
/// destination), masked or not (mask and unmask change no route: a masked
/// entry's remote IRR is still reset by the EOI, 82093AA §3.2.4), and the
/// next reset one to clear it.
#[test]
fn split_routes_reach_kvm_only_when_a_level_route_changes() {
    use irqdiff::backend::kvm::KvmBackend;
    if !kvm_or_skip("split_routes_reach_kvm_only_when_a_level_route_changes") {
        return;
    }
    let mut b = KvmBackend::open(true).unwrap();
    let steps = [
        // The first reset of a VM writes its first routing table.
        ("nop\n", 1),
        ("nop\n", 0),
        (
            "route 3 vector=0x40\nmask 3\nunmask 3\npulse 3\nunmask 3\n",
            0,
        ),
        // A masked level route is a route.
        ("route 4 vector=0x41 level masked\nnop\n", 1),
        // The reset clears it, then route 5.
        ("route 5 vector=0x42 level\nnop\n", 2),
        // The reset clears it.
        ("nop\n", 1),
        ("route 5 vector=0x42 level dest=1 order=low-first\nnop\n", 2),
        // The reset clears step 7's route, then two writes; the mask and
        // unmask change nothing.
        (
            "route 5 vector=0x42 level dest=1 order=low-first\nmask 5\nunmask 5\nmask 5\n",
            3,
        ),
        // The reset clears the masked route.
        ("nop\n", 1),
        ("nop\n", 0),
    ];
    for (i, (text, routing)) in steps.into_iter().enumerate() {
        let t = b.run(&scenario(text)).unwrap();
        assert_eq!(t.outcome, Outcome::Completed, "step {i}: {:?}", t.error);
        assert_eq!(b.last_calls.routing, routing, "step {i}: {text:?}");
    }
}

/// kvm-early-eoi (docs/known-divergences.md): the probe of src/known.rs,
/// event by event. The handler's deassert is an exit; at the entry after
/// it this host's KVM has already ended the level interrupt at the IOAPIC
/// (with the IOAPIC in userspace: KVM_EXIT_IOAPIC_EOI), so the handler
/// reads remote IRR clear before its own EOI (the model: set, 0xc020).
#[test]
fn a_level_interrupt_ends_at_the_first_exit_after_its_injection() {
    if !kvm_or_skip("a_level_interrupt_ends_at_the_first_exit_after_its_injection") {
        return;
    }
    use irqdiff::trace::{Event, EventKind, Space};
    let probe = scenario(irqdiff::known::EARLY_EOI_PROBE);
    let wanted = [
        Event::new(1, EventKind::Deliver { vector: 0x20 }),
        Event::new(
            1,
            EventKind::Read {
                space: Space::Ioapic,
                reg: 0x10,
                value: 0x8020,
            },
        ),
    ];
    for name in ["kvm", "kvm-split"] {
        let t = open(name).run(&probe).unwrap();
        assert_eq!(t.events, wanted, "{name}");
        assert_eq!(t.outcome, Outcome::Completed, "{name}");
        assert!(irqdiff::known::early_eoi_seen(&t), "{name}");
        // The model with the deviation gives exactly this trace.
        assert!(
            irqdiff::diagnose::reproduces(
                &probe,
                &t,
                &[irqdiff::model::Deviation::new(
                    irqdiff::model::Rule::EoiBroadcast,
                    irqdiff::model::Mode::Inverted
                )]
            ),
            "{name}"
        );
    }
    assert!(irqdiff::known::host_behaviours().early_eoi);
    // With the in-kernel IOAPIC it comes before the handler's first op:
    // the line, still high, is sent again and its vector is in IRR when
    // the handler looks (the model: IRR clear, ISR set). The model with
    // this host's three deviations gives the trace (three tries: a host
    // exit can re-inject the stale vector).
    let full =
        scenario("handler 0x20: snapshot; deassert 0; eoi\nroute 0 vector=0x20 level\nassert 0\n");
    let host = [
        irqdiff::model::Deviation::new(
            irqdiff::model::Rule::AcceptedIntoIrr,
            irqdiff::model::Mode::Skipped,
        ),
        irqdiff::model::Deviation::new(
            irqdiff::model::Rule::DispatchAbovePpr,
            irqdiff::model::Mode::Late,
        ),
        irqdiff::model::Deviation::new(
            irqdiff::model::Rule::EoiBroadcast,
            irqdiff::model::Mode::Inverted,
        ),
    ];
    let mut kvm = open("kvm");
    let reproduced = (0..ATTEMPTS).any(|_| {
        let t = kvm.run(&full).unwrap();
        irqdiff::diagnose::reproduces(&full, &t, &host)
    });
    assert!(reproduced, "kvm: {:?}", kvm.run(&full).unwrap());
}

/// SDM Table 11-1: the EOI register is write only and the RRD is not
/// supported since the Pentium 4, so what a read of either gives is open.
/// This host's KVM completes the read without data
/// (`kvm_lapic_readable_reg_mask` leaves both out, `apic_mmio_read`
/// ignores the refusal): the load returns what the instruction emulator's
/// buffer held, here the op's own offset, read just before.
#[test]
fn reads_of_eoi_and_rrd_return_the_emulators_stale_value_and_agree() {
    if !kvm_or_skip("reads_of_eoi_and_rrd_return_the_emulators_stale_value_and_agree") {
        return;
    }
    use irqdiff::trace::{Event, EventKind, Space};
    let s = scenario("lapic-mmio-read 0x0b0\nlapic-mmio-read 0x0c0\nlapic-mmio-read 0x0a0\n");
    let read = |op, reg, value| {
        Event::new(
            op,
            EventKind::Read {
                space: Space::Lapic,
                reg,
                value,
            },
        )
    };
    for name in ["kvm", "kvm-split"] {
        let t = open(name).run(&s).unwrap();
        assert_eq!(
            t.events,
            [read(0, 0xb0, 0xb0), read(1, 0xc0, 0xc0), read(2, 0xa0, 0)],
            "{name}"
        );
        let model = backend::model::ModelBackend::new().run(&s).unwrap();
        assert_eq!(
            irqdiff::oracle::compare(&model, &t),
            irqdiff::oracle::Verdict::Agree,
            "{name}"
        );
    }
}

/// kvm-early-eoi and kvm-deferred-injection with the IOAPIC in userspace
/// (docs/known-divergences.md#kvm-early-eoi): the committed scenarios of
/// `scenarios/kvm-early-eoi/` still give this host's committed traces (an
/// interrupt taken between an IOAPIC op's accesses; the early EOI of a
/// masked entry reaching the userspace IOAPIC), three tries each for the
/// host's timing. tests/model_backend.rs holds the model under the
/// deviations to the same files.
#[test]
fn the_early_eoi_scenarios_give_their_committed_kvm_traces() {
    if !kvm_or_skip("the_early_eoi_scenarios_give_their_committed_kvm_traces") {
        return;
    }
    let dir = root().join("scenarios/kvm-early-eoi");
    for (name, backend_name) in [
        ("route-interleaved", "kvm"),
        ("route-interleaved-low-first", "kvm"),
        ("masked-entry-eoi", "kvm-split"),
    ] {
        let s = load(&dir.join(format!("{name}.irq")));
        let probe = irqdiff::diagnose::with_snapshots(&s);
        let mut b = open(backend_name);
        for (scenario, file) in [
            (&s, format!("{name}.{backend_name}.json")),
            (&probe, format!("{name}.snapshots.{backend_name}.json")),
        ] {
            let text = std::fs::read_to_string(dir.join(&file)).unwrap();
            let expected: Trace = serde_json::from_str(&text).unwrap();
            let mut observed = b.run(scenario).unwrap();
            for _ in 1..ATTEMPTS {
                if observed == expected {
                    break;
                }
                observed = b.run(scenario).unwrap();
            }
            assert_eq!(observed, expected, "{file}");
        }
    }
}
