//! Diagnosis by model deviation: which broken spec rule makes the model
//! produce exactly what the backend did.
//!
//! A candidate bug is a [`Deviation`]: one rule of the model
//! ([`irqdiff_model::Rule`]) skipped, inverted or applied late, at the hook
//! where that rule decides. The library is derived from the rules
//! ([`Deviation::library`]), not from the `sim:` quirks. For a divergence
//! the search tries every single deviation, then every pair, and keeps the
//! first size at which the model under the deviations reproduces the
//! backend's trace exactly. A set found for one finding is tried first on
//! the next ones (confirmation), so findings with one cause group together.
//! A divergence that no set of at most [`MAX_DEVIATIONS`] explains is
//! unexplained: the most interesting kind.

use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::backend::{model::ModelBackend, Backend};
use crate::model::{Deviation, Deviations, Mode, Rule};
use crate::oracle::{compare_scenario, Verdict};
use crate::scenario::generate::{case_seed, random, GenConfig};
use crate::scenario::{Irqchip, Op, Scenario};
use crate::trace::Trace;

/// The largest deviation set searched: every single deviation and every
/// pair (the library has about thirty, so ~450 model runs of a minimised
/// scenario), then triples only around a deviation already confirmed on
/// other findings or documented for the backend (two known behaviours of a
/// host and one more, found in one program).
pub const MAX_DEVIATIONS: usize = 3;

/// Whether the model with `deviations` produces `observed` for `scenario`,
/// up to what the oracle leaves open ([`compare_scenario`]: a deviation is
/// not asked to reproduce what the spec does not define).
pub fn reproduces(scenario: &Scenario, observed: &Trace, deviations: &[Deviation]) -> bool {
    let mut model = ModelBackend::with_deviations(Deviations::of(deviations));
    let trace = model.run_to_trace(scenario);
    compare_scenario(scenario, &trace, observed) == Verdict::Agree
}

/// Every smallest deviation set (size 1, else size 2) that explains
/// `observed`; empty if none does.
pub fn explanations(scenario: &Scenario, observed: &Trace) -> Vec<Vec<Deviation>> {
    explanations_around(scenario, observed, &[])
}

/// [`explanations`], then, if no pair explains `observed`, every triple
/// that holds a deviation of one of the `confirmed` sets.
pub fn explanations_around(
    scenario: &Scenario,
    observed: &Trace,
    confirmed: &[Vec<Deviation>],
) -> Vec<Vec<Deviation>> {
    explanations_fitting(confirmed, &|set| reproduces(scenario, observed, set))
}

/// [`explanations_around`] for any test of a set (`fits`).
fn explanations_fitting(
    confirmed: &[Vec<Deviation>],
    fits: &dyn Fn(&[Deviation]) -> bool,
) -> Vec<Vec<Deviation>> {
    let library = Deviation::library();
    let singles: Vec<Vec<Deviation>> = library
        .iter()
        .map(|d| vec![*d])
        .filter(|set| fits(set))
        .collect();
    if !singles.is_empty() {
        return singles;
    }
    let mut pairs = Vec::new();
    for (i, a) in library.iter().enumerate() {
        for b in &library[i + 1..] {
            let set = vec![*a, *b];
            if fits(&set) {
                pairs.push(set);
            }
        }
    }
    if !pairs.is_empty() {
        return pairs;
    }
    let mut anchors: Vec<Deviation> = confirmed.iter().flatten().copied().collect();
    anchors.sort_unstable();
    anchors.dedup();
    let mut triples = Vec::new();
    for anchor in &anchors {
        for (i, a) in library.iter().enumerate() {
            for b in &library[i + 1..] {
                if a == anchor || b == anchor {
                    continue;
                }
                let mut set = vec![*anchor, *a, *b];
                set.sort_unstable();
                if !triples.contains(&set) && fits(&set) {
                    triples.push(set);
                }
            }
        }
    }
    triples
}

