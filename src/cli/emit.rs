//! `irqdiff emit FILE --as c-kvm|c-hvf|rust-test|report`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::backend::model::ModelBackend;
use crate::backend::Backend;
use crate::differ::{Differ, Finding};
use crate::oracle::Ruling;
use crate::repro;

#[derive(Debug, clap::Args)]
pub struct EmitArgs {
    /// A scenario file (.irq).
    pub file: PathBuf,
    /// What to write: c-kvm, c-hvf, rust-test, report.
    #[arg(long = "as")]
    pub format: String,
    /// The backend the repro is about (rust-test, report).
    #[arg(long, default_value = "kvm")]
    pub backend: String,
}

pub fn main(args: EmitArgs) -> ExitCode {
    let mut loaded = match super::load(std::slice::from_ref(&args.file)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (_, scenario) = loaded.remove(0);
    match args.format.as_str() {
        "c-kvm" => {
            let expected = ModelBackend::new().run_to_trace(&scenario);
            match repro::c::emit(&scenario, &expected) {
                Ok(c) => print!("{c}"),
                Err(e) => {
                    eprintln!("irqdiff emit: {}: {e}", args.file.display());
                    return ExitCode::from(super::EXIT_BAD_INPUT);
                }
            }
        }
        "c-hvf" => {
            let expected = ModelBackend::new().run_to_trace(&scenario);
            match repro::c::emit_hvf(&scenario, &expected) {
                Ok(c) => print!("{c}"),
                Err(e) => {
                    eprintln!("irqdiff emit: {}: {e}", args.file.display());
                    return ExitCode::from(super::EXIT_BAD_INPUT);
                }
            }
        }
        "rust-test" => {
            let name = args
                .file
                .file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
            print!("{}", repro::rust_test(&scenario, &args.backend, &name));
        }
        "report" => {
            let mut differ = match Differ::open(&args.backend) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("irqdiff: {e}");
                    return ExitCode::from(super::EXIT_UNAVAILABLE);
                }
            };
            let judgement = differ.diff(&scenario);
            let Ruling::Diverge {
                divergence,
                signature,
            } = judgement.ruling
            else {
                eprintln!(
                    "irqdiff emit: {} does not diverge on {}: nothing to report",
                    args.file.display(),
                    args.backend
                );
                return ExitCode::from(super::EXIT_BAD_INPUT);
            };
            let (expected, observed) = (judgement.expected, judgement.observed);
            let known = crate::known::label(&args.backend, &signature, &scenario, &observed);
            let finding = Finding {
                known,
                signature,
                original: scenario.clone(),
                minimized: scenario,
                divergence,
                expected,
                observed,
                dir: None,
                minimize_runs: 0,
                calls: differ.target.calls(),
                triage: None,
                explained_by: Vec::new(),
                probe: None,
                rerun: None,
            };
            print!("{}", repro::report(&finding, &args.backend));
        }
        other => {
            eprintln!("irqdiff emit: unknown format `{other}` (c-kvm, c-hvf, rust-test, report)");
            return ExitCode::from(super::EXIT_BAD_INPUT);
        }
    }
    ExitCode::SUCCESS
}
