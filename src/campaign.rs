//! The campaign: generate, run on a backend and on the model, compare,
//! minimise, deduplicate, and write findings as they are found.
//!
//! Each job is a thread with its own backend instance (its own VM). Case `i`
//! is generated from `(seed, i)` alone, so a campaign is reproducible
//! whatever the number of jobs. Findings are written atomically the moment
//! they are minimised (see [`crate::findings`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{self, Backend};
use crate::findings::Findings;
use crate::minimize::minimize;
use crate::oracle::{compare, Divergence, Signature, Verdict};
use crate::repro;
use crate::scenario::generate::{self, GenConfig};
use crate::scenario::Scenario;
use crate::trace::Trace;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The backend under test (`kvm`, `sim:hvf-known`, ...).
    pub backend: String,
    /// Stop after this many cases (all jobs together).
    pub cases: Option<u64>,
    /// Stop after this long.
    pub time: Option<Duration>,
    pub seed: u64,
    pub jobs: usize,
    pub out: PathBuf,
    pub generator: GenConfig,
    /// A third implementation to triage each unique divergence with.
    pub against: Option<String>,
}

/// Live counters, read by the progress display while the campaign runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub cases: AtomicU64,
    pub divergences: AtomicU64,
    pub unique: AtomicU64,
    pub inconclusive: AtomicU64,
}

/// One unique divergence, as written to the findings directory.
#[derive(Clone, Debug)]
pub struct Finding {
    pub signature: Signature,
    pub original: Scenario,
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
    pub triage: Option<crate::oracle::Triage>,
    /// The documented behaviour of the backend that explains it, if any
    /// (the finding is still reported: labelled, never dropped).
    pub known: Option<crate::known::Known>,
}

