//! `irqdiff fuzz`: a differential campaign with a progress display.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend;
use crate::campaign::worker::WorkerConfig;
use crate::campaign::{self, CampaignError, Isolation, Options, Stats};
use crate::differ::Finding;
use crate::scenario::generate::GenConfig;

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Backend under test (default: the best available here; see `irqdiff backends`).
    #[arg(long)]
    pub backend: Option<String>,
    /// A VMM-side workaround for the hvf backends (repeatable):
    /// reassert-on-unmask, reassert-after-eoi, xapic-eoi-detect.
    #[arg(long = "workaround")]
    pub workarounds: Vec<String>,
    /// Stop after this many cases.
    #[arg(long, conflicts_with = "time")]
    pub cases: Option<u64>,
    /// Stop after this long (e.g. 90s, 30m, 2h). Default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub time: Option<Duration>,
    /// Campaign seed: case i is generated from (seed, i) alone.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Parallel jobs, each with its own VM (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Findings directory; a re-run with the same directory skips known signatures.
    #[arg(long, default_value = "findings")]
    pub out: PathBuf,
    /// Maximum ops per generated program.
    #[arg(long, default_value_t = 24)]
    pub max_ops: usize,
    /// Maximum CPUs per generated program (1-8; above 1 the programs use
    /// the multi-CPU extension, and only backends of several CPUs run
    /// them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub max_cpus: u8,
    /// Percent of generated single-CPU programs that also drive the 8259
    /// pair (ISA lines, ICWs/OCWs, ExtINT through LINT0 or IOAPIC pin 0).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub pic_percent: u8,
    /// A third implementation (e.g. qemu-tcg) that triages each unique
    /// divergence: who agrees with whom.
    #[arg(long)]
    pub against: Option<String>,
    /// No progress display (one line per finding, and the summary).
    #[arg(long)]
    pub quiet: bool,
    /// The wall-clock bound of one run (per scenario of a batch): past it
    /// the job is killed, the run counted as `backend stalled` and its
    /// scenario saved in OUT/stalled/.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub run_timeout: Duration,
    /// How jobs run: `auto` uses threads for `model` and `sim:` and worker
    /// processes for backends with a VM.
    #[arg(long, value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
}

/// `irqdiff worker` (hidden): one campaign job as a process, driven by
/// `irqdiff fuzz` over its stdin and stdout.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub backend: String,
    #[arg(long)]
    pub against: Option<String>,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub max_ops: usize,
    #[arg(long)]
    pub wild_percent: u8,
    #[arg(long, default_value_t = 1)]
    pub max_cpus: u8,
    #[arg(long, default_value_t = 0)]
    pub pic_percent: u8,
}

pub fn worker(args: WorkerArgs) -> ExitCode {
    campaign::worker::main(WorkerConfig {
        backend: args.backend,
        against: args.against,
        seed: args.seed,
        generator: GenConfig {
            max_ops: args.max_ops,
            wild_percent: args.wild_percent,
            max_cpus: args.max_cpus,
            pic_percent: args.pic_percent,
            ..GenConfig::default()
        },
    })
}

/// Parses `90`, `90s`, `15m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (examples: 90s, 30m, 2h)"))?;
    let seconds = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

/// The exit code of a campaign that could not run.
fn campaign_error_exit(e: &CampaignError) -> ExitCode {
    ExitCode::from(match e {
        CampaignError::Open(backend::OpenError::Unavailable { .. }) => super::EXIT_UNAVAILABLE,
        CampaignError::Worker(_) | CampaignError::Spawn { .. } => super::EXIT_UNAVAILABLE,
        CampaignError::Threads { .. } => super::EXIT_BAD_INPUT,
        _ => super::EXIT_BAD_INPUT,
    })
}

