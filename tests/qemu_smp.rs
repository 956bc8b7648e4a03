//! `qemu-tcg` with several CPUs (`-smp N`): the multi-CPU kvm-unit-tests
//! scenarios, hangs on any CPU, the APs' start, and what QEMU cannot be
//! given (docs/guest-stub.md "Several CPUs", docs/qemu-versions.md "Several
//! CPUs on QEMU 10"). Every test prints a SKIPPED line when QEMU is missing
//! (fails under CI=true).

mod common;

use common::*;
use irqdiff::backend::{self, Backend, BackendError};
use irqdiff::oracle::{compare_scenario, Verdict};
use irqdiff::scenario::{parse, Scenario};
use irqdiff::trace::{EventKind, Outcome, Trace};

fn open_qemu_or_skip(test: &str) -> Option<Box<dyn Backend>> {
    qemu_or_skip(test).then(|| backend::open("qemu-tcg").unwrap())
}

fn scenario(text: &str) -> Scenario {
    parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// (op, cpu, vector) of every delivery.
fn deliveries_on(t: &Trace) -> Vec<(usize, u8, u8)> {
    t.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Deliver { vector } => Some((e.op, e.cpu, vector)),
            _ => None,
        })
        .collect()
}

fn model(s: &Scenario) -> Trace {
    backend::model::ModelBackend::new().run_to_trace(s)
}

/// Every scenario of scenarios/kvm-unit-tests-smp, in one batch call (so
/// in one QEMU process per CPU topology: 2, 3 and 4 CPUs, and the
/// written IDs of the aliased one), agrees with the model.
#[test]
fn every_committed_multi_cpu_scenario_agrees_on_qemu_tcg() {
    let Some(mut qemu) = open_qemu_or_skip("every_committed_multi_cpu_scenario_agrees_on_qemu_tcg")
    else {
        return;
    };
    assert_eq!(qemu.max_cpus(), 8);
    let paths = scenario_files("kvm-unit-tests-smp");
    assert_eq!(paths.len(), 14);
    let scenarios: Vec<Scenario> = paths.iter().map(|p| load(p)).collect();
    let traces = qemu.run_batch(&scenarios);
    let mut disagree = Vec::new();
    for ((path, s), t) in paths.iter().zip(&scenarios).zip(&traces) {
        if compare_scenario(s, &model(s), t) != Verdict::Agree {
            disagree.push(format!("{}: {}", path.display(), t.to_json()));
        }
    }
    assert_eq!(disagree, Vec::<String>::new());
    // Not by luck of an empty trace: the broadcast reaches both CPUs.
    let at = paths
        .iter()
        .position(|p| p.ends_with("apic_physical_broadcast.irq"))
        .unwrap();
    assert_eq!(
        deliveries_on(&traces[at]),
        [(0, 0, 0xcf), (0, 1, 0xcf), (1, 0, 0xcf), (1, 1, 0xcf)]
    );
}

/// An `ipi nmi` to another CPU (and with the `all` shorthand) is taken
/// there. Before the fix, such a scenario ran with the in-guest watchdog,
/// whose handler took the NMI for its own once the one-shot had run out,
/// and dropped it.
#[test]
fn nmi_ipis_reach_every_cpu() {
    let Some(mut qemu) = open_qemu_or_skip("nmi_ipis_reach_every_cpu") else {
        return;
    };
    let s = scenario(
        "config cpus=2\nhandler 0x02:\nipi nmi dest=1\nipi vector=0x40 dest=1\nipi nmi all\ncpu 1: ipi nmi\n",
    );
    let t = qemu.run(&s).unwrap();
    assert_eq!(t.outcome, Outcome::Completed, "{}", t.to_json());
    assert_eq!(
        deliveries_on(&t),
        [(0, 1, 2), (1, 1, 0x40), (2, 0, 2), (2, 1, 2), (3, 0, 2)]
    );
    assert_eq!(compare_scenario(&s, &model(&s), &t), Verdict::Agree);
}