/// The end of a campaign.
#[derive(Debug)]
pub struct Summary {
    pub cases: u64,
    pub divergences: u64,
    pub inconclusive: u64,
    /// Signatures found before this run (skipped).
    pub already_known: usize,
    /// New findings of this run, in the order found.
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
    /// The first inconclusive reason seen, if any (a backend error).
    pub first_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Open(#[from] backend::OpenError),
    #[error("findings directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs both backends on `scenario` and returns the divergence, if any.
pub struct Differ {
    pub model: backend::model::ModelBackend,
    pub target: Box<dyn Backend>,
}

impl Differ {
    pub fn open(target: &str) -> Result<Differ, backend::OpenError> {
        Ok(Differ {
            model: backend::model::ModelBackend::new(),
            target: backend::open(target)?,
        })
    }

    /// Both traces and the verdict, plus the signature of a divergence.
    pub fn diff(&mut self, scenario: &Scenario) -> (Trace, Trace, Verdict, Option<Signature>) {
        let observed = self.target.run_to_trace(scenario);
        self.judge(scenario, observed)
    }

    /// [`Differ::diff`] for a trace the target already produced (a batch).
    pub fn judge(
        &mut self,
        scenario: &Scenario,
        observed: Trace,
    ) -> (Trace, Trace, Verdict, Option<Signature>) {
        let (expected, decisions) = self.model.run_explained(scenario);
        let verdict = compare(&expected, &observed);
        let signature = match &verdict {
            Verdict::Diverge(d) => {
                let deciding = backend::model::deciding_decision(&decisions, d)
                    .map(|x| (x.cause, x.rule.name()));
                Some(d.signature(scenario, deciding))
            }
            _ => None,
        };
        (expected, observed, verdict, signature)
    }

    /// Shrinks a diverging scenario keeping its signature.
    pub fn minimize(&mut self, scenario: &Scenario, signature: &Signature) -> (Scenario, usize) {
        let m = minimize(scenario, signature, |s| self.diff(s).3);
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
        if signature.class == crate::oracle::Class::StateMismatch {
            let mut stripped = minimized.clone();
            stripped
                .ops
                .retain(|op| *op != crate::scenario::Op::Snapshot);
            for body in stripped.handlers.values_mut() {
                body.retain(|op| *op != crate::scenario::Op::Snapshot);
            }
            if let (_, _, _, Some(root)) = self.diff(&stripped) {
                let (again, more) = self.minimize(&stripped, &root);
                (minimized, signature) = (again, root);
                runs += more;
            }
        }
        let (expected, observed, verdict, _) = self.diff(&minimized);
        let Verdict::Diverge(divergence) = verdict else {
            return None; // flaky: the minimised program no longer diverges
        };
        Some(Finding {
            signature,
            original: original.clone(),
            minimized,
            divergence,
            expected,
            observed,
            dir: None,
            minimize_runs: runs,
            calls: self.target.calls(),
            triage: None,
            known: None,
        })
    }
}

/// The seed of case `index` of a campaign with seed `seed` (splitmix64).
pub fn case_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs a campaign until `cases`, `time` or `stop`. `on_finding` is called
/// (from a job thread) after each new finding is on disk.
pub fn run(
    options: &Options,
    stats: &Stats,
    stop: &AtomicBool,
    on_finding: &(dyn Fn(&Finding) + Sync),
) -> Result<Summary, CampaignError> {
    let findings = Findings::open(&options.out)?;
    let known_before = findings.known()?;
    let already_known = known_before.len();
    let known = Mutex::new(known_before);
    let new_findings = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    let next_case = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = options.time.map(|t| started + t);
    // Open the backend once first, so an unavailable backend is an error
    // before anything runs; each job then opens its own (its own VM, on its
    // own thread, as KVM's vCPU timers expect).
    drop(Differ::open(&options.backend)?);
    let findings = Arc::new(findings);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let findings = Arc::clone(&findings);
            let (known, new_findings, first_error, next_case) =
                (&known, &new_findings, &first_error, &next_case);
            scope.spawn(move || {
                let mut differ = match Differ::open(&options.backend) {
                    Ok(d) => d,
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                        return;
                    }
                };
                let mut third = match options.against.as_deref().map(backend::open) {
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                        return;
                    }
                    None => None,
                };
                // Cases are taken a batch at a time where the target runs
                // batches faster (QEMU); case i is the same scenario either way.
                let chunk = differ.target.batch_size().max(1) as u64;
                'campaign: loop {
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    let first = next_case.fetch_add(chunk, Ordering::Relaxed);
                    let end = options
                        .cases
                        .map_or(first + chunk, |n| n.min(first + chunk));
                    if first >= end {
                        break;
                    }
                    let scenarios: Vec<Scenario> = (first..end)
                        .map(|index| {
                            let mut s = generate::random(
                                case_seed(options.seed, index),
                                &options.generator,
                            );
                            differ.target.fit(&mut s);
                            s
                        })
                        .collect();
                    let observed = differ.target.run_batch(&scenarios);
                    for (scenario, trace) in scenarios.into_iter().zip(observed) {
                        let (_, _, verdict, signature) = differ.judge(&scenario, trace);
                        stats.cases.fetch_add(1, Ordering::Relaxed);
                        match verdict {
                            Verdict::Agree => continue,
                            Verdict::Inconclusive(why) => {
                                stats.inconclusive.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert(why);
                                continue;
                            }
                            Verdict::Diverge(_) => {}
                        }
                        stats.divergences.fetch_add(1, Ordering::Relaxed);
                        let signature = signature.expect("a divergence has a signature");
                        if !known.lock().unwrap().insert(signature.clone()) {
                            continue;
                        }
                        let Some(mut finding) =
                            differ.finding(&scenario, signature.clone()).map(|mut f| {
                                f.known = crate::known::label(
                                    &options.backend,
                                    &f.signature,
                                    &f.minimized,
                                    &f.observed,
                                );
                                f
                            })
                        else {
                            // Not reproducible: forget it so a later case can retry.
                            known.lock().unwrap().remove(&signature);
                            continue;
                        };
                        if finding.signature != signature
                            && !known.lock().unwrap().insert(finding.signature.clone())
                        {
                            // Its root cause is a bug already reported.
                            continue;
                        }
                        if let Some(third) = third.as_mut() {
                            let t = third.run_to_trace(&finding.minimized);
                            finding.triage = Some(crate::oracle::Triage::of(
                                &finding.expected,
                                &finding.observed,
                                &t,
                            ));
                        }
                        match findings.write(
                            &finding.signature,
                            &repro::finding_files(&finding, &options.backend),
                        ) {
                            Ok(dir) => finding.dir = dir,
                            Err(e) => {
                                first_error
                                    .lock()
                                    .unwrap()
                                    .get_or_insert(format!("writing a finding: {e}"));
                                stop.store(true, Ordering::Relaxed);
                                break 'campaign;
                            }
                        }
                        stats.unique.fetch_add(1, Ordering::Relaxed);
                        on_finding(&finding);
                        new_findings.lock().unwrap().push(finding);
                    }
                }
            });
        }
    });
    let mut findings_sorted = new_findings.into_inner().unwrap();
    // Likely model bugs first: they are ours to fix.
    findings_sorted.sort_by_key(|f| !f.triage.as_ref().is_some_and(|t| t.is_likely_model_bug()));
    Ok(Summary {
        cases: stats.cases.load(Ordering::Relaxed),
        divergences: stats.divergences.load(Ordering::Relaxed),
        inconclusive: stats.inconclusive.load(Ordering::Relaxed),
        already_known,
        findings: findings_sorted,
        elapsed: started.elapsed(),
        first_error: first_error.into_inner().unwrap(),
    })
}

/// Signatures known in a findings directory (for `--out` resumption checks).
pub fn known_signatures(out: &std::path::Path) -> std::io::Result<BTreeSet<Signature>> {
    Findings::open(out)?.known()
}
