//! Benchmarks, reported as JSON by `irqdiff bench`. Figures are ratios and
//! rates taken in one run, never assertions.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::{self, model::ModelBackend};
use crate::differ::Differ;
use crate::model::Quirks;
use crate::scenario::generate::{case_seed, random, GenConfig};
use crate::scenario::{Op, Scenario};

#[cfg(target_os = "linux")]
mod kvm_exits;

/// Model throughput: guest ops (top-level and handler-body ops executed)
/// per second on random scenarios, on one core, as the differ runs them
/// (a plain run, [`backend::Backend::execute`]) and with the decisions recorded
/// ([`ModelBackend::run_explained`], what explaining a divergence costs);
/// each against a trivial interpreter loop over the same ops timed in the
/// same rounds, a ratio that load on a shared machine disturbs far less than
/// the rates; then where the time goes, per op kind.
pub fn model_throughput(duration: Duration) -> Value {
    let scenarios = model_scenarios();
    let mut model = ModelBackend::new();
    const ROUNDS: u32 = 30;
    let (mut plain, mut explained, mut baseline) =
        (Rate::default(), Rate::default(), Rate::default());
    let (mut plain_ratios, mut explained_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let round = duration / (3 * ROUNDS);
        let p = plain.add(timed(round, || plain_passes(&mut model, &scenarios, 1)));
        let e = explained.add(timed(round, || explained_passes(&mut model, &scenarios, 1)));
        let b = baseline.add(timed(round, || baseline_passes(&scenarios, 1)));
        plain_ratios.push(p / b);
        explained_ratios.push(e / b);
    }
    json!({
        "benchmark": "model-throughput",
        "scenarios": plain.runs,
        "guest_ops": plain.ops,
        "seconds": plain.seconds,
        "guest_ops_per_second": plain.per_second(),
        "scenarios_per_second": plain.runs as f64 / plain.seconds,
        "explained_guest_ops_per_second": explained.per_second(),
        "baseline_loop_ops_per_second": baseline.per_second(),
        "ratio_to_baseline_loop": median(plain_ratios),
        "explained_ratio_to_baseline_loop": median(explained_ratios),
        "per_op_kind": per_op_kind(&mut model, &scenarios, duration / 12),
    })
}

/// The model's scenarios per second with 1, 2 and 4 CPUs: the random
/// scenarios of [`model_throughput`] with `config cpus=N` (their ops on
/// CPU 0, every message routed over N local APICs, every op followed by
/// the quiescence of N CPUs), on the multi-CPU interpreter; with 1 CPU
/// also on the one-CPU fast path. Timed in interleaved rounds, so that the
/// ratios to the fast path hold on a loaded machine.
pub fn model_cpus(duration: Duration) -> Value {
    let base = model_scenarios();
    let with_cpus = |n: u8| -> Vec<Scenario> {
        base.iter()
            .cloned()
            .map(|mut s| {
                s.config.cpus = n;
                s
            })
            .collect()
    };
    let sets = [with_cpus(1), with_cpus(2), with_cpus(4)];
    let mut model = ModelBackend::new();
    const ROUNDS: u32 = 10;
    let mut fast = Rate::default();
    let mut rates = [Rate::default(), Rate::default(), Rate::default()];
    let round = duration / (4 * ROUNDS);
    for _ in 0..ROUNDS {
        fast.add(timed(round, || plain_passes(&mut model, &sets[0], 1)));
        for (rate, set) in rates.iter_mut().zip(&sets) {
            rate.add(timed(round, || {
                let mut ops = 0;
                for s in set {
                    let _ = model.execute_on_system(s);
                    ops += model.last_ops;
                }
                (ops, set.len() as u64)
            }));
        }
    }
    let per_second = |r: &Rate| r.runs as f64 / r.seconds;
    json!({
        "benchmark": "model-cpus",
        "scenarios": base.len(),
        "one_cpu_fast_path_scenarios_per_second": per_second(&fast),
        "system_scenarios_per_second": {
            "1": per_second(&rates[0]),
            "2": per_second(&rates[1]),
            "4": per_second(&rates[2]),
        },
        "ratio_to_fast_path": {
            "1": per_second(&rates[0]) / per_second(&fast),
            "2": per_second(&rates[1]) / per_second(&fast),
            "4": per_second(&rates[2]) / per_second(&fast),
        },
    })
}

/// Ops, runs and seconds of a timed part of the benchmark.
#[derive(Default)]
struct Rate {
    ops: u64,
    runs: u64,
    seconds: f64,
}

