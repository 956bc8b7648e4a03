//! The campaign: generate, run on a backend and on the model, compare,
//! minimise, deduplicate, and write findings as they are found.
//!
//! Case `i` is generated from `(seed, i)` alone
//! ([`crate::scenario::generate::case_seed`]), so a campaign is reproducible
//! whatever the number of jobs. A job runs ranges of case indices
//! ([`job::Job`]); jobs run as worker processes supervised by this process
//! ([`supervisor`], the protocol in [`protocol`]), or, for the model and
//! `sim:` backends that cannot wedge, as threads of this process. This
//! process alone owns the findings directory (written atomically, see
//! [`crate::findings`]), the set of known signatures and the counters.

pub mod causes;
pub mod job;
pub mod protocol;
mod supervisor;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend;
use crate::differ::Finding;
use crate::findings::Findings;
use crate::oracle::Signature;
use crate::repro;
use crate::scenario::generate::GenConfig;

/// How jobs are isolated from each other and from the campaign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Threads when the backend (and `--against`) are `model` or `sim:`
    /// (pure Rust, their runs always end), processes otherwise.
    #[default]
    Auto,
    /// One worker process per job.
    Processes,
    /// One thread per job: only for `model` and `sim:` (a thread cannot be
    /// stopped mid-run, so a VM's runs would have no wall-clock bound).
    Threads,
}

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
    pub isolation: Isolation,
    /// The `irqdiff` executable that worker processes run (`irqdiff
    /// worker`): `std::env::current_exe()` from the command line,
    /// `env!("CARGO_BIN_EXE_irqdiff")` from an integration test.
    pub worker_exe: Option<PathBuf>,
    /// The wall-clock bound of one run (per scenario of a batch); past it
    /// the worker is killed and the run recorded as `backend stalled`.
    pub run_timeout: Duration,
}

/// The default wall-clock bound of one run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(20);

impl Options {
    /// A campaign of `backend` writing to `out`, everything else default
    /// (seed 0, one job, until stopped).
    pub fn new(backend: impl Into<String>, out: impl Into<PathBuf>) -> Options {
        Options {
            backend: backend.into(),
            cases: None,
            time: None,
            seed: 0,
            jobs: 1,
            out: out.into(),
            generator: GenConfig::default(),
            against: None,
            isolation: Isolation::Auto,
            worker_exe: None,
            run_timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    /// Whether jobs run as worker processes. Threads are kept for the
    /// model and `sim:` because they are faster: `fuzz --backend
    /// sim:hvf-known --jobs 2` ran 27,000 to 74,000 cases/s as threads and
    /// 9,600 to 13,000 as processes over 20,000 cases (the supervisor writes
    /// every finding itself), 85,000 to 130,000 against 49,000 to 60,000
    /// over 200,000.
    pub fn uses_processes(&self) -> bool {
        match self.isolation {
            Isolation::Processes => true,
            Isolation::Threads => false,
            Isolation::Auto => !self.runs_always_end(),
        }
    }

    /// Whether every backend of the campaign is pure Rust: no run can wedge.
    fn runs_always_end(&self) -> bool {
        let pure = |name: &str| name == "model" || name.starts_with("sim:");
        pure(&self.backend) && self.against.as_deref().is_none_or(pure)
    }
}

/// Live counters, read by the progress display while the campaign runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub cases: AtomicU64,
    pub divergences: AtomicU64,
    /// Divergences a documented behaviour of the backend explains.
    pub documented: AtomicU64,
    pub unique: AtomicU64,
    pub inconclusive: AtomicU64,
    /// Runs past the wall-clock bound (each also inconclusive).
    pub stalled: AtomicU64,
    /// Worker processes started again after a crash, a kill or a stall.
    pub restarts: AtomicU64,
}

/// The end of a campaign.
#[derive(Debug)]
pub struct Summary {
    pub cases: u64,
    pub divergences: u64,
    /// Divergences of causes that are documented behaviours of the backend.
    pub documented: u64,
    pub inconclusive: u64,
    pub stalled: u64,
    pub restarts: u64,
    /// Signatures found before this run (skipped).
    pub already_known: usize,
    /// New findings of this run, in the order found.
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
    /// The first inconclusive reason seen, if any (a backend error).
    pub first_error: Option<String>,
    /// Every cause of the findings directory, the most divergences first.
    pub causes: Vec<causes::Cause>,
    /// "N causes explain D divergences (...); U unexplained".
    pub headline: String,
}

impl Summary {
    /// Divergences no documented behaviour explains.
    pub fn unexplained(&self) -> u64 {
        self.divergences - self.documented
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Open(#[from] backend::OpenError),
    #[error("findings directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("`{backend}` needs worker processes (one VM per process), and no irqdiff executable was given to run them")]
    NoWorkerExecutable { backend: String },
    #[error("starting worker `{exe}`: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker: {0}")]
    Worker(String),
    #[error("`{backend}` runs a VM: its jobs must be worker processes (a thread cannot be stopped in the middle of a run, or share Hypervisor.framework's one VM per process)")]
    Threads { backend: String },
}

/// What one job counted since it last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub cases: u64,
    pub divergences: u64,
    pub documented: u64,
    pub inconclusive: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Divergences by signature slug (a cause's count is its signatures').
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_signature: BTreeMap<String, u64>,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }
}

/// The campaign's own state, shared by its jobs: the findings directory,
/// the known (or claimed) signatures, the counters.
pub(crate) struct Ledger<'a> {
    options: &'a Options,
    stats: &'a Stats,
    stop: &'a AtomicBool,
    on_finding: &'a (dyn Fn(&Finding) + Sync),
    findings: Findings,
    known: Mutex<BTreeSet<Signature>>,
    new_findings: Mutex<Vec<Finding>>,
    first_error: Mutex<Option<String>>,
    causes: Mutex<causes::Causes>,
    by_signature: Mutex<BTreeMap<String, u64>>,
}