/// The explanation of one divergence: `confirmed` (the sets of causes
/// already found) are tried first, in order; otherwise the first of the
/// smallest explanations. `None`: unexplained.
pub fn explain(
    scenario: &Scenario,
    observed: &Trace,
    confirmed: &[Vec<Deviation>],
) -> Option<Vec<Deviation>> {
    if let Some(set) = confirmed
        .iter()
        .filter(|set| set.len() <= MAX_DEVIATIONS)
        .find(|set| reproduces(scenario, observed, set))
    {
        return Some(set.clone());
    }
    explanations_around(scenario, observed, confirmed)
        .into_iter()
        .next()
}

/// `scenario` with a snapshot after every top-level op: the experiment that
/// tells apart deviations that give the same deliveries (a lost EOI keeps
/// remote IRR set, a skipped re-delivery clears it).
pub fn with_snapshots(scenario: &Scenario) -> Scenario {
    let mut probe = scenario.clone();
    probe.ops = scenario
        .ops
        .iter()
        .flat_map(|op| [*op, Op::Snapshot])
        .collect();
    probe
}

/// Diagnoses a divergence the `target` showed: the smallest explanations,
/// narrowed by running [`with_snapshots`] on the target when several fit,
/// then one already `confirmed` for another finding if it is among them.
/// `None`: unexplained.
pub fn diagnose(
    target: &mut dyn Backend,
    scenario: &Scenario,
    observed: &Trace,
    confirmed: &[Vec<Deviation>],
) -> Option<Vec<Deviation>> {
    let probed = target.run_to_trace(&with_snapshots(scenario));
    diagnose_probed(scenario, observed, &probed, confirmed)
}

/// [`diagnose`] with the target's trace of [`with_snapshots`] already run.
pub fn diagnose_probed(
    scenario: &Scenario,
    observed: &Trace,
    probed: &Trace,
    confirmed: &[Vec<Deviation>],
) -> Option<Vec<Deviation>> {
    diagnose_fitting(scenario, observed, probed, confirmed, &reproduces)
}

/// [`diagnose_probed`] with `fits` (a [`reproduces`]) as the test.
fn diagnose_fitting(
    scenario: &Scenario,
    observed: &Trace,
    probed: &Trace,
    confirmed: &[Vec<Deviation>],
    fits: &dyn Fn(&Scenario, &Trace, &[Deviation]) -> bool,
) -> Option<Vec<Deviation>> {
    let mut candidates = explanations_fitting(confirmed, &|set| fits(scenario, observed, set));
    if candidates.len() > 1 {
        let probe = with_snapshots(scenario);
        let narrowed: Vec<Vec<Deviation>> = candidates
            .iter()
            .filter(|set| fits(&probe, probed, set))
            .cloned()
            .collect();
        if !narrowed.is_empty() {
            candidates = narrowed;
        }
    }
    // Occam: of explanations the evidence cannot tell apart, the narrowest
    // (the one that changes the model on the fewest random scenarios).
    candidates.sort_by_key(|set| set.iter().map(|d| impact(*d)).sum::<usize>());
    candidates
        .iter()
        .find(|set| confirmed.contains(set))
        .or(candidates.first())
        .cloned()
}

/// How many times [`diagnose_reruns`] runs an unexplained scenario again.
pub const RERUNS: usize = 4;

