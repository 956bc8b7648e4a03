//! The HVF VMM loop on Linux, against the strict test double of
//! Hypervisor.framework (`backend::hvf::double`, `Double::strict`: VM-entry
//! checks, one VM per process, blocked HLT, host exits at random): the
//! loop's bring-up passes it, it reproduces the model's trace for every
//! scenario, and with the seed's quirks shows their symptoms.

mod common;

use common::*;
use irqdiff::backend::hvf::double::{Double, IoapicIdentity, Process, StrictConfig};
use irqdiff::backend::hvf::{HvfBackend, Workarounds};
use irqdiff::backend::run::Shape;
use irqdiff::backend::Backend;
use irqdiff::model::Quirks;
use irqdiff::scenario::parse;
use irqdiff::trace::{EventKind, Trace};

fn hvf(split: bool, quirks: Quirks, workarounds: Workarounds) -> HvfBackend<Double> {
    let (name, shape) = if split {
        ("hvf-split", Shape::Split)
    } else {
        ("hvf", Shape::Full)
    };
    HvfBackend::new(strict(quirks), name, shape, workarounds).unwrap()
}

/// The strict double in a process of its own.
fn strict(quirks: Quirks) -> Double {
    Double::strict(StrictConfig::new(&Process::new()), quirks)
}

/// Why a scenario the loop must refuse on the double is refused: x2APIC
/// (the start-up probe fails on the double: the in-kernel APIC never hears
/// of the guest's switch), or on the full shape the version register of a
/// 32-pin IOAPIC.
fn refused_as_expected(why: &str, split: bool, path: &std::path::Path) -> bool {
    why.contains("x2APIC is taken as unavailable")
        // The double's APIC has no clock: it refuses the timer ops.
        || (load(path).uses_timer_ops() && why.contains("has no LAPIC timer"))
        || (!split
            && (path.ends_with("reg_version.irq") || path.ends_with("reg_version_x2apic.irq"))
            && why.contains("32 pins"))
}

fn run(b: &mut HvfBackend<Double>, text: &str) -> Trace {
    b.run(&parse(text).unwrap()).unwrap()
}

