//! The scenarios of the harness: a subset of irqdiff's `.irq` format
//! (docs/scenario-format.md) with the same meaning, so that a printed
//! failure runs as it is under `irqdiff run` (`--backend alioth-ioapic`,
//! `model`, ...). The interpreter follows irqdiff's model backend: after
//! each op the guest takes every deliverable interrupt back to back, each
//! handler runs its body (`eoi`, or nothing for a `handler V:` line) and
//! IRET. One difference: the harness ends every run with a `snapshot`.

use std::fmt;

use irqdiff_model::ioapic::{IOEOI, IOREGSEL, IOWIN};
use irqdiff_model::lapic::reg;
use irqdiff_model::machine::Interrupt;
use irqdiff_model::{
    IoapicDevice, IoapicVersion, Machine, MachineConfig, MessageQueue, Rule, Unsupported,
};
use proptest::prelude::*;

/// A redirection entry as `route` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub vector: u8,
    pub level: bool,
    pub low: bool,
    pub logical: bool,
    pub dest: u8,
    pub masked: bool,
    /// Delivery mode bits (0 fixed, 1 lowest, 4 NMI).
    pub mode: u8,
}

impl Route {
    /// The 64-bit entry (82093AA §3.2.4).
    pub fn entry(&self) -> u64 {
        self.vector as u64
            | (self.mode as u64) << 8
            | (self.logical as u64) << 11
            | (self.low as u64) << 13
            | (self.level as u64) << 15
            | (self.masked as u64) << 16
            | (self.dest as u64) << 56
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Route(u8, Route),
    Mask(u8),
    Unmask(u8),
    Assert(u8),
    Deassert(u8),
    Pulse(u8),
    Eoi,
    IoapicEoi(u8),
    IoapicRead(u8),
    IoapicWrite(u8, u32),
    Tpr(u8),
    Cli,
    Sti,
    Snapshot,
}

/// A scenario: the IOAPIC version, the vectors whose handler does not EOI
/// (`handler V:`), the ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub version: IoapicVersion,
    pub no_eoi: Vec<u8>,
    pub ops: Vec<Op>,
}

/// The skip reason of an entry the model does not model (lib.rs of
/// irqdiff-model: SMI, INIT, ExtINT and reserved delivery modes).
pub const UNMODELLED: &str =
    "delivery modes the model does not model (SMI, INIT, ExtINT, reserved)";

impl Scenario {
    /// Why the scenario cannot run on a device declaring `unsupported`:
    /// an entry it writes (mask aside) needs something declared.
    pub fn needs(&self, unsupported: &Unsupported) -> Option<&'static str> {
        self.ops.iter().find_map(|op| {
            let entry = match *op {
                Op::Route(_, r) => r.entry(),
                Op::IoapicWrite(i, v) if (0x10..0x40).contains(&i) && i % 2 == 0 => v as u64,
                Op::IoapicWrite(i, v) if (0x10..0x40).contains(&i) => (v as u64) << 32,
                _ => return None,
            };
            if entry as u32 != 0 && matches!((entry >> 8) & 7, 2 | 3 | 5 | 6 | 7) {
                return Some(UNMODELLED);
            }
            unsupported.refuses_entry(entry & !(1 << 16))
        })
    }
}

