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

/// Whether /dev/kvm can be used; prints a clear skip line when not.
pub fn kvm_or_skip(test: &str) -> bool {
    match irqdiff::backend::catalogue()
        .into_iter()
        .find(|b| b.name == "kvm")
        .map(|b| b.availability)
    {
        Some(irqdiff::backend::Availability::Available) => true,
        Some(irqdiff::backend::Availability::Unavailable(why)) => {
            eprintln!("SKIPPED {test}: KVM unavailable ({why})");
            false
        }
        None => {
            eprintln!("SKIPPED {test}: no kvm backend in this build");
            false
        }
    }
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
