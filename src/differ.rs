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
use crate::oracle::{
    compare_scenario, Class, Divergence, Judgement, Ruling, Signature, Triage, Verdict,
};
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
    /// The deviations (`rule/mode` names) under which the model reproduces
    /// the backend's trace of the minimised scenario; empty: unexplained
    /// ([`crate::diagnose`]).
    #[serde(default)]
    pub explained_by: Vec<String>,
    /// The target's trace of the minimised scenario with a snapshot after
    /// every op ([`crate::diagnose::with_snapshots`]): the evidence that
    /// confirms an explanation on other findings.
    #[serde(default)]
    pub probe: Option<Trace>,
    /// When `observed` was unexplained and a re-run of the minimised
    /// scenario on the target gave another trace
    /// ([`crate::diagnose::diagnose_reruns`]): that trace, which
    /// `explained_by` explains if it is set. The backend's timing varies
    /// between runs of this program (docs/causes.md, "Timing").
    #[serde(default)]
    pub rerun: Option<Trace>,
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
        // Most runs agree: the decisions are recorded only to explain a
        // divergence, in a second run of the (deterministic) model.
        let expected = self.model.run_to_trace(scenario);
        let ruling = match compare_scenario(scenario, &expected, &observed) {
            Verdict::Agree => Ruling::Agree,
            Verdict::Inconclusive(why) => Ruling::Inconclusive(why),
            Verdict::Diverge(divergence) => {
                let (_, decisions) = self.model.run_explained(scenario);
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

    /// [`Differ::diff`] for its signature only; the model's trace goes
    /// back to the model ([`ModelBackend::recycle`]).
    pub fn diff_signature(&mut self, scenario: &Scenario) -> Option<Signature> {
        let judgement = self.diff(scenario);
        self.model.recycle(judgement.expected);
        match judgement.ruling {
            Ruling::Diverge { signature, .. } => Some(signature),
            _ => None,
        }
    }

    /// Shrinks a diverging scenario keeping its signature.
    pub fn minimize(&mut self, scenario: &Scenario, signature: &Signature) -> (Scenario, usize) {
        let m = minimize(scenario, signature, |s| self.diff_signature(s));
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
            explained_by: Vec::new(),
            probe: None,
            rerun: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn finding() -> Finding {
        let scenario = crate::scenario::parse(
            "handler 0x82: deassert 14; eoi\nroute 14 vector=0x82 level masked\nassert 14\nunmask 14\n",
        )
        .unwrap();
        let mut differ = Differ::open("sim:hvf-known").unwrap();
        let signature = differ.diff(&scenario).into_signature().expect("diverges");
        let mut finding = differ.finding(&scenario, signature).expect("reproduces");
        finding.known = Some(crate::known::KVM_ISR_NOT_SET);
        finding
    }

    #[test]
    fn a_finding_crosses_a_pipe_unchanged() {
        let f = finding();
        let json = serde_json::to_string(&f).unwrap();
        let back: Finding = serde_json::from_str(&json).unwrap();
        assert_eq!(back.original, f.original);
        assert_eq!(back.minimized, f.minimized);
        assert_eq!(back.signature, f.signature);
        assert_eq!(back.divergence, f.divergence);
        assert_eq!(back.known, Some(crate::known::KVM_ISR_NOT_SET));
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn an_unknown_label_or_a_bad_scenario_is_an_error_naming_it() {
        let json = serde_json::to_string(&finding()).unwrap();
        let bad_label = json.replace("\"kvm-isr-not-set\"", "\"nope\"");
        let e = serde_json::from_str::<Finding>(&bad_label).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown documented behaviour `nope`"),
            "{e}"
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut value = value;
        value["minimized"] = "frobnicate 3\n".into();
        let e = serde_json::from_value::<Finding>(value).unwrap_err();
        assert!(e.to_string().contains("scenario line 1 column 1"), "{e}");
    }

    #[test]
    fn a_divergence_carries_its_signature_and_agreement_none() {
        let mut differ = Differ::open("sim:hvf-known").unwrap();
        let agree =
            differ.diff(&crate::scenario::parse("route 14 vector=0x76\npulse 14\n").unwrap());
        assert_eq!(agree.ruling, Ruling::Agree);
        assert_eq!(agree.signature(), None);
        let f = finding();
        let judgement = differ.diff(&f.minimized);
        assert_eq!(judgement.signature(), Some(&f.signature));
        assert_eq!(judgement.divergence(), Some(&f.divergence));
    }
}
