//! The minimiser: shrinks a diverging scenario while its signature stays the
//! same.
//!
//! Delta debugging (Zeller and Hildebrandt, "Simplifying and Isolating
//! Failure-Inducing Input", 2002) over the program's ops and each handler
//! body, then value simplification (fewer handlers and `#N` bodies, default
//! route options, the lowest pins, canonical vectors, the default config),
//! repeated to a fixpoint. The last pass is a delta-debugging pass at single-op
//! granularity, so the result is 1-minimal: removing any one op of the program
//! or of a handler body loses the divergence.

use std::collections::{BTreeMap, BTreeSet};

use crate::oracle::Signature;
use crate::scenario::{
    Config, DeliveryMode, HandlerKey, HostOp, Msi, Op, Pin, Route, Scenario, PINS,
};

/// The result of a minimisation.
#[derive(Clone, Debug)]
pub struct Minimized {
    pub scenario: Scenario,
    /// How many times the test (both backends) ran.
    pub runs: usize,
}

/// Shrinks `scenario`, keeping `test(candidate) == Some(target)`.
///
/// `test` runs a candidate on both backends and returns the signature of its
/// divergence, or `None` when they agree (or the run was inconclusive).
pub fn minimize(
    scenario: &Scenario,
    target: &Signature,
    mut test: impl FnMut(&Scenario) -> Option<Signature>,
) -> Minimized {
    let mut runs = 0usize;
    let mut keeps = |s: &Scenario| {
        runs += 1;
        test(s).as_ref() == Some(target)
    };
    let mut best = scenario.clone();
    // Bounded: every round strictly shrinks the scenario or stops.
    for _round in 0..16 {
        let before = best.clone();
        best = shrink_cpus(best, &mut keeps);
        best = shrink_ops(best, &mut keeps);
        best = shrink_handlers(best, &mut keeps);
        best = simplify_values(best, &mut keeps);
        if best == before {
            break;
        }
    }
    Minimized {
        scenario: best,
        runs,
    }
}

/// Fewer CPUs: the last CPU goes with its ops and its `@K` bodies, one at
/// a time while the signature holds; then the multi-CPU config keys that no
/// longer matter (APIC IDs, the SIPI start) go back to their defaults.
fn shrink_cpus(mut s: Scenario, keeps: &mut impl FnMut(&Scenario) -> bool) -> Scenario {
    while s.cpus() > 1 {
        let n = s.cpus() as u8 - 1;
        let mut candidate = s.clone();
        candidate.config.cpus = n;
        let kept: Vec<usize> = (0..s.ops.len()).filter(|&k| s.cpu_of(k) < n).collect();
        candidate.ops = kept.iter().map(|&k| s.ops[k]).collect();
        candidate.op_cpus = kept.iter().map(|&k| s.cpu_of(k)).collect();
        candidate.normalize_op_cpus();
        candidate
            .handlers
            .retain(|k, _| k.cpu.is_none_or(|c| c < n));
        if !keeps(&candidate) {
            break;
        }
        s = candidate;
    }
    let defaults = Config::default();
    for reset in [
        |c: &mut Config, d: &Config| c.apic_ids = d.apic_ids,
        |c: &mut Config, d: &Config| c.ap_start = d.ap_start,
    ] {
        let mut candidate = s.clone();
        reset(&mut candidate.config, &defaults);
        if candidate != s && keeps(&candidate) {
            s = candidate;
        }
    }
    s
}

/// ddmin over the top-level program.
fn shrink_ops(s: Scenario, keeps: &mut impl FnMut(&Scenario) -> bool) -> Scenario {
    // Each op with the CPU that runs it, so that dropping an op keeps the
    // others on their CPUs.
    let with_cpu = |steps: &[(Op, u8)]| {
        let mut out = Scenario {
            ops: steps.iter().map(|(op, _)| *op).collect(),
            op_cpus: steps.iter().map(|(_, cpu)| *cpu).collect(),
            ..s.clone()
        };
        out.normalize_op_cpus();
        out
    };
    let steps: Vec<(Op, u8)> = (0..s.ops.len()).map(|k| (s.ops[k], s.cpu_of(k))).collect();
    let steps = ddmin(steps, |steps| keeps(&with_cpu(steps)));
    with_cpu(&steps)
}