impl Scenario {
    /// Whether the model refused (no destination, illegal vector) a
    /// message of a vector that some level entry of the scenario uses.
    pub fn refused_level(&self, model: &Run) -> bool {
        let refused = |v: u8| {
            model.decisions.iter().flatten().any(|&(rule, vector)| {
                vector == v
                    && matches!(
                        rule,
                        Rule::NoDestinationMatch | Rule::IllegalVector | Rule::ApicSoftwareDisabled
                    )
            })
        };
        self.ops.iter().any(|op| match *op {
            Op::Route(_, r) => r.level && refused(r.vector),
            Op::IoapicWrite(i, v) if (0x10..0x40).contains(&i) && i % 2 == 0 => {
                v & 1 << 15 != 0 && refused(v as u8)
            }
            _ => false,
        })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.version {
            IoapicVersion::V11 => "0x11",
            IoapicVersion::V20 => "0x20",
        };
        writeln!(f, "config ioapic={v}")?;
        for vector in &self.no_eoi {
            writeln!(f, "handler {vector:#x}:")?;
        }
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Route(pin, r) => {
                write!(f, "route {pin} vector={:#x}", r.vector)?;
                write!(f, " {}", if r.level { "level" } else { "edge" })?;
                write!(f, " {}", if r.low { "low" } else { "high" })?;
                write!(f, " {}", if r.logical { "logical" } else { "physical" })?;
                write!(f, " dest={}", r.dest)?;
                write!(f, " {}", if r.masked { "masked" } else { "unmasked" })?;
                let mode = match r.mode {
                    0 => "fixed",
                    1 => "lowest",
                    4 => "nmi",
                    _ => "fixed",
                };
                write!(f, " {mode}")
            }
            Op::Mask(p) => write!(f, "mask {p}"),
            Op::Unmask(p) => write!(f, "unmask {p}"),
            Op::Assert(p) => write!(f, "assert {p}"),
            Op::Deassert(p) => write!(f, "deassert {p}"),
            Op::Pulse(p) => write!(f, "pulse {p}"),
            Op::Eoi => write!(f, "eoi"),
            Op::IoapicEoi(v) => write!(f, "ioapic-eoi {v:#x}"),
            Op::IoapicRead(i) => write!(f, "ioapic-read {i:#x}"),
            Op::IoapicWrite(i, v) => write!(f, "ioapic-write {i:#x} {v:#x}"),
            Op::Tpr(v) => write!(f, "tpr {v:#x}"),
            Op::Cli => write!(f, "cli"),
            Op::Sti => write!(f, "sti"),
            Op::Snapshot => write!(f, "snapshot"),
        }
    }
}

/// What the guest observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `op`: index of the top-level op (the final snapshot has `ops.len()`).
    Deliver {
        op: usize,
        vector: u8,
    },
    Read {
        op: usize,
        reg: u8,
        value: u32,
    },
    Snapshot {
        op: usize,
        irr: [u32; 8],
        isr: [u32; 8],
        tmr: [u32; 8],
        remote_irr: u32,
    },
    Storm {
        op: usize,
    },
}

