//! Real interrupt-controller bugs, fixed in KVM, QEMU, Xen, ACRN,
//! cloud-hypervisor or crosvm (docs/real-bugs.md, docs/real-bugs.json),
//! re-inserted into the model: each bug that the scenario language can
//! express has a *shape*, the set of model deviations
//! ([`crate::model::Deviation`], rules broken as the buggy code broke them)
//! under which the model behaves as the code did before its fix, and a
//! regression scenario `scenarios/real-bugs/NAME.irq` whose expected trace
//! (`NAME.expected.json`) is the fixed behaviour.
//!
//! `irqdiff bench real-bugs` ([`bench`]) runs, for each, the regression
//! scenario and a short campaign on `sim:SHAPE` against the model, and
//! says whether the bug was found, after how many cases, how long to its
//! minimised repro, and which rule the diagnosis names.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::differ::Differ;
use crate::model::Deviation;
use crate::scenario::generate::{case_seed, random, GenConfig};
use crate::scenario::Scenario;

/// docs/real-bugs.json, the list the benchmark reads.
pub const JSON: &str = include_str!("../docs/real-bugs.json");

/// One entry of docs/real-bugs.json (the fields the benchmark uses).
#[derive(Clone, Debug, Deserialize)]
pub struct RealBug {
    pub name: String,
    pub project: String,
    pub repository: String,
    pub commit: String,
    pub title: String,
    pub before: String,
    pub after: String,
    /// The `.irq` text of the regression scenario (none if not expressible).
    #[serde(default)]
    pub scenario: Option<String>,
    pub expressible: bool,
    /// The deviations (`rule/mode`) that re-insert the bug; empty: not
    /// re-inserted.
    #[serde(default)]
    pub shape: Vec<String>,
    /// The committed regression scenario, if any.
    #[serde(default)]
    pub regression: Option<String>,
}

impl RealBug {
    /// The fixing commit's address.
    pub fn source(&self) -> String {
        format!(
            "{}/commit/{}",
            self.repository.trim_end_matches('/'),
            self.commit
        )
    }

    /// The deviations of the shape.
    pub fn deviations(&self) -> Result<Vec<Deviation>, String> {
        self.shape
            .iter()
            .map(|name| {
                Deviation::parse(name)
                    .filter(|d| d.description().is_some())
                    .ok_or_else(|| format!("{}: unknown deviation `{name}`", self.name))
            })
            .collect()
    }

    /// The rules the bug breaks (those of its shape), sorted.
    pub fn rules(&self) -> Vec<String> {
        let mut rules: Vec<String> = self
            .deviations()
            .unwrap_or_default()
            .iter()
            .map(|d| d.rule.name().to_string())
            .collect();
        rules.sort();
        rules.dedup();
        rules
    }

    /// The `sim:` backend with the bug re-inserted.
    pub fn backend(&self) -> String {
        format!("sim:{}", self.shape.join(","))
    }

    /// The regression scenario, parsed.
    pub fn regression_scenario(&self) -> Result<Scenario, String> {
        let text = self
            .scenario
            .as_deref()
            .ok_or_else(|| format!("{}: no scenario (not expressible yet)", self.name))?;
        crate::scenario::parse(text).map_err(|e| format!("{}: {e}", self.name))
    }
}

/// Every bug of docs/real-bugs.json.
pub fn all() -> Vec<RealBug> {
    serde_json::from_str(JSON).expect("docs/real-bugs.json parses (tests/real_bugs.rs)")
}

/// The bugs re-inserted into the model (with a shape).
pub fn reinserted() -> Vec<RealBug> {
    all().into_iter().filter(|b| !b.shape.is_empty()).collect()
}

/// The rules a diagnosis names, sorted.
fn rule_names(set: &[Deviation]) -> Vec<String> {
    let mut rules: Vec<String> = set.iter().map(|d| d.rule.name().to_string()).collect();
    rules.sort();
    rules.dedup();
    rules
}

/// One bug through the benchmark: its regression scenario, then a
/// campaign of at most `max_cases` random cases until the first
/// divergence, minimised and diagnosed.
pub fn run_one(bug: &RealBug, max_cases: u64) -> Result<Value, String> {
    let mut differ = Differ::open(&bug.backend()).map_err(|e| e.to_string())?;
    let scenario = bug.regression_scenario()?;
    let judged = differ.diff(&scenario);
    let observed = judged.observed.clone();
    let scenario_signature = judged.into_signature();
    let scenario_diagnosis = scenario_signature
        .as_ref()
        .and_then(|_| crate::diagnose::diagnose(differ.target.as_mut(), &scenario, &observed, &[]))
        .map(|set| rule_names(&set));
    let generator = GenConfig::default();
    let start = Instant::now();
    let mut found = None;
    for i in 0..max_cases {
        let mut s = random(case_seed(0, i), &generator);
        differ.target.fit(&mut s);
        if let Some(sig) = differ.diff(&s).into_signature() {
            found = Some((i + 1, s, sig));
            break;
        }
    }
    let (cases_to_find, seconds_to_minimised, diagnosed, minimised_ops) = match found {
        Some((n, s, sig)) => match differ.finding(&s, sig) {
            Some(f) => {
                let seconds = start.elapsed().as_secs_f64();
                let diagnosis = crate::diagnose::diagnose(
                    differ.target.as_mut(),
                    &f.minimized,
                    &f.observed,
                    &[],
                );
                (
                    Some(n),
                    Some(seconds),
                    diagnosis.map(|set| rule_names(&set)),
                    Some(f.minimized.ops.len()),
                )
            }
            None => (Some(n), None, None, None),
        },
        None => (None, None, None, None),
    };
    let rules = bug.rules();
    let right = |d: &Option<Vec<String>>| d.as_ref() == Some(&rules);
    Ok(json!({
        "name": bug.name,
        "source": bug.source(),
        "shape": bug.shape,
        "rule": rules,
        "found": cases_to_find.is_some(),
        "cases_to_find": cases_to_find,
        "seconds_to_minimised": seconds_to_minimised,
        "minimised_ops": minimised_ops,
        "diagnosed_rule": diagnosed,
        "diagnosed_right": right(&diagnosed),
        "scenario": bug.regression,
        "scenario_diverges": scenario_signature.is_some(),
        "scenario_signature": scenario_signature.map(|s| s.slug()),
        "scenario_diagnosed_rule": scenario_diagnosis,
        "scenario_diagnosed_right": right(&scenario_diagnosis),
    }))
}

/// `irqdiff bench real-bugs`: every re-inserted bug through [`run_one`].
pub fn bench(max_cases: u64) -> Value {
    let listed = all();
    let mut rows = Vec::new();
    for bug in listed.iter().filter(|b| !b.shape.is_empty()) {
        rows.push(
            run_one(bug, max_cases).unwrap_or_else(|e| json!({ "name": bug.name, "error": e })),
        );
    }
    let count = |key: &str| rows.iter().filter(|r| r[key] == json!(true)).count();
    let not_reinserted: Vec<&str> = listed
        .iter()
        .filter(|b| b.shape.is_empty())
        .map(|b| b.name.as_str())
        .collect();
    json!({
        "benchmark": "real-bugs",
        "listed": listed.len(),
        "reinserted": rows.len(),
        "found": count("found"),
        "diagnosed_right": count("diagnosed_right"),
        "scenarios_diverging": count("scenario_diverges"),
        "scenarios_diagnosed_right": count("scenario_diagnosed_right"),
        "max_cases_per_bug": max_cases,
        "not_reinserted": not_reinserted,
        "bugs": rows,
    })
}
