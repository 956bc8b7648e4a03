//! The two-line use of docs/byo-irqchip.md from a crate outside this
//! workspace (tests/fixtures/my-vmm, its own workspace with path
//! dependencies on irqdiff-model and irqdiff-check): built and tested
//! offline with the dependencies already in cargo's cache.

use std::path::Path;
use std::process::Command;

#[test]
fn a_crate_outside_the_workspace_runs_the_harness_in_two_lines() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/my-vmm");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("my-vmm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--offline", "--quiet", "--manifest-path"])
        .arg(fixture.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env("PROPTEST_CASES", "200")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "stdout:\n{stdout}"
    );
}
