//! The campaign end to end: seeded bugs found and minimised, and findings
//! that survive a SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use irqdiff::campaign::{self, Options, Stats};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irqdiff-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The four bugs of the seed report, as the signatures they get.
const SEEDED: [&str; 4] = [
    // 1. an asserted level pin not delivered on unmask
    "missed-delivery.unmask.level-unmask-delivers",
    // 2. no re-delivery after EOI while the line stays asserted
    "missed-delivery.eoi.eoi-redelivers",
    // 3. deassert/assert/deassert during the handler delivers again
    "extra-delivery.eoi.eoi-clears-remote-irr",
    // 4. split irqchip: EOIs never reach the userspace IOAPIC
    "missed-delivery.assert.level-delivers.split",
];

#[test]
fn sim_hvf_known_finds_its_five_bugs_as_exactly_five_causes_minimised() {
    let out = scratch("seeded");
    let options = Options {
        cases: Some(20_000),
        seed: 1,
        jobs: 2,
        ..Options::new("sim:hvf-known", &out)
    };
    let summary = campaign::run(
        &options,
        &Stats::default(),
        &AtomicBool::new(false),
        &|_| {},
    )
    .unwrap();
    assert_eq!(summary.cases, 20_000);
    let slugs: Vec<String> = summary
        .findings
        .iter()
        .map(|f| f.signature.slug())
        .collect();
    for seeded in SEEDED {
        let f = summary
            .findings
            .iter()
            .find(|f| f.signature.slug() == seeded)
            .unwrap_or_else(|| panic!("{seeded} not found; found {slugs:?}"));
        assert!(
            f.minimized.ops.len() <= 8,
            "{seeded}: {} ops\n{}",
            f.minimized.ops.len(),
            f.minimized
        );
        let dir = f.dir.clone().expect("written");
        assert_eq!(
            dir.parent().unwrap().parent().unwrap(),
            out,
            "OUT/<cause>/<signature>"
        );
        for file in [
            "original.irq",
            "min.irq",
            "trace-diff.txt",
            "report.md",
            "signature.json",
        ] {
            assert!(dir.join(file).is_file(), "{seeded}/{file} missing");
        }
        // The written repro parses and still diverges with the same signature.
        let min = common::load(&dir.join("min.irq"));
        let mut differ = irqdiff::differ::Differ::open("sim:hvf-known").unwrap();
        assert_eq!(
            differ
                .diff(&min)
                .into_signature()
                .map(|s| s.slug())
                .as_deref(),
            Some(seeded)
        );
    }
    // causes.json: one object per cause, each naming the rule it breaks
    // and that rule's citation; the five seeded bugs' rules are all there.
    let causes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("causes.json")).unwrap()).unwrap();
    let causes = causes.as_array().expect("a JSON list");
    let mut rules = Vec::new();
    for cause in causes {
        let name = cause["name"].as_str().unwrap();
        assert!(out.join(name).join("min.irq").is_file(), "{name}/min.irq");
        assert!(cause["divergences"].as_u64().unwrap() > 0, "{cause}");
        assert!(!cause["signatures"].as_array().unwrap().is_empty());
        assert!(cause["minimal_scenario"].as_str().unwrap().ends_with('\n'));
        assert!(
            cause["documented"].is_null(),
            "sim: has no documented behaviours"
        );
        for d in cause["explained_by"].as_array().unwrap() {
            assert!(!d["citation"].as_str().unwrap().is_empty());
            rules.push(d["rule"].as_str().unwrap().to_string());
        }
    }
    // Exactly the five seeded bugs, one cause each, each named by the
    // deviation of the rule its quirk breaks (`Quirks::broken_rules`).
    let mut names: Vec<&str> = causes.iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "apic-base-transition-skipped",
            "eoi-broadcast-skipped",
            "eoi-redelivers-skipped",
            "level-remote-irr-blocks-late",
            "level-unmask-delivers-skipped",
        ],
        "{rules:?}"
    );
    let injected: Vec<&str> = irqdiff::backend::sim::parse_quirks("hvf-known")
        .unwrap()
        .broken_rules()
        .iter()
        .map(|r| r.name())
        .collect();
    rules.sort_unstable();
    let mut injected_sorted = injected.clone();
    injected_sorted.sort_unstable();
    assert_eq!(rules, injected_sorted);
    for rule in [
        "level-unmask-delivers",
        "eoi-redelivers",
        "level-remote-irr-blocks",
        "eoi-broadcast",
        "apic-base-transition",
    ] {
        assert!(
            rules.iter().any(|r| r == rule),
            "{rule} not among {rules:?}"
        );
    }
    assert!(
        summary.headline.contains("0 unexplained"),
        "{}",
        summary.headline
    );
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn killed_campaign_keeps_every_reported_finding_and_resumes() {
    let out = scratch("sigkill");
    let mut child = Command::new(env!("CARGO_BIN_EXE_irqdiff"))
        .args([
            "fuzz",
            "--backend",
            "sim:hvf-known",
            "--cases",
            "1000000000",
            "--jobs",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has reported three findings, then SIGKILL it.
    let mut reported = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(dir) = line
            .split(" -> ")
            .nth(1)
            .filter(|_| line.starts_with("new finding"))
        {
            reported.push(PathBuf::from(dir));
            if reported.len() == 3 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        reported.len(),
        3,
        "the campaign reported findings before it was killed"
    );
    // Every reported finding is complete on disk.
    for dir in &reported {
        for file in [
            "original.irq",
            "min.irq",
            "trace-diff.txt",
            "report.md",
            "signature.json",
        ] {
            assert!(dir.join(file).is_file(), "{}/{file} lost", dir.display());
        }
        common::load(&dir.join("min.irq"));
    }
    let before = campaign::known_signatures(&out).unwrap();
    assert!(before.len() >= 3);
    // A resumed campaign skips what is known and loses nothing.
    let summary = campaign::run(
        &Options {
            cases: Some(5_000),
            seed: 9,
            ..Options::new("sim:hvf-known", &out)
        },
        &Stats::default(),
        &AtomicBool::new(false),
        &|_| {},
    )
    .unwrap();
    assert_eq!(summary.already_known, before.len());
    assert!(
        summary
            .findings
            .iter()
            .all(|f| !before.contains(&f.signature)),
        "a known signature was reported again"
    );
    let after = campaign::known_signatures(&out).unwrap();
    assert!(before.is_subset(&after));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn two_seeded_bugs_are_exactly_two_causes_each_naming_its_rule() {
    let out = scratch("two-causes");
    let options = Options {
        cases: Some(20_000),
        ..Options::new("sim:level-eoi-no-redeliver,split-eoi-lost", &out)
    };
    let summary = campaign::run(
        &options,
        &Stats::default(),
        &AtomicBool::new(false),
        &|_| {},
    )
    .unwrap();
    let mut names: Vec<&str> = summary.causes.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["eoi-broadcast-skipped", "eoi-redelivers-skipped"]);
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort_unstable();
    assert_eq!(
        top,
        [
            "causes.json",
            "eoi-broadcast-skipped",
            "eoi-redelivers-skipped"
        ],
        "only causes at the top level"
    );
    assert_eq!(
        summary.headline,
        format!(
            "2 causes explain {} divergences; 0 unexplained",
            summary.divergences
        )
    );
    std::fs::remove_dir_all(out).unwrap();
}