impl Event {
    pub fn op(&self) -> usize {
        match *self {
            Event::Deliver { op, .. }
            | Event::Read { op, .. }
            | Event::Snapshot { op, .. }
            | Event::Storm { op } => op,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |words: &[u32; 8]| {
            (0..256)
                .filter(|v| words[v / 32] & 1 << (v % 32) != 0)
                .map(|v| format!("{v:#x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Event::Deliver { op, vector } => write!(f, "op {op}: deliver {vector:#x}"),
            Event::Read { op, reg, value } => write!(f, "op {op}: read {reg:#x} = {value:#010x}"),
            Event::Snapshot {
                op,
                irr,
                isr,
                tmr,
                remote_irr,
            } => write!(
                f,
                "op {op}: irr[{}] isr[{}] tmr[{}] remote_irr {remote_irr:#x}",
                set(irr),
                set(isr),
                set(tmr)
            ),
            Event::Storm { op } => write!(f, "op {op}: storm"),
        }
    }
}

/// A run: the events and the model's decisions of each op.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub events: Vec<Event>,
    pub decisions: Vec<Vec<(Rule, u8)>>,
}

/// More deliveries than this in one scenario is a storm (as irqdiff's
/// STORM_LIMIT).
const STORM_LIMIT: usize = 64;

/// Runs `s` on the model, or with `device`'s IOAPIC.
pub fn run<D, F>(s: &Scenario, device: Option<&F>) -> Run
where
    D: IoapicDevice + 'static,
    F: Fn(MessageQueue) -> D,
{
    let config = MachineConfig {
        ioapic: s.version,
        ..MachineConfig::default()
    };
    let mut m = match device {
        Some(make) => Machine::with_device(config, |q| Box::new(make(q))),
        None => Machine::new(config),
    };
    let mut out = Run::default();
    let mut deliveries = 0;
    for (i, op) in s.ops.iter().enumerate() {
        m.clear_decisions();
        let mut decided = Vec::new();
        step(&mut m, s, i, op, &mut out.events);
        drain(&mut m, &mut decided);
        let calm = take_all(&mut m, s, i, &mut out.events, &mut deliveries, &mut decided);
        out.decisions.push(decided);
        if !calm {
            return out;
        }
    }
    snapshot(&mut m, s.ops.len(), &mut out.events);
    out
}

/// Moves the machine's decisions into `into` (its log is bounded).
fn drain(m: &mut Machine, into: &mut Vec<(Rule, u8)>) {
    into.extend(m.decisions().iter().map(|d| (d.rule, d.vector)));
    m.clear_decisions();
}

fn write_indirect(m: &mut Machine, index: u8, value: u32) {
    m.ioapic_mmio_write(IOREGSEL, index as u32);
    m.ioapic_mmio_write(IOWIN, value);
}

fn read_indirect(m: &mut Machine, index: u8) -> u32 {
    m.ioapic_mmio_write(IOREGSEL, index as u32);
    m.ioapic_mmio_read(IOWIN)
}

fn step(m: &mut Machine, _s: &Scenario, i: usize, op: &Op, events: &mut Vec<Event>) {
    match *op {
        Op::Route(pin, r) => {
            let e = r.entry();
            write_indirect(m, 0x11 + 2 * pin, (e >> 32) as u32);
            write_indirect(m, 0x10 + 2 * pin, e as u32);
        }
        Op::Mask(pin) | Op::Unmask(pin) => {
            let low = read_indirect(m, 0x10 + 2 * pin);
            let low = if matches!(op, Op::Mask(_)) {
                low | 1 << 16
            } else {
                low & !(1 << 16)
            };
            write_indirect(m, 0x10 + 2 * pin, low);
        }
        Op::Assert(pin) => m.set_irq(pin as usize, true),
        Op::Deassert(pin) => m.set_irq(pin as usize, false),
        Op::Pulse(pin) => {
            m.set_irq(pin as usize, true);
            m.set_irq(pin as usize, false);
        }
        Op::Eoi => {
            let _ = m.lapic_write(reg::EOI, 0);
        }
        Op::IoapicEoi(v) => m.ioapic_mmio_write(IOEOI, v as u32),
        Op::IoapicRead(index) => {
            // What the spec leaves undefined is not compared: an entry's
            // reserved bits (byo-findings M2) and an edge entry's remote
            // IRR (M1), decided where irqdiff's campaign oracle decides it.
            let value =
                irqdiff_model::undefined::defined_bits_of_read(index, read_indirect(m, index));
            events.push(Event::Read {
                op: i,
                reg: index,
                value,
            });
        }
        Op::IoapicWrite(index, value) => write_indirect(m, index, value),
        Op::Tpr(v) => {
            let _ = m.lapic_write(reg::TPR, v as u32);
        }
        Op::Cli => m.cpu.cli(),
        Op::Sti => {
            // The stub's next instruction ends the STI shadow in the op.
            m.cpu.sti();
            m.cpu.end_of_instruction();
        }
        Op::Snapshot => snapshot(m, i, events),
    }
    m.cpu.end_of_instruction();
}

/// Takes what is deliverable, back to back; false on a storm.
fn take_all(
    m: &mut Machine,
    s: &Scenario,
    i: usize,
    events: &mut Vec<Event>,
    n: &mut usize,
    decided: &mut Vec<(Rule, u8)>,
) -> bool {
    while let Some(interrupt) = m.pending() {
        if *n == STORM_LIMIT {
            events.push(Event::Storm { op: i });
            return false;
        }
        *n += 1;
        let (vector, saved) = m.take(interrupt);
        events.push(Event::Deliver { op: i, vector });
        if !matches!(interrupt, Interrupt::Nmi) && !s.no_eoi.contains(&vector) {
            let _ = m.lapic_write(reg::EOI, 0);
        }
        m.iret(saved);
        m.cpu.end_of_instruction();
        drain(m, decided);
    }
    true
}

fn snapshot(m: &mut Machine, i: usize, events: &mut Vec<Event>) {
    let mut words = |base: u16| {
        let mut w = [0u32; 8];
        for (k, word) in w.iter_mut().enumerate() {
            *word = m.lapic_read(base + 0x10 * k as u16).unwrap_or(0);
        }
        w
    };
    let (irr, isr, tmr) = (words(reg::IRR), words(reg::ISR), words(reg::TMR));
    // Remote IRR of level entries only: 82093AA §3.2.4 bit 14 leaves it
    // undefined for edge-triggered entries (M1; irqdiff_model::undefined).
    let mut remote_irr = 0u32;
    for pin in 0..24u8 {
        let low = read_indirect(m, 0x10 + 2 * pin);
        if irqdiff_model::undefined::remote_irr_defined(low) && low & 1 << 14 != 0 {
            remote_irr |= 1 << pin;
        }
    }
    events.push(Event::Snapshot {
        op: i,
        irr,
        isr,
        tmr,
        remote_irr,
    });
}

/// The device's IOAPIC version (register 1, bits 7:0).
pub fn version_of(device: &mut impl IoapicDevice) -> IoapicVersion {
    device.mmio_write(IOREGSEL, 1);
    if device.mmio_read(IOWIN) & 0xff == 0x11 {
        IoapicVersion::V11
    } else {
        IoapicVersion::V20
    }
}

/// The rule the device breaks at event `first`: register semantics for a
/// read of a redirection entry, else the model's decision in that op about
/// the vector concerned.
pub fn rule_at(s: &Scenario, model: &Run, device: &Run, first: usize) -> Rule {
    let (a, b) = (model.events.get(first), device.events.get(first));
    if let (Some(Event::Read { op, reg, value }), Some(Event::Read { value: theirs, .. })) = (a, b)
    {
        if (0x10..0x40).contains(reg) && reg % 2 == 0 {
            let diff = value ^ theirs;
            let pin = (reg - 0x10) / 2;
            let written = s.ops[..*op].iter().any(|o| match *o {
                Op::Route(p, _) | Op::Unmask(p) | Op::Mask(p) => p == pin,
                Op::IoapicWrite(i, _) => i == *reg,
                _ => false,
            });
            if diff & (1 << 12 | 1 << 14) != 0 && written {
                return Rule::IoapicReadOnlyBits;
            }
            if diff & 1 << 16 != 0 && !written {
                return Rule::IoapicResetMasked;
            }
        }
    }
    if let (
        Some(Event::Snapshot {
            op,
            remote_irr: ours,
            ..
        }),
        Some(Event::Snapshot {
            remote_irr: theirs, ..
        }),
    ) = (a, b)
    {
        // Remote IRR set by the guest's own write of bit 14.
        let wrote_bit_14 = |p: u8| {
            s.ops[..*op].iter().any(|o| match *o {
                Op::IoapicWrite(i, v) => i == 0x10 + 2 * p && v & 1 << 14 != 0,
                _ => false,
            })
        };
        if (0..24).any(|p| (ours ^ theirs) & 1 << p != 0 && wrote_bit_14(p as u8)) {
            return Rule::IoapicReadOnlyBits;
        }
    }
    let op = a.or(b).map_or(0, Event::op);
    let vector = match (a, b) {
        (Some(Event::Deliver { vector, .. }), _) | (_, Some(Event::Deliver { vector, .. })) => {
            Some(*vector)
        }
        _ => None,
    };
    let decided = model.decisions.get(op).cloned().unwrap_or_default();
    let about = |v: u8| decided.iter().find(|d| d.1 == v).map(|d| d.0);
    if let Some(rule) = vector.and_then(about) {
        return rule;
    }
    // A vector the device requested and the model did not: in IRR at a
    // snapshot, or delivered.
    let extra = match (a, b) {
        (
            Some(Event::Snapshot {
                irr: ours,
                tmr: our_tmr,
                ..
            }),
            Some(Event::Snapshot {
                irr: theirs,
                tmr: their_tmr,
                ..
            }),
        ) => (0..=255u8).find(|&v| {
            let (w, bit) = (v as usize / 32, 1u32 << (v % 32));
            (theirs[w] & !ours[w] | (their_tmr[w] ^ our_tmr[w])) & bit != 0
        }),
        (_, Some(Event::Deliver { vector, .. })) => Some(*vector),
        _ => None,
    };
    if let Some(v) = extra {
        // Sent by an entry write that made the entry edge with that vector,
        // with no edge on the line: 82093AA §3.2.4 bit 15.
        let edge_write = s.ops[..=op.min(s.ops.len() - 1)].iter().any(|o| match *o {
            Op::Route(_, r) => !r.level && r.vector == v,
            Op::IoapicWrite(i, x) => {
                (0x10..0x40).contains(&i) && i % 2 == 0 && x & 1 << 15 == 0 && x as u8 == v
            }
            _ => false,
        });
        let pulsed = s.ops[..=op.min(s.ops.len() - 1)]
            .iter()
            .any(|o| matches!(o, Op::Assert(_) | Op::Pulse(_)));
        if edge_write && !pulsed_after_edge_route(s, op, v) && pulsed {
            return Rule::EdgeNoNewEdge;
        }
    }
    // A device delivery the model made no decision about: the state the
    // model kept instead (e.g. the masked entry of an unrouted pin).
    if let (None | Some(Event::Snapshot { .. }), Some(Event::Deliver { .. })) = (a, b) {
        let pin_written = |p: u8| {
            s.ops[..op]
                .iter()
                .any(|o| matches!(*o, Op::Route(q, _) | Op::Unmask(q) if q == p))
        };
        if let Op::Assert(p) | Op::Pulse(p) = s.ops[op.min(s.ops.len() - 1)] {
            if !pin_written(p) {
                return Rule::IoapicResetMasked;
            }
        }
    }
    decided.first().map_or(Rule::Quirk, |d| d.0)
}

/// Whether a rising edge reached a pin after it was routed edge with
/// vector `v` (before op `op`).
fn pulsed_after_edge_route(s: &Scenario, op: usize, v: u8) -> bool {
    let ops = &s.ops[..=op.min(s.ops.len() - 1)];
    ops.iter().enumerate().any(|(k, o)| match *o {
        Op::Route(pin, r) if !r.level && r.vector == v => ops[k + 1..]
            .iter()
            .any(|o| matches!(*o, Op::Assert(p) | Op::Pulse(p) if p == pin)),
        _ => false,
    })
}

/// Random scenarios for an IOAPIC of `version`: few pins and vectors, so
/// that ops meet.
pub fn strategy(version: IoapicVersion) -> impl Strategy<Value = Scenario> {
    let pin = 0u8..4;
    let vector = prop_oneof![
        4 => prop::sample::select(vec![0x30u8, 0x31, 0x40, 0x50, 0x60]),
        1 => any::<u8>(),
    ];
    let route = (
        vector.clone(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop_oneof![8 => Just(0u8), 1 => any::<u8>()],
        prop::bool::weighted(0.2),
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(4u8)],
    )
        .prop_map(|(vector, level, low, logical, dest, masked, mode)| Route {
            vector,
            level,
            low,
            logical,
            dest,
            masked,
            mode,
        });
    let index = prop_oneof![
        3 => 0x10u8..0x18,
        1 => prop::sample::select(vec![0u8, 1, 2]),
    ];
    let v20 = version == IoapicVersion::V20;
    let op = prop_oneof![
        6 => (pin.clone(), route).prop_map(|(p, r)| Op::Route(p, r)),
        2 => pin.clone().prop_map(Op::Mask),
        2 => pin.clone().prop_map(Op::Unmask),
        5 => pin.clone().prop_map(Op::Assert),
        4 => pin.clone().prop_map(Op::Deassert),
        2 => pin.clone().prop_map(Op::Pulse),
        3 => Just(Op::Eoi),
        1 => vector.clone().prop_map(move |v| if v20 { Op::IoapicEoi(v) } else { Op::Eoi }),
        3 => index.clone().prop_map(Op::IoapicRead),
        2 => (
            index,
            prop_oneof![
                any::<u32>(),
                // An entry-like value: a vector, fixed or lowest, the
                // read-only bits 12 and 14 at random, masked or not.
                (vector.clone(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                    |(v, lowest, ds, rirr, masked)| v as u32
                        | (lowest as u32) << 8
                        | (ds as u32) << 12
                        | (rirr as u32) << 14
                        | (masked as u32) << 16
                ),
            ]
        )
            .prop_map(|(i, v)| Op::IoapicWrite(i, v)),
        1 => prop::sample::select(vec![0u8, 0x20, 0x40, 0x55]).prop_map(Op::Tpr),
        1 => Just(Op::Cli),
        1 => Just(Op::Sti),
        1 => Just(Op::Snapshot),
    ];
    (
        prop::collection::vec(op, 1..20),
        prop::collection::vec(prop::sample::select(vec![0x30u8, 0x40]), 0..2),
    )
        .prop_map(move |(ops, mut no_eoi)| {
            no_eoi.sort_unstable();
            no_eoi.dedup();
            Scenario {
                version,
                no_eoi,
                ops,
            }
        })
}
