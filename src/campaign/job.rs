//! One campaign job: runs ranges of case indices on its own backend and the
//! model, and hands what it finds to the campaign's side ([`Side`]): the
//! [`super::Ledger`] directly when the job is a thread, the supervisor over
//! a pipe when it is a worker process.

use crate::backend::{self, Backend};
use crate::differ::{Differ, Finding};
use crate::oracle::{Ruling, Signature, Triage};
use crate::scenario::generate::{case_seed, random, GenConfig};
use crate::scenario::Scenario;

use super::{Ledger, Tally};

/// The campaign as a job sees it: who owns the known signatures and the
/// findings. Claiming a signature before minimising it means no two jobs
/// minimise the same bug.
pub trait Side {
    /// May this job minimise a divergence with `signature`? `false` if it is
    /// known (or claimed by another job).
    fn claim(&mut self, signature: &Signature) -> bool;
    /// The claimed divergence did not reproduce: forget it.
    fn release(&mut self, signature: &Signature);
    /// Keep the claimed signature known, with nothing to write (its finding
    /// has a root cause already reported).
    fn settle(&mut self, signature: &Signature);
    /// A new finding, minimised and labelled, to write.
    fn found(&mut self, finding: Finding);
    /// Every case before `next` is done; `tally` counts what is not yet
    /// reported (the side takes what it reports).
    fn progress(&mut self, next: u64, tally: &mut Tally);
}

/// A job running as a thread: the ledger is right here.
pub(crate) struct LocalSide<'l, 'a>(pub(crate) &'l Ledger<'a>);

impl Side for LocalSide<'_, '_> {
    fn claim(&mut self, signature: &Signature) -> bool {
        self.0.claim(signature)
    }
    fn release(&mut self, signature: &Signature) {
        self.0.release(signature)
    }
    fn settle(&mut self, _: &Signature) {}
    fn found(&mut self, finding: Finding) {
        self.0.record(finding)
    }
    fn progress(&mut self, _: u64, tally: &mut Tally) {
        self.0.count(std::mem::take(tally))
    }
}

/// One job's backends and what it generates.
pub struct Job {
    differ: Differ,
    third: Option<Box<dyn Backend>>,
    backend: String,
    seed: u64,
    generator: GenConfig,
    /// Deviation sets that explained this job's earlier findings.
    confirmed: Vec<Vec<crate::model::Deviation>>,
}

impl Job {
    pub fn open(
        backend: &str,
        against: Option<&str>,
        seed: u64,
        generator: &GenConfig,
    ) -> Result<Job, backend::OpenError> {
        Ok(Job::with_target(
            backend::open(backend)?,
            against.map(backend::open).transpose()?,
            backend,
            seed,
            generator,
        ))
    }

    /// A job around an already opened target (a worker wraps it).
    pub fn with_target(
        target: Box<dyn Backend>,
        third: Option<Box<dyn Backend>>,
        backend: &str,
        seed: u64,
        generator: &GenConfig,
    ) -> Job {
        Job {
            differ: Differ::with_target(target),
            third,
            backend: backend.to_string(),
            seed,
            generator: generator.clone(),
            confirmed: Vec::new(),
        }
    }

    /// How many cases to hand the backend at once.
    pub fn batch_size(&self) -> u64 {
        self.differ.target.batch_size().max(1) as u64
    }

    /// Case `index`, fitted to the backend: the same scenario whatever job
    /// or process generates it.
    pub fn scenario(&self, index: u64) -> Scenario {
        let mut s = random(case_seed(self.seed, index), &self.generator);
        self.differ.target.fit(&mut s);
        s
    }

    /// Runs cases `first..end`, batch by batch, reporting progress after
    /// each batch: a batch is counted once all its cases are judged and
    /// their new divergences minimised, so a job that dies mid-batch has
    /// reported none of it.
    pub fn run_range(&mut self, first: u64, end: u64, side: &mut dyn Side) {
        let mut tally = Tally::default();
        let mut start = first;
        while start < end {
            let stop = end.min(start + self.batch_size());
            let scenarios: Vec<Scenario> = (start..stop).map(|i| self.scenario(i)).collect();
            let observed = self.differ.target.run_batch(&scenarios);
            for (scenario, trace) in scenarios.iter().zip(observed) {
                let judgement = self.differ.judge(scenario, trace);
                self.differ.model.recycle(judgement.expected);
                tally.cases += 1;
                match judgement.ruling {
                    Ruling::Agree => {}
                    Ruling::Inconclusive(why) => {
                        tally.inconclusive += 1;
                        tally.first_error.get_or_insert(why);
                    }
                    Ruling::Diverge { signature, .. } => {
                        tally.divergences += 1;
                        *tally.by_signature.entry(signature.slug()).or_default() += 1;
                        self.new_divergence(scenario, signature, side);
                    }
                }
            }
            start = stop;
            side.progress(start, &mut tally);
        }
    }

    /// Minimises a divergence whose signature no job has claimed yet.
    fn new_divergence(&mut self, scenario: &Scenario, signature: Signature, side: &mut dyn Side) {
        if !side.claim(&signature) {
            return;
        }
        let Some(mut finding) = self.differ.finding(scenario, signature.clone()) else {
            // Not reproducible: forget it so a later case can retry.
            side.release(&signature);
            return;
        };
        if finding.signature != signature {
            side.settle(&signature);
            if !side.claim(&finding.signature) {
                return; // Its root cause is a bug already reported.
            }
        }
        let probe = crate::diagnose::with_snapshots(&finding.minimized);
        let probed = self.differ.target.run_to_trace(&probe);
        let mut hints = self.confirmed.clone();
        hints.extend(crate::known::hints(&self.backend));
        let mut explanation = crate::diagnose::diagnose_probed(
            &finding.minimized,
            &finding.observed,
            &probed,
            &hints,
        )
        .unwrap_or_default();
        if explanation.is_empty() {
            // The host's timing may have given this run its trace: what a
            // re-run gives is explained instead, and kept as the evidence.
            let rerun = crate::diagnose::diagnose_reruns(
                self.differ.target.as_mut(),
                &finding.minimized,
                &finding.observed,
                &probed,
                &hints,
            );
            if let Some((set, trace)) = rerun.explained {
                explanation = set;
                finding.rerun = Some(trace);
            }
        }
        finding.probe = Some(probed);
        // A cause is named by the documented behaviour its deviations are;
        // an unexplained one by the host behaviour its signature shows, if
        // one was measured here (still counted as unexplained).
        finding.known = crate::known::documented(&self.backend, &explanation).or_else(|| {
            explanation
                .is_empty()
                .then(|| {
                    crate::known::label(
                        &self.backend,
                        &finding.signature,
                        &finding.minimized,
                        &finding.observed,
                    )
                })
                .flatten()
        });
        finding.explained_by = explanation.iter().map(|d| d.name()).collect();
        if !explanation.is_empty() && !self.confirmed.contains(&explanation) {
            self.confirmed.push(explanation);
        }
        if let Some(third) = self.third.as_mut() {
            let t = third.run_to_trace(&finding.minimized);
            finding.triage = Some(Triage::of(&finding.expected, &finding.observed, &t));
        }
        side.found(finding);
    }
}
