//! Issue 18 part 7: `cargo run -- ... --backend hvf` needs no manual signing
//! step on a Mac. `.cargo/config.toml` sets a runner for x86_64-apple-darwin
//! only (Linux builds are untouched), and `scripts/codesign-run.sh` signs the
//! binary with `scripts/hv.entitlements`, then runs it with cargo's
//! arguments. Tested here with a stand-in `codesign` on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_runner_is_set_for_intel_macs_only() {
    let config = std::fs::read_to_string(root().join(".cargo/config.toml")).unwrap();
    let tables: Vec<&str> = config
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .collect();
    assert_eq!(tables, ["[target.x86_64-apple-darwin]"]);
    assert!(config.contains("runner = \"scripts/codesign-run.sh\""));
    let plist = std::fs::read_to_string(root().join("scripts/hv.entitlements")).unwrap();
    assert!(plist.contains("<key>com.apple.security.hypervisor</key>\n    <true/>"));
}

/// (exit code, stdout, stderr, what the stand-in codesign was called with).
fn run_runner(codesign_exit: i32, args: &[&str]) -> (i32, String, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "irqdiff-runner-{}-{codesign_exit}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let calls = dir.join("codesign-calls");
    executable(
        &dir.join("codesign"),
        &format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho 'codesign says no' >&2\nexit {codesign_exit}\n",
            calls.display()
        ),
    );
    let binary = dir.join("irqdiff");
    executable(&binary, "#!/bin/sh\necho \"ran with: $*\"\nexit 7\n");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new(root().join("scripts/codesign-run.sh"))
        .arg(&binary)
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap();
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        recorded.replace(&dir.display().to_string(), "DIR"),
    )
}

#[test]
fn the_runner_signs_with_the_entitlement_then_runs_the_binary_with_its_arguments() {
    let (code, out, err, calls) = run_runner(0, &["fuzz", "--backend", "hvf"]);
    let entitlements = root().join("scripts/hv.entitlements");
    assert_eq!(
        calls,
        format!(
            "--sign - --entitlements {} --force DIR/irqdiff\n",
            entitlements.display()
        )
    );
    assert_eq!(
        (code, out.as_str()),
        (7, "ran with: fuzz --backend hvf\n"),
        "{err}"
    );
    // codesign's own chatter ("replacing existing signature") is not shown.
    assert_eq!(err, "");
}

#[test]
fn a_failed_signature_stops_before_running_and_says_why() {
    let (code, out, err, _) = run_runner(1, &["backends"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.contains("codesign-run.sh: codesign failed for"),
        "{err}"
    );
    assert!(err.contains("codesign says no"), "{err}");
}
