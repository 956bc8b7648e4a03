//! The oracle: compares what a backend observed with what the model expects
//! and classifies the first difference.
//!
//! The class, the kind of the op the diverging event belongs to, and the
//! model's rule that decided that event form the divergence's *signature*,
//! which deduplicates findings: two programs that break the same rule at the
//! same kind of op are the same bug.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scenario::{Op, Scenario};
use crate::trace::{Event, EventKind, Outcome, Snapshot, Space, Trace};

/// What kind of difference the first diverging event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// The model delivered a vector that the backend never delivered.
    MissedDelivery,
    /// The backend delivered a vector the model did not.
    ExtraDelivery,
    /// Both delivered the same vectors, in another order.
    Order,
    /// The backend delivered another vector where the model delivered one.
    WrongVector,
    /// The backend delivered the vector, but during a later op.
    LateDelivery,
    /// The backend delivered the vector, but during an earlier op.
    EarlyDelivery,
    /// A snapshot or register read differs.
    StateMismatch,
    /// One side hung where the other did not.
    Hang,
    /// One side stormed where the other did not.
    Storm,
    /// One side raised an exception (#GP) where the other did not, or
    /// another one: a register access the processor must refuse was taken,
    /// or one it must take was refused.
    Exception,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::MissedDelivery => "missed-delivery",
            Class::ExtraDelivery => "extra-delivery",
            Class::Order => "order",
            Class::WrongVector => "wrong-vector",
            Class::LateDelivery => "late-delivery",
            Class::EarlyDelivery => "early-delivery",
            Class::StateMismatch => "state-mismatch",
            Class::Hang => "hang",
            Class::Storm => "storm",
            Class::Exception => "exception",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first difference between the expected (model) and observed traces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    pub class: Class,
    /// Index into the event lists where the traces first differ.
    pub event_index: usize,
    /// The top-level op the diverging event belongs to (the expected event's
    /// op when there is one, else the observed one's, else where it hung).
    pub op: Option<usize>,
    pub expected: Option<Event>,
    pub observed: Option<Event>,
    /// One line saying what differs, e.g. `remote_irr[0]: expected 0, observed 1`.
    pub detail: String,
}

/// The result of comparing two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Diverge(Divergence),
    /// One side failed to run (outcome `error`): never a divergence by itself.
    Inconclusive(String),
}

/// What the oracle rules on one scenario: like [`Verdict`], but a
/// divergence carries its signature (which needs the model's decisions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ruling {
    Agree,
    Diverge {
        divergence: Divergence,
        signature: Signature,
    },
    /// One side failed to run (outcome `error`): never a divergence by itself.
    Inconclusive(String),
}

/// Both traces of one scenario and the oracle's ruling on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The model's trace.
    pub expected: Trace,
    /// The backend's trace.
    pub observed: Trace,
    pub ruling: Ruling,
}

impl Judgement {
    /// The divergence's signature, if the traces diverge.
    pub fn signature(&self) -> Option<&Signature> {
        match &self.ruling {
            Ruling::Diverge { signature, .. } => Some(signature),
            _ => None,
        }
    }

    /// The divergence, if the traces diverge.
    pub fn divergence(&self) -> Option<&Divergence> {
        match &self.ruling {
            Ruling::Diverge { divergence, .. } => Some(divergence),
            _ => None,
        }
    }

    /// [`Judgement::signature`], by value.
    pub fn into_signature(self) -> Option<Signature> {
        match self.ruling {
            Ruling::Diverge { signature, .. } => Some(signature),
            _ => None,
        }
    }
}

/// Compare the expected trace (the model's) with the observed one.
pub fn compare(expected: &Trace, observed: &Trace) -> Verdict {
    for (side, t) in [("expected", expected), ("observed", observed)] {
        if t.outcome == Outcome::Error {
            return Verdict::Inconclusive(format!(
                "{side} run on {} failed: {}",
                t.backend,
                t.error.as_deref().unwrap_or("no message")
            ));
        }
    }
    let (e, o) = (&expected.events, &observed.events);
    let common = e.len().min(o.len());
    for i in 0..common {
        if e[i] != o[i] && !allowed_difference(&e[i], &o[i]) {
            return Verdict::Diverge(classify_pair(i, &e[i..], &o[i..]));
        }
    }
    if e.len() > common {
        return Verdict::Diverge(classify_tail(common, &e[common], observed, true));
    }
    if o.len() > common {
        return Verdict::Diverge(classify_tail(common, &o[common], expected, false));
    }
    if expected.outcome != observed.outcome {
        return Verdict::Diverge(outcome_mismatch(common, expected, observed));
    }
    if expected.hang_op != observed.hang_op {
        return Verdict::Diverge(Divergence {
            class: Class::Hang,
            event_index: common,
            op: expected.hang_op.or(observed.hang_op),
            expected: None,
            observed: None,
            detail: format!(
                "hung at op {:?}, expected at op {:?}",
                observed.hang_op, expected.hang_op
            ),
        });
    }
    Verdict::Agree
}

/// [`compare`] for a run of `scenario`, with the open choices of the
/// model (model/src/lib.rs, "Choices where the spec is silent") allowed:
/// the events of the ops where the scenario's outcome depends on one are
/// not compared ([`open_choice_window`]).
pub fn compare_scenario(scenario: &Scenario, expected: &Trace, observed: &Trace) -> Verdict {
    let (mut expected, mut observed) = if scenario.uses_smp() {
        (canonical(scenario, expected), canonical(scenario, observed))
    } else {
        (expected.clone(), observed.clone())
    };
    without_undefined_remote_irr(scenario, &mut expected, &mut observed);
    match open_choice_window(scenario, &expected, &observed) {
        None => compare(&expected, &observed),
        Some(window) => compare(&outside(&expected, window), &outside(&observed, window)),
    }
}