/// For a divergence no deviation set explains: the scenario run again on
/// the target, up to [`RERUNS`] times, and the first of its other traces
/// that a deviation set explains, with that set.
///
/// A real backend's trace of one program can vary between runs: the host
/// takes exits the scenario does not cause (its own interrupts,
/// preemption), and an interrupt a hypervisor defers to "the next exit"
/// (`dispatch-above-ppr/late`), or a stale IRR vector it injects again at
/// an entry (`accepted-into-irr/inverted`), comes at whichever exit comes
/// first, so where it lands, and how many deliveries a level storm gets
/// before the op ends, is the host's timing, not a rule of the SDM or the
/// 82093AA. The spec has no such timing to hold a trace to; what the rules
/// can explain is a run, and a run the target gives that a set explains
/// names the cause. `None` when every re-run gives the same unexplained
/// trace, none is explained, or the re-runs agree with the model (then the
/// divergence itself came and went with the timing: still unexplained, but
/// [`Rerun::varied`] says the trace varied).
pub fn diagnose_reruns(
    target: &mut dyn Backend,
    scenario: &Scenario,
    observed: &Trace,
    probed: &Trace,
    confirmed: &[Vec<Deviation>],
) -> Rerun {
    let expected = ModelBackend::new().run_to_trace(scenario);
    let mut seen: Vec<Trace> = vec![observed.clone()];
    let mut varied = false;
    for _ in 0..RERUNS {
        let trace = target.run_to_trace(scenario);
        if seen
            .iter()
            .any(|t| compare_scenario(scenario, t, &trace) == Verdict::Agree)
        {
            continue;
        }
        varied = true;
        if compare_scenario(scenario, &expected, &trace) == Verdict::Agree {
            seen.push(trace);
            continue;
        }
        if let Some(set) = diagnose_probed(scenario, &trace, probed, confirmed) {
            return Rerun {
                varied,
                explained: Some((set, trace)),
            };
        }
        seen.push(trace);
    }
    // A trace that varied may owe it to a host exit right after an
    // injection (the call log: KVM_EXIT_IOAPIC_EOI at the first KVM_RUN
    // after the one that injected, with no guest exit between): with the
    // IOAPIC in userspace the early EOI of `eoi-broadcast/inverted` then
    // comes before the handler's first op. The first trace, so explained,
    // is the evidence.
    if varied && scenario.config.irqchip == Irqchip::Split {
        let early = Deviation::new(Rule::EoiBroadcast, Mode::Inverted);
        let after_host_exit = |s: &Scenario, t: &Trace, set: &[Deviation]| {
            set.contains(&early) && reproduces_after_host_exit(s, t, set)
        };
        if let Some(set) = diagnose_fitting(scenario, observed, probed, confirmed, &after_host_exit)
        {
            return Rerun {
                varied,
                explained: Some((set, observed.clone())),
            };
        }
    }
    Rerun {
        varied,
        explained: None,
    }
}

/// [`reproduces`], with a host exit of its own right after every injection
/// ([`ModelBackend::host_exit_at_take`]): where the host's timing put one.
pub fn reproduces_after_host_exit(
    scenario: &Scenario,
    observed: &Trace,
    deviations: &[Deviation],
) -> bool {
    let mut model = ModelBackend::with_deviations(Deviations::of(deviations));
    model.host_exit_at_take = true;
    let trace = model.run_to_trace(scenario);
    compare_scenario(scenario, &trace, observed) == Verdict::Agree
}

/// What [`diagnose_reruns`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Rerun {
    /// Whether any re-run gave a trace other than the first.
    pub varied: bool,
    /// The explanation of a re-run's trace, and that trace.
    pub explained: Option<(Vec<Deviation>, Trace)>,
}

/// Scenarios in the corpus that measures a deviation's reach.
const IMPACT_CORPUS: u64 = 1000;

