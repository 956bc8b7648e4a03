//! Repros a maintainer can run: the generated C programs compile and observe
//! what the `kvm` backend observes; reports name the deciding spec rule.

mod common;

use std::process::Command;

use common::*;
use irqdiff::backend::{self, model::ModelBackend, Backend};
use irqdiff::repro::{c, c_smp};

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

/// Multi-CPU scenarios beyond kvm-unit-tests': a lowest-priority message
/// (the CPUs not compared), the one KVM's vector hashing drops
/// (kvm-lowest-hashed-to-absent), per-CPU handler bodies, an idle CPU with
/// IF clear, a hang, a storm and an error on an AP, INIT and SIPI, and
/// aliased xAPIC IDs.
const MULTI_CPU_CASES: &[(&str, &str)] = &[
    ("lowest", "config cpus=4\ncpu 3: ipi vector=0x74 lowest all-but-self\n"),
    ("hashed_to_absent", "config apic=x2apic cpus=2\nipi vector=0x4d dest=0xff logical lowest\nipi vector=0x49 dest=0xff logical lowest\n"),
    ("per_cpu_body", "config cpus=2\nhandler 0x40@1: snapshot; eoi\nipi vector=0x40 all\n"),
    ("if_clear", "config cpus=2\ncpu 1: cli\nipi vector=0x50 dest=1\nnop\ncpu 1: sti\n"),
    ("hang_on_ap", "config cpus=3\nnop\ncpu 2: hlt\nnop\n"),
    ("storm_on_ap", "config cpus=2\nhandler 0x60: eoi; self-ipi 0x60\ncpu 1: self-ipi 0x60\n"),
    ("init_to_runner", "config cpus=2\nipi init all\nnop\n"),
    ("op_on_waiting_cpu", "config cpus=2 ap-start=sipi\ncpu 1: nop\n"),
    ("init_then_sipi", "config cpus=2\nipi init dest=1\nipi vector=0x70 dest=1\nipi startup dest=1\nipi vector=0x71 dest=1\n"),
    ("aliased_ids", "config cpus=3 apic-ids=0,1,1\nipi vector=0x44 dest=1\nmsi vector=0x45 dest=1\n"),
];

