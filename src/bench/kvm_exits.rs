//! `irqdiff bench kvm`'s count of every VM exit, from KVM's own statistics
//! (`backend::kvm_stats`), and the floor it puts under the time per exit to
//! userspace.
//!
//! Two kinds of exit, named apart in the JSON:
//! - a *userspace exit* is a return from `KVM_RUN` (what the run loop
//!   handles: an `out`, a userspace IOAPIC access, a kick);
//! - a *VM exit* is every exit from the guest that KVM counts (its `exits`
//!   counter): the userspace exits, and the ones KVM handles inside
//!   `KVM_RUN` without returning (the in-kernel LAPIC's and IOAPIC's
//!   emulated accesses, a `hlt`, an interrupt window...).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::kvm::KvmBackend;
use crate::backend::kvm_stats::{Counters, StatsError, VcpuStats, REPORTED};
use crate::backend::Backend;
use crate::scenario::{Op, Scenario};

/// The counters of every vCPU the bench has seen, each read after each use
/// (outside the timed part), so that what a run or a ping loop gained is the
/// difference from the previous reading of the same vCPU (a fresh vCPU
/// counts from 0).
#[derive(Default)]
pub struct ExitStats {
    vcpus: HashMap<RawFd, (VcpuStats, Counters)>,
    /// Why they cannot be read, once that is known.
    pub unavailable: Option<String>,
}