/// A `hlt` with nothing to wake it on an AP hangs the run at that op,
/// found by the AP's own watchdog; and with the host timing it (an NMI
/// scenario runs without the watchdog), by the monitor's `info registers
/// -a` showing that CPU halted at the interpreter's `hlt`.
#[test]
fn a_hlt_on_an_ap_hangs_with_or_without_the_watchdog() {
    let Some(mut qemu) = open_qemu_or_skip("a_hlt_on_an_ap_hangs_with_or_without_the_watchdog")
    else {
        return;
    };
    let armed = scenario("config cpus=2\nipi vector=0x40 dest=1\ncpu 1: hlt\nnop\n");
    let host = scenario("config cpus=3\nhandler 0x02:\nipi nmi dest=2\ncpu 2: hlt\nnop\n");
    let traces = qemu.run_batch(&[armed.clone(), host.clone()]);
    assert_eq!(traces[0].outcome, Outcome::Hang, "{}", traces[0].to_json());
    assert_eq!(traces[0].hang_op, Some(1));
    assert_eq!(deliveries_on(&traces[0]), [(0, 1, 0x40)]);
    assert_eq!(traces[1].outcome, Outcome::Hang, "{}", traces[1].to_json());
    assert_eq!(traces[1].hang_op, Some(1));
    assert_eq!(deliveries_on(&traces[1]), [(0, 2, 2)]);
    for (s, t) in [&armed, &host].into_iter().zip(&traces) {
        assert_eq!(compare_scenario(s, &model(s), t), Verdict::Agree);
    }
}

/// `ap-start=sipi`: an op on an AP before its STARTUP IPI ends the run
/// with outcome `error`, as on the model; after it, the AP runs.
#[test]
fn an_op_on_a_cpu_waiting_for_sipi_is_an_error() {
    let Some(mut qemu) = open_qemu_or_skip("an_op_on_a_cpu_waiting_for_sipi_is_an_error") else {
        return;
    };
    let waiting = scenario("config cpus=2 ap-start=sipi\nnop\ncpu 1: self-ipi 0x40\n");
    let started =
        scenario("config cpus=2 ap-start=sipi\nipi startup dest=1\ncpu 1: self-ipi 0x40\n");
    let traces = qemu.run_batch(&[waiting.clone(), started.clone()]);
    assert_eq!(traces[0].outcome, Outcome::Error, "{}", traces[0].to_json());
    assert!(traces[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("op 1: posted to a CPU that waits for a SIPI")));
    assert_eq!(model(&waiting).outcome, Outcome::Error);
    assert_eq!(traces[1].outcome, Outcome::Completed);
    assert_eq!(deliveries_on(&traces[1]), [(1, 1, 0x40)]);
}

