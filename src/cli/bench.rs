//! `irqdiff bench`: benchmarks as JSON, one object per line.

use std::process::ExitCode;
use std::time::Duration;

use crate::bench;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmarks: model, model-cpus (scenarios per second on 1, 2
    /// and 4 CPUs), kvm, kvm-split, kvm-cpus and kvm-split-cpus (1, 2 and
    /// 4 vCPUs, and generated multi-CPU programs), qemu-tcg, qemu (the QEMU
    /// configuration --backend names), find (time to find each seeded
    /// quirk), minimize (a 500-op scenario), diagnose (causes against
    /// injected quirks; not part of all), real-bugs (the bugs of
    /// docs/real-bugs.json re-inserted into the model; not part of all),
    /// or all.
    #[arg(default_value = "all")]
    pub which: String,
    /// Scenarios for the backend throughput benchmarks.
    #[arg(long, default_value_t = 2000)]
    pub cases: u64,
    /// For `bench qemu`: the QEMU backend to measure, e.g.
    /// qemu:accel=kvm,irqchip=split (default qemu-tcg).
    #[arg(long, default_value = "qemu-tcg")]
    pub backend: String,
    /// Trials of `diagnose` (each a random set of 1-3 quirks and a campaign of `--cases`).
    #[arg(long, default_value_t = 40)]
    pub trials: u64,
    /// model: a fixed amount of work instead of a timed run, for counting
    /// instructions (`valgrind --tool=callgrind`): this many passes over the
    /// benchmark's scenarios, without the per-op-kind part.
    #[arg(long)]
    pub passes: Option<u64>,
    /// For `real-bugs`: at most this many random cases per bug before it
    /// counts as not found.
    #[arg(long, default_value_t = 100_000)]
    pub find_cases: u64,
}

pub fn main(args: BenchArgs) -> ExitCode {
    let all = args.which == "all";
    let mut ran = false;
    if all || args.which == "model" {
        match args.passes {
            Some(passes) => println!("{}", bench::model_fixed_work(passes)),
            None => println!("{}", bench::model_throughput(Duration::from_secs(3))),
        }
        ran = true;
    }
    if all || args.which == "model-cpus" {
        println!("{}", bench::model_cpus(Duration::from_secs(3)));
        ran = true;
    }
    for backend in ["kvm", "kvm-split", "qemu-tcg"] {
        if all || args.which == backend {
            match bench::backend_throughput(backend, args.cases) {
                Ok(v) => println!("{v}"),
                Err(e) => eprintln!("irqdiff bench: {backend}: {e}"),
            }
            ran = true;
        }
    }
    #[cfg(target_os = "linux")]
    for backend in ["kvm", "kvm-split"] {
        if all || args.which == format!("{backend}-cpus") {
            match bench::kvm_cpus(backend, args.cases.min(1000)) {
                Ok(v) => println!("{v}"),
                Err(e) => eprintln!("irqdiff bench: {backend}-cpus: {e}"),
            }
            ran = true;
        }
    }
    if args.which == "qemu" {
        match bench::backend_throughput(&args.backend, args.cases) {
            Ok(v) => println!("{v}"),
            Err(e) => eprintln!("irqdiff bench: {}: {e}", args.backend),
        }
        ran = true;
    }
    if all || args.which == "find" {
        println!("{}", bench::time_to_find());
        ran = true;
    }
    if args.which == "diagnose" {
        println!("{}", bench::diagnose(args.trials, args.cases.min(5000)));
        ran = true;
    }
    if args.which == "real-bugs" {
        println!("{}", crate::real_bugs::bench(args.find_cases));
        ran = true;
    }
    if all || args.which == "minimize" {
        println!("{}", bench::minimize_500());
        ran = true;
    }
    if !ran {
        eprintln!(
            "irqdiff bench: unknown benchmark `{}` (model, model-cpus, kvm, kvm-split, kvm-cpus, kvm-split-cpus, qemu-tcg, qemu, find, minimize, diagnose, real-bugs, all)",
            args.which
        );
        return ExitCode::from(super::EXIT_BAD_INPUT);
    }
    ExitCode::SUCCESS
}