/// Clears, in the snapshots of both traces, remote IRR of the entries that
/// are edge-triggered at that point: 82093AA §3.2.4 bit 14 leaves it
/// undefined for them ([`irqdiff_model::undefined::remote_irr_defined`],
/// the rule irqdiff-check's harness applies too; docs/byo-findings.md M1).
/// Which entries are level is replayed from the scenario's entry writes
/// along the model's trace: the top-level ops up to each event's op, and
/// the handler body of each delivery before it. Up to their first
/// difference both sides ran exactly that.
fn without_undefined_remote_irr(scenario: &Scenario, expected: &mut Trace, observed: &mut Trace) {
    if !scenario.all_ops().any(|op| matches!(op, Op::Snapshot)) {
        return;
    }
    let mut level = 0u32;
    let track = |op: &Op, level: &mut u32| {
        let (pin, on) = match *op {
            Op::Route { pin, route } => {
                (pin.get(), route.trigger == crate::scenario::Trigger::Level)
            }
            Op::IoapicWrite { index, value } if (0x10..0x40).contains(&index) && index % 2 == 0 => {
                (
                    (index - 0x10) / 2,
                    irqdiff_model::undefined::remote_irr_defined(value),
                )
            }
            _ => return,
        };
        if on {
            *level |= 1 << pin;
        } else {
            *level &= !(1 << pin);
        }
    };
    let mut applied = 0;
    let mut deliveries: std::collections::HashMap<(u8, u8), u32> = Default::default();
    for i in 0..expected.events.len() {
        let (op, cpu, kind) = {
            let e = &expected.events[i];
            (e.op, e.cpu, e.kind.clone())
        };
        while applied <= op && applied < scenario.ops.len() {
            track(&scenario.ops[applied], &mut level);
            applied += 1;
        }
        match kind {
            EventKind::Deliver { vector } => {
                let nth = deliveries.entry((cpu, vector)).or_default();
                *nth += 1;
                for op in scenario.handler_body_on(cpu, vector, *nth) {
                    track(op, &mut level);
                }
            }
            EventKind::Snapshot(_) => {
                for trace in [&mut *expected, &mut *observed] {
                    if let Some(Event {
                        kind: EventKind::Snapshot(s),
                        ..
                    }) = trace.events.get_mut(i)
                    {
                        for (pin, remote_irr) in s.remote_irr.iter_mut().enumerate() {
                            *remote_irr &= level & 1 << pin != 0;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The order of a multi-CPU trace that the oracle compares
/// (docs/scenario-format.md, "Several CPUs"):
///
/// - Events of one top-level op on different CPUs are not ordered: after
///   each op every CPU reaches a quiescent point, but what the CPUs do in
///   between happens at the same time, and hardware (the APIC bus or the
///   system bus) does not order deliveries to different processors. So the
///   events are grouped by op, then by CPU, each CPU's events in the order
///   it observed them (which is defined).
/// - Where a lowest-priority message can go to one of several CPUs (SDM
///   §11.6.2.4: the choice is model-specific), which CPU took it is open:
///   in a scenario with a lowest-priority message the CPU of each event is
///   not compared, and each op's events are compared as a set.
pub fn canonical(scenario: &Scenario, trace: &Trace) -> Trace {
    let mut t = trace.clone();
    if has_lowest_priority(scenario) {
        for e in &mut t.events {
            e.cpu = 0;
        }
        t.events
            .sort_by_cached_key(|e| (e.op, serde_json::to_string(&e.kind).unwrap_or_default()));
    } else {
        t.events.sort_by_key(|e| (e.op, e.cpu));
    }
    t
}

/// Whether a message of the scenario may be lowest-priority with several
/// CPUs to choose from.
pub fn has_lowest_priority(scenario: &Scenario) -> bool {
    use crate::scenario::{DeliveryMode, HostOp, IpiDelivery, MsiDelivery};
    scenario.is_multi_cpu()
        && scenario.all_ops().any(|op| match op {
            Op::Route { route, .. } => route.delivery == DeliveryMode::Lowest,
            Op::Host(HostOp::Msi(m)) => m.delivery == MsiDelivery::Lowest,
            Op::Ipi(i) => i.delivery == IpiDelivery::Lowest,
            _ => false,
        })
}

/// Top-level ops `start..end` (`end` None: to the end of the run).
pub type Window = (usize, Option<usize>);

fn in_window(op: usize, (start, end): Window) -> bool {
    op >= start && end.is_none_or(|end| op < end)
}

/// `trace` without the events of ops in `window`; a run that ended in the
/// window (hang or storm) counts as completed, since what it did there is
/// left open.
fn outside(trace: &Trace, window: Window) -> Trace {
    let mut t = trace.clone();
    t.events.retain(|e| !in_window(e.op, window));
    let ended_in_window = match t.outcome {
        Outcome::Hang => t.hang_op.is_some_and(|op| in_window(op, window)),
        Outcome::Storm => window.1.is_none(),
        Outcome::Completed | Outcome::Error => false,
    };
    if ended_in_window {
        t.outcome = Outcome::Completed;
        t.hang_op = None;
    }
    t
}

/// Where a scenario takes one of the choices the SDM leaves open, the ops
/// whose events depend on it:
///
/// - **Hardware disable, then re-enable** (an `apic-base` that sets EN after
///   one that cleared it), until the program writes the SVR (which decides
///   whether the APIC is software-enabled again): SDM §11.4.3 says only
///   that a disabled APIC's state is lost, not what the re-enabled one
///   holds. The model comes back in its power-up state (software-disabled);
///   KVM's `kvm_lapic_set_base` keeps the registers, QEMU's `apic_set_base`
///   clears only SVR's enable bit on disable, bhyve's `vlapic_set_apicbase`
///   refuses the change. A re-enable that never comes back (FB14021745) is
///   still seen once the SVR is written.
/// - **A write of another xAPIC ID** (`lapic-write 0x020` with bits 31:24
///   not 0, in xAPIC mode), to the end: SDM §11.4.6 leaves it
///   model-specific whether the ID is writable. The model and bhyve
///   (`vlapic_id_write_handler`) keep it; KVM (`kvm_apic_set_xapic_id`) and
///   QEMU (`apic_mem_write`) take it, and physical destinations then match
///   differently.
/// - **A level-triggered fixed ICR write** (`lapic-write 0x300` with bit 15
///   set), to the end: SDM §11.6.1 gives the trigger bit a meaning only for
///   INIT level de-assert. The model and bhyve (`lapic_intr_edge`) accept
///   the IPI as edge; KVM (`__apic_accept_irq`) and QEMU (`apic_set_irq`)
///   set its TMR bit, so its EOI is broadcast to the IOAPIC.
///
/// The window starts at the top-level op that takes the choice; for one in
/// a handler body, at the op of the first delivery (on either side) of
/// that vector. `None` when the scenario takes none; the earliest window
/// when it takes several.
pub fn open_choice_window(
    scenario: &Scenario,
    expected: &Trace,
    observed: &Trace,
) -> Option<Window> {
    // Per CPU (each has its own APIC, docs/scenario-format.md "Several
    // CPUs"): a re-enable is decided by that CPU's own SVR write.
    let mut x2apic =
        [scenario.config.apic == crate::scenario::ApicMode::X2apic; crate::scenario::MAX_CPUS];
    let mut disabled = [false; crate::scenario::MAX_CPUS];
    let mut window: Option<Window> = None;
    for (k, op) in scenario.ops.iter().enumerate() {
        let cpu = scenario.cpu_of(k) as usize % crate::scenario::MAX_CPUS;
        if let Op::ApicBase(value) = *op {
            let enabled = value & APIC_BASE_EN != 0;
            if enabled && disabled[cpu] {
                let svr = scenario.ops[k..]
                    .iter()
                    .enumerate()
                    .position(|(i, op)| {
                        matches!(op, Op::Svr(_)) && scenario.cpu_of(k + i) as usize == cpu
                    })
                    .map(|i| k + i);
                window = Some((k, svr));
                break;
            }
            disabled[cpu] = !enabled;
            x2apic[cpu] = enabled && value & APIC_BASE_EXTD != 0;
        }
        if takes_open_choice(op, x2apic[cpu]) {
            window = Some((k, None));
            break;
        }
    }
    let first_delivery = |vector: u8| {
        [expected, observed]
            .iter()
            .filter_map(|t| {
                t.events
                    .iter()
                    .find(|e| e.kind == EventKind::Deliver { vector })
                    .map(|e| e.op)
            })
            .min()
    };
    let x2apic = scenario.config.apic == crate::scenario::ApicMode::X2apic;
    for (key, body) in &scenario.handlers {
        if body.iter().any(|op| takes_open_choice(op, x2apic)) {
            if let Some(op) = first_delivery(key.vector) {
                if window.is_none_or(|(start, _)| op < start) {
                    window = Some((op, None));
                }
            }
        }
    }
    window
}

/// IA32_APIC_BASE EN (bit 11) and EXTD (bit 10), SDM §11.4.4.
const APIC_BASE_EN: u32 = 1 << 11;
const APIC_BASE_EXTD: u32 = 1 << 10;

/// Whether `op` writes another xAPIC ID or sends a level fixed IPI (see
/// [`open_choice_window`]).
fn takes_open_choice(op: &Op, x2apic: bool) -> bool {
    use crate::model::lapic::reg;
    match *op {
        Op::LapicWrite { offset, value } if offset == reg::ID => !x2apic && value >> 24 != 0,
        // Bit 15: level; bits 10:8 = 000: fixed.
        Op::LapicWrite { offset, value } if offset == reg::ICR_LOW => {
            value & (1 << 15) != 0 && (value >> 8) & 7 == 0
        }
        // The same for the `ipi` op (fixed or lowest, level).
        Op::Ipi(ipi) => ipi.icr_low() & (1 << 15) != 0 && (ipi.icr_low() >> 8) & 6 == 0,
        _ => false,
    }
}

/// Differences the spec leaves open (docs/design.md: the oracle allows them
/// only where the behaviour is undefined): a read of an IOAPIC register
/// index the 82093AA does not define (§3.2: only 0x00-0x02 and 0x10-0x3f
/// exist) may return anything; so may an xAPIC read of a local APIC offset
/// that names no register of SDM Table 11-1 (a reserved offset, one of the
/// three unused dwords of a register's 16-byte slot, or beyond 0x3F0: SDM
/// §11.4.1 defines only aligned 32-bit accesses to the registers), or of a
/// register whose read the SDM gives no value: the EOI register (Table
/// 11-1: write only) and the remote read register RRD (Table 11-1, note 1:
/// not supported since the Pentium 4; it holds the answer of a remote read,
/// a delivery mode later processors dropped). KVM completes such a read
/// without writing its data (`kvm_lapic_readable_reg_mask` leaves EOI and
/// RRD out; `apic_mmio_read` ignores `kvm_lapic_reg_read`'s refusal), so
/// the guest reads what the instruction emulator's buffer held
/// (docs/known-divergences.md); and the
/// local APIC timer's current count (SDM §11.5.4: it counts down in real
/// time, and the model has no clock), but for whether it is zero. And LVT bits 12 (delivery status)
/// and 14 (LINT remote IRR), read-only in SDM Figure 11-8: the model reads
/// them 0 (it delivers instantly and has no LINT inputs); KVM
/// (`apic_lvt_mask`) and bhyve (`vlapic_lvt_write_handler`) keep them as
/// written, QEMU stores the whole value. The SDM does not say what a write
/// of a read-only bit leaves, so an LVT read may differ in those two bits.
fn allowed_difference(expected: &Event, observed: &Event) -> bool {
    match (&expected.kind, &observed.kind) {
        (
            EventKind::Read {
                space: Space::Lapic,
                reg: reg @ 0x320..=0x370,
                value,
            },
            EventKind::Read {
                space: Space::Lapic,
                reg: other,
                value: seen,
            },
        ) if reg == other && (value ^ seen) & !LVT_OPEN_BITS == 0 => expected.op == observed.op,
        (
            EventKind::Read {
                space: Space::Lapic,
                reg,
                ..
            },
            EventKind::Read {
                space: Space::Lapic,
                reg: other,
                ..
            },
        ) if reg == other && !names_lapic_register(*reg) => expected.op == observed.op,
        // SDM §11.12.1.2: the MMIO page of an x2APIC answers nothing the SDM
        // defines (KVM's LAPIC_MMIO_HOLE quirk reads all ones).
        (
            EventKind::Read {
                space: Space::LapicMmio,
                reg,
                ..
            },
            EventKind::Read {
                space: Space::LapicMmio,
                reg: other,
                ..
            },
        ) => expected.op == observed.op && reg == other,
        // The current count: zero against non-zero is compared (a count
        // in progress, or stopped), its value is not.
        (
            EventKind::Read {
                space: Space::Lapic,
                reg: 0x390,
                value,
            },
            EventKind::Read {
                space: Space::Lapic,
                reg: 0x390,
                value: seen,
            },
        ) => expected.op == observed.op && (*value == 0) == (*seen == 0),
        (
            EventKind::Read {
                space: Space::Ioapic,
                reg,
                value,
            },
            EventKind::Read {
                space: Space::Ioapic,
                reg: other,
                value: seen,
            },
        ) => {
            // An entry's reserved bits and an edge entry's remote IRR
            // (irqdiff_model::undefined, as irqdiff-check compares them).
            let defined = |v: u32| irqdiff_model::undefined::defined_bits_of_read(*reg as u8, v);
            expected.op == observed.op
                && reg == other
                && (!matches!(reg, 0x00..=0x02 | 0x10..=0x3f)
                    || (matches!(reg, 0x10..=0x3f) && defined(*value) == defined(*seen)))
        }
        _ => false,
    }
}

/// LVT delivery status (12) and LINT remote IRR (14).
const LVT_OPEN_BITS: u32 = 1 << 12 | 1 << 14;

/// Whether a `lapic-read` offset names a register of SDM Table 11-1 that
/// a read gives a value of (not EOI, write only, nor RRD, unsupported).
fn names_lapic_register(offset: u32) -> bool {
    use crate::model::lapic::reg;
    const REMOTE_READ: u32 = 0x0c0;
    offset % 0x10 == 0
        && offset != u32::from(reg::EOI)
        && offset != REMOTE_READ
        && u16::try_from(offset).is_ok_and(crate::model::lapic::implemented_xapic_register)
}

fn is_exception(ev: &Event) -> bool {
    matches!(ev.kind, EventKind::Exception { .. })
}

fn vector(ev: &Event) -> Option<u8> {
    match ev.kind {
        EventKind::Deliver { vector } => Some(vector),
        _ => None,
    }
}

fn delivers(events: &[Event], v: u8) -> bool {
    events.iter().any(|e| vector(e) == Some(v))
}

/// The first differing events `e[0]` and `o[0]`, with the rest of each trace.
fn classify_pair(index: usize, e: &[Event], o: &[Event]) -> Divergence {
    let (exp, obs) = (&e[0], &o[0]);
    let mut d = Divergence {
        class: Class::StateMismatch,
        event_index: index,
        op: Some(exp.op),
        expected: Some(exp.clone()),
        observed: Some(obs.clone()),
        detail: String::new(),
    };
    if is_exception(exp) || is_exception(obs) {
        d.class = Class::Exception;
        if !is_exception(exp) {
            d.op = Some(obs.op);
        }
        d.detail = format!(
            "{} at op {}, expected {} at op {}",
            obs.kind, obs.op, exp.kind, exp.op
        );
        return d;
    }
    match (vector(exp), vector(obs)) {
        (Some(ve), Some(vo)) if ve == vo => {
            d.class = if obs.op > exp.op {
                Class::LateDelivery
            } else {
                Class::EarlyDelivery
            };
            d.detail = format!(
                "vector {ve:#04x} delivered during op {}, expected during op {}",
                obs.op, exp.op
            );
        }
        (Some(ve), Some(vo)) => {
            let ve_later = delivers(&o[1..], ve);
            let vo_later = delivers(&e[1..], vo);
            d.class = match (ve_later, vo_later) {
                (true, true) => Class::Order,
                (false, true) => Class::MissedDelivery,
                (true, false) => Class::ExtraDelivery,
                (false, false) => Class::WrongVector,
            };
            if d.class == Class::ExtraDelivery {
                d.op = Some(obs.op);
            }
            d.detail = format!(
                "delivered {vo:#04x} (op {}), expected {ve:#04x} (op {})",
                obs.op, exp.op
            );
        }
        (Some(ve), None) => {
            let late = o[1..].iter().find(|x| vector(x) == Some(ve));
            d.class = if late.is_some() {
                Class::LateDelivery
            } else {
                Class::MissedDelivery
            };
            d.detail = match late {
                Some(l) => format!(
                    "vector {ve:#04x} delivered during op {}, expected during op {}",
                    l.op, exp.op
                ),
                None => format!(
                    "vector {ve:#04x} not delivered (expected during op {})",
                    exp.op
                ),
            };
        }
        (None, Some(vo)) => {
            d.class = if delivers(&e[1..], vo) {
                Class::EarlyDelivery
            } else {
                Class::ExtraDelivery
            };
            d.op = Some(obs.op);
            d.detail = format!(
                "vector {vo:#04x} delivered during op {}, not expected there",
                obs.op
            );
        }
        (None, None) => {
            d.class = Class::StateMismatch;
            d.detail = state_difference(exp, obs);
        }
    }
    d
}

/// One trace ended (at event `index`) while the other goes on with `extra`.
/// `missing` says whether the extra event is the model's (the backend lacks it).
fn classify_tail(index: usize, extra: &Event, shorter: &Trace, missing: bool) -> Divergence {
    let mut d = Divergence {
        class: Class::StateMismatch,
        event_index: index,
        op: Some(extra.op),
        expected: None,
        observed: None,
        detail: String::new(),
    };
    let ended = match shorter.outcome {
        Outcome::Hang => format!("the run hung at op {}", shorter.hang_op.unwrap_or(0)),
        Outcome::Storm => "the run stormed".to_string(),
        _ => "the run ended".to_string(),
    };
    if missing {
        d.expected = Some(extra.clone());
        d.class = match (shorter.outcome, vector(extra)) {
            (Outcome::Hang, _) => Class::Hang,
            (Outcome::Storm, _) => Class::Storm,
            _ if is_exception(extra) => Class::Exception,
            (_, Some(_)) => Class::MissedDelivery,
            (_, None) => Class::StateMismatch,
        };
        d.detail = match vector(extra) {
            Some(v) => format!(
                "vector {v:#04x} not delivered (expected during op {}); {ended}",
                extra.op
            ),
            None => format!("expected event at op {} missing; {ended}", extra.op),
        };
    } else {
        d.observed = Some(extra.clone());
        d.class = match (shorter.outcome, vector(extra)) {
            (Outcome::Hang, _) => Class::Hang,
            (_, Some(_)) => Class::ExtraDelivery,
            _ if is_exception(extra) => Class::Exception,
            (Outcome::Storm, _) => Class::Storm,
            (_, None) => Class::StateMismatch,
        };
        d.detail = match vector(extra) {
            Some(v) => format!(
                "vector {v:#04x} delivered during op {}, not expected",
                extra.op
            ),
            None => format!("unexpected event at op {}; the model's {ended}", extra.op),
        };
    }
    d
}

fn outcome_mismatch(index: usize, expected: &Trace, observed: &Trace) -> Divergence {
    let class = if expected.outcome == Outcome::Hang || observed.outcome == Outcome::Hang {
        Class::Hang
    } else {
        Class::Storm
    };
    Divergence {
        class,
        event_index: index,
        op: observed.hang_op.or(expected.hang_op),
        expected: None,
        observed: None,
        detail: format!(
            "outcome {:?}, expected {:?}",
            observed.outcome, expected.outcome
        )
        .to_lowercase(),
    }
}

/// Names the first field that differs between two snapshots or reads.
fn state_difference(exp: &Event, obs: &Event) -> String {
    match (&exp.kind, &obs.kind) {
        (EventKind::Snapshot(a), EventKind::Snapshot(b)) => snapshot_difference(a, b),
        (
            EventKind::Read { space, reg, value },
            EventKind::Read {
                value: observed, ..
            },
        ) => format!("{space:?} register {reg:#x}: expected {value:#x}, observed {observed:#x}")
            .to_lowercase(),
        _ => format!(
            "expected {:?} at op {}, observed {:?} at op {}",
            exp.kind, exp.op, obs.kind, obs.op
        ),
    }
}

fn snapshot_difference(a: &Snapshot, b: &Snapshot) -> String {
    let words = [
        ("irr", &a.irr, &b.irr),
        ("isr", &a.isr, &b.isr),
        ("tmr", &a.tmr, &b.tmr),
    ];
    for (name, x, y) in words {
        if x != y {
            let v = (0..256usize)
                .find(|&v| (x[v / 32] >> (v % 32)) & 1 != (y[v / 32] >> (v % 32)) & 1)
                .unwrap_or(0);
            let bit = |w: &[u32; 8]| (w[v / 32] >> (v % 32)) & 1;
            return format!(
                "{name} bit {v:#04x}: expected {}, observed {}",
                bit(x),
                bit(y)
            );
        }
    }
    if a.tpr != b.tpr {
        return format!("tpr: expected {:#x}, observed {:#x}", a.tpr, b.tpr);
    }
    if a.ppr != b.ppr {
        return format!("ppr: expected {:#x}, observed {:#x}", a.ppr, b.ppr);
    }
    for pin in 0..24 {
        if a.remote_irr[pin] != b.remote_irr[pin] {
            return format!(
                "remote_irr[{pin}]: expected {}, observed {}",
                a.remote_irr[pin] as u8, b.remote_irr[pin] as u8
            );
        }
    }
    for pin in 0..24 {
        if a.delivery_status[pin] != b.delivery_status[pin] {
            return format!(
                "delivery_status[{pin}]: expected {}, observed {}",
                a.delivery_status[pin] as u8, b.delivery_status[pin] as u8
            );
        }
    }
    "snapshots differ".to_string()
}

/// What identifies a bug across programs: the kind of difference, the kind
/// of op that caused the model's deciding decision, and that decision's rule
/// (plus the irqchip shape, since split and full irqchips are different code).
///
/// The class here is coarse: a delivery the backend did not make where the
/// model made it (missed, late, out of order, replaced by another vector, or
/// a hang waiting for it) is one `missed-delivery`; a delivery the backend
/// made where the model did not (extra or early) is `extra-delivery`. The
/// fine class stays in the [`Divergence`] for the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Signature {
    pub class: Class,
    /// Keyword of the op whose execution made the deciding decision.
    pub op_kind: String,
    /// The model rule that decided the event (its short name), or `none`.
    pub rule: String,
    /// The scenario asked for a split irqchip.
    #[serde(default)]
    pub split: bool,
}

impl Signature {
    /// A file-name-safe form, used as the finding's directory name.
    pub fn slug(&self) -> String {
        let split = if self.split { ".split" } else { "" };
        format!("{}.{}.{}{split}", self.class, self.op_kind, self.rule)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} caused by {} ({})",
            self.class, self.op_kind, self.rule
        )?;
        if self.split {
            write!(f, " [split irqchip]")?;
        }
        Ok(())
    }
}

impl Divergence {
    /// The coarse class used in signatures.
    pub fn signature_class(&self) -> Class {
        let delivers = |e: &Option<Event>| {
            e.as_ref()
                .is_some_and(|e| matches!(e.kind, EventKind::Deliver { .. }))
        };
        if self.class == Class::Exception {
            Class::Exception
        } else if delivers(&self.expected) {
            Class::MissedDelivery
        } else if delivers(&self.observed) {
            Class::ExtraDelivery
        } else if matches!(self.class, Class::Hang | Class::Storm) {
            self.class
        } else {
            Class::StateMismatch
        }
    }

    /// The signature of this divergence in `scenario`, given the model's
    /// deciding decision as (the causing op's keyword, the rule's name).
    pub fn signature(&self, scenario: &Scenario, deciding: Option<(&str, &str)>) -> Signature {
        let fallback = self
            .op
            .and_then(|i| scenario.ops.get(i))
            .map_or("end", |op| op.keyword());
        let class = self.signature_class();
        // A state difference is named by the register that differs (the
        // model's last decision before a snapshot says little about it).
        let field = self
            .detail
            .split([' ', '[', ':'])
            .next()
            .unwrap_or("state")
            .replace('_', "-");
        let (op_kind, rule) = if class == Class::StateMismatch {
            ("snapshot", field.as_str())
        } else if class == Class::Exception {
            // Named by the op that faulted on one side only, and the fault.
            (fallback, "gp")
        } else {
            deciding.unwrap_or((fallback, "none"))
        };
        // A pulse is an assert (then a deassert) and `sti-hlt` an `sti`: the
        // same code in the hypervisor, so the same bug.
        let op_kind = match op_kind {
            "pulse" => "assert",
            "sti-hlt" => "sti",
            other => other,
        };
        Signature {
            class,
            op_kind: op_kind.to_string(),
            rule: rule.to_string(),
            split: scenario.config.irqchip == crate::scenario::Irqchip::Split,
        }
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class)?;
        if let Some(op) = self.op {
            write!(f, " at op {op}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Three-way triage: what a third implementation says about a divergence
/// between a backend and the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Triage {
    /// The third agrees with the model: the backend is the odd one out.
    LikelyBackendBug { third: String },
    /// The third agrees with the backend: the model is the odd one out.
    LikelyModelBug { third: String },
    /// All three differ.
    AllDiffer { third: String },
    /// The third could not run the scenario.
    Inconclusive { third: String, why: String },
}

impl Triage {
    /// Triage from the model's trace, the backend's, and the third's.
    pub fn of(expected: &Trace, observed: &Trace, third: &Trace) -> Triage {
        let name = third.backend.to_string();
        if third.outcome == Outcome::Error {
            return Triage::Inconclusive {
                third: name,
                why: third.error.clone().unwrap_or_default(),
            };
        }
        if compare(expected, third) == Verdict::Agree {
            Triage::LikelyBackendBug { third: name }
        } else if compare(observed, third) == Verdict::Agree {
            Triage::LikelyModelBug { third: name }
        } else {
            Triage::AllDiffer { third: name }
        }
    }

    pub fn is_likely_model_bug(&self) -> bool {
        matches!(self, Triage::LikelyModelBug { .. })
    }
}

impl fmt::Display for Triage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Triage::LikelyBackendBug { third } => write!(
                f,
                "the model and {third} agree: likely a bug of the backend"
            ),
            Triage::LikelyModelBug { third } => write!(
                f,
                "the backend and {third} agree against the model: likely a model bug"
            ),
            Triage::AllDiffer { third } => {
                write!(f, "the model, the backend and {third} all differ")
            }
            Triage::Inconclusive { third, why } => write!(f, "{third} could not run it: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Event;

    fn deliver(op: usize, vector: u8) -> Event {
        Event {
            op,
            cpu: 0,
            kind: EventKind::Deliver { vector },
        }
    }

    fn trace(events: Vec<Event>) -> Trace {
        Trace {
            events,
            ..Trace::new("t")
        }
    }

    fn diverge(e: Vec<Event>, o: Vec<Event>) -> Divergence {
        match compare(&trace(e), &trace(o)) {
            Verdict::Diverge(d) => d,
            other => panic!("expected a divergence, got {other:?}"),
        }
    }

    fn lapic_read(op: usize, reg: u32, value: u32) -> Event {
        Event {
            op,
            cpu: 0,
            kind: EventKind::Read {
                space: Space::Lapic,
                reg,
                value,
            },
        }
    }

    fn scenario(text: &str) -> Scenario {
        crate::scenario::parse(text).expect("parses")
    }

    #[test]
    fn lvt_reads_may_differ_in_bits_12_and_14_only() {
        // SDM Figure 11-8: delivery status and LINT remote IRR are
        // read-only; what a write of them leaves is open.
        let e = trace(vec![lapic_read(0, 0x350, 0x0001_0000)]);
        let o = trace(vec![lapic_read(0, 0x350, 0x0001_5000)]);
        assert_eq!(compare(&e, &o), Verdict::Agree);
        let o = trace(vec![lapic_read(0, 0x350, 0x0001_0001)]);
        assert!(matches!(compare(&e, &o), Verdict::Diverge(_)));
        // Not an LVT: the same bits must agree.
        let e = trace(vec![lapic_read(0, 0x0f0, 0x1ff)]);
        let o = trace(vec![lapic_read(0, 0x0f0, 0x1ff | 1 << 12)]);
        assert!(matches!(compare(&e, &o), Verdict::Diverge(_)));
    }

    #[test]
    fn reads_of_unassigned_lapic_offsets_may_differ() {
        // SDM §11.4.1 defines only aligned 32-bit accesses to registers.
        for reg in [0x024, 0x040, 0x400, 0xffc] {
            let e = trace(vec![lapic_read(0, reg, 0)]);
            let o = trace(vec![lapic_read(0, reg, !0)]);
            assert_eq!(compare(&e, &o), Verdict::Agree, "{reg:#x}");
        }
        let e = trace(vec![lapic_read(0, 0x030, 0x50014)]);
        let o = trace(vec![lapic_read(0, 0x030, 0x1050014)]);
        assert!(matches!(compare(&e, &o), Verdict::Diverge(_)));
    }

    #[test]
    fn reads_of_the_write_only_eoi_and_the_unsupported_rrd_may_differ() {
        // SDM Table 11-1: EOI (0xB0) is write only; RRD (0xC0) is not
        // supported since the Pentium 4 (note 1). This host's KVM reads
        // the offset back (the emulator's stale buffer).
        for reg in [0x0b0, 0x0c0] {
            let e = trace(vec![lapic_read(0, reg, 0)]);
            let o = trace(vec![lapic_read(0, reg, reg)]);
            assert_eq!(compare(&e, &o), Verdict::Agree, "{reg:#x}");
            // At another op it is still a difference.
            let o = trace(vec![lapic_read(1, reg, reg)]);
            assert!(matches!(compare(&e, &o), Verdict::Diverge(_)), "{reg:#x}");
        }
        // The registers around them are read as the SDM defines.
        for reg in [0x0a0, 0x0d0] {
            let e = trace(vec![lapic_read(0, reg, 0)]);
            let o = trace(vec![lapic_read(0, reg, reg)]);
            assert!(matches!(compare(&e, &o), Verdict::Diverge(_)), "{reg:#x}");
        }
    }

    #[test]
    fn state_after_a_hardware_re_enable_is_left_open() {
        // SDM §11.4.3: the state of a re-enabled APIC is not defined.
        let s = scenario(
            "lapic-read 0x0f0\napic-base 0xfee00100\napic-base 0xfee00900\nlapic-read 0x0f0\n",
        );
        let e = trace(vec![lapic_read(0, 0xf0, 0x1ff), lapic_read(3, 0xf0, 0xff)]);
        let o = trace(vec![lapic_read(0, 0xf0, 0x1ff), lapic_read(3, 0xf0, 0x1ff)]);
        assert_eq!(open_choice_window(&s, &e, &o), Some((2, None)));
        assert_eq!(compare_scenario(&s, &e, &o), Verdict::Agree);
        // Once the SVR is written, the enable state is the program's again:
        // an APIC that stayed disabled (FB14021745) is a divergence.
        let s = scenario("apic-base 0xfee00100\napic-base 0xfed00900\nlapic-read 0x0f0\nsvr 0x1ff\nself-ipi 0x40\n");
        let e = trace(vec![lapic_read(2, 0xf0, 0xff), deliver(4, 0x40)]);
        let o = trace(vec![lapic_read(2, 0xf0, 0)]);
        assert_eq!(open_choice_window(&s, &e, &o), Some((1, Some(3))));
        assert!(matches!(compare_scenario(&s, &e, &o), Verdict::Diverge(_)));
        let o = trace(vec![lapic_read(2, 0xf0, 0), deliver(4, 0x40)]);
        assert_eq!(compare_scenario(&s, &e, &o), Verdict::Agree);
        let s = scenario(
            "lapic-read 0x0f0\napic-base 0xfee00100\napic-base 0xfee00900\nlapic-read 0x0f0\n",
        );
        let e = trace(vec![lapic_read(0, 0xf0, 0x1ff), lapic_read(3, 0xf0, 0xff)]);
        // Before the re-enable everything is still compared.
        let o = trace(vec![lapic_read(0, 0xf0, 0x0ff), lapic_read(3, 0xf0, 0x1ff)]);
        assert!(matches!(compare_scenario(&s, &e, &o), Verdict::Diverge(_)));
        // A disable alone takes no open choice.
        let s = scenario("apic-base 0xfee00100\nlapic-read 0x0f0\n");
        assert_eq!(open_choice_window(&s, &e, &o), None);
    }

    #[test]
    fn a_re_enable_is_decided_by_the_svr_write_of_its_own_cpu() {
        // Each CPU has its own APIC (SDM §11.4.3 per APIC): another CPU's
        // SVR write leaves CPU 0's re-enabled state open.
        let s = scenario(
            "config cpus=2\napic-base 0xfee00000\napic-base 0xfec80800\ncpu 1: svr 0x1ff\n\
             ipi vector=0xb4 all\nsvr 0x1ff\n",
        );
        let none = trace(vec![]);
        assert_eq!(open_choice_window(&s, &none, &none), Some((1, Some(4))));
        // On one CPU the next SVR write closes it, as before.
        let s = scenario("apic-base 0xfee00000\napic-base 0xfec80800\nsvr 0x1ff\n");
        assert_eq!(open_choice_window(&s, &none, &none), Some((1, Some(2))));
    }

    #[test]
    fn a_write_of_another_xapic_id_leaves_the_rest_open() {
        // SDM §11.4.6: whether the xAPIC ID is writable is model-specific.
        let s = scenario("lapic-write 0x020 0x1000000\nmsi vector=0x40\n");
        let e = trace(vec![deliver(1, 0x40)]);
        let o = trace(vec![]);
        assert_eq!(compare_scenario(&s, &e, &o), Verdict::Agree);
        // Writing the ID it already has (0) changes nothing anywhere.
        let s = scenario("lapic-write 0x020 0\nmsi vector=0x40\n");
        assert!(matches!(compare_scenario(&s, &e, &o), Verdict::Diverge(_)));
        // In x2APIC mode the write is #GP everywhere: no open choice.
        let s = scenario("config apic=x2apic\nlapic-write 0x020 0x1000000\n");
        assert_eq!(open_choice_window(&s, &e, &o), None);
    }

    #[test]
    fn a_level_icr_write_leaves_tmr_and_eoi_broadcast_open() {
        // SDM §11.6.1: the trigger bit means something only for INIT.
        let s = scenario("nop\nlapic-write 0x300 0x48040\nsnapshot\n");
        let mut tmr = Snapshot::default();
        tmr.tmr[2] = 1;
        let snap = |s: Snapshot| Event {
            op: 2,
            cpu: 0,
            kind: EventKind::Snapshot(Box::new(s)),
        };
        let e = trace(vec![deliver(1, 0x40), snap(Snapshot::default())]);
        let o = trace(vec![deliver(1, 0x40), snap(tmr)]);
        assert_eq!(open_choice_window(&s, &e, &o), Some((1, None)));
        assert_eq!(compare_scenario(&s, &e, &o), Verdict::Agree);
        // An edge ICR write takes no open choice.
        let s = scenario("nop\nlapic-write 0x300 0x40040\nsnapshot\n");
        assert!(matches!(compare_scenario(&s, &e, &o), Verdict::Diverge(_)));
        // In a handler body: from the op of the body's first delivery.
        let s = scenario("handler 0x50: lapic-write 0x300 0x48040; eoi\nnop\nself-ipi 0x50\n");
        let e = trace(vec![deliver(1, 0x50), deliver(1, 0x40)]);
        assert_eq!(open_choice_window(&s, &e, &e), Some((1, None)));
    }

    #[test]
    fn reads_of_undefined_ioapic_registers_may_differ() {
        // 82093AA §3.2: index 0x77 is not a register.
        let read = |reg, value| Event {
            op: 0,
            cpu: 0,
            kind: EventKind::Read {
                space: Space::Ioapic,
                reg,
                value,
            },
        };
        assert_eq!(
            compare(&trace(vec![read(0x77, 0)]), &trace(vec![read(0x77, !0)])),
            Verdict::Agree
        );
        assert!(matches!(
            compare(
                &trace(vec![read(0x01, 0x11)]),
                &trace(vec![read(0x01, 0x20)])
            ),
            Verdict::Diverge(_)
        ));
    }

    #[test]
    fn the_timer_current_count_may_differ_but_for_zero_and_other_lapic_reads_may_not() {
        let read = |reg, value| Event {
            op: 0,
            cpu: 0,
            kind: EventKind::Read {
                space: Space::Lapic,
                reg,
                value,
            },
        };
        // SDM §11.5.4: the current count runs in real time; whether it is
        // zero (the count over, or stopped) is compared.
        assert_eq!(
            compare(
                &trace(vec![read(0x390, 5000)]),
                &trace(vec![read(0x390, 1234)])
            ),
            Verdict::Agree
        );
        assert!(matches!(
            compare(
                &trace(vec![read(0x390, 0)]),
                &trace(vec![read(0x390, 1234)])
            ),
            Verdict::Diverge(_)
        ));
        assert!(matches!(
            compare(&trace(vec![read(0x380, 0)]), &trace(vec![read(0x380, 1)])),
            Verdict::Diverge(_)
        ));
    }

    #[test]
    fn triage_names_the_odd_one_out() {
        let model = trace(vec![deliver(1, 0x82)]);
        let backend = trace(vec![]);
        let mut third = trace(vec![deliver(1, 0x82)]);
        third.backend = "qemu-tcg".into();
        assert!(matches!(
            Triage::of(&model, &backend, &third),
            Triage::LikelyBackendBug { .. }
        ));
        let mut third = trace(vec![]);
        third.backend = "qemu-tcg".into();
        assert!(Triage::of(&model, &backend, &third).is_likely_model_bug());
        let mut third = trace(vec![deliver(1, 0x83)]);
        third.backend = "qemu-tcg".into();
        assert!(matches!(
            Triage::of(&model, &backend, &third),
            Triage::AllDiffer { .. }
        ));
    }

    #[test]
    fn identical_traces_agree() {
        let t = trace(vec![deliver(1, 0x76)]);
        assert_eq!(compare(&t, &t.clone()), Verdict::Agree);
    }

    #[test]
    fn error_outcome_is_inconclusive_not_a_divergence() {
        let ok = trace(vec![deliver(1, 0x76)]);
        let err = Trace::error("kvm", "KVM_RUN failed");
        assert!(
            matches!(compare(&ok, &err), Verdict::Inconclusive(m) if m.contains("KVM_RUN failed"))
        );
    }

    #[test]
    fn missing_delivery_at_the_end_is_missed() {
        let d = diverge(
            vec![deliver(1, 0x82), deliver(3, 0x82)],
            vec![deliver(1, 0x82)],
        );
        assert_eq!(d.class, Class::MissedDelivery);
        assert_eq!((d.event_index, d.op), (1, Some(3)));
    }

    #[test]
    fn additional_delivery_is_extra() {
        let d = diverge(
            vec![deliver(1, 0x98)],
            vec![deliver(1, 0x98), deliver(1, 0x98)],
        );
        assert_eq!(d.class, Class::ExtraDelivery);
        assert_eq!(d.op, Some(1));
    }

    #[test]
    fn same_vector_later_op_is_late() {
        let d = diverge(vec![deliver(2, 0x82)], vec![deliver(4, 0x82)]);
        assert_eq!(d.class, Class::LateDelivery);
        assert_eq!(
            d.detail,
            "vector 0x82 delivered during op 4, expected during op 2"
        );
    }

    #[test]
    fn same_vector_earlier_op_is_early() {
        let d = diverge(vec![deliver(4, 0x82)], vec![deliver(2, 0x82)]);
        assert_eq!(d.class, Class::EarlyDelivery);
    }

    #[test]
    fn swapped_vectors_are_order() {
        let d = diverge(
            vec![deliver(5, 0x78), deliver(5, 0x66)],
            vec![deliver(5, 0x66), deliver(5, 0x78)],
        );
        assert_eq!(d.class, Class::Order);
    }

    #[test]
    fn unrelated_vector_is_wrong_vector() {
        let d = diverge(vec![deliver(1, 0x78)], vec![deliver(1, 0x79)]);
        assert_eq!(d.class, Class::WrongVector);
    }

    #[test]
    fn snapshot_difference_names_the_pin() {
        let a = Snapshot::default();
        let mut b = Snapshot::default();
        b.remote_irr[3] = true;
        let d = diverge(
            vec![Event {
                op: 2,
                cpu: 0,
                kind: EventKind::Snapshot(Box::new(a)),
            }],
            vec![Event {
                op: 2,
                cpu: 0,
                kind: EventKind::Snapshot(Box::new(b)),
            }],
        );
        assert_eq!(d.class, Class::StateMismatch);
        assert_eq!(d.detail, "remote_irr[3]: expected 0, observed 1");
    }

    #[test]
    fn remote_irr_of_an_edge_entry_and_an_entrys_reserved_bits_may_differ() {
        // 82093AA §3.2.4: bit 14 undefined for edge entries (M1), bits
        // 55:17 reserved (M2); irqdiff_model::undefined decides both.
        let s = crate::scenario::parse(
            "route 3 vector=0x30\nsnapshot\nroute 3 vector=0x30 level\nsnapshot\n\
             ioapic-read 0x16\nioapic-read 0x17\n",
        )
        .unwrap();
        let snap = |op, remote: bool| {
            let mut snapshot = Snapshot::default();
            snapshot.remote_irr[3] = remote;
            Event {
                op,
                cpu: 0,
                kind: EventKind::Snapshot(Box::new(snapshot)),
            }
        };
        let read = |op, reg, value| Event {
            op,
            cpu: 0,
            kind: EventKind::Read {
                space: Space::Ioapic,
                reg,
                value,
            },
        };
        let expected = trace(vec![
            snap(1, false),
            snap(3, false),
            read(4, 0x16, 0x8030),
            read(5, 0x17, 0),
        ]);
        // Edge at op 1: remote IRR open; reserved bits read back: open.
        let open = trace(vec![
            snap(1, true),
            snap(3, false),
            read(4, 0x16, 0xfffe_8030),
            read(5, 0x17, 0x00ff_ffff),
        ]);
        assert_eq!(compare_scenario(&s, &expected, &open), Verdict::Agree);
        assert!(matches!(compare(&expected, &open), Verdict::Diverge(_)));
        // Level at op 3: remote IRR compared; so are bits 16:0 and 63:56.
        for observed in [
            vec![
                snap(1, false),
                snap(3, true),
                read(4, 0x16, 0x8030),
                read(5, 0x17, 0),
            ],
            vec![
                snap(1, false),
                snap(3, false),
                read(4, 0x16, 0x9030),
                read(5, 0x17, 0),
            ],
            vec![
                snap(1, false),
                snap(3, false),
                read(4, 0x16, 0x8030),
                read(5, 0x17, 1 << 24),
            ],
        ] {
            let observed = trace(observed);
            assert!(
                matches!(
                    compare_scenario(&s, &expected, &observed),
                    Verdict::Diverge(_)
                ),
                "{observed:?}"
            );
        }
    }

    #[test]
    fn snapshot_difference_names_the_isr_vector() {
        let a = Snapshot {
            isr: [0, 0, 0, 0x0040_0000, 0, 0, 0, 0],
            ..Snapshot::default()
        };
        let b = Snapshot::default();
        let d = diverge(
            vec![Event {
                op: 2,
                cpu: 0,
                kind: EventKind::Snapshot(Box::new(a)),
            }],
            vec![Event {
                op: 2,
                cpu: 0,
                kind: EventKind::Snapshot(Box::new(b)),
            }],
        );
        assert_eq!(d.detail, "isr bit 0x76: expected 1, observed 0");
    }

    #[test]
    fn observed_hang_is_hang() {
        let mut hung = trace(vec![]);
        hung.outcome = Outcome::Hang;
        hung.hang_op = Some(2);
        let d = match compare(&trace(vec![deliver(2, 0x9a)]), &hung) {
            Verdict::Diverge(d) => d,
            v => panic!("{v:?}"),
        };
        assert_eq!(d.class, Class::Hang);
    }

    #[test]
    fn model_storm_against_single_delivery_is_missed_then_storm() {
        let mut storm = trace((0..64).map(|_| deliver(1, 0x20)).collect());
        storm.outcome = Outcome::Storm;
        let d = match compare(&storm, &trace(vec![deliver(1, 0x20)])) {
            Verdict::Diverge(d) => d,
            v => panic!("{v:?}"),
        };
        assert_eq!(d.class, Class::MissedDelivery);
        assert_eq!(d.event_index, 1);
    }

    #[test]
    fn signature_uses_the_op_keyword_and_rule() {
        let s = Scenario {
            ops: vec![Op::Nop, Op::Unmask(crate::scenario::Pin::new(0).unwrap())],
            ..Default::default()
        };
        let d = diverge(vec![deliver(1, 0x82)], vec![]);
        let sig = d.signature(&s, Some(("unmask", "level-unmask-delivers")));
        assert_eq!(sig.slug(), "missed-delivery.unmask.level-unmask-delivers");
        let d = diverge(vec![deliver(1, 0x82)], vec![deliver(3, 0x82)]);
        assert_eq!(d.class, Class::LateDelivery);
        assert_eq!(
            d.signature(&s, None).class,
            Class::MissedDelivery,
            "late is missed where expected"
        );
    }
}