impl Ledger<'_> {
    /// Claims a signature for minimisation: `false` if it is known already.
    pub(crate) fn claim(&self, signature: &Signature) -> bool {
        self.known.lock().unwrap().insert(signature.clone())
    }

    /// Gives a claim back (the divergence did not reproduce).
    pub(crate) fn release(&self, signature: &Signature) {
        self.known.lock().unwrap().remove(signature);
    }

    pub(crate) fn count(&self, tally: Tally) {
        let add = |counter: &AtomicU64, n| counter.fetch_add(n, Ordering::Relaxed);
        add(&self.stats.cases, tally.cases);
        add(&self.stats.divergences, tally.divergences);
        add(&self.stats.documented, tally.documented);
        add(&self.stats.inconclusive, tally.inconclusive);
        if let Some(e) = tally.first_error {
            self.note_error(e);
        }
        let mut by_signature = self.by_signature.lock().unwrap();
        for (slug, n) in tally.by_signature {
            *by_signature.entry(slug).or_default() += n;
        }
    }

    pub(crate) fn note_error(&self, error: String) {
        self.first_error.lock().unwrap().get_or_insert(error);
    }

    /// Writes a new finding and reports it; a write error stops the campaign.
    ///
    /// The finding goes under its cause (`OUT/<cause>/<signature>/`); the
    /// cause's smallest repro is `OUT/<cause>/min.irq`, and
    /// `OUT/causes.json` is rewritten (atomically) after each finding.
    pub(crate) fn record(&self, mut finding: Finding) {
        let mut files = repro::finding_files(&finding, &self.options.backend);
        if let Some(probe) = &finding.probe {
            files.push((causes::PROBE_FILE, probe.to_json() + "\n"));
        }
        if let Some(rerun) = &finding.rerun {
            files.push((causes::RERUN_FILE, rerun.to_json() + "\n"));
        }
        let mut causes = self.causes.lock().unwrap();
        let (cause, smallest) = causes.add(&finding, &self.options.backend);
        let written = self
            .findings
            .write(&cause, &finding.signature, &files)
            .and_then(|dir| {
                if smallest {
                    let min = Path::new(&cause).join("min.irq");
                    self.findings
                        .write_file(&min, &crate::scenario::print::print(&finding.minimized))?;
                }
                causes.count(&self.by_signature.lock().unwrap());
                causes.save(&self.findings)?;
                Ok(dir)
            });
        drop(causes);
        match written {
            Ok(dir) => finding.dir = dir,
            Err(e) => {
                self.note_error(format!("writing a finding: {e}"));
                self.stop.store(true, Ordering::Relaxed);
                return;
            }
        }
        self.stats.unique.fetch_add(1, Ordering::Relaxed);
        (self.on_finding)(&finding);
        self.new_findings.lock().unwrap().push(finding);
    }

    /// Records a run that did not end (`why`): counted as an inconclusive
    /// case, its scenario saved as `stalled/case-INDEX.irq`.
    pub(crate) fn record_stalled(&self, index: u64, why: &str) {
        self.count(Tally {
            cases: 1,
            inconclusive: 1,
            first_error: Some(format!("case {index}: {why}")),
            ..Tally::default()
        });
        self.stats.stalled.fetch_add(1, Ordering::Relaxed);
        eprintln!("irqdiff: case {index}: {why}");
    }

    /// Saves the scenario of a stalled case (rendered by a worker).
    pub(crate) fn save_stalled(&self, index: u64, text: &str) {
        let rel = stalled_path(index);
        match self.findings.write_file(&rel, text) {
            Ok(path) => eprintln!("irqdiff: stalled case {index} -> {}", path.display()),
            Err(e) => self.note_error(format!("saving stalled case {index}: {e}")),
        }
    }

    fn should_stop(&self, deadline: Option<Instant>) -> bool {
        self.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Where the scenario of a stalled case is saved, below the findings directory.
pub fn stalled_path(index: u64) -> PathBuf {
    Path::new("stalled").join(format!("case-{index}.irq"))
}

/// Runs a campaign until `cases`, `time` or `stop`. `on_finding` is called
/// (from a job thread or the supervisor) after each new finding is on disk.
/// Open the campaign's backend once and close it (unless it allows one VM
/// per process and the jobs are processes), so that an unknown, invalid or
/// unavailable backend is an error before anything runs or is printed.
pub fn check_backend(options: &Options) -> Result<(), CampaignError> {
    let one_vm_per_process = options.backend.starts_with("hvf");
    if !(options.uses_processes() && one_vm_per_process && cfg!(target_os = "macos")) {
        drop(backend::open(&options.backend)?);
    }
    Ok(())
}

pub fn run(
    options: &Options,
    stats: &Stats,
    stop: &AtomicBool,
    on_finding: &(dyn Fn(&Finding) + Sync),
) -> Result<Summary, CampaignError> {
    let findings = Findings::open(&options.out)?;
    let known = findings.known()?;
    let prior_causes = causes::Causes::load(&options.out)?;
    let already_known = known.len();
    let processes = options.uses_processes();
    if !processes && !options.runs_always_end() {
        return Err(CampaignError::Threads {
            backend: options.backend.clone(),
        });
    }
    check_backend(options)?;
    let ledger = Ledger {
        options,
        stats,
        stop,
        on_finding,
        findings,
        known: Mutex::new(known),
        new_findings: Mutex::new(Vec::new()),
        first_error: Mutex::new(None),
        causes: Mutex::new(prior_causes),
        by_signature: Mutex::new(BTreeMap::new()),
    };
    let started = Instant::now();
    let deadline = options.time.map(|t| started + t);
    if processes {
        supervisor::run(&ledger, deadline)?;
    } else {
        run_threads(&ledger, deadline)?;
    }
    let mut findings_sorted = ledger.new_findings.into_inner().unwrap();
    // Likely model bugs first: they are ours to fix.
    findings_sorted.sort_by_key(|f| !f.triage.as_ref().is_some_and(|t| t.is_likely_model_bug()));
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut causes = ledger.causes.into_inner().unwrap();
    let by_signature = ledger.by_signature.into_inner().unwrap();
    causes.fold_composites(&ledger.findings)?;
    causes.fold_confirmed(&ledger.findings, &by_signature)?;
    causes.count(&by_signature);
    causes.save(&ledger.findings)?;
    let divergences = load(&stats.divergences);
    let documented = causes
        .by_name
        .values()
        .filter(|c| c.documented.is_some())
        .map(|c| c.divergences)
        .sum();
    Ok(Summary {
        cases: load(&stats.cases),
        divergences,
        documented,
        headline: causes.headline(divergences),
        causes: causes.list(),
        inconclusive: load(&stats.inconclusive),
        stalled: load(&stats.stalled),
        restarts: load(&stats.restarts),
        already_known,
        findings: findings_sorted,
        elapsed: started.elapsed(),
        first_error: ledger.first_error.into_inner().unwrap(),
    })
}

/// Jobs as threads of this process, each with its own backend instance.
/// Only for backends whose runs always end (the model and `sim:`), or when
/// asked for: a thread cannot be stopped in the middle of a run.
fn run_threads(ledger: &Ledger<'_>, deadline: Option<Instant>) -> Result<(), CampaignError> {
    let options = ledger.options;
    let next_case = AtomicU64::new(0);
    let failed = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let (next_case, failed) = (&next_case, &failed);
            scope.spawn(move || {
                let mut job = match job::Job::open(
                    &options.backend,
                    options.against.as_deref(),
                    options.seed,
                    &options.generator,
                ) {
                    Ok(job) => job,
                    Err(e) => {
                        failed.lock().unwrap().get_or_insert(e);
                        return;
                    }
                };
                let mut side = job::LocalSide(ledger);
                let chunk = job.batch_size();
                while !ledger.should_stop(deadline) {
                    let first = next_case.fetch_add(chunk, Ordering::Relaxed);
                    let end = options
                        .cases
                        .map_or(first + chunk, |n| n.min(first + chunk));
                    if first >= end {
                        break;
                    }
                    job.run_range(first, end, &mut side);
                }
            });
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Signatures known in a findings directory (for `--out` resumption checks).
pub fn known_signatures(out: &Path) -> std::io::Result<BTreeSet<Signature>> {
    Findings::open(out)?.known()
}
