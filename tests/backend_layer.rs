//! The backend layer: one registry that lists and opens every backend, and
//! host ops that every backend performs.

mod common;

use std::collections::BTreeSet;

use common::*;
use irqdiff::backend::hvf::{double::Double, HvfBackend, Workarounds};
use irqdiff::backend::run::Shape;
use irqdiff::backend::{self, Availability, Backend, OpenError, REGISTRY};
use irqdiff::model::Quirks;
use irqdiff::scenario::{parse, Op};

/// A name each entry opens with (a family needs its options).
fn example_name(kind: &backend::BackendKind) -> String {
    match kind.base() {
        "qemu" => "qemu:accel=tcg".to_string(),
        "kvm-split-ioapic" => "kvm-split-ioapic:alioth-ioapic".to_string(),
        base if kind.name.contains(':') => format!("{base}:none"),
        _ => kind.name.to_string(),
    }
}

#[test]
fn registry_names_are_unique() {
    let bases: BTreeSet<&str> = REGISTRY.iter().map(|k| k.base()).collect();
    assert_eq!(bases.len(), REGISTRY.len(), "a base name is listed twice");
}

#[test]
fn every_entry_opens_or_says_why_not() {
    for kind in REGISTRY {
        let name = example_name(kind);
        match ((kind.probe)(), backend::open(&name)) {
            (Availability::Available, Ok(b)) => assert_eq!(b.name(), name),
            (Availability::Available, Err(e)) => panic!("{name} is available but: {e}"),
            (Availability::Unavailable(why), Err(OpenError::Unavailable { name: n, why: w })) => {
                assert_eq!(n, name);
                assert!(!why.is_empty() && !w.is_empty(), "{name}: no reason given");
            }
            (Availability::Unavailable(why), Ok(_)) => {
                panic!("{name} says it is unavailable ({why}) but opens")
            }
            (Availability::Unavailable(_), Err(e)) => panic!("{name}: wrong error {e}"),
        }
    }
}

#[test]
fn names_outside_the_registry_are_unknown() {
    for name in ["nope", "sim", "model:x", "kvm:split", "qemu-tcg:fast", ""] {
        assert!(
            matches!(backend::open(name), Err(OpenError::Unknown(n)) if n == name),
            "{name:?}"
        );
    }
    let (kind, options) = backend::lookup("hvf-split:xapic-eoi-detect").unwrap();
    assert_eq!((kind.name, options), ("hvf-split", "xapic-eoi-detect"));
    assert!(matches!(
        backend::open("sim:no-such-quirk"),
        Err(OpenError::Invalid { .. })
    ));
}

#[test]
fn irqdiff_backends_lists_exactly_the_registry() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irqdiff"))
        .arg("backends")
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // The list, then a blank line and which QEMU the qemu backends run.
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    let registry: Vec<&str> = REGISTRY.iter().map(|k| k.name).collect();
    assert_eq!(listed, registry);
}

/// Every host op, each with a delivery of its own.
const EVERY_HOST_OP: &str = "\
handler 0x41: deassert 4; eoi
route 3 vector=0x40
route 4 vector=0x41 level
assert 3
deassert 3
pulse 3
assert 4
msi vector=0x50
";

#[test]
fn every_host_op_runs_on_every_backend_without_a_vm() {
    let scenario = parse(EVERY_HOST_OP).unwrap();
    // The scenario really holds every kind of host op.
    let kinds: BTreeSet<&str> = scenario
        .all_ops()
        .filter_map(|op| match op {
            Op::Host(h) => Some(h.keyword()),
            _ => None,
        })
        .collect();
    let every: BTreeSet<&str> = ["assert", "deassert", "pulse", "msi"].into();
    assert_eq!(kinds, every);
    let mut model = backend::open("model").unwrap();
    let expected = model.run(&scenario).unwrap();
    assert_eq!(
        deliveries(&expected),
        [(2, 0x40), (4, 0x40), (5, 0x41), (6, 0x50)]
    );
    let mut others: Vec<Box<dyn Backend>> = vec![backend::open("sim:none").unwrap()];
    for (name, shape) in [("hvf", Shape::Full), ("hvf-split", Shape::Split)] {
        others.push(Box::new(
            HvfBackend::new(
                Double::new(Quirks::empty()),
                name,
                shape,
                Workarounds::empty(),
            )
            .unwrap(),
        ));
    }
    for mut b in others {
        let mut want = expected.clone();
        want.backend = b.name().to_string().into();
        assert_eq!(b.run(&scenario).unwrap(), want, "{}", b.name());
    }
}

/// The ISA line host ops of issue 15 (through the 8259 pair): every
/// backend without a VM runs them as the model does, but the HVF ones,
/// which refuse them (no `hv_vm_atpic_*` path yet) through `unsupported`.
const EVERY_ISA_HOST_OP: &str = "\
handler 0x31: pic-write 0x20 0x20
handler 0x33: isa-deassert 3; pic-write 0x20 0x20
pic-write 0x20 0x11
pic-write 0x21 0x30
pic-write 0x21 0x04
pic-write 0x21 0x01
pic-write 0x4d0 0x08
pic-write 0x21 0xf5
lapic-write 0x350 0x700
isa-assert 1
isa-deassert 1
isa-pulse 1
isa-assert 3
";

#[test]
fn every_isa_host_op_runs_on_the_model_and_sim_and_hvf_refuses_them() {
    let scenario = parse(EVERY_ISA_HOST_OP).unwrap();
    let kinds: BTreeSet<&str> = scenario
        .all_ops()
        .filter_map(|op| match op {
            Op::Host(h) => Some(h.keyword()),
            _ => None,
        })
        .collect();
    let every: BTreeSet<&str> = ["isa-assert", "isa-deassert", "isa-pulse"].into();
    assert_eq!(kinds, every);
    let mut model = backend::open("model").unwrap();
    let expected = model.run(&scenario).unwrap();
    assert_eq!(deliveries(&expected), [(7, 0x31), (9, 0x31), (10, 0x33)]);
    let mut sim = backend::open("sim:none").unwrap();
    let mut want = expected.clone();
    want.backend = sim.name().to_string().into();
    assert_eq!(sim.run(&scenario).unwrap(), want);
    for (name, shape) in [("hvf", Shape::Full), ("hvf-split", Shape::Split)] {
        let b = HvfBackend::new(
            Double::new(Quirks::empty()),
            name,
            shape,
            Workarounds::empty(),
        )
        .unwrap();
        let why = b.unsupported(&scenario).expect("refused");
        assert!(why.contains("hv_vm_atpic"), "{name}: {why}");
    }
}
