//! The multi-CPU interrupt tests of kvm-unit-tests (x86/ioapic.c,
//! x86/apic.c, lib/x86/smp.c), as scenarios (`scenarios/kvm-unit-tests-smp/`),
//! run on the model: each trace must equal the committed
//! `NAME.expected.json` and pass the check that kvm-unit-tests itself makes
//! (catalogue numbers in brackets, upstream HEAD 1da1819e).

mod common;

use common::*;
use irqdiff::backend::{model::ModelBackend, Backend};
use irqdiff::oracle::{compare_scenario, Verdict};
use irqdiff::trace::{Event, EventKind, Outcome, Space, Trace};

fn path(name: &str) -> std::path::PathBuf {
    root()
        .join("scenarios/kvm-unit-tests-smp")
        .join(format!("{name}.irq"))
}

fn run(name: &str) -> Trace {
    ModelBackend::new()
        .run(&load(&path(name)))
        .expect("model runs")
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

fn ioapic_reads(t: &Trace) -> Vec<u32> {
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

fn remote_irr(value: u32) -> bool {
    value & 1 << 14 != 0
}

fn tmr_bits(t: &Trace, vector: u8) -> Vec<(u8, bool)> {
    t.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Snapshot(s) => Some((e.cpu, bit(&s.tmr, vector))),
            _ => None,
        })
        .collect()
}

#[test]
fn every_scenario_matches_its_expected_trace() {
    let files = scenario_files("kvm-unit-tests-smp");
    assert!(files.len() >= 8, "the multi-CPU scenarios are present");
    for path in files {
        let scenario = load(&path);
        assert!(scenario.is_multi_cpu(), "{}", path.display());
        let trace = ModelBackend::new().run(&scenario).expect("model runs");
        let expected = expected(&path, None)
            .unwrap_or_else(|| panic!("{} has no expected trace", path.display()));
        assert_eq!(trace, expected, "{}", path.display());
        assert_eq!(trace.outcome, Outcome::Completed, "{}", path.display());
    }
}

#[test]
fn ioapic_physical_destination_mode_delivers_once_on_cpu_1() {
    // [IO-15] g_isr_85 == 1, on APIC ID 1; poll_remote_irr(0xe) ends.
    let t = run("ioapic_physical_destination");
    assert_eq!(deliveries_on(&t), [(1, 1, 0x85)]);
    assert_eq!(
        ioapic_reads(&t)
            .iter()
            .map(|&v| remote_irr(v))
            .collect::<Vec<_>>(),
        [false]
    );
}

#[test]
fn ioapic_logical_destination_mode_reaches_exactly_three_cpus() {
    // [IO-16] g_isr_86 == nr_vcpus (3): CPUs 0, 2 and 3 (dest 0x0d against
    // LDRs 1, 2, 4, 8), one message, no re-delivery; remote IRR 0.
    let t = run("ioapic_logical_destination");
    assert_eq!(
        deliveries_on(&t),
        [(1, 0, 0x86), (1, 2, 0x86), (1, 3, 0x86)]
    );
    assert!(!remote_irr(ioapic_reads(&t)[0]));
}

#[test]
fn ioapic_edge_tmr_smp_before_and_in_the_handler() {
    // [IO-17] edge_tmr_smp(false): TMR clear before and in the handler;
    // after level_tmr_smp, edge_tmr_smp(true): set before, clear in the
    // handler. Every delivery is on CPU 0 (destination 0), raised by CPU 1.
    let t = run("ioapic_edge_tmr_smp");
    let tmr = tmr_bits(&t, 0x79);
    assert_eq!(
        tmr,
        [(0, false), (0, false), (0, true), (0, true), (0, false)]
    );
    assert!(deliveries_on(&t)
        .iter()
        .all(|&(_, cpu, v)| cpu == 0 && v == 0x79));
    assert_eq!(deliveries_on(&t).len(), 3);
}

#[test]
fn ioapic_level_tmr_smp_sets_tmr_and_clears_remote_irr() {
    // [IO-18] level_tmr_smp(false) then (true): TMR clear then set before,
    // set in each handler; remote IRR 0 after each (poll_remote_irr).
    let t = run("ioapic_level_tmr_smp");
    assert_eq!(
        tmr_bits(&t, 0x79),
        [(0, false), (0, true), (0, true), (0, true)]
    );
    assert_eq!(
        ioapic_reads(&t)
            .iter()
            .map(|&v| remote_irr(v))
            .collect::<Vec<_>>(),
        [false, false]
    );
}

