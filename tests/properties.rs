//! Property tests, sized for CI. Failures persist to `proptest-regressions/`
//! at the workspace root (committed), so a found counterexample is replayed
//! by every later run.

mod common;

use arbitrary::{Arbitrary, Unstructured};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use irqdiff::backend::{self, model::ModelBackend, Backend};
use irqdiff::oracle::{compare, Ruling, Verdict};
use irqdiff::scenario::generate::{case_seed, random, GenConfig};
use irqdiff::scenario::{parse, print::print, Scenario};
use irqdiff::trace::{EventKind, Outcome, STORM_LIMIT};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// A raw scenario (any op, any value) from bytes.
fn raw(bytes: &[u8]) -> Scenario {
    Scenario::arbitrary(&mut Unstructured::new(bytes)).unwrap_or_default()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn print_then_parse_is_identity(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = raw(&bytes);
        let text = print(&s);
        prop_assert_eq!(parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?, s);
        // And printing is canonical: a second round trip changes nothing.
        prop_assert_eq!(print(&parse(&text).unwrap()), text);
    }

    #[test]
    fn parse_never_panics_and_errors_point_into_the_input(text in "[ -~\n#:;=]{0,200}") {
        if let Err(e) = parse(&text) {
            let lines: Vec<&str> = text.lines().collect();
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.line <= lines.len().max(1), "line {} of {}", e.line, lines.len());
            let width = lines.get(e.line - 1).map_or(0, |l| l.chars().count());
            prop_assert!(e.column <= width + 1, "column {} of a {}-char line", e.column, width);
        }
    }

    #[test]
    fn mutated_valid_scenarios_parse_or_fail_cleanly(seed in any::<u64>(), cut in 0usize..400, junk in "[ -~]{0,8}") {
        let mut text = print(&random(seed, &GenConfig::default()));
        let at = cut.min(text.len());
        let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.insert_str(at, &junk);
        let _ = parse(&text);
    }

    #[test]
    fn model_invariants_hold_on_any_scenario(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let s = raw(&bytes);
        let (trace, decisions) = ModelBackend::new().run_explained(&s);
        // Deterministic.
        prop_assert_eq!(&ModelBackend::new().run_explained(&s).0, &trace);
        let deliveries = trace.deliveries().count();
        prop_assert!(deliveries <= STORM_LIMIT);
        match trace.outcome {
            Outcome::Storm => prop_assert_eq!(deliveries, STORM_LIMIT),
            Outcome::Hang => prop_assert!(trace.hang_op.is_some_and(|op| op < s.ops.len())),
            Outcome::Completed => prop_assert!(trace.hang_op.is_none()),
            Outcome::Error => prop_assert!(trace.error.is_some()),
        }
        // Events are in op order and name existing ops.
        let ops: Vec<usize> = trace.events.iter().map(|e| e.op).collect();
        prop_assert!(ops.windows(2).all(|w| w[0] <= w[1]));
        prop_assert!(ops.iter().all(|&op| op < s.ops.len()));
        // Every delivery has the decision that caused it.
        for (i, e) in trace.events.iter().enumerate() {
            if matches!(e.kind, EventKind::Deliver { .. }) {
                prop_assert!(decisions.iter().any(|d| d.event_index == Some(i)));
            }
        }
    }

    #[test]
    fn model_and_sim_none_agree(seed in any::<u64>()) {
        let s = random(seed, &GenConfig::default());
        let mut sim = backend::open("sim:none").unwrap();
        let verdict = compare(&ModelBackend::new().run(&s).unwrap(), &sim.run(&s).unwrap());
        prop_assert!(matches!(verdict, Verdict::Agree | Verdict::Inconclusive(_)), "{verdict:?}\n{s}");
    }
}

/// Model and `kvm` agree, up to this KVM's documented divergences: every
/// divergence on a fixed set of generated scenarios must be labelled by
/// `oracle::known` (docs/known-divergences.md); an unlabelled one is a new
/// finding and fails the test.
#[test]
fn model_and_kvm_agree_up_to_documented_divergences() {
    if !common::kvm_or_skip("model_and_kvm_agree_up_to_documented_divergences") {
        return;
    }
    for name in ["kvm", "kvm-split"] {
        let mut differ = irqdiff::differ::Differ::open(name).unwrap();
        let (mut agree, mut known, mut inconclusive) = (0, 0, 0);
        for i in 0..200 {
            let mut s = random(case_seed(2026, i), &GenConfig::default());
            differ.target.fit(&mut s);
            let judgement = differ.diff(&s);
            let observed = &judgement.observed;
            match &judgement.ruling {
                Ruling::Agree => agree += 1,
                // A guest fault (e.g. a reserved x2APIC MSR) ends both runs in
                // an error: nothing to compare.
                Ruling::Inconclusive(_) => inconclusive += 1,
                Ruling::Diverge {
                    divergence: d,
                    signature: sig,
                } => {
                    let label = irqdiff::known::label(name, sig, &s, observed);
                    assert!(
                        label.is_some(),
                        "{name}: undocumented divergence {sig}: {d}\n{s}\n{}",
                        observed.to_json()
                    );
                    known += 1;
                }
            }
        }
        eprintln!("{name}: {agree} agree, {known} documented divergences, {inconclusive} inconclusive, of 200");
        assert!(
            inconclusive < 40,
            "{name}: too many inconclusive runs ({inconclusive})"
        );
    }
}
