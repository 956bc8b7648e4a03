//! Benchmarks, reported as JSON by `irqdiff bench`. Figures are ratios and
//! rates taken in one run, never assertions.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::{self, model::ModelBackend};
use crate::differ::Differ;
use crate::model::Quirks;
use crate::scenario::generate::{case_seed, random, GenConfig};
use crate::scenario::{Op, Scenario};

/// Model throughput: guest ops (top-level and handler-body ops executed)
/// per second on random scenarios, on one core; then where the time goes,
/// per op kind.
pub fn model_throughput(duration: Duration) -> Value {
    let scenarios = model_scenarios();
    let mut model = ModelBackend::new();
    let (ops, runs, secs) = time_model(&mut model, &scenarios, duration);
    json!({
        "benchmark": "model-throughput",
        "scenarios": runs,
        "guest_ops": ops,
        "seconds": secs,
        "guest_ops_per_second": ops as f64 / secs,
        "scenarios_per_second": runs as f64 / secs,
        "per_op_kind": per_op_kind(&mut model, &scenarios, duration / 12),
    })
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
/// runs over its scenarios. Instruction counts of [`run_passes`] (under
/// `valgrind --tool=callgrind --toggle-collect=*run_passes*`) divided by
/// `guest_ops` give instructions per guest op, which a loaded machine does
/// not disturb.
pub fn model_fixed_work(passes: u64) -> Value {
    let scenarios = model_scenarios();
    let mut model = ModelBackend::new();
    let (ops, runs) = run_passes(&mut model, &scenarios, passes);
    json!({
        "benchmark": "model-fixed-work",
        "passes": passes,
        "scenarios": runs,
        "guest_ops": ops,
    })
}

/// Runs every scenario `passes` times: guest ops, runs.
#[inline(never)]
fn run_passes(model: &mut ModelBackend, scenarios: &[Scenario], passes: u64) -> (u64, u64) {
    let (mut ops, mut runs) = (0u64, 0u64);
    for _ in 0..passes {
        for s in scenarios {
            std::hint::black_box(model.run_explained(s));
            ops += model.last_ops;
            runs += 1;
        }
    }
    (ops, runs)
}

/// Runs `scenarios` over and over for `duration`: guest ops, runs, seconds.
fn time_model(
    model: &mut ModelBackend,
    scenarios: &[Scenario],
    duration: Duration,
) -> (u64, u64, f64) {
    let (mut ops, mut runs) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        let (pass_ops, pass_runs) = run_passes(model, scenarios, 1);
        ops += pass_ops;
        runs += pass_runs;
    }
    (ops, runs, start.elapsed().as_secs_f64())
}

/// Where the time goes, per kind of top-level op: for each kind, the
/// random scenarios reduced to their ops of that kind (handlers kept), timed
/// alone. The figure includes what those ops cause (deliveries and their
/// handler bodies), as it does in a full run.
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
        let (ops, _, secs) = time_model(model, &only, duration);
        out.push(json!({
            "op": kind,
            "guest_ops_per_second": ops as f64 / secs,
            "ns_per_guest_op": secs * 1e9 / ops.max(1) as f64,
        }));
    }
    Value::Array(out)
}

/// A real backend's rate on random 32-op scenarios, against the raw exit
/// round trip measured in the same run (KVM only).
pub fn backend_throughput(name: &str, cases: u64) -> Result<Value, String> {
    let cfg = GenConfig {
        max_ops: 32,
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
    if name == "kvm" {
        let mut kvm = backend::kvm::KvmBackend::open(false).map_err(|e| e.to_string())?;
        kvm.measure_time_in_run(true);
        // The raw round trip is measured between chunks of scenarios, so
        // both see the same load on a shared machine; the headline ratio is
        // the median of the chunks' ratios.
        const CHUNK: usize = 100;
        const PINGS: usize = 2_000;
        let (mut exits, mut busy, mut hangs, mut hang_time, mut raw) =
            (0u64, Duration::ZERO, 0u64, Duration::ZERO, Duration::ZERO);
        // Time of the busy runs spent inside KVM_RUN: the rest is the
        // backend's own (reset, host ops, call log, trace), which load on
        // the machine disturbs much less than the exits themselves.
        let mut in_run = Duration::ZERO;
        let mut ratios = Vec::new();
        for chunk in scenarios.chunks(CHUNK) {
            let ping = kvm.ping(PINGS).map_err(|e| e.to_string())?;
            raw += ping;
            // Exits per scenario, measured on the same scenarios; a hang
            // costs the detection wait (two kicks), not exits, so it is
            // reported apart.
            let (mut chunk_exits, mut chunk_busy) = (0u64, Duration::ZERO);
            for s in chunk {
                let start = Instant::now();
                let t = backend::Backend::run_to_trace(&mut kvm, s);
                let took = start.elapsed();
                if t.outcome == crate::trace::Outcome::Hang {
                    hangs += 1;
                    hang_time += took;
                } else {
                    chunk_exits += kvm.last_exits;
                    chunk_busy += took;
                    in_run += kvm.last_time_in_run().unwrap_or_default();
                }
            }
            exits += chunk_exits;
            busy += chunk_busy;
            let per_exit = chunk_busy.as_secs_f64() / chunk_exits.max(1) as f64;
            ratios.push(per_exit / ping.as_secs_f64());
        }
        let raw = raw.as_secs_f64() / ratios.len().max(1) as f64;
        let per_exit = busy.as_secs_f64() / exits.max(1) as f64;
        report["kick_mechanism"] = json!(format!("{:?}", kvm.kick_mechanism()));
        report["raw_exit_round_trip_us"] = json!(raw * 1e6);
        report["exits_per_scenario_without_hang"] =
            json!(exits as f64 / (cases - hangs).max(1) as f64);
        report["backend_time_per_exit_us"] = json!(per_exit * 1e6);
        report["ratio_backend_per_exit_to_raw_exit"] = json!(median(ratios.clone()));
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
        report["hangs"] = json!(hangs);
        report["mean_hang_detection_ms"] =
            json!(hang_time.as_secs_f64() * 1e3 / hangs.max(1) as f64);
    }
    if name == "qemu-tcg" {
        // The same scenarios with the host timing hangs out instead of the
        // in-guest watchdog, and a few through one QEMU process each.
        let hangs = count(crate::trace::Outcome::Hang);
        let mut host = backend::qemu::QemuBackend::open(false).map_err(|e| e.to_string())?;
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
    }
    Ok(report)
}

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
