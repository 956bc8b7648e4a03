//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use irqdiff::scenario::{parse, Scenario};
use irqdiff::trace::{EventKind, Trace};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.irq` file below `scenarios/<dir>`, sorted.
pub fn scenario_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("scenarios").join(dir))
        .expect("scenario directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "irq"))
        .collect();
    files.sort();
    files
}

pub fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).expect("readable scenario");
    parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The committed expected trace next to `path` (`NAME.expected.json` or
/// `NAME.<backend>.expected.json`), if present.
pub fn expected(path: &Path, backend: Option<&str>) -> Option<Trace> {
    let stem = path.with_extension("");
    let name = match backend {
        None => format!("{}.expected.json", stem.display()),
        Some(b) => format!("{}.{b}.expected.json", stem.display()),
    };
    let text = std::fs::read_to_string(name).ok()?;
    Some(serde_json::from_str(&text).expect("expected trace parses"))
}

/// (op, vector) of each delivery.
pub fn deliveries(t: &Trace) -> Vec<(usize, u8)> {
    t.deliveries().collect()
}

/// What a test that needs a host resource (`/dev/kvm`, QEMU, a C compiler)
/// does about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// The resource is there: the test runs.
    Run,
    /// Missing outside CI: the test passes after printing this line.
    Skip(String),
    /// Missing under `CI=true`: CI provides every resource, so its absence
    /// is a broken CI machine and the test fails with this message.
    Fail(String),
}

/// The decision, apart from the environment so that it can be tested.
pub fn skip_or_fail(ci: bool, test: &str, available: Result<(), String>) -> Need {
    match available {
        Ok(()) => Need::Run,
        Err(why) if ci => Need::Fail(format!(
            "{test}: {why} (CI=true, so a test that cannot run fails instead of being skipped)"
        )),
        Err(why) => Need::Skip(format!("SKIPPED {test}: {why}")),
    }
}

/// Whether the tests run under CI: `CI=true` (GitHub Actions, GitLab) or `CI=1`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether `test` can go on with `available`: true to run, false (after the
/// `SKIPPED` line) to return early; panics under CI.
pub fn run_or_skip(test: &str, available: Result<(), String>) -> bool {
    match skip_or_fail(under_ci(), test, available) {
        Need::Run => true,
        Need::Skip(line) => {
            eprintln!("{line}");
            false
        }
        Need::Fail(message) => panic!("{message}"),
    }
}

/// Whether the backend `name` of the catalogue is available here.
fn backend_available(name: &str) -> Result<(), String> {
    match irqdiff::backend::catalogue()
        .into_iter()
        .find(|b| b.name == name)
        .map(|b| b.availability)
    {
        Some(irqdiff::backend::Availability::Available) => Ok(()),
        Some(irqdiff::backend::Availability::Unavailable(why)) => {
            Err(format!("{name} unavailable ({why})"))
        }
        None => Err(format!("no {name} backend in this build")),
    }
}

/// Whether /dev/kvm can be used (see [`run_or_skip`]).
pub fn kvm_or_skip(test: &str) -> bool {
    run_or_skip(test, backend_available("kvm"))
}

/// Whether `qemu-system-x86_64` can be used (see [`run_or_skip`]).
pub fn qemu_or_skip(test: &str) -> bool {
    run_or_skip(test, backend_available("qemu-tcg"))
}

/// Whether a C compiler (`cc`) can be run (see [`run_or_skip`]).
pub fn cc_or_skip(test: &str) -> bool {
    let available = match std::process::Command::new("cc").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`cc --version` exited with {}", out.status)),
        Err(e) => Err(format!("no C compiler (cc: {e})")),
    };
    run_or_skip(test, available)
}

/// The snapshot of `event`, if it is one.
pub fn snapshot(t: &Trace, index: usize) -> &irqdiff::trace::Snapshot {
    match &t.events[index].kind {
        EventKind::Snapshot(s) => s,
        other => panic!("event {index} is {other:?}, not a snapshot"),
    }
}

pub fn bit(words: &[u32; 8], v: u8) -> bool {
    words[v as usize / 32] & (1 << (v % 32)) != 0
}

/// The directories of committed scenarios (`scenarios/<dir>`).
pub const SCENARIO_DIRS: [&str; 4] = [
    "kvm-unit-tests",
    "kvm-divergences",
    "seed-hvf",
    "qemu-divergences",
];

/// Every committed scenario, directory by directory.
pub fn committed_scenarios() -> Vec<PathBuf> {
    SCENARIO_DIRS
        .iter()
        .flat_map(|d| scenario_files(d))
        .collect()
}

/// What every committed scenario did on one backend.
#[derive(Debug, Default)]
pub struct Tally {
    /// Scenarios (file stems) that agreed with the model.
    pub agreed: Vec<String>,
    /// Scenarios whose divergence carries a documented label, with its id.
    pub labelled: Vec<(String, &'static str)>,
    /// Scenarios the backend did not run, with why.
    pub refused: Vec<(String, String)>,
}

impl Tally {
    /// The refused scenarios' stems.
    pub fn refused_stems(&self) -> Vec<&str> {
        self.refused.iter().map(|(s, _)| s.as_str()).collect()
    }
}

/// Runs every committed scenario on `backend_name` and judges it against
/// the model: each agrees, or its divergence carries a documented label
/// (`irqdiff::known::label`), or the backend refused it (returned in the
/// tally for the caller to check). An undocumented divergence panics,
/// naming the file. `batched`: the scenarios run as one `run_batch`
/// (QEMU: a few processes instead of one per scenario); otherwise one
/// run each.
pub fn every_scenario_agrees_or_is_documented(backend_name: &str, batched: bool) -> Tally {
    let paths = committed_scenarios();
    let scenarios: Vec<Scenario> = paths.iter().map(|p| load(p)).collect();
    let mut differ = irqdiff::differ::Differ::open(backend_name).unwrap_or_else(|e| panic!("{e}"));
    let observed: Vec<Option<Trace>> = if batched {
        let mut b = irqdiff::backend::open(backend_name).unwrap_or_else(|e| panic!("{e}"));
        b.run_batch(&scenarios).into_iter().map(Some).collect()
    } else {
        vec![None; scenarios.len()]
    };
    let mut tally = Tally::default();
    for ((path, scenario), observed) in paths.iter().zip(&scenarios).zip(observed) {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let judgement = match observed {
            Some(t) => differ.judge(scenario, t),
            None => differ.diff(scenario),
        };
        match &judgement.ruling {
            irqdiff::oracle::Ruling::Agree => tally.agreed.push(stem),
            irqdiff::oracle::Ruling::Diverge {
                divergence,
                signature,
            } => {
                let label =
                    irqdiff::known::label(backend_name, signature, scenario, &judgement.observed);
                let Some(label) = label else {
                    panic!(
                        "{backend_name}: {}: undocumented divergence {signature}: {divergence}\nobserved: {}",
                        path.display(),
                        judgement.observed.to_json()
                    );
                };
                tally.labelled.push((stem, label.id));
            }
            irqdiff::oracle::Ruling::Inconclusive(why) => tally.refused.push((stem, why.clone())),
        }
    }
    eprintln!(
        "{backend_name}: {} agree, {} labelled {:?}, refused {:?}",
        tally.agreed.len(),
        tally.labelled.len(),
        tally.labelled,
        tally.refused
    );
    tally
}