impl Rate {
    /// Adds one timed round and returns its ops per second.
    fn add(&mut self, (ops, runs, seconds): (u64, u64, f64)) -> f64 {
        self.ops += ops;
        self.runs += runs;
        self.seconds += seconds;
        ops as f64 / seconds
    }

    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// The model benchmarks' input: 512 random scenarios of up to 32 ops,
/// generated before anything is timed.
fn model_scenarios() -> Vec<Scenario> {
    let cfg = GenConfig {
        max_ops: 32,
        ..GenConfig::default()
    };
    (0..512).map(|i| random(case_seed(7, i), &cfg)).collect()
}

/// The model throughput benchmark's work, fixed instead of timed: `passes`
/// runs over its scenarios, plain, then explained, then the baseline loop.
/// Instruction counts of [`plain_passes`] and [`explained_passes`] (under
/// `valgrind --tool=callgrind`, inclusive) divided by `guest_ops` give
/// instructions per guest op, which a loaded machine does not disturb.
pub fn model_fixed_work(passes: u64) -> Value {
    let scenarios = model_scenarios();
    let mut model = ModelBackend::new();
    let (ops, runs) = plain_passes(&mut model, &scenarios, passes);
    let (explained_ops, _) = explained_passes(&mut model, &scenarios, passes);
    let (baseline_ops, _) = baseline_passes(&scenarios, passes);
    json!({
        "benchmark": "model-fixed-work",
        "passes": passes,
        "scenarios": runs,
        "guest_ops": ops,
        "explained_guest_ops": explained_ops,
        "baseline_loop_ops": baseline_ops,
    })
}

/// Runs each scenario `passes` times as the differ does: guest ops, runs.
#[inline(never)]
fn plain_passes(model: &mut ModelBackend, scenarios: &[Scenario], passes: u64) -> (u64, u64) {
    model_passes(model, scenarios, passes, |model, s| {
        // As the differ does: the trace goes back once judged.
        if let Ok(trace) = backend::Backend::execute(model, s) {
            model.recycle(std::hint::black_box(trace));
        }
    })
}

/// Runs each scenario `passes` times with its decisions: guest ops, runs.
#[inline(never)]
fn explained_passes(model: &mut ModelBackend, scenarios: &[Scenario], passes: u64) -> (u64, u64) {
    model_passes(model, scenarios, passes, |model, s| {
        let (trace, decisions) = model.run_explained(s);
        std::hint::black_box(decisions);
        model.recycle(std::hint::black_box(trace));
    })
}

fn model_passes(
    model: &mut ModelBackend,
    scenarios: &[Scenario],
    passes: u64,
    mut run: impl FnMut(&mut ModelBackend, &Scenario),
) -> (u64, u64) {
    let (mut ops, mut runs) = (0u64, 0u64);
    for _ in 0..passes {
        for s in scenarios {
            run(model, s);
            ops += model.last_ops;
            runs += 1;
        }
    }
    (ops, runs)
}

/// The yardstick of the ratios: a trivial interpreter loop over the same
/// scenarios' top-level ops (one match per op, a checksum): ops, runs.
#[inline(never)]
fn baseline_passes(scenarios: &[Scenario], passes: u64) -> (u64, u64) {
    let (mut ops, mut runs, mut sum) = (0u64, 0u64, 0u64);
    for _ in 0..passes {
        for s in scenarios {
            for op in std::hint::black_box(&s.ops) {
                sum = sum.wrapping_add(match *op {
                    Op::Route { pin, route } => pin.get() as u64 + route.low_dword() as u64,
                    Op::Mask(pin) | Op::Unmask(pin) => pin.get() as u64,
                    Op::IoapicEoi(v) | Op::SelfIpi(v) | Op::Tpr(v) | Op::IoapicRead(v) => v as u64,
                    Op::Svr(v) | Op::ApicBase(v) => v as u64,
                    Op::IoapicWrite { value, .. } | Op::LapicWrite { value, .. } => value as u64,
                    Op::LapicRead(offset) => offset as u64,
                    _ => 1,
                });
            }
            ops += s.ops.len() as u64;
            runs += 1;
        }
    }
    std::hint::black_box(sum);
    (ops, runs)
}

/// Repeats `pass` for at least `duration`: ops, runs, seconds.
fn timed(duration: Duration, mut pass: impl FnMut() -> (u64, u64)) -> (u64, u64, f64) {
    let (mut ops, mut runs) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        let (pass_ops, pass_runs) = pass();
        ops += pass_ops;
        runs += pass_runs;
    }
    (ops, runs, start.elapsed().as_secs_f64())
}

/// Where the time goes, per kind of top-level op: for each kind, the
/// random scenarios reduced to their ops of that kind (handlers kept), run
/// plain and timed alone. The figure includes what those ops cause
/// (deliveries and their handler bodies), as it does in a full run.
fn per_op_kind(model: &mut ModelBackend, scenarios: &[Scenario], duration: Duration) -> Value {
    let mut kinds: Vec<&'static str> = scenarios
        .iter()
        .flat_map(|s| s.ops.iter().map(Op::keyword))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut out = Vec::new();
    for kind in kinds {
        let only: Vec<Scenario> = scenarios
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.ops.retain(|op| op.keyword() == kind);
                s
            })
            .filter(|s| !s.ops.is_empty())
            .collect();
        let (ops, _, secs) = timed(duration, || plain_passes(model, &only, 1));
        out.push(json!({
            "op": kind,
            "guest_ops_per_second": ops as f64 / secs,
            "ns_per_guest_op": secs * 1e9 / ops.max(1) as f64,
        }));
    }
    Value::Array(out)
}

