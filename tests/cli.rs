//! The command line: exit codes, messages and output formats.

use std::process::Command;

fn irqdiff(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_irqdiff"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("irqdiff-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn run_prints_a_readable_trace_and_json() {
    let f = file("edge.irq", "route 14 vector=0x76\npulse 14\nnop\n");
    let (code, out, _) = irqdiff(&["run", &f]);
    assert_eq!(code, 0);
    assert_eq!(out, "op 1 (pulse 14): deliver 0x76\ncompleted\n");
    let (code, out, _) = irqdiff(&["run", "--json", &f]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        r#"{"backend":"model","outcome":"completed","events":[{"op":1,"kind":"deliver","vector":118}]}"#
    );
}

#[test]
fn malformed_scenario_exits_2_naming_file_line_and_column() {
    let good = file("good.irq", "nop\n");
    let bad = file("bad.irq", "nop\nroute 3 vector=0x20 edge level\n");
    let (code, out, err) = irqdiff(&["run", &good, &bad]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "nothing runs when a file is bad");
    assert_eq!(
        err.trim(),
        format!("{bad}:2:26: expected one trigger option (`edge` already given), found `level`")
    );
}

#[test]
fn missing_file_and_usage_errors_exit_2() {
    let (code, _, err) = irqdiff(&["run", "/nonexistent/x.irq"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.irq"), "{err}");
    assert_eq!(irqdiff(&["run"]).0, 2);
    assert_eq!(irqdiff(&["frobnicate"]).0, 2);
    let f = file("n.irq", "nop\n");
    let (code, _, err) = irqdiff(&["run", "--backend", "nosuch", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown backend `nosuch`"), "{err}");
    let (code, _, err) = irqdiff(&["run", "--backend", "sim:bogus", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown quirk `bogus`"), "{err}");
}

/// A campaign on a backend that cannot open says only why: no banner, no
/// findings directory, before any case runs.
#[test]
fn fuzz_on_a_bad_backend_fails_before_its_banner() {
    let out = std::env::temp_dir().join(format!("irqdiff-cli-badfuzz-{}", std::process::id()));
    let out = out.to_str().unwrap();
    let (code, _, err) = irqdiff(&[
        "fuzz",
        "--backend",
        "sim:bogus",
        "--time",
        "2s",
        "--out",
        out,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown quirk `bogus`"), "{err}");
    assert!(!err.contains("fuzzing"), "{err}");
    let (code, _, err) = irqdiff(&["fuzz", "--backend", "hvf", "--time", "2s", "--out", out]);
    assert_eq!(code, 3);
    assert!(
        err.contains("unavailable") && !err.contains("fuzzing"),
        "{err}"
    );
    assert!(!std::path::Path::new(out).exists());
}

#[test]
fn unavailable_backend_exits_3_with_the_reason() {
    let f = file("u.irq", "nop\n");
    let (code, _, err) = irqdiff(&["run", "--backend", "hvf", &f]);
    assert_eq!(code, 3);
    assert!(err.contains("unavailable"), "{err}");
}

#[test]
fn backends_lists_every_backend_with_availability() {
    let (code, out, _) = irqdiff(&["backends"]);
    assert_eq!(code, 0);
    for name in [
        "model",
        "kvm",
        "kvm-split",
        "hvf",
        "hvf-split",
        "sim:QUIRKS",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
    let hvf = out.lines().find(|l| l.starts_with("hvf ")).unwrap();
    assert!(hvf.contains("unavailable"), "{hvf}");
}

#[test]
fn diff_and_minimize_report_a_divergence_with_exit_1() {
    let f = file("lm.irq", "handler 0x82: deassert 14; eoi\nroute 14 vector=0x82 level masked\nnop\nassert 14\nnop\nunmask 14\nnop\n");
    let (code, out, _) = irqdiff(&["diff", &f, "--backend", "sim:level-unmask-no-deliver"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("signature:  missed-delivery caused by unmask (level-unmask-delivers)"),
        "{out}"
    );
    let (code, out, _) = irqdiff(&["minimize", &f, "--backend", "sim:level-unmask-no-deliver"]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "route 0 vector=0x20 level masked\nassert 0\nunmask 0\n"
    );
    let (code, out, _) = irqdiff(&["diff", &f, "--backend", "sim:none"]);
    assert_eq!((code, out.lines().last()), (0, Some("agree")));
}

/// Issue 18 part 6: `irqdiff doctor` runs on Linux and writes a Markdown
/// report; its KVM line says whether /dev/kvm is usable on this machine,
/// and with KVM it runs the guest bring-up and every kvm-unit-tests
/// scenario on kvm and kvm-split.
#[test]
fn doctor_reports_on_kvm_and_qemu_and_writes_the_report_file() {
    let out_file = std::env::temp_dir().join(format!("irqdiff-doctor-{}.md", std::process::id()));
    let (code, out, err) = irqdiff(&["doctor", "--out", &out_file.display().to_string()]);
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), out);
    std::fs::remove_file(&out_file).unwrap();
    assert!(out.starts_with("# irqdiff doctor\n"), "{out}");
    assert!(out.contains("\n- **OS**: "), "{out}");
    assert!(out.contains("\n- **CPU**: "), "{out}");
    let kvm_line = out
        .lines()
        .find(|l| l.starts_with("| KVM (/dev/kvm) |"))
        .unwrap_or_else(|| panic!("no KVM line in\n{out}"));
    let kvm_usable = irqdiff::backend::catalogue()
        .into_iter()
        .any(|b| b.name == "kvm" && b.availability.is_available());
    if kvm_usable {
        assert!(
            kvm_line.starts_with("| KVM (/dev/kvm) | pass | available: KVM API version 12 |"),
            "{kvm_line}"
        );
        assert!(out.contains("| guest bring-up (kvm) | pass |"), "{out}");
        let scenarios = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scenarios/kvm-unit-tests"
        ))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "irq")
        })
        .count();
        for backend in ["kvm", "kvm-split"] {
            let rows = out
                .lines()
                .filter(|l| l.contains(&format!(".irq | {backend} | ")))
                .count();
            assert_eq!(rows, scenarios, "{backend} rows in\n{out}");
            assert!(
                out.contains(&format!("| kvm-unit-tests on {backend} | ")),
                "{out}"
            );
        }
        // No scenario fails to run: each agrees or diverges.
        assert!(!out.contains("| error (exit"), "{out}");
    } else {
        assert!(
            kvm_line.starts_with("| KVM (/dev/kvm) | FAIL | unavailable: "),
            "{kvm_line}"
        );
        assert!(out.contains("| guest bring-up | skip |"), "{out}");
    }
    assert!(out.contains("| QEMU (backend qemu-tcg) |"), "{out}");
    assert!(out.contains("| QEMU x2APIC under TCG |"), "{out}");
}

/// `--no-scenarios` leaves the scenario table out.
#[test]
fn doctor_without_scenarios_says_so() {
    let (code, out, _) = irqdiff(&["doctor", "--no-scenarios"]);
    assert!(code == 0 || code == 1);
    assert!(
        out.contains("| kvm-unit-tests scenarios | skip | --no-scenarios |"),
        "{out}"
    );
    assert!(!out.contains("## kvm-unit-tests scenarios"), "{out}");
}

/// With several CPUs, the readable trace names the CPU that ran each op
/// (`cpu K:`, as in the scenario) and the CPU that observed each event.
#[test]
fn run_names_the_cpu_of_each_op_and_event() {
    let f = file(
        "smp.irq",
        "config cpus=2\nhandler 0x40@1: eoi\ncpu 1: ipi vector=0x40 dest=0\nipi vector=0x40 dest=1\n",
    );
    let (code, out, err) = irqdiff(&["run", &f]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "op 0 (cpu 1: ipi vector=0x40): deliver 0x40\n\
         op 1 (ipi vector=0x40 dest=0x1) [cpu 1]: deliver 0x40\n\
         completed\n"
    );
}