#[test]
fn loop_reproduces_the_model_on_every_scenario_full_and_split() {
    // #GP included: the loop injects it, the double delivers it to the
    // stub's handler (tests/hvf_double.rs, `a_gp_is_injected_...`).
    let mut compared_gp = false;
    for split in [false, true] {
        let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
        for path in scenario_files("kvm-unit-tests")
            .into_iter()
            .chain(scenario_files("kvm-divergences"))
            .chain(scenario_files("seed-hvf"))
        {
            let mut expected = ModelBackendRun::run(&load(&path));
            expected.backend = b.name().to_string().into();
            match b.run(&load(&path)) {
                Ok(observed) => {
                    assert_eq!(observed, expected, "{} (split: {split})", path.display());
                    compared_gp |= raises_gp(&expected);
                }
                Err(irqdiff::backend::BackendError::Unsupported(why)) => {
                    assert!(
                        refused_as_expected(&why, split, &path),
                        "{}: {why}",
                        path.display()
                    )
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    assert!(compared_gp, "a scenario that raises #GP was compared");
}

struct ModelBackendRun;
impl ModelBackendRun {
    fn run(s: &irqdiff::scenario::Scenario) -> Trace {
        irqdiff::backend::model::ModelBackend::new().run(s).unwrap()
    }
}

const LEVEL_MASK: &str = "handler 0x82: deassert 14; eoi\nroute 14 vector=0x82 level masked\nassert 14\nnop\nunmask 14\nnop\n";
const LEVEL_RETRIGGER: &str = "handler 0x9a#2: deassert 14; eoi\nroute 14 vector=0x9a level\ncli\nassert 14\nsti-hlt\ncli\nsti\n";
const LEVEL_COALESCE: &str = "handler 0x98#1: deassert 14; assert 14; deassert 14; eoi\nhandler 0x98: deassert 14; eoi\nroute 14 vector=0x98 level\nassert 14\nnop\n";
const LEVEL_TWICE: &str = "handler 0x77: deassert 3; eoi\nroute 3 vector=0x77 level\nassert 3\nnop\nassert 3\nnop\nsnapshot\n";

#[test]
fn seed_bugs_show_their_symptoms_through_the_loop() {
    let known = Quirks::LEVEL_UNMASK_NO_DELIVER
        | Quirks::LEVEL_EOI_NO_REDELIVER
        | Quirks::LEVEL_COALESCE_REDELIVER
        | Quirks::SPLIT_EOI_LOST;
    let mut b = hvf(false, known, Workarounds::empty());
    // 1. No delivery on unmask.
    assert_eq!(deliveries(&run(&mut b, LEVEL_MASK)), []);
    // 2. No re-delivery after the EOI: the second delivery never comes.
    assert_eq!(deliveries(&run(&mut b, LEVEL_RETRIGGER)), [(3, 0x9a)]);
    // 3. Coalesced level delivered twice.
    assert_eq!(
        deliveries(&run(&mut b, LEVEL_COALESCE)),
        [(1, 0x98), (1, 0x98)]
    );
    // 4. Split: the EOI never reaches the userspace IOAPIC: remote IRR stays
    //    set and the second assert is lost.
    let mut s = hvf(true, known, Workarounds::empty());
    let t = run(&mut s, LEVEL_TWICE);
    assert_eq!(deliveries(&t), [(1, 0x77)]);
    assert!(snapshot(&t, 1).remote_irr[3]);
}

#[test]
fn apic_base_move_then_enable_avoids_fb14021745() {
    // The seed's step 4, as pmj's QEMU does it: the loop validates the
    // transition, moves the window with hv_vmx_vcpu_set_apic_address and
    // reads the MSR back; it never calls hv_vcpu_write_msr (the strict
    // double refuses that), so the move-and-enable bug cannot bite.
    let text =
        std::fs::read_to_string(root().join("scenarios/seed-hvf/5-apic-base-move-and-enable.irq"))
            .unwrap();
    let mut b = hvf(
        false,
        Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS,
        Workarounds::empty(),
    );
    assert_eq!(deliveries(&run(&mut b, &text)), [(3, 0x40)]);
    let calls = b.hv().calls.lock().unwrap().clone();
    assert!(!calls.contains(&"hv_vcpu_write_msr"));
    let moved = calls
        .iter()
        .rposition(|c| *c == "hv_vmx_vcpu_set_apic_address")
        .unwrap();
    let read_back = calls
        .iter()
        .rposition(|c| *c == "hv_vcpu_read_msr")
        .unwrap();
    assert!(
        moved < read_back,
        "the window moves, then the MSR is read back"
    );
    // A reserved bit set is the #GP the model also raises (SDM §11.4.4):
    // injected, logged by the stub, and the run goes on.
    let t = b
        .run(&parse("apic-base 0xfee00801\nnop\n").unwrap())
        .unwrap();
    assert_eq!(t.outcome, irqdiff::trace::Outcome::Completed);
    assert_eq!(
        t.events.iter().map(|e| (e.op, &e.kind)).collect::<Vec<_>>(),
        [(0, &EventKind::Exception { vector: 13 })]
    );
}

/// #GP as an event on the HVF path: the loop injects #GP(0) at a faulting
/// IA32_APIC_BASE write (reserved bit 0, then bit 9: SDM §11.4.4) with RIP
/// left on the WRMSR, the double delivers it to the stub's handler, which
/// logs it and skips the instruction; the APIC is untouched (the self IPI
/// still arrives, the version register still reads at 0xFEE00000), and
/// the trace is the model's, full and split.
#[test]
fn a_gp_is_injected_at_the_faulting_wrmsr_and_the_run_goes_on() {
    let text = "apic-base 0xfee00901\napic-base 0xfee00b00\nself-ipi 0x41\nlapic-read 0x030\n";
    let scenario = parse(text).unwrap();
    for split in [false, true] {
        let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
        let t = b.run(&scenario).unwrap();
        let kinds: Vec<_> = t.events.iter().map(|e| (e.op, e.kind.clone())).collect();
        assert_eq!(
            kinds,
            [
                (0, EventKind::Exception { vector: 13 }),
                (1, EventKind::Exception { vector: 13 }),
                (2, EventKind::Deliver { vector: 0x41 }),
                (
                    3,
                    EventKind::Read {
                        space: irqdiff::trace::Space::Lapic,
                        reg: 0x30,
                        value: 0x0005_0014
                    }
                ),
            ],
            "split: {split}"
        );
        let mut expected = ModelBackendRun::run(&scenario);
        expected.backend = b.name().to_string().into();
        assert_eq!(t, expected);
        let log = b.vmm().calls.lines().join("\n");
        assert_eq!(
            log.matches("inject vector 13 (error code Some(0), restart true)")
                .count(),
            2,
            "{log}"
        );
        // The VMM wrote the error code and the interruption information.
        let calls = b.hv().calls.lock().unwrap().clone();
        assert!(!calls.contains(&"hv_vcpu_write_msr"));
    }
}

#[test]
fn workarounds_restore_spec_behaviour_where_they_can() {
    let model = |text: &str| deliveries(&ModelBackendRun::run(&parse(text).unwrap()));
    // reassert-on-unmask fixes bug 1.
    let mut b = hvf(
        false,
        Quirks::LEVEL_UNMASK_NO_DELIVER,
        Workarounds::REASSERT_ON_UNMASK,
    );
    assert_eq!(deliveries(&run(&mut b, LEVEL_MASK)), model(LEVEL_MASK));
    // xapic-eoi-detect fixes the lost split EOIs in xAPIC mode...
    let mut s = hvf(true, Quirks::SPLIT_EOI_LOST, Workarounds::XAPIC_EOI_DETECT);
    assert_eq!(deliveries(&run(&mut s, LEVEL_TWICE)), model(LEVEL_TWICE));
    // x2APIC mode (where EOIs are MSR writes that never exit, so the
    // workaround cannot help) is refused until the start-up probe shows
    // x2APIC works, which on the double it never does.
    let x2 = parse(&format!("config apic=x2apic\n{LEVEL_TWICE}")).unwrap();
    assert!(s
        .unsupported(&x2)
        .unwrap()
        .contains("x2APIC is taken as unavailable"));
}

#[test]
fn loop_follows_the_seed_steps() {
    let mut b = hvf(false, Quirks::empty(), Workarounds::empty());
    let t = run(
        &mut b,
        "route 14 vector=0x76\npulse 14\nmsi vector=0x41\neoi\nsnapshot\n",
    );
    assert_eq!(deliveries(&t), [(1, 0x76), (2, 0x41)]);
    let calls = b.hv().calls.lock().unwrap().clone();
    for call in [
        "hv_vm_create",
        "hv_vmx_read_capability",
        "hv_vmx_vcpu_set_apic_address",
        "hv_vcpu_run_until(HV_DEADLINE_FOREVER)",
        "hv_vcpu_read_msr",
        "hv_vcpu_exit_info",
        "hv_vm_ioapic_write",
        "hv_vm_ioapic_read",
        "hv_vm_ioapic_pulse_irq",
        "hv_vm_lapic_msi",
        "hv_vcpu_apic_write",
        "hv_vcpu_exit_apic_access_read",
        "hv_vm_atpic_port_write",
    ] {
        assert!(calls.contains(&call), "{call} never called");
    }
    // Step 2: every return from run_until is followed by exit_info; the
    // deadline is HV_DEADLINE_FOREVER.
    assert!(!calls.contains(&"hv_vcpu_run_until"));
    for w in calls
        .windows(2)
        .filter(|w| w[0] == "hv_vcpu_run_until(HV_DEADLINE_FOREVER)")
    {
        assert_eq!(w[1], "hv_vcpu_exit_info", "{w:?}");
    }
}

#[test]
fn hang_and_storm_through_the_loop() {
    let mut b = hvf(false, Quirks::empty(), Workarounds::empty());
    let t = run(&mut b, "nop\ncli\nhlt\n");
    assert_eq!(
        (t.outcome, t.hang_op),
        (irqdiff::trace::Outcome::Hang, Some(2))
    );
    let t = run(&mut b, "route 3 vector=0x40 level\nassert 3\nnop\n");
    assert_eq!(t.outcome, irqdiff::trace::Outcome::Storm);
    // Usable afterwards.
    assert_eq!(deliveries(&run(&mut b, "msi vector=0x41\n")), [(0, 0x41)]);
}

#[test]
fn split_shape_with_a_workaround_runs_version_0x11_scenarios() {
    // The shape is the backend's, not read from its name: with a
    // workaround the name is `hvf-split:xapic-eoi-detect`, and the split
    // shape's userspace IOAPIC offers version 0x11.
    let path = root().join("scenarios/kvm-unit-tests/reg_version.irq");
    let scenario = load(&path);
    let mut b = HvfBackend::new(
        strict(Quirks::empty()),
        "hvf-split:xapic-eoi-detect",
        Shape::Split,
        Workarounds::XAPIC_EOI_DETECT,
    )
    .unwrap();
    assert_eq!(b.unsupported(&scenario), None);
    let mut expected = ModelBackendRun::run(&scenario);
    expected.backend = "hvf-split:xapic-eoi-detect".into();
    assert_eq!(b.run(&scenario).unwrap(), expected);
    // The full shape still refuses it, whatever its name.
    let full = HvfBackend::new(
        strict(Quirks::empty()),
        "hvf:reassert-on-unmask",
        Shape::Full,
        Workarounds::REASSERT_ON_UNMASK,
    )
    .unwrap();
    assert!(full.unsupported(&scenario).unwrap().contains("32 pins"));
}

#[test]
fn the_loop_passes_the_strict_doubles_entry_checks_through_host_exits() {
    // One host-side exit in two entries: the loop resumes on each, and the
    // double saw no refused call or failed entry.
    let config = StrictConfig {
        host_exit_one_in: 2,
        ..StrictConfig::new(&Process::new())
    };
    let mut b = HvfBackend::new(
        Double::strict(config, Quirks::empty()),
        "hvf",
        Shape::Full,
        Workarounds::empty(),
    )
    .unwrap();
    let t = run(
        &mut b,
        "route 14 vector=0x76\npulse 14\nself-ipi 0x41\nnop\n",
    );
    assert_eq!(deliveries(&t), [(1, 0x76), (2, 0x41)]);
    assert_eq!(b.hv().entry_failure(), None);
    // A hang, then a scenario that runs from op 0: the vCPU's activity
    // state was reset in between.
    let t = run(&mut b, "cli\nhlt\n");
    assert_eq!(
        (t.outcome, t.hang_op),
        (irqdiff::trace::Outcome::Hang, Some(1))
    );
    assert_eq!(deliveries(&run(&mut b, "self-ipi 0x42\n")), [(0, 0x42)]);
    assert_eq!(b.hv().fault(), None);
}

#[test]
fn dropping_the_backend_destroys_the_vcpu_then_the_vm() {
    let process = Process::new();
    let open = |p: &Process| {
        HvfBackend::new(
            Double::strict(StrictConfig::new(p), Quirks::empty()),
            "hvf",
            Shape::Full,
            Workarounds::empty(),
        )
    };
    let mut first = open(&process).unwrap();
    assert!(process.has_vm());
    // One VM per process: a second backend in the same process is refused.
    let e = open(&process).err().unwrap();
    assert!(
        e.to_string()
            .contains("hv_vm_create failed with 0xfae94002"),
        "{e}"
    );
    let calls = std::sync::Arc::clone(&first.hv().calls);
    drop(first);
    assert!(!process.has_vm(), "hv_vm_destroy succeeded");
    let calls = calls.lock().unwrap().clone();
    let n = calls.len();
    assert_eq!(calls[n - 2..], ["hv_vcpu_destroy", "hv_vm_destroy"]);
    // With three vCPUs: each AP's destroyed on its own thread (the double
    // refuses any other), then CPU 0's, then the VM.
    let mut smp = open(&process).unwrap();
    let trace = run(&mut smp, "config cpus=3\nipi vector=0xcf all\n");
    assert_eq!(trace.events.len(), 3, "{trace:?}");
    let calls = std::sync::Arc::clone(&smp.hv().calls);
    drop(smp);
    assert!(
        !process.has_vm(),
        "hv_vm_destroy succeeded after three vCPUs"
    );
    let calls = calls.lock().unwrap().clone();
    let n = calls.len();
    assert_eq!(
        calls[n - 4..],
        [
            "hv_vcpu_destroy",
            "hv_vcpu_destroy",
            "hv_vcpu_destroy",
            "hv_vm_destroy"
        ]
    );
    assert!(open(&process).is_ok(), "the process can open the next VM");
}

#[test]
fn the_ioapic_identity_is_read_at_start_up_and_the_model_fitted_to_it() {
    for (identity, version) in [
        (IoapicIdentity::BHYVE, irqdiff::scenario::IoapicVersion::V11),
        (IoapicIdentity::ICH, irqdiff::scenario::IoapicVersion::V20),
    ] {
        let config = StrictConfig {
            ioapic: identity,
            ..StrictConfig::new(&Process::new())
        };
        let b = HvfBackend::new(
            Double::strict(config, Quirks::empty()),
            "hvf",
            Shape::Full,
            Workarounds::empty(),
        )
        .unwrap();
        let probed = b.vmm().ioapic_identity();
        assert_eq!((probed.version, probed.pins), (version, identity.pins));
        // A generated scenario with an IOAPIC-EOI op gets the in-kernel
        // IOAPIC's version, as kvm fits scenarios to its 0x11 IOAPIC.
        let mut s =
            parse("config ioapic=0x20\nroute 3 vector=0x40 level\nioapic-eoi 0x40\n").unwrap();
        let refused = b.unsupported(&s);
        assert_eq!(
            refused.is_some(),
            version == irqdiff::scenario::IoapicVersion::V11
        );
        b.fit(&mut s);
        assert_eq!(s.config.ioapic, version);
        assert_eq!(b.unsupported(&s), None);
    }
}

#[test]
fn an_apic_disabled_through_its_base_msr_is_at_power_up_in_the_kernel_too() {
    // Found by `fuzz --backend hvf-double` before the loop put the
    // in-kernel APIC back to its power-up state on a disable (SDM §11.4.3):
    // the kernel's APIC kept taking interrupts and its TPR and IRR.
    for text in [
        "route 0 vector=0x20\napic-base 0xfee00000\nassert 0\n",
        "tpr 0xb0\nself-ipi 0x20\napic-base 0xfee00000\nsnapshot\n",
    ] {
        for split in [false, true] {
            let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
            let mut expected = ModelBackendRun::run(&parse(text).unwrap());
            expected.backend = b.name().to_string().into();
            assert_eq!(run(&mut b, text), expected, "{text} (split: {split})");
        }
    }
}

#[test]
fn x2apic_stays_unavailable_after_the_start_up_probe_fails_on_the_double() {
    // The probe guest's prologue: RDMSR (answered from the VMM's view,
    // 0xFEE00900), OR EN|EXTD, WRMSR; the loop moves nothing, tells the
    // kernel nothing it has no call for, and the read-back shows EXTD clear.
    let b = hvf(false, Quirks::empty(), Workarounds::empty());
    let why = b.vmm().x2apic_unavailable().unwrap();
    assert!(
        why.contains("IA32_APIC_BASE 0xfee00d00") && why.contains("reads back 0xfee00900"),
        "{why}"
    );
    let mut generated = parse("config apic=x2apic\napic-base 0xfee00c00\nnop\n").unwrap();
    assert!(b.unsupported(&generated).is_some());
    b.fit(&mut generated);
    assert_eq!(b.unsupported(&generated), None);
    assert_eq!(
        generated.ops[0],
        irqdiff::scenario::Op::ApicBase(0xfee0_0800),
        "fit keeps the op, without EXTD"
    );
}

/// Whether the model's trace has a #GP: the HVF double interprets the op
/// table and the hvf VMM turns a refused MSR write into an error, so
/// neither raises one yet.
fn raises_gp(t: &Trace) -> bool {
    t.events
        .iter()
        .any(|e| matches!(e.kind, EventKind::Exception { .. }))
}

/// Several vCPUs (docs/hvf.md, "Several vCPUs"): every committed
/// multi-CPU scenario runs on both shapes, one thread per vCPU, and gives
/// the model's trace, INIT/SIPI through HV_VM_EXITINFO_INIT_AP and
/// STARTUP_AP included; or it is refused with its documented reason: x2APIC
/// (unavailable on the double, as on one CPU) or APIC IDs other than the
/// CPU indexes (the in-kernel APIC's ID is the vCPU ID).
#[test]
fn every_multi_cpu_scenario_agrees_with_the_model_or_is_refused_with_its_reason() {
    let files = scenario_files("kvm-unit-tests-smp");
    assert!(files.len() >= 14, "{} multi-CPU scenarios", files.len());
    for split in [false, true] {
        let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
        assert_eq!(b.max_cpus(), 8);
        let mut ran = Vec::new();
        for path in &files {
            let scenario = load(path);
            let mut expected = ModelBackendRun::run(&scenario);
            expected.backend = b.name().to_string().into();
            match b.run(&scenario) {
                Ok(observed) => {
                    assert_eq!(observed, expected, "{} (split: {split})", path.display());
                    ran.push(path.file_stem().unwrap().to_string_lossy().into_owned());
                }
                Err(irqdiff::backend::BackendError::Unsupported(why)) => assert!(
                    why.contains("x2APIC is taken as unavailable")
                        || (why.contains("apic-ids other than the CPU indexes")
                            && !scenario.config.default_apic_ids()),
                    "{}: {why}",
                    path.display()
                ),
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
        for name in [
            "apic_id",
            "apic_logical_ipi_xapic",
            "apic_multiple_nmi",
            "apic_physical_broadcast",
            "apic_sti_nmi",
            "smp_init_sipi",
        ] {
            assert!(ran.iter().any(|r| r == name), "{name} ran (split: {split})");
        }
        // One CPU after several: the APs' vCPUs are gone from the bus (a
        // broadcast reaches CPU 0 alone).
        let one = run(&mut b, "ipi vector=0xcf all\n");
        assert_eq!(one.events.len(), 1, "{one:?}");
    }
}

/// The loop handles INIT_AP and STARTUP_AP as the framework requires: an
/// op posted to a CPU an INIT sent to wait for SIPI is an error of the
/// run, and after the STARTUP the CPU runs again, from the SIPI entry, and
/// takes its interrupts.
#[test]
fn an_init_stops_a_cpu_until_a_startup_ipi_starts_it_again() {
    let mut b = hvf(false, Quirks::empty(), Workarounds::empty());
    let waiting = run(&mut b, "config cpus=2\nipi init all-but-self\ncpu 1: nop\n");
    assert_eq!(
        waiting.outcome,
        irqdiff::trace::Outcome::Error,
        "{waiting:?}"
    );
    assert!(
        waiting
            .error
            .as_deref()
            .unwrap()
            .contains("waits for a startup IPI"),
        "{waiting:?}"
    );
    let restarted = run(
        &mut b,
        "config cpus=2\nipi init all-but-self\nipi startup all-but-self\ncpu 1: self-ipi 0x41\nipi vector=0x42 dest=1\n",
    );
    assert_eq!(
        restarted.outcome,
        irqdiff::trace::Outcome::Completed,
        "{restarted:?}"
    );
    let delivered: Vec<(u8, u32)> = restarted
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Deliver { vector } => Some((e.cpu, vector as u32)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![(1, 0x41), (1, 0x42)]);
    assert!(
        b.calls()
            .iter()
            .any(|c| c.contains("started at sipi_entry (STARTUP_AP)")),
        "{:?}",
        b.calls()
    );
}

/// What the first multi-CPU campaigns on `hvf-double` found in the loop and
/// the double (fixed): a guest that disables its APIC through
/// IA32_APIC_BASE keeps its IF (the double's `hv_vcpu_apic_put_state`
/// reset the processor too), and its APIC writes reach nothing (SDM
/// §11.4.3: the VMM drops them, as no call tells the in-kernel APIC of the
/// disable): no TPR, no SVR, no ICR; its page reads 0. Each agrees with
/// the model on both shapes.
#[test]
fn a_disabled_apic_takes_no_writes_and_keeps_the_processors_if() {
    for split in [false, true] {
        let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
        for text in [
            "cli\napic-base 0xfee00000\napic-base 0xfee00800\nsvr 0x1ff\nself-ipi 0x20\n",
            "apic-base 0xfee00000\ncr8 6\nsnapshot\n",
            "apic-base 0xfee00000\nlapic-read 0x030\n",
            "config cpus=3\ncpu 1: apic-base 0xfee00000\ncpu 1: ipi dest=0x2 nmi\nipi vector=0x50 all-but-self\n",
            "config cpus=2\ncpu 1: route 0 vector=0x20\napic-base 0xfee00000\nsvr 0x1ff\nassert 0\n",
        ] {
            let scenario = parse(text).unwrap();
            let mut expected = ModelBackendRun::run(&scenario);
            expected.backend = b.name().to_string().into();
            assert_eq!(b.run(&scenario).unwrap(), expected, "{text} (split: {split})");
        }
    }
}

/// A known difference (docs/hvf.md, "Several vCPUs"): an NMI to a CPU whose
/// APIC the guest disabled through IA32_APIC_BASE is taken on `hvf`, as the
/// in-kernel APIC never hears of the disable; the model refuses it (SDM
/// §11.4.3).
#[test]
fn an_nmi_reaches_an_apic_the_guest_disabled() {
    let mut b = hvf(false, Quirks::empty(), Workarounds::empty());
    let text = "config cpus=2\ncpu 1: apic-base 0xfee00000\nipi dest=0xff nmi\n";
    let scenario = parse(text).unwrap();
    let nmis = |t: &Trace| -> Vec<u8> {
        t.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Deliver { vector: 2 }))
            .map(|e| e.cpu)
            .collect()
    };
    assert_eq!(nmis(&ModelBackendRun::run(&scenario)), vec![0]);
    assert_eq!(nmis(&b.run(&scenario).unwrap()), vec![0, 1]);
}
