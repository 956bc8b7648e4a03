//! The rule of `tests/common`'s skip helpers: a test that needs `/dev/kvm`,
//! QEMU or a C compiler runs when it is there, is skipped with a `SKIPPED`
//! line when it is not, and fails instead under `CI=true`.

mod common;

use common::{skip_or_fail, Need};

#[test]
fn an_available_resource_runs_the_test_in_and_out_of_ci() {
    assert_eq!(skip_or_fail(false, "t", Ok(())), Need::Run);
    assert_eq!(skip_or_fail(true, "t", Ok(())), Need::Run);
}

#[test]
fn a_missing_resource_outside_ci_is_a_skip_line_naming_the_test_and_why() {
    assert_eq!(
        skip_or_fail(
            false,
            "kvm_test",
            Err("KVM unavailable (no /dev/kvm)".into())
        ),
        Need::Skip("SKIPPED kvm_test: KVM unavailable (no /dev/kvm)".into())
    );
}

#[test]
fn a_missing_resource_under_ci_fails_naming_the_test_and_why() {
    let Need::Fail(message) = skip_or_fail(true, "qemu_test", Err("no qemu-system-x86_64".into()))
    else {
        panic!("a missing resource under CI must fail the test");
    };
    assert!(
        message.starts_with("qemu_test: no qemu-system-x86_64"),
        "{message}"
    );
    assert!(message.contains("CI=true"), "{message}");
}

#[test]
fn run_or_skip_skips_outside_ci_and_panics_under_it() {
    let outcome = std::panic::catch_unwind(|| common::run_or_skip("t", Err("missing".into())));
    if common::under_ci() {
        assert!(
            outcome.is_err(),
            "under CI=true a missing resource must fail"
        );
    } else {
        assert_eq!(outcome.ok(), Some(false), "outside CI it is skipped");
    }
}