/// A real backend's rate on random 32-op scenarios; on KVM, also its time
/// per exit against the raw exit round trip measured in the same run
/// ([`kvm_per_exit`]).
pub fn backend_throughput(name: &str, cases: u64) -> Result<Value, String> {
    // No timer sequences: their waits spin in the guest (GenConfig::timer_percent).
    let cfg = GenConfig {
        max_ops: 32,
        timer_percent: 0,
        ..GenConfig::default()
    };
    let mut b = backend::open(name).map_err(|e| e.to_string())?;
    let scenarios: Vec<Scenario> = (0..cases)
        .map(|i| {
            let mut s = random(case_seed(11, i), &cfg);
            b.fit(&mut s);
            s
        })
        .collect();
    // Warm up (VM creation).
    let _ = b.run_to_trace(&scenarios[0]);
    let start = Instant::now();
    let traces = b.run_batch(&scenarios);
    let elapsed = start.elapsed();
    let count = |outcome| traces.iter().filter(|t| t.outcome == outcome).count();
    let errors = count(crate::trace::Outcome::Error);
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut report = json!({
        "benchmark": "backend-throughput",
        "backend": name,
        "scenarios": cases,
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "scenarios_per_second": cases as f64 / elapsed.as_secs_f64(),
    });
    #[cfg(target_os = "linux")]
    if name == "kvm" || name == "kvm-split" {
        kvm_per_exit(name, &scenarios, &mut report)?;
    }
    if let Some(options) = backend::qemu::Options::from_name(name) {
        // The same scenarios with the host timing hangs out instead of the
        // in-guest watchdog (where it is on), and a few through one QEMU
        // process each.
        let hangs = count(crate::trace::Outcome::Hang);
        let mut host =
            backend::qemu::QemuBackend::open_with(name, options).map_err(|e| e.to_string())?;
        report["qemu"] = json!(backend::qemu::describe());
        report["in_guest_watchdog"] = json!(host.watchdog());
        host.set_watchdog(false);
        let start = Instant::now();
        let _ = backend::Backend::run_batch(&mut host, &scenarios);
        let without = cases as f64 / start.elapsed().as_secs_f64();
        let single_cases = 20.min(scenarios.len());
        let start = Instant::now();
        for s in &scenarios[..single_cases] {
            let _ = backend::Backend::run_to_trace(&mut host, s);
        }
        let single = single_cases as f64 / start.elapsed().as_secs_f64();
        let rate = report["scenarios_per_second"].as_f64().unwrap_or(0.0);
        report["hangs"] = json!(hangs);
        report["scenarios_per_second_host_timed_hangs"] = json!(without);
        report["scenarios_per_second_one_process_each"] = json!(single);
        report["ratio_watchdog_to_host_timed_hangs"] = json!(rate / without);
        report["ratio_batch_to_one_process_each"] = json!(rate / single);
        if backend::Backend::max_cpus(&host) > 1 {
            report["cpus"] = qemu_cpus(&mut host, &scenarios);
        }
    }
    Ok(report)
}

/// QEMU's scenarios per second with 1, 2 and 4 CPUs: the same scenarios
/// with `config cpus=N` (their ops on CPU 0, so the extra CPUs only idle
/// and settle), in batches, timed back to back in this run (the watchdog
/// as `host` has it). With 1 CPU the single-CPU stub runs; with more, the
/// mailbox loop on every CPU under the in-guest driver (docs/guest-stub.md).
fn qemu_cpus(host: &mut backend::qemu::QemuBackend, scenarios: &[Scenario]) -> Value {
    let mut rates = serde_json::Map::new();
    let mut base = 0.0;
    for n in [1u8, 2, 4] {
        let set: Vec<Scenario> = scenarios
            .iter()
            .cloned()
            .map(|mut s| {
                s.config.cpus = n;
                s
            })
            .collect();
        let start = Instant::now();
        let traces = backend::Backend::run_batch(host, &set);
        let rate = set.len() as f64 / start.elapsed().as_secs_f64();
        let errors = traces
            .iter()
            .filter(|t| t.outcome == crate::trace::Outcome::Error)
            .count();
        if n == 1 {
            base = rate;
        }
        rates.insert(
            n.to_string(),
            json!({
                "scenarios_per_second": rate,
                "ratio_to_one_cpu": rate / base,
                "errors": errors,
            }),
        );
    }
    Value::Object(rates)
}