/// On how many of a fixed corpus of random scenarios the deviation changes
/// the model's trace: e.g. a lost EOI broadcast (only the broadcast) is
/// narrower than an IOAPIC that never clears remote IRR (the broadcast and
/// the EOI register), though a one-vCPU trace may not tell them apart.
/// Measured once per process and deviation, when a diagnosis first needs it.
pub fn impact(deviation: Deviation) -> usize {
    static CORPUS: OnceLock<Vec<(Scenario, Trace)>> = OnceLock::new();
    static IMPACT: Mutex<Vec<(Deviation, usize)>> = Mutex::new(Vec::new());
    if let Some(&(_, n)) = IMPACT.lock().unwrap().iter().find(|(d, _)| *d == deviation) {
        return n;
    }
    if deviation.description().is_none() {
        return usize::MAX / 4;
    }
    let corpus = CORPUS.get_or_init(|| {
        let generator = GenConfig::default();
        (0..IMPACT_CORPUS)
            .map(|i| {
                let s = random(case_seed(0, i), &generator);
                let t = ModelBackend::new().run_to_trace(&s);
                (s, t)
            })
            .collect()
    });
    let changed = corpus
        .iter()
        .filter(|(s, t)| !reproduces(s, t, &[deviation]))
        .count();
    IMPACT.lock().unwrap().push((deviation, changed));
    changed
}

/// The directory name of a cause: its deviations, or the signature of its
/// one finding when unexplained.
pub fn cause_slug(deviations: &[Deviation], signature_slug: &str) -> String {
    if deviations.is_empty() {
        return format!("unexplained-{signature_slug}");
    }
    let names: Vec<String> = deviations
        .iter()
        .map(|d| d.name().replace('/', "-"))
        .collect();
    names.join("+")
}

/// A deviation as `causes.json` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedDeviation {
    /// `rule/mode`.
    pub name: String,
    /// What the model does under it.
    pub description: String,
    /// The rule it breaks and that rule's citation.
    pub rule: String,
    pub citation: String,
}

impl NamedDeviation {
    pub fn of(d: Deviation) -> NamedDeviation {
        NamedDeviation {
            name: d.name(),
            description: d.description().unwrap_or_default().to_string(),
            rule: d.rule.name().to_string(),
            citation: d.rule.citation().to_string(),
        }
    }

