//! `irqdiff run` and `irqdiff fmt`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::scenario::print::{op_text, print};
use crate::scenario::Scenario;
use crate::trace::{Outcome, Trace};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files (.irq).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Backend to run on (see `irqdiff backends`).
    #[arg(long, default_value = "model")]
    pub backend: String,
    /// A VMM-side workaround for the hvf backends (repeatable):
    /// reassert-on-unmask, reassert-after-eoi, xapic-eoi-detect.
    #[arg(long = "workaround")]
    pub workarounds: Vec<String>,
    /// Print the JSON trace of docs/scenario-format.md, one object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Exit 1 if a file is not in canonical form instead of printing it.
    #[arg(long)]
    pub check: bool,
}

pub fn main(args: RunArgs) -> ExitCode {
    let scenarios = match super::load(&args.files) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let name = match super::with_workarounds(&args.backend, &args.workarounds) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let mut backend = match super::open_backend(&name) {
        Ok(b) => b,
        Err(code) => return code,
    };
    for (path, scenario) in &scenarios {
        let trace = backend.run_to_trace(scenario);
        if args.json {
            println!("{}", trace.to_json());
        } else {
            if scenarios.len() > 1 {
                println!("# {}", path.display());
            }
            print!("{}", readable(scenario, &trace));
        }
    }
    ExitCode::SUCCESS
}

/// One line per event, then the outcome.
pub fn readable(scenario: &Scenario, trace: &Trace) -> String {
    let mut out = String::new();
    for e in &trace.events {
        let mut op = scenario.ops.get(e.op).map_or("?".into(), op_text);
        if scenario.cpu_of(e.op) != 0 {
            op = format!("cpu {}: {op}", scenario.cpu_of(e.op));
        }
        // The CPU that observed the event, where several could (docs/
        // scenario-format.md, "Several CPUs").
        let on = if e.cpu != 0 {
            format!(" [cpu {}]", e.cpu)
        } else {
            String::new()
        };
        out += &format!("op {} ({op}){on}: {}\n", e.op, e.kind);
    }
    out += &match trace.outcome {
        Outcome::Completed => "completed\n".to_string(),
        Outcome::Hang => format!("hang at op {}\n", trace.hang_op.unwrap_or(0)),
        Outcome::Storm => "storm (more than 64 deliveries)\n".to_string(),
        Outcome::Error => format!("error: {}\n", trace.error.as_deref().unwrap_or("unknown")),
    };
    out
}

pub fn fmt(args: FmtArgs) -> ExitCode {
    let scenarios = match super::load(&args.files) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut clean = true;
    for (path, scenario) in &scenarios {
        let canonical = print(scenario);
        if args.check {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text != canonical {
                println!("{}: not in canonical form", path.display());
                clean = false;
            }
        } else {
            print!("{canonical}");
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