#[test]
fn ioapic_self_reconfigure_with_two_cpus() {
    // [IO-19] remote IRR set in the handler (twice), 0x84 after the IRET of
    // 0x64 on CPU 0, both remote IRRs clear at the end although the pins
    // target CPU 1 now; nothing reaches CPU 1.
    let t = run("ioapic_self_reconfigure_smp");
    assert_eq!(deliveries_on(&t), [(2, 0, 0x64), (2, 0, 0x84)]);
    let r: Vec<bool> = ioapic_reads(&t).iter().map(|&v| remote_irr(v)).collect();
    assert_eq!(r, [true, true, false, false]);
    // The 0x84 delivery comes after both handler reads (blocked until IRET).
    assert!(matches!(
        t.events[3].kind,
        EventKind::Deliver { vector: 0x84 }
    ));
}

#[test]
fn apic_physical_broadcast_reaches_every_cpu() {
    // [AP-6] broadcast_received(ncpus) for the address and the shorthand,
    // in xAPIC (0xff) and x2APIC (0xffffffff).
    for name in ["apic_physical_broadcast", "apic_physical_broadcast_x2apic"] {
        assert_eq!(
            deliveries_on(&run(name)),
            [(0, 0, 0xcf), (0, 1, 0xcf), (1, 0, 0xcf), (1, 1, 0xcf)],
            "{name}"
        );
    }
}

#[test]
fn apic_logical_ipi_xapic_counts() {
    // [AP-7] nr_ipis_expected per IPI: flat single (1, 1), flat multi
    // (2, 2), cluster single (1), cluster multi (2), non-existent (0).
    let t = run("apic_logical_ipi_xapic");
    let count = |op: usize| deliveries_on(&t).iter().filter(|d| d.0 == op).count();
    assert_eq!([2, 3, 6, 7, 12, 13, 14].map(count), [1, 1, 2, 2, 1, 2, 0]);
    assert_eq!(
        deliveries_on(&t)[0],
        (2, 1, 0xf1),
        "the single target is CPU 1"
    );
}

#[test]
fn apic_aliased_physical_ids_both_accept() {
    // [AP-8] 2 IPIs for an ID both APICs have; none for an ID none has.
    assert_eq!(
        deliveries_on(&run("apic_aliased_xapic_physical_ipi")),
        [(0, 0, 0xf1), (0, 1, 0xf1)]
    );
}

#[test]
fn apic_multiple_nmi_receives_two() {
    // [AP-10] nmi_received == 2 on CPU 0: CPU 1's NMI, then its flush IPI
    // 0x44, then CPU 0's own NMI.
    assert_eq!(
        deliveries_on(&run("apic_multiple_nmi")),
        [(0, 0, 2), (1, 0, 0x44), (2, 0, 2)]
    );
}

#[test]
fn apic_sti_nmi_reaches_cpu_1_whatever_its_if() {
    // [AP-9] each NMI sent to id_map[1] is received there, IF 0 or 1.
    assert_eq!(
        deliveries_on(&run("apic_sti_nmi")),
        [(1, 1, 2), (3, 1, 2), (5, 1, 2)]
    );
}

#[test]
fn apic_id_on_cpu_1() {
    // [AP-12] the xAPIC ID of CPU 1 is 1 in bits 31:24; in x2APIC mode the
    // ID is 1, writing it is #GP, the derived LDR is 1 << 1.
    let t = run("apic_id");
    let reads: Vec<(u8, u32)> = t
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Read { value, .. } => Some((e.cpu, value)),
            _ => None,
        })
        .collect();
    assert_eq!(reads, [(1, 1 << 24), (0, 0)]);
    let t = run("apic_id_x2apic");
    assert_eq!(
        t.events.iter().map(|e| (e.op, e.cpu)).collect::<Vec<_>>(),
        [(0, 1), (1, 1), (2, 1)]
    );
    assert!(matches!(t.events[0].kind, EventKind::Read { value: 1, .. }));
    assert_eq!(t.events[1].kind, EventKind::Exception { vector: 13 });
    assert!(matches!(t.events[2].kind, EventKind::Read { value: 2, .. }));
}

#[test]
fn smp_init_brings_the_aps_online() {
    // lib/x86/smp.c: INIT and STARTUP to all-but-self; before them an AP
    // takes nothing, after them on_cpu's IPI 0x20 reaches each AP, and an
    // AP runs ops of its own.
    assert_eq!(
        deliveries_on(&run("smp_init_sipi")),
        [(3, 1, 0x20), (4, 2, 0x20), (5, 2, 0x21)]
    );
}