impl ExitStats {
    /// What `vcpu`'s counters gained since the last call for it; None when
    /// the statistics are unavailable.
    pub fn gained(
        &mut self,
        vcpu: Option<(&kvm_ioctls::VmFd, &kvm_ioctls::VcpuFd, u32)>,
    ) -> Option<Counters> {
        let (vm, vcpu, index) = vcpu?;
        if self.unavailable.is_some() {
            return None;
        }
        let key = vcpu.as_raw_fd();
        if let Entry::Vacant(slot) = self.vcpus.entry(key) {
            match VcpuStats::open(vm, vcpu, index) {
                Ok(stats) => {
                    slot.insert((stats, Counters::default()));
                }
                Err(e) => {
                    self.unavailable = Some(describe(&e));
                    return None;
                }
            }
        }
        let (stats, last) = self.vcpus.get_mut(&key).expect("inserted above");
        match stats.read() {
            Ok(now) => {
                let gained = now.since(last);
                *last = now;
                Some(gained)
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: StatsError) -> Option<Counters> {
        self.unavailable = Some(describe(&e));
        None
    }

    /// The source of the statistics, for the JSON.
    pub fn source(&self) -> Value {
        match (&self.unavailable, self.vcpus.values().next()) {
            (Some(why), _) => json!({ "unavailable": why }),
            (None, Some((stats, _))) => json!(format!("{:?}", stats.source())),
            (None, None) => json!("none read"),
        }
    }
}

/// The error and its sources, for the JSON.
fn describe(e: &StatsError) -> String {
    format!("{e}{}", source_chain(e))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The reported counters of `c` divided by `n` (per scenario, per ping...).
pub fn per(c: &Counters, n: u64) -> Value {
    let n = n.max(1) as f64;
    let mut out = serde_json::Map::new();
    for name in REPORTED {
        out.insert((*name).into(), json!(c.get(name) as f64 / n));
    }
    Value::Object(out)
}

/// Scenarios of one kind of access handled in the kernel, run on the
/// backend like any other, to time what KVM spends on the guest's work when
/// nothing returns to userspace: `eoi` (a LAPIC MMIO write; with nothing in
/// service it changes nothing, SDM §11.8.5) and `ioapic-write 0 0`
/// (IOREGSEL and IOWIN, two MMIO writes to the in-kernel IOAPIC, writing
/// its ID as 0, which it is), [`IN_KERNEL_OPS`] of them.
pub const IN_KERNEL_OPS: usize = 2_000;

fn in_kernel_scenarios() -> [(&'static str, Scenario); 2] {
    let of = |op: Op| Scenario {
        ops: vec![op; IN_KERNEL_OPS],
        ..Scenario::default()
    };
    [
        ("lapic_eoi_write", of(Op::Eoi)),
        (
            "ioapic_id_write",
            of(Op::IoapicWrite { index: 0, value: 0 }),
        ),
    ]
}

/// What the guest's work costs inside `KVM_RUN` when nothing returns to
/// userspace: the time per instruction KVM emulated (`insn_emulation`), and
/// per VM exit KVM counted, of the [`in_kernel_scenarios`] (median of
/// `rounds` runs each; a run's reset, start and end are in it, amortised
/// over its 2,000 accesses). Returns the mean time per emulated instruction
/// over the kinds (seconds; None if it is not known) and the JSON.
pub fn in_kernel_cost(
    kvm: &mut KvmBackend,
    stats: &mut ExitStats,
    rounds: usize,
) -> (Option<f64>, Value) {
    let mut report = serde_json::Map::new();
    let mut per_instruction = Vec::new();
    for (name, scenario) in in_kernel_scenarios() {
        let (mut per_insn, mut per_exit, mut per_op) = (Vec::new(), Vec::new(), Vec::new());
        let mut counters = Counters::default();
        for _ in 0..rounds {
            let start = Instant::now();
            let trace = kvm.run_to_trace(&scenario);
            let took = start.elapsed().as_secs_f64();
            let Some(gained) = stats.gained(kvm.last_run_vcpu()) else {
                return (None, Value::Object(report));
            };
            if trace.outcome != crate::trace::Outcome::Completed {
                report.insert(
                    name.into(),
                    json!({ "error": format!("{:?}", trace.outcome) }),
                );
                break;
            }
            per_op.push(took / IN_KERNEL_OPS as f64);
            per_exit.push(took / gained.get("exits").max(1) as f64);
            if gained.get("insn_emulation") > 0 {
                per_insn.push(took / gained.get("insn_emulation") as f64);
            }
            counters = gained;
        }
        if per_op.is_empty() {
            continue;
        }
        let insn = (!per_insn.is_empty()).then(|| super::median(per_insn));
        per_instruction.extend(insn);
        report.insert(
            name.into(),
            json!({
                "time_per_access_op_us": super::median(per_op) * 1e6,
                "time_per_vm_exit_us": super::median(per_exit) * 1e6,
                "time_per_emulated_instruction_us": insn.map(|t| t * 1e6),
                "kvm_counters_per_access_op": per(&counters, IN_KERNEL_OPS as u64),
            }),
        );
    }
    let mean = (!per_instruction.is_empty())
        .then(|| per_instruction.iter().sum::<f64>() / per_instruction.len() as f64);
    (mean, Value::Object(report))
}

/// The least a busy scenario can cost on a host that emulates the guest's
/// instructions (as this machine's KVM, `kvm_pvm`, does): each of its
/// emulated instructions at what one costs when nothing returns to
/// userspace (`per_instruction`), and each of its userspace exits at what
/// the raw round trip costs beyond its own emulated instructions
/// (`raw - raw_instructions * per_instruction`, at least 0). Seconds.
pub fn floor_time(
    raw: f64,
    raw_instructions: f64,
    per_instruction: f64,
    userspace_exits: f64,
    instructions: f64,
) -> f64 {
    let exit_alone = (raw - raw_instructions * per_instruction).max(0.0);
    userspace_exits * exit_alone + instructions * per_instruction
}

/// Per busy scenario and in all: what the VM-exit figures divide.
pub struct Busy<'c> {
    pub counters: &'c Counters,
    pub cases: u64,
    pub time: Duration,
    pub userspace_exits: u64,
}

/// Adds the VM-exit and emulated-instruction figures of `kvm_per_exit` to
/// `report`: `pings` are the raw round trips' counters and their number,
/// `raw` the time of one.
pub fn report_vm_exits(
    report: &mut Value,
    stats: &ExitStats,
    busy: &Busy<'_>,
    pings: (&Counters, u64),
    raw: f64,
    in_kernel: (Option<f64>, Value),
) {
    report["kvm_counter_source"] = stats.source();
    if stats.unavailable.is_some() {
        return;
    }
    let n = busy.cases.max(1) as f64;
    let vm_exits = busy.counters.get("exits");
    let instructions = busy.counters.get("insn_emulation") as f64;
    let per_vm_exit = busy.time.as_secs_f64() / vm_exits.max(1) as f64;
    let round_trips = pings.1.max(1) as f64;
    let raw_instructions = pings.0.get("insn_emulation") as f64 / round_trips;
    report["kvm_counters_per_scenario_without_hang"] = per(busy.counters, busy.cases);
    report["kvm_counters_per_raw_round_trip"] = per(pings.0, pings.1);
    report["vm_exits_per_userspace_exit"] =
        json!(vm_exits as f64 / busy.userspace_exits.max(1) as f64);
    report["backend_time_per_vm_exit_us"] = json!(per_vm_exit * 1e6);
    report["ratio_backend_per_vm_exit_to_raw_exit"] = json!(per_vm_exit / raw);
    report["emulated_instructions_per_userspace_exit"] =
        json!(instructions / busy.userspace_exits.max(1) as f64);
    report["in_kernel"] = in_kernel.1;
    let Some(per_instruction) = in_kernel.0 else {
        return;
    };
    let floor = floor_time(
        raw,
        raw_instructions,
        per_instruction,
        busy.userspace_exits as f64,
        instructions,
    );
    report["time_per_emulated_instruction_us"] = json!(per_instruction * 1e6);
    report["raw_round_trip_beyond_its_instructions_us"] =
        json!((raw - raw_instructions * per_instruction).max(0.0) * 1e6);
    report["floor_per_scenario_without_hang_us"] = json!(floor / n * 1e6);
    report["floor_ratio_per_userspace_exit"] =
        json!(floor / busy.userspace_exits.max(1) as f64 / raw);
    report["ratio_busy_time_to_floor"] =
        json!(busy.time.as_secs_f64() / floor.max(f64::MIN_POSITIVE));
}

#[cfg(test)]
mod tests {
    use super::floor_time;

    #[test]
    fn the_floor_is_the_instructions_and_the_exits_beyond_theirs() {
        // A raw round trip of 10 with 4 instructions at 1 each: 6 for the
        // exit alone. 3 exits and 20 instructions: 3 * 6 + 20 * 1.
        assert_eq!(floor_time(10.0, 4.0, 1.0, 3.0, 20.0), 38.0);
        // An instruction dearer than the whole round trip allows: the exit
        // costs nothing beyond, never less.
        assert_eq!(floor_time(10.0, 4.0, 3.0, 3.0, 20.0), 60.0);
    }
}