/// The per-exit overhead of running scenarios on `kvm` or `kvm-split`, as
/// a ratio to the raw exit round trip measured in the same run.
///
/// What it divides:
/// - the numerator is the wall time of whole runs of the busy (not hung)
///   scenarios, each [`backend::Backend::run_to_trace`] from its start to
///   its trace: the table encoded, the reset before it (amortised into its
///   run, as in a campaign, where every scenario pays one), every entry and
///   exit, the host ops and their ioctls, the call log and the trace
///   decoded; divided by the exits those runs took (the returns from
///   `KVM_RUN`, kicks included);
/// - the denominator is one raw round trip: `KVM_RUN` with a guest doing
///   `out` in a loop, each return `KVM_EXIT_IO` handled by nothing more
///   ([`backend::kvm::KvmBackend::ping`], on a VM of its own).
///
/// Exits handled inside the kernel (the in-kernel LAPIC's and IOAPIC's
/// emulated MMIO, the 8259's ports) are not returns from `KVM_RUN`: their
/// time is in the numerator, as the guest's work, and they are not counted
/// as exits. So the ratio is at least the time inside `KVM_RUN` per exit
/// over the raw round trip (`kvm_run_time_per_exit_to_raw_exit`), however
/// little the backend adds outside (`share_of_busy_time_outside_kvm_run`).
///
/// A run that hangs costs the detection wait (a kick, or two:
/// `hangs_by_rule`, [`backend::kvm::HangRule`]; the judgement's own ioctls
/// `hang_judgement_ms_per_hang`), not exits: it is counted apart (`hangs`,
/// `mean_hang_detection_ms`) and left out of both.
///
/// Where a busy run's time goes: `busy_time_per_scenario_us`
/// ([`busy_breakdown`]: inside `KVM_RUN`, and outside it by phase), whose
/// share outside `KVM_RUN` is `share_of_busy_time_outside_kvm_run`; the
/// system calls per scenario by kind are `syscalls_besides_kvm_run_*`
/// (`kick_judgement`: `KVM_GET_MP_STATE` after a kick, and the halt
/// judgement's `KVM_GET_VCPU_EVENTS`, `KVM_GET_REGS`, `KVM_GET_LAPIC`).
/// The raw round trip is timed in two placements, each against the same
/// scenarios: [`PINGS_PER_CHUNK`] in one loop before each chunk of
/// [`CHUNK`] scenarios (the headline, `ratio_backend_per_exit_to_raw_exit`:
/// the median of the chunks' ratios, as this bench has always given it),
/// and [`PINGS_PER_SCENARIO`] just before each scenario
/// (`ratio_with_pings_before_each_scenario`). On a quiet machine the two
/// agree; under load they part (a long loop of round trips is preempted
/// more than a short one), so both are given, with the counts of system
/// calls per scenario, which load does not change. Scenarios run in the
/// same order and on the same VMs as in a campaign: each reset undoes what
/// the previous scenario left, and the pings run on a VM of their own.
///
/// Two kinds of exit, named apart in the JSON. The figures above count
/// *userspace exits* (returns from `KVM_RUN`, `exits_per_scenario_*`).
/// KVM's own per-vCPU counters (`kvm_counter_source`: `KVM_GET_STATS_FD`,
/// else debugfs, else why neither; [`kvm_exits`]) give every *VM exit* KVM
/// counted (`exits`: `vm_exits_per_userspace_exit`,
/// `ratio_backend_per_vm_exit_to_raw_exit`) and the instructions it
/// emulated (`insn_emulation`), for the busy runs
/// (`kvm_counters_per_scenario_without_hang`) and the raw round trips
/// (`kvm_counters_per_raw_round_trip`). On a host that emulates the guest
/// (this machine's `kvm_pvm`) the in-kernel APIC's accesses are emulated
/// instructions, not VM exits, and every other instruction of the stub is
/// emulated too; so the bench times runs of 2,000 in-kernel accesses
/// (`in_kernel`: `eoi`, `ioapic-write 0 0`) for the time per emulated
/// instruction, and from it the least a busy scenario can cost
/// ([`kvm_exits::floor_time`]: its instructions at that price, each of its
/// userspace exits at the round trip's price beyond the round trip's own
/// instructions): `floor_ratio_per_userspace_exit`, the least
/// `ratio_backend_per_exit_to_raw_exit` can be, and
/// `ratio_busy_time_to_floor`, what the backend costs above it.
#[cfg(target_os = "linux")]
fn kvm_per_exit(name: &str, scenarios: &[Scenario], report: &mut Value) -> Result<(), String> {
    use crate::backend::kvm_stats::Counters;
    use crate::trace::Outcome;
    let mut kvm = backend::kvm::KvmBackend::open(name == "kvm-split").map_err(|e| e.to_string())?;
    kvm.measure_time_in_run(true);
    let (mut exits, mut busy, mut hangs, mut hang_time) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let (mut pings, mut ping_time) = (0u64, Duration::ZERO);
    let mut chunk_ping_sum = 0.0;
    // Time of the busy runs spent inside KVM_RUN: the rest is the
    // backend's own (reset, host ops, call log, trace), by phase in
    // `busy_times`.
    let mut in_run = Duration::ZERO;
    let mut busy_times = backend::kvm::RunTimes::default();
    let mut hang_times = backend::kvm::RunTimes::default();
    // Hangs judged by the halt judgement and by the two-kick rule.
    let (mut halt_final, mut two_kicks) = (0u64, 0u64);
    // System calls besides KVM_RUN, over all the scenarios (each with its
    // reset) and over the busy ones.
    let (mut calls, mut busy_calls) = (
        backend::kvm::RunCalls::default(),
        backend::kvm::RunCalls::default(),
    );
    let (mut ratios, mut paired_ratios) = (Vec::new(), Vec::new());
    // Every VM exit KVM counted (kvm_exits.rs), of the busy runs and of the
    // raw round trips, each read after the timed part.
    let mut vm_exits = kvm_exits::ExitStats::default();
    let (mut busy_counters, mut ping_counters) = (Counters::default(), Counters::default());
    let mut ping_exits = 0u64;
    let mut note_pings = |kvm: &backend::kvm::KvmBackend, stats: &mut kvm_exits::ExitStats, n| {
        if let Some(gained) = stats.gained(kvm.ping_vcpu()) {
            ping_counters.add(&gained);
            // The ping stub's start and its end-port `out` ride along.
            ping_exits += n as u64 + 1;
        }
    };
    for chunk in scenarios.chunks(CHUNK) {
        let chunk_ping = kvm.ping(PINGS_PER_CHUNK).map_err(|e| e.to_string())?;
        note_pings(&kvm, &mut vm_exits, PINGS_PER_CHUNK);
        chunk_ping_sum += chunk_ping.as_secs_f64();
        let (mut chunk_exits, mut chunk_busy) = (0u64, Duration::ZERO);
        let (mut chunk_pings, mut chunk_ping_time) = (0u64, Duration::ZERO);
        for s in chunk {
            let ping = kvm.ping(PINGS_PER_SCENARIO).map_err(|e| e.to_string())?;
            note_pings(&kvm, &mut vm_exits, PINGS_PER_SCENARIO);
            chunk_pings += PINGS_PER_SCENARIO as u64;
            chunk_ping_time += ping * PINGS_PER_SCENARIO as u32;
            let start = Instant::now();
            let t = backend::Backend::run_to_trace(&mut kvm, s);
            let took = start.elapsed();
            calls.add(&kvm.last_calls);
            let gained = vm_exits.gained(kvm.last_run_vcpu());
            if t.outcome == Outcome::Hang {
                hangs += 1;
                hang_time += took;
                hang_times.add(&kvm.last_times);
                match kvm.last_hang_rule() {
                    Some(backend::kvm::HangRule::HaltFinal) => halt_final += 1,
                    Some(backend::kvm::HangRule::TwoKicks) => two_kicks += 1,
                    None => {}
                }
            } else {
                chunk_exits += kvm.last_exits;
                busy_calls.add(&kvm.last_calls);
                chunk_busy += took;
                in_run += kvm.last_time_in_run().unwrap_or_default();
                busy_times.add(&kvm.last_times);
                if let Some(gained) = gained {
                    busy_counters.add(&gained);
                }
            }
        }
        exits += chunk_exits;
        busy += chunk_busy;
        pings += chunk_pings;
        ping_time += chunk_ping_time;
        let per_exit = chunk_busy.as_secs_f64() / chunk_exits.max(1) as f64;
        let raw = chunk_ping_time.as_secs_f64() / chunk_pings.max(1) as f64;
        paired_ratios.push(per_exit / raw);
        ratios.push(per_exit / chunk_ping.as_secs_f64());
    }
    let cases = scenarios.len() as u64;
    let paired_raw = ping_time.as_secs_f64() / pings.max(1) as f64;
    let raw = chunk_ping_sum / ratios.len().max(1) as f64;
    let per_exit = busy.as_secs_f64() / exits.max(1) as f64;
    report["kick_mechanism"] = json!(format!("{:?}", kvm.kick_mechanism()));
    report["raw_exit_round_trip_us"] = json!(raw * 1e6);
    report["raw_exit_round_trip_before_each_scenario_us"] = json!(paired_raw * 1e6);
    report["exits_per_scenario_without_hang"] = json!(exits as f64 / (cases - hangs).max(1) as f64);
    report["backend_time_per_exit_us"] = json!(per_exit * 1e6);
    report["ratio_backend_per_exit_to_raw_exit"] = json!(median(ratios.clone()));
    report["ratio_with_pings_before_each_scenario"] = json!(median(paired_ratios));
    report["ratio_per_chunk_min_max"] = json!([
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max)
    ]);
    report["share_of_busy_time_outside_kvm_run"] =
        json!(1.0 - in_run.as_secs_f64() / busy.as_secs_f64().max(f64::MIN_POSITIVE));
    report["backend_time_outside_kvm_run_per_exit_us"] =
        json!((busy.saturating_sub(in_run)).as_secs_f64() * 1e6 / exits.max(1) as f64);
    report["kvm_run_time_per_exit_to_raw_exit"] =
        json!(in_run.as_secs_f64() / exits.max(1) as f64 / raw);
    report["busy_time_per_scenario_us"] = busy_breakdown(busy, in_run, &busy_times, cases - hangs);
    report["hangs_by_rule"] = json!({ "halt_final": halt_final, "two_kicks": two_kicks });
    report["hang_judgement_ms_per_hang"] =
        json!(hang_times.judging.as_secs_f64() * 1e3 / hangs.max(1) as f64);
    let per = |c: &backend::kvm::RunCalls, n: u64| {
        let n = n.max(1) as f64;
        json!({
            "reset_vcpu_ioctls": c.reset_vcpu as f64 / n,
            "reset_vm_ioctls": c.reset_vm as f64 / n,
            "gsi_routing": c.routing as f64 / n,
            "host_op_ioctls": c.host_op as f64 / n,
            "kick_judgement": c.kick as f64 / n,
            "total": c.total() as f64 / n,
        })
    };
    report["syscalls_besides_kvm_run_per_scenario"] = per(&calls, cases);
    report["syscalls_besides_kvm_run_per_scenario_without_hang"] = per(&busy_calls, cases - hangs);
    report["gsi_routing_share_of_busy_time"] =
        json!(busy_calls.routing_time.as_secs_f64() / busy.as_secs_f64().max(f64::MIN_POSITIVE));
    report["gsi_routing_ms_per_call"] =
        json!(calls.routing_time.as_secs_f64() * 1e3 / calls.routing.max(1) as f64);
    report["hangs"] = json!(hangs);
    report["mean_hang_detection_ms"] = json!(hang_time.as_secs_f64() * 1e3 / hangs.max(1) as f64);
    let in_kernel = kvm_exits::in_kernel_cost(&mut kvm, &mut vm_exits, 5);
    let busy = kvm_exits::Busy {
        counters: &busy_counters,
        cases: cases - hangs,
        time: busy,
        userspace_exits: exits,
    };
    kvm_exits::report_vm_exits(
        report,
        &vm_exits,
        &busy,
        (&ping_counters, ping_exits),
        raw,
        in_kernel,
    );
    Ok(())
}

