//! The HVF VMM loop on Linux, against the test double of
//! Hypervisor.framework (`backend::hvf::double`): it reproduces the model's
//! trace for every scenario, and with the seed's quirks shows its symptoms.

mod common;

use common::*;
use irqdiff::backend::hvf::{double::Double, HvfBackend, Workarounds};
use irqdiff::backend::run::Shape;
use irqdiff::backend::Backend;
use irqdiff::model::Quirks;
use irqdiff::scenario::parse;
use irqdiff::trace::Trace;

fn hvf(split: bool, quirks: Quirks, workarounds: Workarounds) -> HvfBackend<Double> {
    let (name, shape) = if split {
        ("hvf-split", Shape::Split)
    } else {
        ("hvf", Shape::Full)
    };
    HvfBackend::new(Double::new(quirks), name, shape, workarounds).unwrap()
}

fn run(b: &mut HvfBackend<Double>, text: &str) -> Trace {
    b.run(&parse(text).unwrap()).unwrap()
}

#[test]
fn loop_reproduces_the_model_on_every_scenario_full_and_split() {
    for split in [false, true] {
        let mut b = hvf(split, Quirks::empty(), Workarounds::empty());
        for path in scenario_files("kvm-unit-tests")
            .into_iter()
            .chain(scenario_files("kvm-divergences"))
        {
            let mut expected = ModelBackendRun::run(&load(&path));
            expected.backend = b.name().to_string();
            if raises_gp(&expected) {
                eprintln!(
                    "NOT COMPARED {} on the HVF double: the model raises #GP, which the double and the hvf VMM do not model yet",
                    path.display()
                );
                continue;
            }
            match b.run(&load(&path)) {
                Ok(observed) => {
                    assert_eq!(observed, expected, "{} (split: {split})", path.display())
                }
                // The version-0x11 scenarios (xAPIC and x2APIC) cannot run
                // on the full shape.
                Err(irqdiff::backend::BackendError::Unsupported(_)) => {
                    assert!(
                        !split
                            && (path.ends_with("reg_version.irq")
                                || path.ends_with("reg_version_x2apic.irq")),
                        "{}",
                        path.display()
                    )
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
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
    // The seed's step 4: the loop moves the APIC window before it writes
    // IA32_APIC_BASE, so the move-and-enable bug does not bite.
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
    let moved = calls
        .iter()
        .rposition(|c| *c == "hv_vmx_vcpu_set_apic_address")
        .unwrap();
    let written = calls
        .iter()
        .rposition(|c| *c == "hv_vcpu_write_msr")
        .unwrap();
    assert!(moved < written, "the window moves before the MSR write");
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
    // ...but not in x2APIC mode, where EOIs are MSR writes that never exit.
    let x2 = format!("config apic=x2apic\n{LEVEL_TWICE}");
    assert_eq!(deliveries(&run(&mut s, &x2)), [(1, 0x77)]);
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
        "hv_vmx_vcpu_set_apic_address",
        "hv_vcpu_run_until",
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
    // Step 2: every return from run_until is followed by exit_info (or, at a
    // deadline, by the activity-state read).
    for w in calls.windows(2).filter(|w| w[0] == "hv_vcpu_run_until") {
        assert!(
            matches!(w[1], "hv_vcpu_exit_info" | "hv_vmx_vcpu_read_vmcs"),
            "{w:?}"
        );
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
        Double::new(Quirks::empty()),
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
        Double::new(Quirks::empty()),
        "hvf:reassert-on-unmask",
        Shape::Full,
        Workarounds::REASSERT_ON_UNMASK,
    )
    .unwrap();
    assert!(full
        .unsupported(&scenario)
        .unwrap()
        .contains("version 0x11"));
}

/// Whether the model's trace has a #GP: the HVF double interprets the op
/// table and the hvf VMM turns a refused MSR write into an error, so
/// neither raises one yet.
fn raises_gp(t: &Trace) -> bool {
    t.events
        .iter()
        .any(|e| matches!(e.kind, irqdiff::trace::EventKind::Exception { .. }))
}
