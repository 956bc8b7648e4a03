//! `qemu-tcg`: QEMU's emulated APIC and IOAPIC under TCG, the second real
//! implementation. Every test prints a SKIPPED line when QEMU is missing.

mod common;

use common::*;
use irqdiff::backend::{self, Availability, Backend, BackendError};
use irqdiff::oracle::Triage;

fn qemu_or_skip(test: &str) -> Option<Box<dyn Backend>> {
    match backend::qemu::probe() {
        Availability::Available => Some(backend::open("qemu-tcg").unwrap()),
        Availability::Unavailable(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

#[test]
fn qemu_agrees_with_the_model_on_every_scenario_it_can_run() {
    let Some(mut qemu) = qemu_or_skip("qemu_agrees_with_the_model_on_every_scenario_it_can_run")
    else {
        return;
    };
    let all = [
        scenario_files("kvm-unit-tests"),
        scenario_files("kvm-divergences"),
        scenario_files("seed-hvf"),
    ];
    let mut ran = 0;
    for path in all.into_iter().flatten() {
        let scenario = load(&path);
        let mut expected = irqdiff::backend::model::ModelBackend::new()
            .run(&scenario)
            .unwrap();
        expected.backend = "qemu-tcg".into();
        match qemu.run(&scenario) {
            Ok(observed) => {
                assert_eq!(observed, expected, "{}", path.display());
                ran += 1;
            }
            // x2APIC (QEMU 7.2's TCG has none), the split shape, APIC base moves.
            Err(BackendError::Unsupported(why)) => {
                eprintln!("{}: not run on qemu-tcg: {why}", path.display())
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    assert!(ran >= 24, "only {ran} scenarios ran on qemu-tcg");
}

#[test]
fn qemu_delivers_every_assert_of_an_edge_pin_documented() {
    let Some(mut qemu) = qemu_or_skip("qemu_delivers_every_assert_of_an_edge_pin_documented")
    else {
        return;
    };
    // docs/known-divergences.md#qemu-edge-every-assert
    let path = root().join("scenarios/qemu-divergences/edge-repeated-assert.irq");
    let scenario = load(&path);
    assert_eq!(
        deliveries(&qemu.run(&scenario).unwrap()),
        [(1, 0x40), (2, 0x40)]
    );
    let mut differ = irqdiff::campaign::Differ::open("qemu-tcg").unwrap();
    let sig = differ.diff(&scenario).3.expect("diverges");
    assert_eq!(
        irqdiff::known::label("qemu-tcg", &sig),
        Some(irqdiff::known::QEMU_EDGE_EVERY_ASSERT)
    );
}

#[test]
fn qemu_detects_hang_and_storm() {
    let Some(mut qemu) = qemu_or_skip("qemu_detects_hang_and_storm") else {
        return;
    };
    let t = qemu
        .run(&irqdiff::scenario::parse("nop\ncli\nhlt\n").unwrap())
        .unwrap();
    assert_eq!(
        (t.outcome, t.hang_op),
        (irqdiff::trace::Outcome::Hang, Some(2))
    );
    let t = qemu
        .run(&irqdiff::scenario::parse("route 3 vector=0x40 level\nassert 3\nnop\n").unwrap())
        .unwrap();
    assert_eq!(t.outcome, irqdiff::trace::Outcome::Storm);
    assert_eq!(deliveries(&t).len(), irqdiff::trace::STORM_LIMIT);
}

#[test]
fn three_way_triage_blames_this_kvm_for_its_divergences() {
    let Some(mut qemu) = qemu_or_skip("three_way_triage_blames_this_kvm_for_its_divergences")
    else {
        return;
    };
    if !kvm_or_skip("three_way_triage_blames_this_kvm_for_its_divergences") {
        return;
    }
    // The verdict on this host's KVM (docs/known-divergences.md): where it
    // differs from the model, QEMU's irqchip sides with the model.
    let mut differ = irqdiff::campaign::Differ::open("kvm").unwrap();
    for path in scenario_files("kvm-divergences") {
        let scenario = load(&path);
        let (expected, observed, verdict, _) = differ.diff(&scenario);
        assert!(
            matches!(verdict, irqdiff::oracle::Verdict::Diverge(_)),
            "{}",
            path.display()
        );
        let third = qemu.run_to_trace(&scenario);
        assert!(
            matches!(
                Triage::of(&expected, &observed, &third),
                Triage::LikelyBackendBug { .. }
            ),
            "{}",
            path.display()
        );
    }
}