#[test]
fn the_multi_cpu_interpreter_agrees_with_the_one_cpu_path() {
    // On one CPU the System interpreter and the Machine fast path give the
    // same trace, on every committed single-CPU scenario.
    let mut n = 0;
    for dir in [
        "kvm-unit-tests",
        "kvm-divergences",
        "seed-hvf",
        "qemu-divergences",
    ] {
        for path in scenario_files(dir) {
            let s = load(&path);
            let one = ModelBackend::new().run(&s);
            let Ok(one) = one else { continue };
            let system = ModelBackend::new().execute_on_system(&s);
            assert_eq!(system, one, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 50, "{n}");
}

#[test]
fn real_one_cpu_backends_refuse_multi_cpu_scenarios() {
    // A backend of one CPU says why, naming the config.
    let s = load(&path("apic_physical_broadcast"));
    let why = irqdiff::backend::multi_cpu_unsupported(1, &s).unwrap();
    assert!(why.contains("cpus=2"), "{why}");
    assert_eq!(irqdiff::backend::multi_cpu_unsupported(8, &s), None);
    let mut sim = irqdiff::backend::open("sim:none").expect("sim opens");
    assert!(sim.run(&s).is_ok(), "sim runs several CPUs");
}

#[test]
fn cross_cpu_order_within_an_op_is_not_compared() {
    // Deliveries to different CPUs in one op may come in either order; the
    // order on one CPU and the op are compared.
    let s = load(&path("apic_physical_broadcast"));
    let expected = run("apic_physical_broadcast");
    let mut swapped = expected.clone();
    swapped.events.swap(0, 1);
    assert_eq!(compare_scenario(&s, &expected, &swapped), Verdict::Agree);
    let mut moved = expected.clone();
    moved.events[1] = Event {
        op: 1,
        cpu: 0,
        ..moved.events[1].clone()
    };
    assert!(matches!(
        compare_scenario(&s, &expected, &moved),
        Verdict::Diverge(_)
    ));
    let mut other_cpu = expected.clone();
    other_cpu.events[1].cpu = 0;
    assert!(matches!(
        compare_scenario(&s, &expected, &other_cpu),
        Verdict::Diverge(_)
    ));
}

#[test]
fn the_cpu_a_lowest_priority_message_reaches_is_open() {
    // SDM 11.6.2.4: which eligible CPU takes it is model-specific.
    let s = irqdiff::scenario::parse("config cpus=3\nipi vector=0x40 dest=0xff lowest\n").unwrap();
    let expected = ModelBackend::new().run(&s).unwrap();
    assert_eq!(deliveries_on(&expected), [(0, 0, 0x40)]);
    let mut on_cpu_2 = expected.clone();
    on_cpu_2.events[0].cpu = 2;
    assert_eq!(compare_scenario(&s, &expected, &on_cpu_2), Verdict::Agree);
    let mut twice = on_cpu_2.clone();
    twice.events.push(expected.events[0].clone());
    assert!(matches!(
        compare_scenario(&s, &expected, &twice),
        Verdict::Diverge(_)
    ));
}

#[test]
fn an_op_on_a_cpu_waiting_for_sipi_or_init_of_the_running_cpu_is_an_error() {
    let s = irqdiff::scenario::parse("config cpus=2 ap-start=sipi\ncpu 1: nop\n").unwrap();
    let t = ModelBackend::new().run(&s).unwrap();
    assert_eq!(t.outcome, Outcome::Error);
    assert!(t.error.unwrap().contains("waits for a startup IPI"));
    let s = irqdiff::scenario::parse("config cpus=2\nipi init all\n").unwrap();
    let t = ModelBackend::new().run(&s).unwrap();
    assert_eq!(t.outcome, Outcome::Error);
    assert!(t.error.unwrap().contains("INIT reached CPU 0"));
}

#[test]
fn per_cpu_handler_bodies_and_per_cpu_delivery_counts() {
    // handler V@K is CPU K's body; V#N counts deliveries on each CPU.
    let s = irqdiff::scenario::parse(
        "config cpus=2\nhandler 0x40: eoi\nhandler 0x40@1: snapshot; eoi\nhandler 0x41#2: snapshot; eoi\n\
         ipi vector=0x40 all\nipi vector=0x41 all\nipi vector=0x41 all\n",
    )
    .unwrap();
    let t = ModelBackend::new().run(&s).unwrap();
    let kinds: Vec<(usize, u8, bool)> = t
        .events
        .iter()
        .map(|e| (e.op, e.cpu, matches!(e.kind, EventKind::Snapshot(_))))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, 0, false),
            (0, 1, false),
            (0, 1, true),
            (1, 0, false),
            (1, 1, false),
            (2, 0, false),
            (2, 0, true),
            (2, 1, false),
            (2, 1, true)
        ]
    );
}

