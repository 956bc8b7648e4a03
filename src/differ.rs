//! The diff-and-judge step: one scenario on a backend and on the model, the
//! oracle's ruling, and the minimisation of a divergence into a [`Finding`].
//!
//! `diff`, `minimize`, `emit`, the benchmarks, the libFuzzer targets and the
//! campaign all go through [`Differ`]; it knows nothing of campaigns.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::{self, model::ModelBackend, Backend};
use crate::known::Known;
use crate::minimize::minimize;
use crate::oracle::{compare, Class, Divergence, Judgement, Ruling, Signature, Triage, Verdict};
use crate::scenario::{Op, Scenario};
use crate::trace::Trace;

/// One unique divergence, as written to the findings directory. It
/// serialises (scenarios as `.irq` text, the label as its id) so that a
/// campaign worker process can hand it to the process that writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    pub signature: Signature,
    #[serde(with = "scenario_text")]
    pub original: Scenario,
    #[serde(with = "scenario_text")]
    pub minimized: Scenario,
    pub divergence: Divergence,
    pub expected: Trace,
    pub observed: Trace,
    /// Where it was written (`None` if another process wrote it first).
    pub dir: Option<PathBuf>,
    /// How many times the minimiser ran both backends.
    pub minimize_runs: usize,
    /// The hypervisor calls of the minimised run, in order.
    pub calls: Vec<String>,
    /// What a third implementation says (`--against`).
    pub triage: Option<Triage>,
    /// The documented behaviour of the backend that explains it, if any
    /// (the finding is still reported: labelled, never dropped).
    #[serde(with = "known_id")]
    pub known: Option<Known>,
}

/// Runs both backends on a scenario and rules on the difference.
pub struct Differ {
    pub model: ModelBackend,
    pub target: Box<dyn Backend>,
}

impl Differ {
    pub fn open(target: &str) -> Result<Differ, backend::OpenError> {
        Ok(Differ::with_target(backend::open(target)?))
    }

    /// A differ around an already opened target.
    pub fn with_target(target: Box<dyn Backend>) -> Differ {
        Differ {
            model: ModelBackend::new(),
            target,
        }
    }

    /// Runs `scenario` on the target and judges it against the model.
    pub fn diff(&mut self, scenario: &Scenario) -> Judgement {
        let observed = self.target.run_to_trace(scenario);
        self.judge(scenario, observed)
    }

    /// [`Differ::diff`] for a trace the target already produced (a batch).
    pub fn judge(&mut self, scenario: &Scenario, observed: Trace) -> Judgement {
        let (expected, decisions) = self.model.run_explained(scenario);
        let ruling = match compare(&expected, &observed) {
            Verdict::Agree => Ruling::Agree,
            Verdict::Inconclusive(why) => Ruling::Inconclusive(why),
            Verdict::Diverge(divergence) => {
                let deciding = backend::model::deciding_decision(&decisions, &divergence)
                    .map(|x| (x.cause, x.rule.name()));
                let signature = divergence.signature(scenario, deciding);
                Ruling::Diverge {
                    divergence,
                    signature,
                }
            }
        };
        Judgement {
            expected,
            observed,
            ruling,
        }
    }

    /// Shrinks a diverging scenario keeping its signature.
    pub fn minimize(&mut self, scenario: &Scenario, signature: &Signature) -> (Scenario, usize) {
        let m = minimize(scenario, signature, |s| self.diff(s).into_signature());
        (m.scenario, m.runs)
    }

    /// Minimises and packages one divergence as a finding (not yet written).
    ///
    /// A state difference is often the shadow of a delivery difference: if
    /// the minimised program still diverges without its snapshots, the
    /// finding takes that divergence's signature (its root cause), which
    /// the caller may already know.
    pub fn finding(&mut self, original: &Scenario, signature: Signature) -> Option<Finding> {
        let (mut minimized, mut runs) = self.minimize(original, &signature);
        let mut signature = signature;
        if signature.class == Class::StateMismatch {
            let mut stripped = minimized.clone();
            stripped.ops.retain(|op| *op != Op::Snapshot);
            for body in stripped.handlers.values_mut() {
                body.retain(|op| *op != Op::Snapshot);
            }
            if let Some(root) = self.diff(&stripped).into_signature() {
                let (again, more) = self.minimize(&stripped, &root);
                (minimized, signature) = (again, root);
                runs += more;
            }
        }
        let judgement = self.diff(&minimized);
        let Ruling::Diverge { divergence, .. } = judgement.ruling else {
            return None; // flaky: the minimised program no longer diverges
        };
        Some(Finding {
            signature,
            original: original.clone(),
            minimized,
            divergence,
            expected: judgement.expected,
            observed: judgement.observed,
            dir: None,
            minimize_runs: runs,
            calls: self.target.calls(),
            triage: None,
            known: None,
        })
    }
}

/// A scenario on the wire: its `.irq` text (print then parse is the identity).
mod scenario_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::scenario::{parse, print::print, Scenario};

    pub fn serialize<S: Serializer>(scenario: &Scenario, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&print(scenario))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Scenario, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(|e| {
            D::Error::custom(format!(
                "scenario line {} column {}: expected {}, found {}",
                e.line, e.column, e.expected, e.found
            ))
        })
    }
}

/// A documented behaviour on the wire: its id.
mod known_id {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use crate::known::{self, Known};

    pub fn serialize<S: Serializer>(label: &Option<Known>, s: S) -> Result<S::Ok, S::Error> {
        label.map(|k| k.id).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Known>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(id) => known::by_id(&id)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("unknown documented behaviour `{id}`"))),
        }
    }
}