/// Drop whole handlers (the vector falls back to its plain body or `eoi`),
/// turn `V#N` bodies into plain ones, then ddmin each remaining body.
fn shrink_handlers(mut s: Scenario, keeps: &mut impl FnMut(&Scenario) -> bool) -> Scenario {
    let keys: Vec<HandlerKey> = s.handlers.keys().copied().collect();
    for key in keys.iter().rev() {
        let mut candidate = s.clone();
        candidate.handlers.remove(key);
        if keeps(&candidate) {
            s = candidate;
        }
    }
    // Fewer #N bodies: `V#N` becomes the plain `V` body when there is none.
    let keys: Vec<HandlerKey> = s.handlers.keys().copied().collect();
    for key in keys {
        let plain = HandlerKey { nth: None, ..key };
        if key.nth.is_some() && !s.handlers.contains_key(&plain) {
            let mut candidate = s.clone();
            let body = candidate.handlers.remove(&key).unwrap_or_default();
            candidate.handlers.insert(plain, body);
            if keeps(&candidate) {
                s = candidate;
            }
        }
    }
    let keys: Vec<HandlerKey> = s.handlers.keys().copied().collect();
    for key in keys {
        let body = s.handlers[&key].clone();
        let shrunk = ddmin(body, |b| {
            let mut candidate = s.clone();
            candidate.handlers.insert(key, b.to_vec());
            keeps(&candidate)
        });
        s.handlers.insert(key, shrunk);
    }
    s
}

/// Replace values by simpler ones, one at a time, keeping each change that
/// keeps the signature.
fn simplify_values(mut s: Scenario, keeps: &mut impl FnMut(&Scenario) -> bool) -> Scenario {
    // The default config, key by key (each candidate from the current config).
    let defaults = Config::default();
    let setters: [fn(&mut Config, &Config); 4] = [
        |c, d| c.ioapic = d.ioapic,
        |c, d| c.apic = d.apic,
        |c, d| c.irqchip = d.irqchip,
        |c, d| c.directed_eoi = d.directed_eoi,
    ];
    for set in setters {
        let mut config = s.config;
        set(&mut config, &defaults);
        if config != s.config {
            let candidate = Scenario {
                config,
                ..s.clone()
            };
            if keeps(&candidate) {
                s = candidate;
            }
        }
    }
    // The lowest pins: rename each pin in use to the lowest pin not in use.
    for from in pins_used(&s) {
        for to in 0..from.get() {
            let to = Pin::new(to).expect("below PINS");
            if pins_used(&s).contains(&to) {
                continue;
            }
            let candidate = map_ops(&s, |op| rename_pin(op, from, to));
            if keeps(&candidate) {
                s = candidate;
            }
            break;
        }
    }
    // Canonical vectors: each vector in use becomes the lowest canonical
    // vector (the start of a priority class, 0x20..0xf0) that is not in use.
    for from in vectors_used(&s) {
        for to in (0x20..=0xf0u8).step_by(0x10) {
            if to == from {
                break;
            }
            if vectors_used(&s).contains(&to) {
                continue;
            }
            let candidate = rename_vector(&s, from, to);
            if keeps(&candidate) {
                s = candidate;
                break;
            }
        }
    }
    // Default options on routes and MSIs, one field at a time.
    for index in 0..s.ops.len() {
        for simpler in simpler_ops(&s.ops[index]) {
            let mut candidate = s.clone();
            candidate.ops[index] = simpler;
            if keeps(&candidate) {
                s = candidate;
            }
        }
    }
    let keys: Vec<HandlerKey> = s.handlers.keys().copied().collect();
    for key in keys {
        for index in 0..s.handlers[&key].len() {
            for simpler in simpler_ops(&s.handlers[&key][index]) {
                let mut candidate = s.clone();
                candidate.handlers.get_mut(&key).expect("key exists")[index] = simpler;
                if keeps(&candidate) {
                    s = candidate;
                }
            }
        }
    }
    s
}

