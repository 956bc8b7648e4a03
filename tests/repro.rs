//! Repros a maintainer can run: the generated C programs compile and observe
//! what the `kvm` backend observes; reports name the deciding spec rule.

mod common;

use std::process::Command;

use common::*;
use irqdiff::backend::{self, model::ModelBackend, Backend};
use irqdiff::repro::c;

fn observed_column(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("result:"))
        .filter_map(|l| l.split(" | ").nth(1))
        .map(|o| o.trim_end_matches("   <== differs").to_string())
        .filter(|o| o != "-")
        .collect()
}

/// The kvm-unit-tests scenarios whose in-handler snapshots vary from run to
/// run on this KVM (as in tests/kvm_backend.rs).
const FLAKY_SNAPSHOTS: &[&str] = &[
    "tmr_sequence",
    "tmr_sequence_x2apic",
    "level_tmr_x2apic",
    "edge_tmr_x2apic",
];

#[test]
fn c_kvm_repros_compile_and_observe_what_the_kvm_backend_observes() {
    if !kvm_or_skip("c_kvm_repros_compile_and_observe_what_the_kvm_backend_observes") {
        return;
    }
    if !cc_or_skip("c_kvm_repros_compile_and_observe_what_the_kvm_backend_observes") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("irqdiff-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut kvm = backend::open("kvm").unwrap();
    // Every scenario, the split ones (seed-hvf) included.
    let mut files = scenario_files("kvm-unit-tests");
    files.extend(scenario_files("kvm-divergences"));
    files.extend(scenario_files("seed-hvf"));
    files.extend(scenario_files("qemu-divergences"));
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let scenario = load(&path);
        let expected = ModelBackend::new().run(&scenario).unwrap();
        let c = c::emit(&scenario, &expected).unwrap();
        let src = dir.join(format!("{stem}.c"));
        let bin = dir.join(&stem);
        std::fs::write(&src, &c).unwrap();
        let cc = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            cc.status.success(),
            "{stem}: cc failed:\n{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        // This KVM's timing varies from run to run (docs/known-divergences.md):
        // the C program and the backend get three runs to agree.
        let mut last = None;
        for _ in 0..3 {
            let out = Command::new(&bin).output().unwrap();
            let code = out.status.code();
            assert!(
                matches!(code, Some(0) | Some(1)),
                "{stem}: exit {code:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let c_observed = observed_column(&String::from_utf8_lossy(&out.stdout));
            let backend_observed = c::event_lines(&kvm.run(&scenario).unwrap());
            // Exit 1 exactly when the observed events differ from the model's.
            assert_eq!(
                code == Some(1),
                c_observed != c::event_lines(&expected),
                "{stem}: exit code"
            );
            // Snapshots inside handlers vary on this KVM (the IRR bit of the
            // vector in service, docs/known-divergences.md): for those
            // scenarios the deliveries and the end are compared.
            // The timer's current count is the host's timing: zero or not
            // is compared (as the oracle does).
            let comparable = |lines: &[String]| -> Vec<String> {
                let lines: Vec<String> = lines
                    .iter()
                    .map(|l| match l.split_once("read lapic[0x390] = ") {
                        Some((head, value)) if value != "0x0" => {
                            format!("{head}read lapic[0x390] = non-zero")
                        }
                        _ => l.clone(),
                    })
                    .collect();
                let lines = lines.as_slice();
                if FLAKY_SNAPSHOTS.contains(&stem.as_str()) {
                    lines
                        .iter()
                        .filter(|l| !l.contains(" snapshot "))
                        .cloned()
                        .collect()
                } else {
                    lines.to_vec()
                }
            };
            if comparable(&c_observed) == comparable(&backend_observed) {
                last = None;
                break;
            }
            last = Some((c_observed, backend_observed));
        }
        if let Some((c, b)) = last {
            panic!("{stem}: the C repro observed\n{c:#?}\nthe kvm backend observed\n{b:#?}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reports_name_the_rule_that_decided_the_diverging_event() {
    // The seed's four bugs on sim:hvf-known, and the rule each breaks.
    let cases = [
        ("handler 0x82: deassert 14; eoi\nroute 14 vector=0x82 level masked\nassert 14\nunmask 14\n", "IOREDTBL bit 16"),
        ("handler 0x9a#2: deassert 14; eoi\nroute 14 vector=0x9a level\ncli\nassert 14\nsti-hlt\n", "ICH IOxAPIC EOI register"),
        ("handler 0x98: deassert 14; assert 14; deassert 14; eoi\nroute 14 vector=0x98 level\nassert 14\nnop\n", "Remote IRR is reset"),
    ];
    for (text, citation) in cases {
        let scenario = irqdiff::scenario::parse(text).unwrap();
        let mut differ = irqdiff::differ::Differ::open("sim:hvf-known").unwrap();
        let sig = differ.diff(&scenario).into_signature().expect("diverges");
        let finding = differ.finding(&scenario, sig).expect("a finding");
        let report = irqdiff::repro::report(&finding, "sim:hvf-known");
        assert!(report.contains("## The rule"), "{report}");
        assert!(
            report.contains(citation),
            "the report should cite {citation:?}:\n{report}"
        );
        let rule = irqdiff::repro::deciding_rule(&finding).expect("a deciding rule");
        assert!(report.contains(rule.citation()));
    }
}

#[test]
fn rust_regression_test_embeds_the_scenario_and_the_model_trace() {
    let scenario = irqdiff::scenario::parse("route 14 vector=0x76\npulse 14\n").unwrap();
    let test = irqdiff::repro::rust_test(&scenario, "kvm", "edge.pulse");
    assert!(test.contains("fn regression_edge_pulse()"));
    assert!(test.contains("route 14 vector=0x76\npulse 14\n"));
    assert!(test.contains(r#"{"op":1,"kind":"deliver","vector":118}"#));
}

#[test]
fn kvm_report_lists_the_hypervisor_calls_in_order() {
    if !kvm_or_skip("kvm_report_lists_the_hypervisor_calls_in_order") {
        return;
    }
    let scenario = irqdiff::scenario::parse(
        "handler 0x82: deassert 14; eoi\nroute 14 vector=0x82 level masked\nassert 14\nunmask 14\n",
    )
    .unwrap();
    let mut differ = irqdiff::differ::Differ::open("kvm").unwrap();
    let sig = differ
        .diff(&scenario)
        .into_signature()
        .expect("this KVM misses the unmask delivery");
    let finding = differ.finding(&scenario, sig).expect("a finding");
    let report = irqdiff::repro::report(&finding, "kvm");
    assert!(report.contains("## Hypervisor calls"), "{report}");
    let line = report
        .find("KVM_IRQ_LINE gsi 0 level 1")
        .expect("the assert is listed");
    let end = report
        .find("out port 0x511")
        .expect("the end of the run is listed");
    assert!(line < end, "{report}");
}