/// [`kvm_per_exit`]'s `busy_time_per_scenario_us`: a busy scenario's whole
/// run (`whole_run`, from `run_to_trace` to its trace), and where it went,
/// per scenario: `inside_kvm_run`, then the phases of
/// [`backend::kvm::RunTimes`] outside it (`table_encode`, `reset` with the
/// table's load, `host_ops` with the split IOAPIC's work, `hang_judgement`
/// after kicks, `trace_decode`), and `rest`, what no phase covers: the
/// exits' dispatch, the call log, the kick machinery's registration, and
/// the time the thread was preempted outside `KVM_RUN`.
#[cfg(target_os = "linux")]
fn busy_breakdown(
    whole: Duration,
    in_run: Duration,
    times: &backend::kvm::RunTimes,
    cases: u64,
) -> Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / cases.max(1) as f64;
    json!({
        "whole_run": us(whole),
        "inside_kvm_run": us(in_run),
        "table_encode": us(times.encode),
        "reset": us(times.reset),
        "host_ops": us(times.host_ops),
        "hang_judgement": us(times.judging),
        "trace_decode": us(times.finish),
        "rest": us(whole.saturating_sub(in_run + times.total())),
    })
}

/// `kvm` (or `kvm-split`) with 1, 2 and 4 vCPUs: the random 32-op
/// scenarios of the backend benchmark with `config cpus=N` (their ops on
/// CPU 0: every message reaches N local APICs, every op is followed by the
/// settling of N vCPUs, src/backend/kvm/smp.rs; with 1 the one-vCPU path),
/// and generated multi-CPU programs (`--max-cpus 4`: ops, IPIs and routes
/// on 2 to 4 CPUs). Each figure is also given in raw exit round trips
/// ([`backend::kvm::KvmBackend::ping`]) measured just before each of its
/// timed chunks, and as a ratio to the 1-vCPU rate: the sets are timed in
/// interleaved rounds, so that these ratios hold on a loaded machine.
#[cfg(target_os = "linux")]
pub fn kvm_cpus(name: &str, cases: u64) -> Result<Value, String> {
    let mut kvm = backend::kvm::KvmBackend::open(name == "kvm-split").map_err(|e| e.to_string())?;
    // No timer sequences: the LAPIC timer ops run on one CPU only, and
    // their waits spin in the guest (GenConfig::timer_percent).
    let cfg = GenConfig {
        max_ops: 32,
        timer_percent: 0,
        ..GenConfig::default()
    };
    let base: Vec<Scenario> = (0..cases)
        .map(|i| {
            let mut s = random(case_seed(11, i), &cfg);
            backend::Backend::fit(&kvm, &mut s);
            s
        })
        .collect();
    let with_cpus = |n: u8| -> Vec<Scenario> {
        base.iter()
            .cloned()
            .map(|mut s| {
                s.config.cpus = n;
                s
            })
            .collect()
    };
    let spread = GenConfig {
        max_cpus: 4,
        ..cfg.clone()
    };
    let generated: Vec<Scenario> = (0..cases)
        .map(|i| {
            let mut s = random(case_seed(13, i), &spread);
            backend::Backend::fit(&kvm, &mut s);
            s
        })
        .collect();
    let sets = [with_cpus(1), with_cpus(2), with_cpus(4), generated];
    let names = ["1", "2", "4", "generated_2_to_4"];
    // Warm up: every VM created before anything is timed.
    for set in &sets {
        for s in set.iter().take(20) {
            let _ = backend::Backend::run_to_trace(&mut kvm, s);
        }
    }
    const ROUNDS: usize = 5;
    #[derive(Default, Clone, Copy)]
    struct Tally {
        runs: u64,
        hangs: u64,
        exits: u64,
        seconds: f64,
        busy_seconds: f64,
        raw_seconds: f64,
        chunks: u64,
    }
    let mut tallies = [Tally::default(); 4];
    let per_round = (cases as usize).div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        for (tally, set) in tallies.iter_mut().zip(&sets) {
            let chunk =
                &set[(round * per_round).min(set.len())..((round + 1) * per_round).min(set.len())];
            if chunk.is_empty() {
                continue;
            }
            let raw = kvm.ping(PINGS_PER_CHUNK).map_err(|e| e.to_string())?;
            tally.raw_seconds += raw.as_secs_f64();
            tally.chunks += 1;
            for s in chunk {
                let start = Instant::now();
                let t = backend::Backend::run_to_trace(&mut kvm, s);
                let took = start.elapsed().as_secs_f64();
                tally.runs += 1;
                tally.seconds += took;
                if t.outcome == crate::trace::Outcome::Hang {
                    tally.hangs += 1;
                } else {
                    tally.busy_seconds += took;
                    tally.exits += kvm.last_exits;
                }
            }
        }
    }
    let rate = |t: &Tally| t.runs as f64 / t.seconds;
    let busy_rate = |t: &Tally| (t.runs - t.hangs) as f64 / t.busy_seconds;
    let raw = |t: &Tally| t.raw_seconds / t.chunks.max(1) as f64;
    let mut figures = serde_json::Map::new();
    for (name, t) in names.iter().zip(&tallies) {
        let busy = (t.runs - t.hangs).max(1) as f64;
        figures.insert(
            name.to_string(),
            json!({
                "scenarios_per_second": rate(t),
                "busy_scenarios_per_second": busy_rate(t),
                "hangs": t.hangs,
                "raw_exit_round_trip_us": raw(t) * 1e6,
                "exits_per_busy_scenario": t.exits as f64 / busy,
                "busy_scenario_time_in_raw_exits": t.busy_seconds / busy / raw(t),
                "ratio_to_one_vcpu": rate(t) / rate(&tallies[0]),
                "busy_ratio_to_one_vcpu": busy_rate(t) / busy_rate(&tallies[0]),
            }),
        );
    }
    Ok(json!({
        "benchmark": format!("{name}-cpus"),
        "scenarios": cases,
        "vcpus": figures,
    }))
}

