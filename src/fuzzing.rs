//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/`), kept in
//! the library so that the targets are a line each and stay compiled by the
//! ordinary build.

use std::cell::RefCell;

use arbitrary::Unstructured;

use crate::backend::model::ModelBackend;
use crate::differ::Differ;
use crate::oracle::Ruling;
use crate::scenario::generate::{generate, GenConfig};
use crate::scenario::{parse as parse_scenario, print::print};
use crate::trace::{Outcome, STORM_LIMIT};

/// `parse`: no input panics the parser; parse → print → parse is the identity.
pub fn parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = parse_scenario(text) {
        let printed = print(&s);
        let again = parse_scenario(&printed).expect("printed scenarios parse");
        assert_eq!(again, s, "round trip changed the scenario:\n{printed}");
    }
}

/// The scenario an input stands for: an `.irq` text as is (so `scenarios/`
/// seeds the corpus), anything else through the structured generator.
fn scenario_of(data: &[u8], cfg: &GenConfig) -> Option<crate::scenario::Scenario> {
    if let Some(s) = std::str::from_utf8(data)
        .ok()
        .and_then(|t| parse_scenario(t).ok())
    {
        if !s.ops.is_empty() {
            return Some(s);
        }
    }
    generate(&mut Unstructured::new(data), cfg).ok()
}

/// `model`: the model never panics and its invariants hold. The structured
/// generator reads the bytes, so the model's own coverage steers libFuzzer
/// through interrupt-controller states.
pub fn model(data: &[u8]) {
    let Some(s) = scenario_of(
        data,
        &GenConfig {
            max_ops: 64,
            ..GenConfig::default()
        },
    ) else {
        return;
    };
    let (trace, decisions) = ModelBackend::new().run_explained(&s);
    assert!(trace.deliveries().count() <= STORM_LIMIT);
    if trace.outcome == Outcome::Storm {
        assert_eq!(trace.deliveries().count(), STORM_LIMIT);
    }
    if let Some(op) = trace.hang_op {
        assert!(op < s.ops.len());
    }
    assert!(trace.events.windows(2).all(|w| w[0].op <= w[1].op));
    let delivered = trace.deliveries().count();
    assert_eq!(
        decisions.iter().filter(|d| d.event_index.is_some()).count(),
        delivered
    );
}

thread_local! {
    static DIFFER: RefCell<Option<(String, Differ)>> = const { RefCell::new(None) };
}

/// `diff_*`: runs a generated scenario on `backend` and the model; panics
/// (so libFuzzer saves the input) on a divergence that is not a documented
/// behaviour of the backend. Reuses one VM per fuzzing process.
pub fn diff(backend: &str, data: &[u8]) {
    let Some(mut s) = scenario_of(data, &GenConfig::default()) else {
        return;
    };
    DIFFER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(name, _)| name != backend) {
            let differ =
                Differ::open(backend).unwrap_or_else(|e| panic!("cannot open {backend}: {e}"));
            *cell = Some((backend.to_string(), differ));
        }
        let (_, differ) = cell.as_mut().expect("opened above");
        differ.target.fit(&mut s);
        let judgement = differ.diff(&s);
        if let Ruling::Diverge {
            divergence,
            signature,
        } = &judgement.ruling
        {
            if crate::known::label(backend, signature, &s, &judgement.observed).is_none() {
                panic!(
                    "divergence on {backend}: {signature}: {divergence}\n{}\nobserved: {}",
                    print(&s),
                    judgement.observed.to_json()
                );
            }
        }
    });
}
