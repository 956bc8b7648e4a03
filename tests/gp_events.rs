//! #GP as an observable event: the model records one where SDM §11.12.1.2
//! (and §11.4.4 for IA32_APIC_BASE) says the access faults, the oracle
//! compares it like any other event, and a backend that swallows the fault
//! (the `x2apic-gp-ignored` sim quirk) is an `exception` divergence.

mod common;

use common::*;
use irqdiff::backend::{self, model::ModelBackend, Backend};
use irqdiff::oracle::{compare, Class, Verdict};
use irqdiff::scenario::parse;
use irqdiff::trace::{EventKind, Outcome};

/// Faults in x2APIC mode: a read of the write-only EOI register, a write of
/// the read-only version register, an ICR write with reserved bit 21, and a
/// reserved MSR (0x840); the TPR read after them shows the run went on.
const FAULTS: &str = "config apic=x2apic\n\
                      lapic-read 0x0b0\n\
                      lapic-write 0x030 0\n\
                      lapic-write 0x300 0x2000f1\n\
                      lapic-read 0x400\n\
                      lapic-read 0x080\n";

#[test]
fn a_backend_that_swallows_a_gp_diverges_as_an_exception() {
    let scenario = parse(FAULTS).expect("parses");
    let expected = ModelBackend::new().run(&scenario).expect("model runs");
    assert_eq!(expected.events[0].kind, EventKind::Exception { vector: 13 });
    let mut sim = backend::open("sim:x2apic-gp-ignored").expect("sim opens");
    let observed = sim.run(&scenario).expect("sim runs");
    // The quirk reads 0 where the model faults.
    assert_eq!(
        observed.events[0].kind,
        EventKind::Read {
            space: irqdiff::trace::Space::Lapic,
            reg: 0xb0,
            value: 0
        }
    );
    let Verdict::Diverge(d) = compare(&expected, &observed) else {
        panic!("the traces should diverge");
    };
    assert_eq!(
        (d.class, d.event_index, d.op),
        (Class::Exception, 0, Some(0))
    );
    assert_eq!(
        d.detail,
        "read lapic[0xb0] = 0x0 at op 0, expected exception #GP at op 0"
    );
    let sig = d.signature(&scenario, None);
    assert_eq!(sig.slug(), "exception.lapic-read.gp");
    // Without the quirk the sim agrees: the exception events match.
    let none = backend::open("sim:none")
        .expect("sim opens")
        .run(&scenario)
        .expect("runs");
    assert_eq!(compare(&expected, &none), Verdict::Agree);
}

#[test]
fn an_extra_gp_is_an_exception_divergence_too() {
    let scenario = parse(FAULTS).expect("parses");
    let model = ModelBackend::new().run(&scenario).expect("model runs");
    let ignored = backend::open("sim:x2apic-gp-ignored")
        .expect("sim opens")
        .run(&scenario)
        .expect("runs");
    // Roles swapped: the "backend" faults where the expectation did not.
    let Verdict::Diverge(d) = compare(&ignored, &model) else {
        panic!("the traces should diverge");
    };
    assert_eq!(d.class, Class::Exception);
}

/// The stub's #GP handler on KVM: every fault the model predicts is
/// raised, logged and skipped, in both shapes.
#[test]
fn kvm_raises_the_gps_the_model_predicts() {
    if !kvm_or_skip("kvm_raises_the_gps_the_model_predicts") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let mut backend = backend::open(name).unwrap_or_else(|e| panic!("{e}"));
        let scenario = parse(FAULTS).expect("parses");
        let observed = backend.run_to_trace(&scenario);
        assert_eq!(observed.outcome, Outcome::Completed, "{name}: {observed:?}");
        let expected = ModelBackend::new().run(&scenario).expect("model runs");
        assert_eq!(observed.events, expected.events, "{name}");
    }
}

/// SDM §11.12.1.2: in x2APIC mode the MMIO page answers nothing; the model
/// reads all ones and a store changes nothing. This host's KVM (its
/// LAPIC_MMIO_HOLE quirk) does the same, in both shapes.
#[test]
fn mmio_to_the_apic_page_in_x2apic_mode_reaches_no_register() {
    let scenario = parse(
        "config apic=x2apic\nlapic-mmio-read 0x030\nlapic-mmio-write 0x080 0x40\nlapic-read 0x080\n",
    )
    .expect("parses");
    let expected = ModelBackend::new().run(&scenario).expect("model runs");
    assert_eq!(
        expected
            .events
            .iter()
            .map(|e| e.kind.to_string())
            .collect::<Vec<_>>(),
        [
            "read lapic-mmio[0x30] = 0xffffffff",
            "read lapic[0x80] = 0x0"
        ]
    );
    if !kvm_or_skip("mmio_to_the_apic_page_in_x2apic_mode_reaches_no_register") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let observed = backend::open(name)
            .unwrap_or_else(|e| panic!("{e}"))
            .run_to_trace(&scenario);
        assert_eq!(compare(&expected, &observed), Verdict::Agree, "{name}");
    }
}