pub fn main(args: FuzzArgs) -> ExitCode {
    let backend = match args.backend {
        Some(b) => b,
        None => {
            let (best, fallback) = backend::best_available();
            if let Some(why) = fallback {
                eprintln!("irqdiff: {why}");
                eprintln!(
                    "irqdiff: the model against itself checks the generator, the model's invariants and the \
                     pipeline, but cannot find hypervisor bugs; `--backend sim:hvf-known` shows the seeded HVF bugs being found"
                );
            }
            best.to_string()
        }
    };
    let backend = match super::with_workarounds(&backend, &args.workarounds) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = Options {
        backend: backend.clone(),
        cases: args.cases,
        time: args.time,
        seed: args.seed,
        jobs,
        out: args.out.clone(),
        against: args.against.clone(),
        generator: GenConfig {
            max_ops: args.max_ops,
            max_cpus: args.max_cpus,
            pic_percent: args.pic_percent,
            ..GenConfig::default()
        },
        isolation: args.isolation,
        worker_exe: std::env::current_exe().ok(),
        run_timeout: args.run_timeout,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        let mut interrupted = false;
        let _ = ctrlc::set_handler(move || {
            if interrupted {
                // A hard quit: findings on disk stay complete (atomic writes).
                std::process::exit(130);
            }
            interrupted = true;
            eprintln!("\nirqdiff: stopping (findings already written are kept; Ctrl-C again to quit at once)");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let stats = Arc::new(Stats::default());
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("valid template"),
        );
        bar
    };
    if let Err(e) = campaign::check_backend(&options) {
        eprintln!("irqdiff fuzz: {e}");
        return campaign_error_exit(&e);
    }
    eprintln!(
        "irqdiff: fuzzing `{backend}` against the model, {jobs} job(s), seed {}, findings in {}",
        options.seed,
        options.out.display()
    );
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (bar, stats, done) = (bar.clone(), Arc::clone(&stats), Arc::clone(&done));
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !done.load(Ordering::Relaxed) {
                let cases = stats.cases.load(Ordering::Relaxed);
                let rate = cases as f64 / start.elapsed().as_secs_f64().max(1e-3);
                let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{cases} cases ({rate:.0}/s), {} divergences ({} documented), {} unique, {} inconclusive, {} stalled, {} restarts",
                    load(&stats.divergences),
                    load(&stats.documented),
                    load(&stats.unique),
                    load(&stats.inconclusive),
                    load(&stats.stalled),
                    load(&stats.restarts),
                ));
                bar.tick();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let on_finding = |f: &Finding| {
        let place = f
            .dir
            .as_ref()
            .map_or("(already on disk)".to_string(), |d| d.display().to_string());
        let known = f
            .known
            .map_or(String::new(), |k| format!(" [documented: {}]", k.id));
        let cause = if f.explained_by.is_empty() {
            " [unexplained]".to_string()
        } else {
            let rerun = if f.rerun.is_some() {
                " on a re-run"
            } else {
                ""
            };
            format!(" [explained{rerun} by {}]", f.explained_by.join(" + "))
        };
        bar.suspend(|| {
            eprintln!(
                "new finding: {}{cause}{known} ({} ops minimised to {}) -> {place}",
                f.signature,
                f.original.ops.len(),
                f.minimized.ops.len()
            )
        });
    };
    let result = campaign::run(&options, &stats, &stop, &on_finding);
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("irqdiff fuzz: {e}");
            return campaign_error_exit(&e);
        }
    };
    println!("\n{}", summary.headline);
    println!(
        "{} cases in {:.1}s ({:.0}/s) on {backend}: {} divergences, {} new signatures, {} already known, \
         {} inconclusive, {} stalled runs, {} worker restarts",
        summary.cases,
        summary.elapsed.as_secs_f64(),
        summary.cases as f64 / summary.elapsed.as_secs_f64().max(1e-3),
        summary.divergences,
        summary.findings.len(),
        summary.already_known,
        summary.inconclusive,
        summary.stalled,
        summary.restarts,
    );
    if !summary.causes.is_empty() {
        println!(
            "\n{:<48} {:>11} {:>10} {:>7}  explained by / documented",
            "cause (directory)", "divergences", "signatures", "min ops"
        );
        for c in &summary.causes {
            let why = if c.is_explained() {
                let names: Vec<String> = c
                    .explained_by
                    .iter()
                    .map(|d| format!("{} ({})", d.name, d.description))
                    .collect();
                names.join(" + ")
            } else {
                "UNEXPLAINED: no deviation of the model reproduces it".to_string()
            };
            let doc = c
                .documented
                .as_ref()
                .map_or(String::new(), |d| format!(" [documented: {d}]"));
            let varying = match c.varying.len() {
                0 => String::new(),
                n => format!(" [{n} explained on a re-run: the host's timing varied]"),
            };
            println!(
                "{:<48} {:>11} {:>10} {:>7}  {why}{doc}{varying}",
                c.name,
                c.divergences,
                c.signatures.len(),
                c.minimal_ops
            );
        }
        println!(
            "(causes.json and one directory per cause in {})",
            options.out.display()
        );
    }
    if let Some(e) = summary.first_error {
        eprintln!("note: some runs were inconclusive; the first: {e}");
    }
    // Whether stopped by --cases, --time or Ctrl-C.
    if summary.divergences > 0 {
        ExitCode::from(super::EXIT_DIVERGENCE)
    } else {
        ExitCode::SUCCESS
    }
}
