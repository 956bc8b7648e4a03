//! The command line: a thin layer over the library. Exit codes: 0 ran (or
//! no divergence), 1 a divergence was found, 2 bad input or usage, 3 the
//! backend is unavailable.

pub mod backends;
pub mod bench;
pub mod diff;
pub mod doctor;
pub mod emit;
pub mod fuzz;
pub mod merge;
pub mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::backend::{self, Backend, OpenError};
use crate::scenario::{self, Scenario};

#[derive(Debug, Parser)]
#[command(
    name = "irqdiff",
    version,
    about = "Differential fuzzer for x86 interrupt controllers: a hypervisor's irqchip against a spec-accurate model"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The QEMU binary the qemu backends run (a build from source, say);
    /// the same as setting IRQDIFF_QEMU. Default: qemu-system-x86_64 on PATH.
    #[arg(long, global = true, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenario files on a backend and print their traces.
    Run(run::RunArgs),
    /// Print scenario files in canonical form.
    Fmt(run::FmtArgs),
    /// List the backends and whether each is available here.
    Backends,
    /// Run a differential fuzz campaign.
    Fuzz(fuzz::FuzzArgs),
    /// Merge the findings of campaigns run on many machines, deduplicated by cause.
    Merge(merge::MergeArgs),
    /// Run one scenario on a backend and on the model, and show the divergence.
    Diff(diff::DiffArgs),
    /// Shrink a diverging scenario to a minimal one with the same signature.
    Minimize(diff::DiffArgs),
    /// Write a scenario as a repro: a standalone C program for KVM, a Rust
    /// regression test, or a Markdown report.
    Emit(emit::EmitArgs),
    /// Run the benchmarks and print their figures as JSON.
    Bench(bench::BenchArgs),
    /// Check this host (KVM and QEMU, or Hypervisor.framework) and write a report to attach to a bug.
    Doctor(doctor::DoctorArgs),
    /// One campaign job as a process (started by `fuzz`, not by hand).
    #[command(hide = true)]
    Worker(fuzz::WorkerArgs),
}

pub const EXIT_DIVERGENCE: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_BAD_INPUT } else { 0 });
        }
    };
    if let Some(qemu) = &cli.qemu {
        // Before any thread starts; campaign workers inherit it.
        std::env::set_var(backend::qemu::QEMU_ENV, qemu);
    }
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Fmt(args) => run::fmt(args),
        Command::Backends => backends::main(),
        Command::Fuzz(args) => fuzz::main(args),
        Command::Diff(args) => diff::diff(args),
        Command::Minimize(args) => diff::minimize(args),
        Command::Emit(args) => emit::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Merge(args) => merge::main(args),
        Command::Doctor(args) => doctor::main(args),
        Command::Worker(args) => fuzz::worker(args),
    }
}

/// Reads and parses scenario files; on the first error prints
/// `FILE:LINE:COLUMN: expected ..., found ...` and returns `Err(exit code)`.
pub fn load(files: &[PathBuf]) -> Result<Vec<(PathBuf, Scenario)>, ExitCode> {
    let mut out = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("irqdiff: {}: {e}", file.display());
                return Err(ExitCode::from(EXIT_BAD_INPUT));
            }
        };
        match scenario::parse(&text) {
            Ok(s) => out.push((file.clone(), s)),
            Err(e) => {
                eprintln!(
                    "{}:{}:{}: expected {}, found {}",
                    file.display(),
                    e.line,
                    e.column,
                    e.expected,
                    e.found
                );
                return Err(ExitCode::from(EXIT_BAD_INPUT));
            }
        }
    }
    Ok(out)
}

/// Opens a backend, printing why not and returning the exit code on failure.
pub fn open_backend(name: &str) -> Result<Box<dyn Backend>, ExitCode> {
    backend::open(name).map_err(|e| {
        eprintln!("irqdiff: {e}");
        ExitCode::from(match e {
            OpenError::Unavailable { .. } => EXIT_UNAVAILABLE,
            OpenError::Unknown(_) | OpenError::Invalid { .. } => EXIT_BAD_INPUT,
        })
    })
}

/// `--workaround` options, as the `:NAME,...` suffix of an `hvf` backend.
pub fn with_workarounds(backend: &str, workarounds: &[String]) -> Result<String, ExitCode> {
    if workarounds.is_empty() {
        return Ok(backend.to_string());
    }
    if !backend.starts_with("hvf") {
        eprintln!("irqdiff: --workaround applies to the hvf backends, not `{backend}`");
        return Err(ExitCode::from(EXIT_BAD_INPUT));
    }
    let sep = if backend.contains(':') { "," } else { ":" };
    Ok(format!("{backend}{sep}{}", workarounds.join(",")))
}

pub fn display(path: &Path) -> String {
    path.display().to_string()
}
