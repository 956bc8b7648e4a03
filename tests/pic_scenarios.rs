//! The 8259 pair and ExtINT scenarios of issue 15 (`scenarios/pic/`): each
//! has its model trace in `NAME.expected.json`, and runs on `kvm`,
//! `kvm-split` and `qemu-tcg`, where it either gives the model's trace or
//! the one in `NAME.BACKEND.expected.json`, whose divergence carries a
//! label documented in docs/known-divergences.md ([`LABELS`]).

mod common;

use std::path::PathBuf;

use common::*;
use irqdiff::backend::{self, Backend};
use irqdiff::trace::Trace;

/// (scenario stem, backend, label): each backend trace that is not the
/// model's, and the section of docs/known-divergences.md that explains it.
const LABELS: &[(&str, &str, &str)] = &[
    ("elcr-level-retrigger", "kvm", "kvm-extint-deferred"),
    ("elcr-level-retrigger", "kvm-split", "kvm-extint-deferred"),
    ("extint-ioapic-pin0", "kvm", "kvm-extint-message-dropped"),
    (
        "extint-ioapic-pin0",
        "kvm-split",
        "kvm-extint-message-dropped",
    ),
    ("extint-ioapic-pin0", "qemu-tcg", "qemu-pic-int-not-on-pin0"),
    ("lint0-nmi", "kvm", "kvm-lint0-extint-only"),
    ("lint0-nmi", "kvm-split", "kvm-lint0-extint-only"),
    ("lint0-nmi", "qemu-tcg", "qemu-lint0-nmi-every-update"),
    ("lint0-unmask-pending", "kvm", "kvm-extint-deferred"),
    ("lint0-unmask-pending", "kvm-split", "kvm-extint-deferred"),
    ("poll", "kvm", "kvm-pic-poll"),
    ("specific-eoi-nesting", "kvm", "kvm-extint-deferred"),
    ("specific-eoi-nesting", "kvm-split", "kvm-extint-deferred"),
    ("spurious-irq7", "kvm", "kvm-extint-message-dropped"),
    ("spurious-irq7", "kvm-split", "kvm-extint-message-dropped"),
    ("spurious-irq7", "qemu-tcg", "qemu-pic-int-not-on-pin0"),
];

fn pic_scenarios() -> Vec<PathBuf> {
    scenario_files("pic")
}

fn stem(path: &std::path::Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// What two traces of different backends must share.
fn same(a: &Trace, b: &Trace) -> bool {
    a.outcome == b.outcome && a.hang_op == b.hang_op && a.error == b.error && a.events == b.events
}

/// kvm-extint-deferred is timing-dependent on this host (as
/// kvm-deferred-injection is): a delivery may come at a later op or not at
/// all, but nothing the model does not deliver.
fn only_deferred(observed: &Trace, model: &Trace) -> bool {
    let mut wanted: Vec<u8> = model.deliveries().map(|(_, v)| v).collect();
    observed.outcome == model.outcome
        && observed.deliveries().all(|(_, v)| {
            let found = wanted.iter().position(|&w| w == v);
            found.map(|i| wanted.remove(i)).is_some()
        })
}

#[test]
fn there_are_at_least_four_pic_scenarios_each_with_its_model_trace() {
    let paths = pic_scenarios();
    assert!(paths.len() >= 4, "{paths:?}");
    let mut model = backend::open("model").expect("model");
    for path in &paths {
        let expected =
            expected(path, None).unwrap_or_else(|| panic!("{}: no .expected.json", path.display()));
        let observed = model.execute(&load(path)).expect("model runs");
        assert!(
            same(&observed, &expected),
            "{}: the model gives {}",
            path.display(),
            observed.to_json()
        );
        assert!(
            observed.deliveries().count() > 0 || stem(path) == "poll",
            "{}: nothing delivered",
            path.display()
        );
    }
}

#[test]
fn every_label_is_documented_and_has_its_trace() {
    let doc = std::fs::read_to_string(root().join("docs/known-divergences.md")).expect("doc");
    for (stem, backend, label) in LABELS {
        assert!(
            doc.contains(&format!("### {label}\n")),
            "docs/known-divergences.md has no section {label}"
        );
        let path = root().join(format!("scenarios/pic/{stem}.irq"));
        assert!(
            expected(&path, Some(backend)).is_some(),
            "{stem}: no {backend} expected trace for {label}"
        );
    }
}

/// Runs every PIC scenario on `name` and holds each to its committed
/// trace: the model's, or the backend's own with a label.
fn holds_to_the_committed_traces(name: &str, batched: bool) {
    let paths = pic_scenarios();
    let scenarios: Vec<_> = paths.iter().map(|p| load(p)).collect();
    let mut b: Box<dyn Backend> = backend::open(name).unwrap_or_else(|e| panic!("{e}"));
    let traces: Vec<Trace> = if batched {
        b.run_batch(&scenarios)
    } else {
        scenarios
            .iter()
            .map(|s| b.execute(s).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect()
    };
    let mut agreed = 0;
    for (path, observed) in paths.iter().zip(&traces) {
        let stem = stem(path);
        let model = expected(path, None).expect("model trace");
        let labelled = LABELS
            .iter()
            .find(|(s, b, _)| *s == stem && *b == name)
            .map(|(_, _, l)| *l);
        match (expected(path, Some(name)), labelled) {
            (Some(own), Some(label)) => assert!(
                same(observed, &own)
                    || same(observed, &model)
                    || (label == "kvm-extint-deferred" && only_deferred(observed, &model)),
                "{name}: {stem} ({label}) gives {}",
                observed.to_json()
            ),
            (None, None) => {
                assert!(
                    same(observed, &model),
                    "{name}: {stem} diverges from the model, undocumented: {}",
                    observed.to_json()
                );
                agreed += 1;
            }
            _ => panic!("{name}: {stem}: a backend trace needs a label in LABELS, and back"),
        }
    }
    eprintln!("{name}: {agreed} of {} agree with the model", paths.len());
}

#[test]
fn pic_scenarios_on_kvm_agree_or_are_labelled() {
    if !kvm_or_skip("pic_scenarios_on_kvm_agree_or_are_labelled") {
        return;
    }
    holds_to_the_committed_traces("kvm", false);
}

#[test]
fn pic_scenarios_on_kvm_split_agree_or_are_labelled() {
    if !kvm_or_skip("pic_scenarios_on_kvm_split_agree_or_are_labelled") {
        return;
    }
    holds_to_the_committed_traces("kvm-split", false);
}

#[test]
fn pic_scenarios_on_qemu_tcg_agree_or_are_labelled() {
    if !qemu_or_skip("pic_scenarios_on_qemu_tcg_agree_or_are_labelled") {
        return;
    }
    holds_to_the_committed_traces("qemu-tcg", false);
}

/// The HVF backends refuse the pair through the backend layer's
/// `unsupported` (no `hv_vm_atpic_*` path yet), naming it.
#[test]
fn the_hvf_double_refuses_pic_scenarios_with_the_reason() {
    let path = root().join("scenarios/pic/extint-lint0-virtual-wire.irq");
    let scenario = load(&path);
    for name in ["hvf-double", "hvf-split-double"] {
        let b = backend::open(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let why = b.unsupported(&scenario).expect("refused");
        assert!(why.contains("hv_vm_atpic"), "{name}: {why}");
        // A generated scenario is fitted: its PIC ops become `nop`s.
        let mut fitted = scenario.clone();
        b.fit(&mut fitted);
        assert!(!fitted.uses_pic(), "{name}: {fitted}");
        assert_eq!(b.unsupported(&fitted), None, "{name}");
    }
}
