//! The real-bug benchmark's data (docs/real-bugs.json) and regression
//! scenarios (`scenarios/real-bugs/`): each re-inserted bug is cited, its
//! scenario's trace on the model is the committed fixed behaviour, the
//! scenario diverges with the bug's shape switched on and agrees without
//! it, and diagnosis names the rule the bug breaks.

mod common;

use common::*;
use irqdiff::backend::{model::ModelBackend, Backend};
use irqdiff::oracle::{compare, Verdict};
use irqdiff::real_bugs;
use irqdiff::trace::Outcome;

#[test]
fn at_least_twenty_bugs_are_reinserted_each_cited_with_a_committed_scenario() {
    let all = real_bugs::all();
    assert!(all.len() >= 30, "{}", all.len());
    let reinserted = real_bugs::reinserted();
    assert!(reinserted.len() >= 20, "{}", reinserted.len());
    let files = scenario_files("real-bugs");
    assert_eq!(files.len(), reinserted.len(), "one scenario per bug");
    for bug in &reinserted {
        assert_eq!(bug.commit.len(), 40, "{}: a full hash", bug.name);
        assert!(bug.commit.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(bug.repository.starts_with("https://"), "{}", bug.name);
        assert!(bug.source().ends_with(&bug.commit));
        assert!(!bug.before.is_empty() && !bug.after.is_empty());
        assert!(bug.expressible, "{}", bug.name);
        assert!(!bug.deviations().unwrap().is_empty(), "{}", bug.name);
        let path = root().join(bug.regression.as_deref().expect("a regression path"));
        // The committed file is the JSON's scenario, with its citation.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&bug.commit), "{}", path.display());
        assert_eq!(
            load(&path),
            bug.regression_scenario().unwrap(),
            "{}",
            bug.name
        );
    }
}

#[test]
fn each_real_bug_scenario_diverges_on_its_shape_and_agrees_without_it() {
    for bug in real_bugs::reinserted() {
        let path = root().join(bug.regression.as_deref().unwrap());
        let scenario = load(&path);
        // Without the bug: the model's trace is the committed fixed behaviour.
        let fixed = ModelBackend::new().run(&scenario).expect("model runs");
        let expected = expected(&path, None)
            .unwrap_or_else(|| panic!("{} has no expected trace", path.display()));
        assert_eq!(fixed, expected, "{}", bug.name);
        assert_eq!(fixed.outcome, Outcome::Completed, "{}", bug.name);
        let mut none = irqdiff::backend::open("sim:none").unwrap();
        assert_eq!(
            compare(&fixed, &none.run_to_trace(&scenario)),
            Verdict::Agree,
            "{}",
            bug.name
        );
        // With it: a divergence, which diagnosis puts on the bug's rule.
        let mut buggy = irqdiff::backend::open(&bug.backend()).unwrap();
        let observed = buggy.run_to_trace(&scenario);
        assert!(
            matches!(compare(&fixed, &observed), Verdict::Diverge(_)),
            "{} agrees on {}",
            bug.name,
            bug.backend()
        );
        let diagnosis = irqdiff::diagnose::diagnose(buggy.as_mut(), &scenario, &observed, &[])
            .unwrap_or_else(|| panic!("{}: unexplained", bug.name));
        let mut rules: Vec<String> = diagnosis
            .iter()
            .map(|d| d.rule.name().to_string())
            .collect();
        rules.sort();
        rules.dedup();
        assert_eq!(rules, bug.rules(), "{}: {diagnosis:?}", bug.name);
    }
}

#[test]
fn the_benchmark_finds_a_bug_by_campaign_and_names_its_rule() {
    let bug = real_bugs::reinserted()
        .into_iter()
        .find(|b| b.name == "acrn-vlapic-ppr-stale-on-tpr-raise")
        .unwrap();
    let row = real_bugs::run_one(&bug, 2000).unwrap();
    assert_eq!(row["found"], true, "{row}");
    assert!(row["cases_to_find"].as_u64().unwrap() <= 2000);
    assert_eq!(row["diagnosed_rule"], serde_json::json!(["held-by-ppr"]));
    assert_eq!(row["diagnosed_right"], true);
    assert_eq!(row["scenario_diverges"], true);
    assert_eq!(
        row["source"],
        "https://github.com/projectacrn/acrn-hypervisor/commit/86f5993bc9aac58bb3fa504296d95fad8d4f7f27"
    );
}