/// Variants of `op` with one non-default field set to its default.
fn simpler_ops(op: &Op) -> Vec<Op> {
    let mut out = Vec::new();
    match *op {
        Op::Route { pin, route } => {
            let d = Route {
                vector: route.vector,
                ..Route::default()
            };
            let variants = [
                Route {
                    trigger: d.trigger,
                    ..route
                },
                Route {
                    polarity: d.polarity,
                    ..route
                },
                Route {
                    dest_mode: d.dest_mode,
                    ..route
                },
                Route {
                    dest: d.dest,
                    ..route
                },
                Route {
                    masked: d.masked,
                    ..route
                },
                Route {
                    delivery: DeliveryMode::Fixed,
                    ..route
                },
            ];
            out.extend(
                variants
                    .into_iter()
                    .filter(|r| *r != route)
                    .map(|route| Op::Route { pin, route }),
            );
        }
        Op::Host(HostOp::Msi(msi)) => {
            let d = Msi {
                vector: msi.vector,
                ..Msi::default()
            };
            let variants = [
                Msi {
                    dest: d.dest,
                    ..msi
                },
                Msi {
                    dest_mode: d.dest_mode,
                    ..msi
                },
                Msi {
                    trigger: d.trigger,
                    ..msi
                },
                Msi {
                    delivery: d.delivery,
                    ..msi
                },
            ];
            out.extend(
                variants
                    .into_iter()
                    .filter(|m| *m != msi)
                    .map(|m| Op::Host(HostOp::Msi(m))),
            );
        }
        Op::Host(HostOp::Pulse(pin)) => out.push(Op::Host(HostOp::Assert(pin))),
        Op::StiHlt => out.push(Op::Sti),
        Op::Tpr(v) if v != 0 => out.push(Op::Tpr(v & 0xf0)),
        _ => {}
    }
    out.retain(|o| o != op);
    out
}

fn op_pins(op: &Op) -> Option<Pin> {
    match *op {
        Op::Route { pin, .. }
        | Op::Mask(pin)
        | Op::Unmask(pin)
        | Op::Host(HostOp::Assert(pin))
        | Op::Host(HostOp::Deassert(pin))
        | Op::Host(HostOp::Pulse(pin)) => Some(pin),
        _ => None,
    }
}

fn pins_used(s: &Scenario) -> BTreeSet<Pin> {
    s.all_ops().filter_map(op_pins).collect()
}

fn rename_pin(op: &Op, from: Pin, to: Pin) -> Op {
    let swap = |p: Pin| if p == from { to } else { p };
    match *op {
        Op::Route { pin, route } => Op::Route {
            pin: swap(pin),
            route,
        },
        Op::Mask(p) => Op::Mask(swap(p)),
        Op::Unmask(p) => Op::Unmask(swap(p)),
        Op::Host(HostOp::Assert(p)) => Op::Host(HostOp::Assert(swap(p))),
        Op::Host(HostOp::Deassert(p)) => Op::Host(HostOp::Deassert(swap(p))),
        Op::Host(HostOp::Pulse(p)) => Op::Host(HostOp::Pulse(swap(p))),
        // A redirection entry's registers move with the pin.
        Op::IoapicRead(i) if is_entry_index(i, from) => Op::IoapicRead(move_index(i, from, to)),
        Op::IoapicWrite { index, value } if is_entry_index(index, from) => Op::IoapicWrite {
            index: move_index(index, from, to),
            value,
        },
        other => other,
    }
}

fn is_entry_index(index: u8, pin: Pin) -> bool {
    (0x10..0x10 + 2 * PINS).contains(&index) && (index - 0x10) / 2 == pin.get()
}

fn move_index(index: u8, from: Pin, to: Pin) -> u8 {
    index - 2 * from.get() + 2 * to.get()
}

fn op_vector(op: &Op) -> Option<u8> {
    match *op {
        Op::Route { route, .. } => Some(route.vector),
        Op::Host(HostOp::Msi(m)) => Some(m.vector),
        Op::IoapicEoi(v) | Op::SelfIpi(v) => Some(v),
        _ => None,
    }
}

fn vectors_used(s: &Scenario) -> BTreeSet<u8> {
    s.all_ops()
        .filter_map(op_vector)
        .chain(s.handlers.keys().map(|k| k.vector))
        .collect()
}

fn rename_vector(s: &Scenario, from: u8, to: u8) -> Scenario {
    let swap = |v: u8| if v == from { to } else { v };
    let mut out = map_ops(s, |op| match *op {
        Op::Route { pin, route } => Op::Route {
            pin,
            route: Route {
                vector: swap(route.vector),
                ..route
            },
        },
        Op::Host(HostOp::Msi(m)) => Op::Host(HostOp::Msi(Msi {
            vector: swap(m.vector),
            ..m
        })),
        Op::IoapicEoi(v) => Op::IoapicEoi(swap(v)),
        Op::SelfIpi(v) => Op::SelfIpi(swap(v)),
        other => other,
    });
    out.handlers = out
        .handlers
        .into_iter()
        .map(|(k, body)| {
            (
                HandlerKey {
                    vector: swap(k.vector),
                    ..k
                },
                body,
            )
        })
        .collect::<BTreeMap<_, _>>();
    out
}

fn map_ops(s: &Scenario, f: impl Fn(&Op) -> Op) -> Scenario {
    Scenario {
        config: s.config,
        ops: s.ops.iter().map(&f).collect(),
        op_cpus: s.op_cpus.clone(),
        handlers: s
            .handlers
            .iter()
            .map(|(k, body)| (*k, body.iter().map(&f).collect()))
            .collect(),
    }
}

