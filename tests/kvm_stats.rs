//! KVM's own per-vCPU statistics (`backend::kvm_stats`) read around real
//! runs on this host's /dev/kvm: the counters the `bench kvm` VM-exit
//! figures divide. Prints a SKIPPED line and passes without KVM.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use irqdiff::backend::kvm::KvmBackend;
use irqdiff::backend::kvm_stats::{StatsSource, VcpuStats};
use irqdiff::backend::Backend;
use irqdiff::scenario::parse;
use irqdiff::trace::Outcome;

/// Each host op is an `out` that returns from `KVM_RUN`, so a run of 20 of
/// them takes at least 20 VM exits by KVM's own count, and the counters
/// only grow; a run of no op takes far fewer.
#[test]
fn kvms_own_counters_count_at_least_every_exit_to_userspace() {
    if !kvm_or_skip("kvms_own_counters_count_at_least_every_exit_to_userspace") {
        return;
    }
    let mut kvm = KvmBackend::open(false).expect("kvm opens");
    let host_ops = parse(&"deassert 3\n".repeat(20)).unwrap();
    let empty = parse("nop\n").unwrap();
    // The VM exists once a run has used it.
    assert_eq!(kvm.run_to_trace(&empty).outcome, Outcome::Completed);
    let (vm, vcpu, index) = kvm.last_run_vcpu().expect("a run used a vCPU");
    let stats = match VcpuStats::open(vm, vcpu, index) {
        Ok(stats) => stats,
        Err(e) => {
            // KVM before 5.14 without debugfs: the bench says why instead.
            eprintln!("SKIPPED kvms_own_counters_count_at_least_every_exit_to_userspace: {e}");
            assert!(!under_ci(), "under CI the statistics must be readable: {e}");
            return;
        }
    };
    assert_eq!(stats.source(), StatsSource::BinaryStatsFd);
    let before = stats.read().unwrap();
    assert_eq!(kvm.run_to_trace(&host_ops).outcome, Outcome::Completed);
    let userspace_exits = kvm.last_exits;
    let after_host_ops = stats.read().unwrap();
    assert_eq!(kvm.run_to_trace(&empty).outcome, Outcome::Completed);
    let after_empty = stats.read().unwrap();
    let host_op_run = after_host_ops.since(&before);
    let empty_run = after_empty.since(&after_host_ops);
    assert!(
        userspace_exits >= 21,
        "20 host ops and the end: {userspace_exits}"
    );
    assert!(
        host_op_run.get("exits") >= 21,
        "KVM counted {} VM exits for {userspace_exits} exits to userspace",
        host_op_run.get("exits")
    );
    assert!(
        empty_run.get("exits") < host_op_run.get("exits"),
        "a run without host ops exits less: {} against {}",
        empty_run.get("exits"),
        host_op_run.get("exits")
    );
    for (name, value) in &before.0 {
        assert!(after_empty.get(name) >= *value, "{name} went down");
    }
}