/// What QEMU cannot be given is refused with the reason, before QEMU
/// starts: x2APIC IDs no topology gives, an INIT that would reach the
/// BSP, an INIT or SIPI with a logical destination.
#[test]
fn what_qemu_cannot_offer_is_refused_with_the_reason() {
    let Some(mut qemu) = open_qemu_or_skip("what_qemu_cannot_offer_is_refused_with_the_reason")
    else {
        return;
    };
    for (text, why) in [
        (
            "config apic=x2apic cpus=2 apic-ids=0x10,0x11\nnop\n",
            "apic-ids=0x10,0x11: no -smp topology gives these initial APIC IDs",
        ),
        (
            "config cpus=2\ncpu 1: ipi init all\n",
            "op 0: an INIT that reaches CPU 0: QEMU restarts the bootstrap processor",
        ),
        ("ipi init self\n", "an INIT that reaches CPU 0"),
        (
            "config cpus=2 ap-start=sipi\nipi startup logical dest=2\n",
            "with a logical destination",
        ),
    ] {
        match qemu.run(&scenario(text)) {
            Err(BackendError::Unsupported(e)) => assert!(e.contains(why), "{text}: {e}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

/// apic-ids no topology gives run in xAPIC mode with the IDs written to
/// the ID registers. QEMU 10's `self` shorthand (`apic_deliver`: it sets
/// bit `s->id` of the APIC array, which is indexed by the initial ID)
/// then misses: CPU 0, ID 5, sends itself 0x41 and nothing arrives,
/// where the model delivers it (docs/known-divergences.md#qemu-shorthand-by-id).
/// A physical IPI to the written ID does arrive.
#[test]
fn written_xapic_ids_are_matched_but_qemus_self_shorthand_misses() {
    let Some(mut qemu) =
        open_qemu_or_skip("written_xapic_ids_are_matched_but_qemus_self_shorthand_misses")
    else {
        return;
    };
    let s = scenario(
        "config cpus=2 apic-ids=5,0\nlapic-read 0x020\nipi vector=0x40 dest=5\nself-ipi 0x41\n",
    );
    let t = qemu.run(&s).unwrap();
    assert_eq!(t.outcome, Outcome::Completed);
    assert!(matches!(
        t.events[0].kind,
        EventKind::Read {
            value: 0x0500_0000,
            ..
        }
    ));
    assert_eq!(deliveries_on(&t), [(1, 0, 0x40)]);
    assert_eq!(deliveries_on(&model(&s)), [(1, 0, 0x40), (2, 0, 0x41)]);
    let judgement = irqdiff::differ::Differ::open("qemu-tcg")
        .unwrap()
        .judge(&s, t.clone());
    let irqdiff::oracle::Ruling::Diverge { signature, .. } = &judgement.ruling else {
        panic!("agrees: {:?}", judgement.ruling);
    };
    let label = irqdiff::known::label("qemu-tcg", signature, &s, &t);
    assert_eq!(label.map(|k| k.id), Some("qemu-shorthand-by-id"));
    // all-but-self from CPU 1 (ID 0) leaves out CPU 0 instead of itself.
    let s = scenario(
        "config cpus=2 apic-ids=1,0
cpu 1: ipi vector=0x42 all-but-self
",
    );
    let t = qemu.run(&s).unwrap();
    assert_eq!(deliveries_on(&t), [(0, 1, 0x42)]);
    assert_eq!(deliveries_on(&model(&s)), [(0, 0, 0x42)]);
}

/// One batch call with one-CPU and multi-CPU scenarios interleaved gives
/// each the trace it has alone (the groups are by topology; the reset
/// between scenarios puts the APs back to wait-for-SIPI).
#[test]
fn single_and_multi_cpu_scenarios_share_a_batch_call() {
    let Some(mut qemu) = open_qemu_or_skip("single_and_multi_cpu_scenarios_share_a_batch_call")
    else {
        return;
    };
    let one = scenario("self-ipi 0x40\nlapic-read 0x020\n");
    let two = scenario("config cpus=2\ncpu 1: self-ipi 0x41\nipi vector=0x42 all\n");
    let four = scenario("config cpus=4\ncpu 3: ipi vector=0x43 dest=0\nlapic-read 0x020\n");
    let set = [
        one.clone(),
        two.clone(),
        four.clone(),
        two.clone(),
        one.clone(),
        four.clone(),
    ];
    let traces = qemu.run_batch(&set);
    let alone: Vec<Trace> = [&one, &two, &four]
        .iter()
        .map(|s| qemu.run(s).unwrap())
        .collect();
    for (i, t) in traces.iter().enumerate() {
        assert_eq!(t, &alone[[0, 1, 2, 1, 0, 2][i]], "scenario {i}");
    }
    assert_eq!(
        deliveries_on(&alone[1]),
        [(0, 1, 0x41), (1, 0, 0x42), (1, 1, 0x42)]
    );
    assert_eq!(deliveries_on(&alone[2]), [(0, 0, 0x43)]);
}
