//! The Hypervisor.framework C repros: every scenario's `c-hvf` program is
//! valid C against the declarations generated from the Rust FFI, and the
//! committed `repros/hvf/` programs are what the generator writes now.

mod common;

use std::process::Command;

use common::*;
use irqdiff::backend::{model::ModelBackend, Backend};
use irqdiff::repro::c;

fn emit(path: &std::path::Path) -> String {
    let scenario = load(path);
    let expected = ModelBackend::new().run(&scenario).unwrap();
    c::emit_hvf(&scenario, &expected).unwrap()
}

#[test]
fn every_c_hvf_program_passes_syntax_checking() {
    if !cc_or_skip("every_c_hvf_program_passes_syntax_checking") {
        return;
    }
    let include = root().join("hypervisor-framework-sys/include");
    let dir = std::env::temp_dir().join(format!("irqdiff-hvf-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = scenario_files("kvm-unit-tests");
    files.extend(scenario_files("kvm-divergences"));
    files.extend(scenario_files("seed-hvf"));
    files.extend(scenario_files("qemu-divergences"));
    for path in files {
        let src = dir.join(format!("{}.c", path.file_stem().unwrap().to_string_lossy()));
        std::fs::write(&src, emit(&path)).unwrap();
        let out = Command::new("cc")
            .args(["-fsyntax-only", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&include)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn committed_seed_repros_are_current() {
    for path in scenario_files("seed-hvf") {
        let name = format!("{}.c", path.file_stem().unwrap().to_string_lossy());
        let committed = std::fs::read_to_string(root().join("repros/hvf").join(&name))
            .unwrap_or_else(|_| {
                panic!(
                    "repros/hvf/{name} missing: run `irqdiff emit {} --as c-hvf`",
                    path.display()
                )
            });
        assert!(
            committed.starts_with("/*\n * GENERATED FILE: `irqdiff emit SCENARIO.irq --as c-hvf`"),
            "repros/hvf/{name} does not say it is generated and by which command"
        );
        assert!(
            committed == emit(&path),
            "repros/hvf/{name} is stale: regenerate it with `irqdiff emit {} --as c-hvf`",
            path.display()
        );
    }
}

#[test]
fn seed_scenarios_show_the_seed_bugs_on_sim_hvf_known() {
    let mut differ = irqdiff::differ::Differ::open("sim:hvf-known").unwrap();
    for path in scenario_files("seed-hvf") {
        let scenario = load(&path);
        assert!(
            differ.diff(&scenario).into_signature().is_some(),
            "{} should diverge on sim:hvf-known",
            path.display()
        );
    }
}