/// Delta debugging over complements: returns a 1-minimal sub-list for which
/// `keeps` holds, given that it holds for `items`.
pub fn ddmin<T: Clone>(mut items: Vec<T>, mut keeps: impl FnMut(&[T]) -> bool) -> Vec<T> {
    if items.is_empty() {
        return items;
    }
    if keeps(&[]) {
        return Vec::new();
    }
    let mut granularity = 2usize;
    while items.len() >= 2 {
        let chunk = items.len().div_ceil(granularity);
        let mut reduced = false;
        let mut start = 0;
        while start < items.len() {
            let end = (start + chunk).min(items.len());
            let complement: Vec<T> = items[..start]
                .iter()
                .chain(&items[end..])
                .cloned()
                .collect();
            if keeps(&complement) {
                items = complement;
                granularity = (granularity - 1).max(2);
                reduced = true;
                break;
            }
            start = end;
        }
        if !reduced {
            if granularity >= items.len() {
                break;
            }
            granularity = (granularity * 2).min(items.len());
        }
    }
    items
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn shrink_cpus_drops_the_cpus_a_divergence_does_not_need() {
        // The "divergence": an op on CPU 1 exists. CPUs 2 and 3 go, with
        // their ops and bodies; CPU 1 stays; the APIC IDs become default.
        let s = crate::scenario::parse(
            "config cpus=4 apic-ids=0,1,2,9\nhandler 0x40@3: nop\nhandler 0x40@1: nop\n\
             cpu 3: nop\ncpu 1: cli\ncpu 2: sti\nnop\n",
        )
        .unwrap();
        let mut keeps = |c: &Scenario| (0..c.ops.len()).any(|k| c.cpu_of(k) == 1);
        let out = shrink_cpus(s, &mut keeps);
        assert_eq!(
            out.to_string(),
            "config cpus=2\nhandler 0x40@1: nop\ncpu 1: cli\nnop\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Class;

    fn sig() -> Signature {
        Signature {
            class: Class::MissedDelivery,
            op_kind: "unmask".into(),
            rule: "r".into(),
            split: false,
        }
    }

    #[test]
    fn ddmin_finds_the_single_culprit() {
        let out = ddmin((0..100).collect::<Vec<_>>(), |xs| xs.contains(&42));
        assert_eq!(out, vec![42]);
    }

    #[test]
    fn ddmin_keeps_a_pair_that_is_needed_together() {
        let out = ddmin((0..50).collect::<Vec<_>>(), |xs| {
            xs.contains(&3) && xs.contains(&47)
        });
        assert_eq!(out, vec![3, 47]);
    }

    #[test]
    fn ddmin_result_is_one_minimal() {
        // Needs any three even numbers.
        let test = |xs: &[u32]| xs.iter().filter(|x| *x % 2 == 0).count() >= 3;
        let out = ddmin((0..40).collect::<Vec<_>>(), test);
        assert_eq!(out.len(), 3);
        for i in 0..out.len() {
            let mut fewer = out.clone();
            fewer.remove(i);
            assert!(!test(&fewer));
        }
    }

    /// A fake oracle: diverges when pin P is routed level, asserted, then
    /// unmasked, in that order, whatever the pin and vector.
    fn fake(s: &Scenario) -> Option<Signature> {
        let mut routed = None;
        let mut asserted = false;
        for op in &s.ops {
            match *op {
                Op::Route { pin, route } if route.trigger == crate::scenario::Trigger::Level => {
                    routed = Some(pin)
                }
                Op::Host(HostOp::Assert(p)) if Some(p) == routed => asserted = true,
                Op::Unmask(p) if Some(p) == routed && asserted => return Some(sig()),
                _ => {}
            }
        }
        None
    }

    #[test]
    fn minimises_program_pins_and_vectors() {
        let text = "handler 0x91: nop; eoi\n\
                    route 5 vector=0x40 edge\nnop\n\
                    route 7 vector=0x91 level masked dest=3\n\
                    cli\nassert 7\nsnapshot\nsti\nunmask 7\nnop\nnop\n";
        let s = crate::scenario::parse(text).expect("parses");
        let m = minimize(&s, &sig(), fake);
        assert_eq!(
            crate::scenario::print::print(&m.scenario),
            "route 0 vector=0x20 level\nassert 0\nunmask 0\n"
        );
        assert!(m.runs > 0);
    }
}
