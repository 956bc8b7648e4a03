//! `irqdiff diff` and `irqdiff minimize`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::differ::Differ;
use crate::oracle::Ruling;
use crate::repro::side_by_side;
use crate::scenario::print::print;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A scenario file (.irq).
    pub file: PathBuf,
    /// The backend to compare with the model.
    #[arg(long)]
    pub backend: String,
    /// A VMM-side workaround for the hvf backends (repeatable):
    /// reassert-on-unmask, reassert-after-eoi, xapic-eoi-detect.
    #[arg(long = "workaround")]
    pub workarounds: Vec<String>,
    /// A third implementation (e.g. qemu-tcg) to triage a divergence with.
    #[arg(long)]
    pub against: Option<String>,
}

fn open(args: &DiffArgs) -> Result<(crate::scenario::Scenario, Differ), ExitCode> {
    let mut loaded = super::load(std::slice::from_ref(&args.file))?;
    let (_, scenario) = loaded.remove(0);
    let name = super::with_workarounds(&args.backend, &args.workarounds)?;
    let differ = Differ::open(&name).map_err(|e| {
        eprintln!("irqdiff: {e}");
        ExitCode::from(match e {
            crate::backend::OpenError::Unavailable { .. } => super::EXIT_UNAVAILABLE,
            _ => super::EXIT_BAD_INPUT,
        })
    })?;
    Ok((scenario, differ))
}

pub fn diff(args: DiffArgs) -> ExitCode {
    let (scenario, mut differ) = match open(&args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let judgement = differ.diff(&scenario);
    let mark = judgement.divergence().map(|d| d.event_index);
    let (expected, observed) = (&judgement.expected, &judgement.observed);
    print!("{}", side_by_side(expected, observed, &args.backend, mark));
    match &judgement.ruling {
        Ruling::Agree => {
            println!("agree");
            ExitCode::SUCCESS
        }
        Ruling::Inconclusive(why) => {
            println!("inconclusive: {why}");
            ExitCode::SUCCESS
        }
        Ruling::Diverge {
            divergence,
            signature,
        } => {
            println!("divergence: {divergence}");
            if let Some(third) = &args.against {
                match crate::backend::open(third) {
                    Ok(mut b) => {
                        let t = b.run_to_trace(&scenario);
                        println!(
                            "triage:     {}",
                            crate::oracle::Triage::of(expected, observed, &t)
                        );
                    }
                    Err(e) => eprintln!("irqdiff: --against {third}: {e}"),
                }
            }
            println!("signature:  {signature}");
            if let Some(k) = crate::known::label(&args.backend, signature, &scenario, observed) {
                println!("known:      {} ({}, {})", k.title, k.id, k.doc);
            }
            ExitCode::from(super::EXIT_DIVERGENCE)
        }
    }
}

pub fn minimize(args: DiffArgs) -> ExitCode {
    let (scenario, mut differ) = match open(&args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(signature) = differ.diff(&scenario).into_signature() else {
        eprintln!(
            "irqdiff: {} does not diverge on {}: nothing to minimise",
            args.file.display(),
            args.backend
        );
        return ExitCode::from(super::EXIT_BAD_INPUT);
    };
    let (minimized, runs) = differ.minimize(&scenario, &signature);
    eprintln!(
        "minimised {} ops to {} in {runs} runs, keeping signature {signature}",
        scenario.ops.len(),
        minimized.ops.len()
    );
    print!("{}", print(&minimized));
    ExitCode::from(super::EXIT_DIVERGENCE)
}