/// Scenarios per chunk of [`kvm_per_exit`]'s ratio.
#[cfg(target_os = "linux")]
const CHUNK: usize = 100;
/// Raw round trips timed in one loop before each chunk of [`kvm_per_exit`].
#[cfg(target_os = "linux")]
const PINGS_PER_CHUNK: usize = 2_000;
/// Raw round trips timed before each scenario of [`kvm_per_exit`], about
/// as many as a busy scenario's exits.
#[cfg(target_os = "linux")]
const PINGS_PER_SCENARIO: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// For each seeded HVF quirk alone: cases and time to the first divergence,
/// and time to its minimised repro (median over 10 seeds).
pub fn time_to_find() -> Value {
    let quirks = [
        ("level-unmask-no-deliver", Quirks::LEVEL_UNMASK_NO_DELIVER),
        ("level-eoi-no-redeliver", Quirks::LEVEL_EOI_NO_REDELIVER),
        ("level-coalesce-redeliver", Quirks::LEVEL_COALESCE_REDELIVER),
        ("split-eoi-lost", Quirks::SPLIT_EOI_LOST),
    ];
    let cfg = GenConfig::default();
    let mut out = Vec::new();
    for (name, _) in quirks {
        let (mut find_ms, mut repro_ms, mut cases, mut sizes) = (vec![], vec![], vec![], vec![]);
        for seed in 0..10u64 {
            let mut differ = Differ::open(&format!("sim:{name}")).expect("sim backends open");
            let start = Instant::now();
            let mut found = None;
            for i in 0..1_000_000u64 {
                let s = random(case_seed(seed, i), &cfg);
                if let Some(sig) = differ.diff(&s).into_signature() {
                    found = Some((i + 1, s, sig));
                    break;
                }
            }
            let Some((n, s, sig)) = found else { continue };
            find_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let (min, _) = differ.minimize(&s, &sig);
            repro_ms.push(start.elapsed().as_secs_f64() * 1e3);
            cases.push(n as f64);
            sizes.push(min.ops.len() as f64);
        }
        out.push(json!({
            "quirk": name,
            "seeds_found": find_ms.len(),
            "median_cases_to_first_find": median(cases),
            "median_ms_to_first_find": median(find_ms),
            "median_ms_to_minimised_repro": median(repro_ms),
            "median_minimised_ops": median(sizes),
        }));
    }
    json!({ "benchmark": "time-to-find", "generator_max_ops": cfg.max_ops, "quirks": out })
}