#[test]
fn c_kvm_multi_cpu_repros_observe_per_cpu_what_the_kvm_backend_observes() {
    let test = "c_kvm_multi_cpu_repros_observe_per_cpu_what_the_kvm_backend_observes";
    if !kvm_or_skip(test) || !cc_or_skip(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("irqdiff-c-smp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases: Vec<(String, irqdiff::scenario::Scenario)> =
        scenario_files("kvm-unit-tests-smp")
            .iter()
            .map(|p| {
                (
                    p.file_stem().unwrap().to_string_lossy().to_string(),
                    load(p),
                )
            })
            .collect();
    cases.extend(
        MULTI_CPU_CASES
            .iter()
            .map(|(name, text)| (name.to_string(), irqdiff::scenario::parse(text).unwrap())),
    );
    // Both shapes: the split one with the program's own IOAPIC.
    let mut shapes = Vec::new();
    for (name, scenario) in cases {
        let mut split = scenario.clone();
        split.config.irqchip = irqdiff::scenario::Irqchip::Split;
        shapes.push((format!("{name}-split"), "kvm-split", split));
        shapes.push((name, "kvm", scenario));
    }
    let mut backends = std::collections::HashMap::new();
    for (stem, shape, scenario) in shapes {
        assert!(scenario.uses_smp(), "{stem}");
        let kvm = backends
            .entry(shape)
            .or_insert_with(|| backend::open(shape).unwrap());
        let expected = ModelBackend::new().run(&scenario).unwrap();
        let c = c::emit(&scenario, &expected).unwrap();
        assert!(c.contains("vCPUs, one thread"), "{stem}");
        let src = dir.join(format!("{stem}.c"));
        let bin = dir.join(&stem);
        std::fs::write(&src, &c).unwrap();
        let cc = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            cc.status.success(),
            "{stem}: cc failed:\n{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let expected_lines = c_smp::event_lines(&scenario, &expected);
        // This KVM's IOAPIC scenarios vary from run to run
        // (docs/known-divergences.md): three runs to agree.
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
            assert_eq!(
                code == Some(1),
                c_observed != expected_lines,
                "{stem}: exit code"
            );
            let backend_observed = c_smp::event_lines(&scenario, &kvm.run(&scenario).unwrap());
            if c_observed == backend_observed {
                last = None;
                break;
            }
            last = Some((c_observed, backend_observed));
        }
        if let Some((c, b)) = last {
            panic!("{stem}: the C repro observed\n{c:#?}\nthe {shape} backend observed\n{b:#?}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn multi_cpu_c_lines_tag_each_cpu_unless_a_lowest_priority_message_leaves_it_open() {
    let text = "config cpus=2\nipi vector=0x41 dest=1\nipi vector=0x40 all\n";
    let scenario = irqdiff::scenario::parse(text).unwrap();
    let expected = ModelBackend::new().run(&scenario).unwrap();
    assert_eq!(
        c_smp::event_lines(&scenario, &expected),
        [
            "op 0 [cpu 1] deliver 0x41",
            "op 1 [cpu 0] deliver 0x40",
            "op 1 [cpu 1] deliver 0x40",
            "completed"
        ]
    );
    let c = c::emit(&scenario, &expected).unwrap();
    assert!(c.contains("#define N_CPUS 2"), "{c}");
    assert!(c.contains("static const int OP_CPU[2] = {0, 0};"), "{c}");
    assert!(c.contains("\"op 1 [cpu 1] deliver 0x40\","), "{c}");
    // The model picks CPU 0 (lowest TPR, then index); any CPU may take it,
    // so the line names none.
    let scenario = irqdiff::scenario::parse("config cpus=2\nipi vector=0x42 dest=3 logical lowest\ncpu 1: lapic-write 0xd0 0x02000000\n").unwrap();
    let expected = ModelBackend::new().run(&scenario).unwrap();
    let lines = c_smp::event_lines(&scenario, &expected);
    assert!(lines.iter().all(|l| !l.contains("[cpu")), "{lines:?}");
    assert!(c::emit(&scenario, &expected)
        .unwrap()
        .contains("static const int CPUS_COMPARED = 0;"));
    // What KVM cannot run, the emitter refuses, saying why.
    let aliased =
        irqdiff::scenario::parse("config apic=x2apic cpus=2 apic-ids=1,1\nnop\n").unwrap();
    let e = c::emit(&aliased, &ModelBackend::new().run(&aliased).unwrap()).unwrap_err();
    assert!(e.to_string().contains("cannot share an x2APIC ID"), "{e}");
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

/// The scenario text and the expected trace a generated regression test
/// embeds (its two raw strings, in that order).
fn embedded(test: &str) -> (irqdiff::scenario::Scenario, irqdiff::trace::Trace) {
    let raw: Vec<&str> = test
        .split("r#\"")
        .skip(1)
        .map(|r| r.split("\"#").next().unwrap())
        .collect();
    (
        irqdiff::scenario::parse(raw[0]).unwrap(),
        serde_json::from_str(raw[1]).unwrap(),
    )
}

#[test]
fn rust_repros_of_multi_cpu_findings_embed_per_cpu_traces_and_judge_as_the_oracle() {
    // A finding (kvm-lowest-hashed-to-absent) and a scenario KVM agrees on.
    let finding = irqdiff::scenario::parse(
        "config apic=x2apic cpus=2\nipi vector=0x4d dest=0xff logical lowest\nipi vector=0x49 dest=0x3 logical lowest\nipi vector=0x41 dest=1\n",
    )
    .unwrap();
    let agrees = load(&root().join("scenarios/kvm-unit-tests-smp/apic_physical_broadcast.irq"));
    let on_kvm = kvm_or_skip(
        "rust_repros_of_multi_cpu_findings_embed_per_cpu_traces_and_judge_as_the_oracle (its kvm part)",
    );
    for (scenario, diverges) in [(finding, true), (agrees, false)] {
        let test = irqdiff::repro::rust_test(&scenario, "kvm", "smp");
        assert!(test.contains("compare_scenario(&scenario"), "{test}");
        assert!(test.contains("BackendError::Unsupported"), "{test}");
        let (text, expected) = embedded(&test);
        assert_eq!(text, scenario);
        let model = ModelBackend::new().run(&scenario).unwrap();
        assert_eq!(expected, model);
        assert!(model.events.iter().any(|e| e.cpu == 1), "{test}");
        // What the generated test decides on this host's KVM.
        if on_kvm {
            let observed = backend::open("kvm").unwrap().run(&scenario).unwrap();
            let verdict = irqdiff::oracle::compare_scenario(&scenario, &expected, &observed);
            assert_eq!(
                matches!(verdict, irqdiff::oracle::Verdict::Diverge(_)),
                diverges,
                "{}",
                observed.to_json()
            );
        }
    }
}

#[test]
fn committed_regression_tests_are_what_the_emitter_writes() {
    let path = root().join("scenarios/kvm-unit-tests-smp/apic_physical_broadcast.irq");
    let generated = irqdiff::repro::rust_test(&load(&path), "kvm", "apic_physical_broadcast");
    let committed =
        std::fs::read_to_string(root().join("tests/regressions/smp_apic_physical_broadcast.rs"))
            .unwrap();
    assert_eq!(
        committed, generated,
        "regenerate: irqdiff emit scenarios/kvm-unit-tests-smp/apic_physical_broadcast.irq --as rust-test --backend kvm > tests/regressions/smp_apic_physical_broadcast.rs"
    );
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