#[test]
fn the_multi_cpu_bug_shapes_fail_the_kvm_unit_tests_they_break() {
    // Each sim: quirk of a known multi-CPU bug diverges from the model on
    // the kvm-unit-tests case that catches it, and only the rule it breaks
    // decides; on the other cases the quirks keep the model's trace.
    let cases = [
        ("x2apic-ldr-not-derived", "ioapic_logical_destination"),
        ("eoi-stale-route-lost", "ioapic_self_reconfigure_smp"),
    ];
    for (quirk, name) in cases {
        let s = load(&path(name));
        let mut sim = irqdiff::backend::open(&format!("sim:{quirk}")).unwrap();
        let observed = sim.run(&s).unwrap();
        let verdict = compare_scenario(&s, &run(name), &observed);
        assert!(matches!(verdict, Verdict::Diverge(_)), "{quirk} on {name}");
    }
    // x2apic-ldr-not-derived: nobody gets the logical interrupt.
    let s = load(&path("ioapic_logical_destination"));
    let t = irqdiff::backend::open("sim:x2apic-ldr-not-derived")
        .unwrap()
        .run(&s)
        .unwrap();
    assert_eq!(deliveries_on(&t), []);
    // eoi-stale-route-lost: remote IRR stays set on both retargeted pins.
    let s = load(&path("ioapic_self_reconfigure_smp"));
    let t = irqdiff::backend::open("sim:eoi-stale-route-lost")
        .unwrap()
        .run(&s)
        .unwrap();
    let r: Vec<bool> = ioapic_reads(&t).iter().map(|&v| remote_irr(v)).collect();
    assert_eq!(r, [true, true, true, true]);
    // x2apic-cluster-ignored: a cluster-0 bitmap also reaches cluster 1.
    let s = irqdiff::scenario::parse(
        "config apic=x2apic cpus=2 apic-ids=1,17\nipi vector=0x40 logical dest=0x2\n",
    )
    .unwrap();
    assert_eq!(
        deliveries_on(&ModelBackend::new().run(&s).unwrap()),
        [(0, 0, 0x40)]
    );
    let t = irqdiff::backend::open("sim:x2apic-cluster-ignored")
        .unwrap()
        .run(&s)
        .unwrap();
    assert_eq!(deliveries_on(&t), [(0, 0, 0x40), (0, 1, 0x40)]);
    // Single-CPU scenarios never show them.
    for path in scenario_files("kvm-unit-tests") {
        let s = load(&path);
        let mut sim = irqdiff::backend::open(
            "sim:x2apic-ldr-not-derived,x2apic-cluster-ignored,eoi-stale-route-lost",
        )
        .unwrap();
        assert_eq!(
            sim.run(&s).unwrap().events,
            ModelBackend::new().run(&s).unwrap().events,
            "{}",
            path.display()
        );
    }
}

#[test]
fn repros_of_a_multi_cpu_scenario() {
    // The KVM and HVF C repros drive one vCPU per CPU (tests/repro.rs and
    // tests/repro_hvf.rs run them); the HVF one refuses APIC IDs other than
    // the CPU indexes, saying why; the Rust test
    // repro compares with the multi-CPU order rules, and passes on the
    // model's own trace.
    let s = load(&path("apic_physical_broadcast"));
    let expected = run("apic_physical_broadcast");
    let c = irqdiff::repro::c::emit(&s, &expected).unwrap();
    assert!(c.contains("#define N_CPUS 2"), "{c}");
    let c = irqdiff::repro::c::emit_hvf(&s, &expected).unwrap();
    assert!(c.contains("#define N_CPUS 2"), "{c}");
    assert!(c.contains("hv_vcpu_exit_startup_ap"), "{c}");
    let aliased = load(&path("apic_aliased_xapic_physical_ipi"));
    let e =
        irqdiff::repro::c::emit_hvf(&aliased, &run("apic_aliased_xapic_physical_ipi")).unwrap_err();
    assert!(
        e.to_string()
            .contains("apic-ids other than the CPU indexes"),
        "{e}"
    );
    let test = irqdiff::repro::rust_test(&s, "model", "broadcast");
    assert!(test.contains("compare_scenario(&scenario"), "{test}");
    assert!(test.contains("config cpus=2"), "{test}");
}