    /// The deviation back from its name.
    pub fn deviation(&self) -> Option<Deviation> {
        Deviation::parse(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Rule};

    fn observed(backend: &str, text: &str) -> (Scenario, Trace) {
        let scenario = crate::scenario::parse(text).unwrap();
        let mut b = crate::backend::open(backend).unwrap();
        let trace = b.run_to_trace(&scenario);
        (scenario, trace)
    }

    #[test]
    fn a_seeded_quirk_is_explained_by_the_rule_it_breaks() {
        let (s, t) = observed(
            "sim:level-eoi-no-redeliver",
            "handler 0x82: eoi\nroute 14 vector=0x82 level\nassert 14\nnop\n",
        );
        let mut target = crate::backend::open("sim:level-eoi-no-redeliver").unwrap();
        let found = diagnose(target.as_mut(), &s, &t, &[]).expect("explained");
        assert_eq!(found, [Deviation::new(Rule::EoiRedelivers, Mode::Skipped)]);
        assert_eq!(cause_slug(&found, "x"), "eoi-redelivers-skipped");
    }

    /// The trace of the model with `deviation` broken, diagnosed with that
    /// model as the target: the shape of alioth 0.12's two bugs
    /// (docs/byo-findings.md A1, A2), which campaigns against
    /// `alioth-ioapic` name by these deviations.
    fn diagnosed_as(deviation: Deviation, text: &str) -> Option<Vec<Deviation>> {
        let s = crate::scenario::parse(text).unwrap();
        let mut target = ModelBackend::with_deviations(Deviations::of(&[deviation]));
        let t = target.run_to_trace(&s);
        assert_ne!(
            compare_scenario(&s, &ModelBackend::new().run_to_trace(&s), &t),
            Verdict::Agree,
            "{text}"
        );
        diagnose(&mut target, &s, &t, &[])
    }

    #[test]
    fn entries_reset_unmasked_are_diagnosed_as_ioapic_reset_masked_skipped() {
        // 82093AA §3.2.4 bit 16. An unrouted pin sends vector 0, illegal:
        // the LVT Error interrupt (0xe3) is taken; and the entry reads 0.
        let a1 = Deviation::new(Rule::IoapicResetMasked, Mode::Skipped);
        for text in [
            "config ioapic=0x11\nlapic-write 0x370 0xe3\nassert 0\n",
            "config ioapic=0x11\nioapic-read 0x12\n",
        ] {
            assert_eq!(diagnosed_as(a1, text), Some(vec![a1]), "{text}");
        }
    }

    #[test]
    fn writable_read_only_bits_are_diagnosed_as_ioapic_read_only_bits_skipped() {
        // 82093AA §3.2.4 bits 12 and 14: the written delivery status reads
        // back (in a snapshot and an ioapic-read).
        let a2 = Deviation::new(Rule::IoapicReadOnlyBits, Mode::Skipped);
        for text in [
            "config ioapic=0x11\nioapic-write 0x2a 0x3de8702f\nsnapshot\n",
            "config ioapic=0x11\nioapic-write 0x12 0x15030\nioapic-read 0x12\n",
        ] {
            assert_eq!(diagnosed_as(a2, text), Some(vec![a2]), "{text}");
        }
    }

    #[test]
    fn agreement_is_explained_by_nothing_and_a_confirmed_set_is_preferred() {
        let (s, t) = observed("model", "route 14 vector=0x76\npulse 14\n");
        assert!(reproduces(&s, &t, &[]));
        let any = vec![Deviation::new(Rule::IllegalVector, Mode::Skipped)];
        // The confirmed set reproduces this trace too (it changes nothing here).
        assert_eq!(explain(&s, &t, std::slice::from_ref(&any)), Some(any));
    }

    #[test]
    fn a_trace_no_deviation_gives_is_unexplained() {
        let (s, mut t) = observed("model", "route 14 vector=0x76\npulse 14\n");
        t.events.clear();
        t.events.push(crate::trace::Event {
            op: 0,
            cpu: 0,
            kind: crate::trace::EventKind::Deliver { vector: 0x99 },
        });
        assert_eq!(explain(&s, &t, &[]), None);
        assert_eq!(cause_slug(&[], "sig"), "unexplained-sig");
    }
}

#[cfg(test)]
mod rerun_tests {
    use super::*;
    use crate::model::{Mode, Rule};

    /// A backend whose runs give the traces of `runs` in turn (the last
    /// one again once they are used up): a host whose timing varies.
    struct Varying {
        runs: Vec<Trace>,
        next: usize,
    }

    impl Backend for Varying {
        fn name(&self) -> &str {
            "varying"
        }
        fn execute(&mut self, _: &Scenario) -> crate::backend::Result<Trace> {
            let t = self.runs[self.next.min(self.runs.len() - 1)].clone();
            self.next += 1;
            Ok(t)
        }
    }

    fn deliveries(ops: &[usize]) -> Trace {
        let mut t = Trace::new("varying");
        t.events = ops
            .iter()
            .map(|&op| crate::trace::Event {
                op,
                cpu: 0,
                kind: crate::trace::EventKind::Deliver { vector: 0x20 },
            })
            .collect();
        t
    }

    // `route 0 level; assert 0` with the default handler (`eoi`): the spec
    // storms; with ISR never set the EOI finds nothing and no broadcast
    // re-sends the line: one delivery. This host's KVM gave 1 on an idle
    // machine and 2 under load (a host exit re-injected the stale vector).
    const STORM: &str = "route 0 vector=0x20 level\nassert 0\n";