/// Minimisation of a 500-op diverging scenario on `sim:hvf-known`.
pub fn minimize_500() -> Value {
    let cfg = GenConfig {
        max_ops: 500,
        ..GenConfig::default()
    };
    let mut differ = Differ::open("sim:hvf-known").expect("sim opens");
    for i in 0..10_000u64 {
        let mut s = random(case_seed(3, i), &cfg);
        // Pad to 500 ops with harmless ones so the size is exact.
        while s.ops.len() < 500 {
            s.ops.push(Op::Nop);
        }
        s.ops.truncate(500);
        if let Some(sig) = differ.diff(&s).into_signature() {
            let start = Instant::now();
            let (min, runs) = differ.minimize(&s, &sig);
            let secs = start.elapsed().as_secs_f64();
            return json!({
                "benchmark": "minimize-500",
                "original_ops": 500,
                "minimised_ops": min.ops.len(),
                "signature": sig.to_string(),
                "runs": runs,
                "seconds": secs,
            });
        }
    }
    json!({ "benchmark": "minimize-500", "error": "no diverging 500-op scenario found" })
}

/// Ground truth for diagnosis: `trials` random sets of 1-3 single-rule
/// quirks, a short `sim:` campaign for each, and the rules its causes name
/// against the rules the quirks declare ([`Quirks::broken_rules`]).
/// Precision and recall are micro-averaged over the trials.
pub fn diagnose(trials: u64, cases: u64) -> Value {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    let pool: Vec<(&str, Quirks)> = Quirks::all()
        .iter_names()
        .filter(|(_, q)| q.broken_rules().len() == 1 && !Quirks::MULTI_CPU.contains(*q))
        .collect();
    let (mut hits, mut recovered_total, mut injected_total) = (0usize, 0usize, 0usize);
    let mut rows = Vec::new();
    for trial in 0..trials {
        let mut rng = case_seed(0xd1a9, trial);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let size = 1 + (next() % 3) as usize;
        let mut chosen = Quirks::empty();
        while chosen.iter().count() < size {
            chosen |= pool[(next() % pool.len() as u64) as usize].1;
        }
        let names: Vec<String> = chosen
            .iter_names()
            .map(|(n, _)| backend::sim::kebab(n))
            .collect();
        let out = std::env::temp_dir().join(format!(
            "irqdiff-bench-diagnose-{}-{trial}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        let options = crate::campaign::Options {
            cases: Some(cases),
            seed: trial,
            ..crate::campaign::Options::new(format!("sim:{}", names.join(",")), &out)
        };
        let summary = crate::campaign::run(
            &options,
            &crate::campaign::Stats::default(),
            &AtomicBool::new(false),
            &|_| {},
        );
        let _ = std::fs::remove_dir_all(&out);
        let Ok(summary) = summary else { continue };
        let injected: BTreeSet<&str> = chosen.broken_rules().iter().map(|r| r.name()).collect();
        let recovered: BTreeSet<String> = summary
            .causes
            .iter()
            .flat_map(|c| c.explained_by.iter().map(|d| d.rule.clone()))
            .collect();
        let unexplained = summary.causes.iter().filter(|c| !c.is_explained()).count();
        hits += recovered
            .iter()
            .filter(|r| injected.contains(r.as_str()))
            .count();
        recovered_total += recovered.len();
        injected_total += injected.len();
        rows.push(json!({
            "quirks": names,
            "injected": injected,
            "recovered": recovered,
            "causes": summary.causes.len(),
            "unexplained": unexplained,
        }));
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    json!({
        "benchmark": "diagnose",
        "trials": rows.len(),
        "cases_per_trial": cases,
        "precision": ratio(hits, recovered_total),
        "recall": ratio(hits, injected_total),
        "runs": rows,
    })
}