    #[test]
    fn a_re_run_the_rules_explain_names_the_cause_of_a_varying_trace() {
        let s = crate::scenario::parse(STORM).unwrap();
        // A stand-in for a trace no rule explains: a delivery during the
        // `route`, before anything is asserted.
        let first = deliveries(&[0]);
        assert_eq!(explain(&s, &first, &[]), None, "unexplained");
        let mut target = Varying {
            runs: vec![deliveries(&[0]), deliveries(&[1])],
            next: 0,
        };
        let probed = deliveries(&[1]);
        // The campaign's hints: the documented behaviours of the family.
        let isr = vec![Deviation::new(Rule::AcceptedIntoIrr, Mode::Skipped)];
        let found = diagnose_reruns(&mut target, &s, &first, &probed, &[isr]);
        assert!(found.varied);
        let (set, trace) = found.explained.expect("the second re-run is explained");
        assert_eq!(set, [Deviation::new(Rule::AcceptedIntoIrr, Mode::Skipped)]);
        assert_eq!(trace, deliveries(&[1]));
        assert_eq!(target.next, 2, "stops at the first explained re-run");
    }

    #[test]
    fn a_varying_trace_is_explained_with_a_host_exit_right_after_the_injection() {
        // scenarios/kvm-early-eoi/host-exit-at-injection.irq: one run in
        // ten on this host's KVM delivers 0x30 again at op 2 (the early EOI
        // came before the deassert); the others agree with the model.
        let s = crate::scenario::parse(
            "config irqchip=split\nhandler 0x30: deassert 1; eoi\n\
             route 1 vector=0x30 level\nassert 1\nmask 1\n",
        )
        .unwrap();
        let mut first = deliveries(&[1, 2]);
        first
            .events
            .iter_mut()
            .for_each(|e| e.kind = crate::trace::EventKind::Deliver { vector: 0x30 });
        let late = Deviation::new(Rule::DispatchAbovePpr, Mode::Late);
        let early = Deviation::new(Rule::EoiBroadcast, Mode::Inverted);
        // The early EOI at the first guest exit (the deassert) explains
        // nothing; at the take it reproduces the run.
        assert!(!reproduces(&s, &first, &[late, early]));
        assert!(reproduces_after_host_exit(&s, &first, &[late, early]));
        assert!(!reproduces_after_host_exit(&s, &first, &[late]));
        let agreeing = ModelBackend::new().run_to_trace(&s);
        let mut target = Varying {
            runs: vec![agreeing],
            next: 0,
        };
        let probed = ModelBackend::new().run_to_trace(&with_snapshots(&s));
        let found = diagnose_reruns(&mut target, &s, &first, &probed, &[vec![late, early]]);
        assert!(found.varied);
        assert_eq!(found.explained, Some((vec![late, early], first.clone())));
        // A trace that every re-run repeats is held to the rules as it is.
        let mut steady = Varying {
            runs: vec![first.clone()],
            next: 0,
        };
        let found = diagnose_reruns(&mut steady, &s, &first, &probed, &[vec![late, early]]);
        assert_eq!(found.explained, None);
    }

    #[test]
    fn a_steady_or_agreeing_re_run_explains_nothing() {
        let s = crate::scenario::parse(STORM).unwrap();
        let first = deliveries(&[0]);
        // The same trace every time: not timing.
        let mut steady = Varying {
            runs: vec![first.clone()],
            next: 0,
        };
        let found = diagnose_reruns(&mut steady, &s, &first, &first, &[]);
        assert_eq!(
            found,
            Rerun {
                varied: false,
                explained: None
            }
        );
        assert_eq!(steady.next, RERUNS);
        // A re-run that agrees with the model: varied, but no cause.
        let agreeing = ModelBackend::new().run_to_trace(&s);
        let mut flaky = Varying {
            runs: vec![agreeing],
            next: 0,
        };
        let found = diagnose_reruns(&mut flaky, &s, &first, &first, &[]);
        assert_eq!(
            found,
            Rerun {
                varied: true,
                explained: None
            }
        );
    }
}

#[cfg(test)]
mod impact_probe {
    use super::*;

    #[test]
    #[ignore]
    fn print_impacts() {
        for d in Deviation::library() {
            eprintln!("{} {}", d.name(), impact(d));
        }
    }
}
