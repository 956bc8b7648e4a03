//! Bring your own PIC: a property test of a VMM's 8259A pair against the
//! model's ([`irqdiff_model::pic::Pic`]), as [`crate::check_ioapic`] does
//! for an IOAPIC.
//!
//! ```ignore
//! #[test]
//! fn my_pic_follows_the_datasheet() {
//!     irqdiff_check::check_pic(MyPic::new);
//! }
//! ```
//!
//! Each case is a random program of port I/O, ISA line changes and INTA
//! cycles, run on the device and on the model's pair built with the
//! device's declared [`PicProfile`] (its edge latch). A processor with
//! RFLAGS.IF takes every interrupt the pair raises after each op, back to
//! back; its handlers do nothing, so EOIs are the program's own port
//! writes. The events (port reads, deliveries, explicit INTA vectors, the
//! INT output when both sides report it, a final register snapshot) must
//! be equal. On a divergence proptest shrinks the program and the failure
//! names the datasheet rule the model followed there.
//!
//! The programs are printed one op a line (`outb PORT VALUE`, `inb PORT`,
//! `raise L`, `lower L`, `pulse L`, `inta`, `cli`, `sti`): the PIC is not
//! yet part of irqdiff's `.irq` format (issue 15).

use std::cell::RefCell;
use std::fmt::{self, Write};

use irqdiff_model::pic::{
    PicDecision, ELCR_MASTER, ELCR_SLAVE, MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
};
use irqdiff_model::{ModelPic, PicConfig, PicDevice, PicProfile, PicRule};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError};

use crate::{Config, Summary};

/// One op of a PIC program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicOp {
    Out(u16, u8),
    In(u16),
    Raise(u8),
    Lower(u8),
    Pulse(u8),
    /// An INTA cycle whatever INT says: the processor saw INT high just
    /// before (the race behind spurious interrupts).
    Inta,
    Cli,
    Sti,
}

impl fmt::Display for PicOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PicOp::Out(p, v) => write!(f, "outb {p:#x} {v:#04x}"),
            PicOp::In(p) => write!(f, "inb {p:#x}"),
            PicOp::Raise(l) => write!(f, "raise {l}"),
            PicOp::Lower(l) => write!(f, "lower {l}"),
            PicOp::Pulse(l) => write!(f, "pulse {l}"),
            PicOp::Inta => write!(f, "inta"),
            PicOp::Cli => write!(f, "cli"),
            PicOp::Sti => write!(f, "sti"),
        }
    }
}

/// A PIC program: the ops, run with RFLAGS.IF set at the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicScenario {
    pub ops: Vec<PicOp>,
}

impl fmt::Display for PicScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

/// What the processor observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicEvent {
    /// A port read; a poll read keeps only its defined bits.
    Read { op: usize, port: u16, value: u8 },
    /// An interrupt the processor took (INT high, INTA).
    Deliver { op: usize, vector: u8 },
    /// The vector of an explicit INTA (`None`: the device gave none).
    Inta { op: usize, vector: Option<u8> },
    /// The INT output changed (recorded when the device reports it).
    Int { op: usize, level: bool },
    /// IRR, ISR and IMR of master and slave and the two ELCRs, read
    /// through the ports at the end.
    Snapshot { op: usize, regs: [u8; 8] },
    /// More deliveries than [`STORM_LIMIT`].
    Storm { op: usize },
}

impl PicEvent {
    pub fn op(&self) -> usize {
        match *self {
            PicEvent::Read { op, .. }
            | PicEvent::Deliver { op, .. }
            | PicEvent::Inta { op, .. }
            | PicEvent::Int { op, .. }
            | PicEvent::Snapshot { op, .. }
            | PicEvent::Storm { op } => op,
        }
    }
}

impl fmt::Display for PicEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PicEvent::Read { op, port, value } => {
                write!(f, "op {op}: inb {port:#x} = {value:#04x}")
            }
            PicEvent::Deliver { op, vector } => write!(f, "op {op}: deliver {vector:#04x}"),
            PicEvent::Inta { op, vector: Some(v) } => write!(f, "op {op}: inta {v:#04x}"),
            PicEvent::Inta { op, vector: None } => write!(f, "op {op}: inta (no vector)"),
            PicEvent::Int { op, level } => write!(f, "op {op}: INT {}", level as u8),
            PicEvent::Snapshot { op, regs: r } => write!(
                f,
                "op {op}: master irr {:02x} isr {:02x} imr {:02x} slave irr {:02x} isr {:02x} imr {:02x} elcr {:02x} {:02x}",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
            ),
            PicEvent::Storm { op } => write!(f, "op {op}: storm"),
        }
    }
}

/// More deliveries than this in one program is a storm (a level line in
/// AEOI mode, say).
pub const STORM_LIMIT: usize = 64;

/// A run: the events, and the model's decisions of each op (empty for a
/// device).
#[derive(Clone, Debug, Default)]
pub struct PicRun {
    pub events: Vec<PicEvent>,
    pub decisions: Vec<Vec<PicDecision>>,
}

/// Tracks, as the harness sees the writes, whether a chip has a poll
/// pending and whether its data port takes ICW4 next.
#[derive(Clone, Copy, Debug, Default)]
struct Tracker {
    poll: [bool; 2],
    /// ICW steps left: 0 ready, else the ICWs still expected (2, 3, 4).
    next: [u8; 2],
    ic4: [bool; 2],
    single: [bool; 2],
}

impl Tracker {
    fn chip(port: u16) -> Option<usize> {
        match port {
            MASTER_COMMAND | MASTER_DATA => Some(0),
            SLAVE_COMMAND | SLAVE_DATA => Some(1),
            _ => None,
        }
    }

    /// The ICW a data-port write to `chip` is taken as, if any.
    fn icw(&self, chip: usize) -> Option<u8> {
        Some(self.next[chip]).filter(|&n| n != 0)
    }

    fn write(&mut self, port: u16, value: u8) {
        let Some(c) = Tracker::chip(port) else { return };
        if port & 1 == 0 {
            if value & 0x10 != 0 {
                self.poll[c] = false;
                self.next[c] = 2;
                self.ic4[c] = value & 1 != 0;
                self.single[c] = value & 2 != 0;
            } else if value & 0x0c == 0x0c {
                self.poll[c] = true;
            }
        } else {
            self.next[c] = match (self.next[c], self.single[c], self.ic4[c]) {
                (2, false, _) => 3,
                (2, true, true) | (3, _, true) => 4,
                _ => 0,
            };
        }
    }

    /// A read of `port`: true if it is a poll read.
    fn read(&mut self, port: u16) -> bool {
        let Some(c) = Tracker::chip(port) else {
            return false;
        };
        std::mem::take(&mut self.poll[c])
    }
}

/// Runs `s` on `device`; `decisions` drains the model's decisions after
/// each op (a device has none).
pub fn run<D: PicDevice>(
    s: &PicScenario,
    device: &mut D,
    mut decisions: impl FnMut(&mut D) -> Vec<PicDecision>,
) -> PicRun {
    let mut out = PicRun::default();
    let mut tracker = Tracker::default();
    let reports_int = device.int_output().is_some();
    let mut int = device.int_output().unwrap_or(false);
    let mut interrupts_enabled = true;
    let mut delivered = 0;
    for (i, op) in s.ops.iter().enumerate() {
        match *op {
            PicOp::Out(port, value) => {
                tracker.write(port, value);
                device.port_write(port, value);
            }
            PicOp::In(port) => {
                let poll = tracker.read(port);
                let mut value = device.port_read(port);
                if poll {
                    // "Poll Command": I (bit 7) and W2-W0; bits 6:3 are not
                    // defined, nor W2-W0 without I (KVM gives 7 there).
                    value &= if value & 0x80 != 0 { 0x87 } else { 0x80 };
                }
                out.events.push(PicEvent::Read { op: i, port, value });
            }
            PicOp::Raise(l) => device.set_irq(l, true),
            PicOp::Lower(l) => device.set_irq(l, false),
            PicOp::Pulse(l) => {
                device.set_irq(l, true);
                device.set_irq(l, false);
            }
            PicOp::Inta => {
                let vector = device.acknowledge();
                out.events.push(PicEvent::Inta { op: i, vector });
            }
            PicOp::Cli => interrupts_enabled = false,
            PicOp::Sti => interrupts_enabled = true,
        }
        if interrupts_enabled {
            while let Some(vector) = device.take_interrupt() {
                if delivered == STORM_LIMIT {
                    out.events.push(PicEvent::Storm { op: i });
                    out.decisions.push(decisions(device));
                    return out;
                }
                delivered += 1;
                out.events.push(PicEvent::Deliver { op: i, vector });
            }
        }
        if reports_int {
            let now = device.int_output().unwrap_or(false);
            if now != int {
                out.events.push(PicEvent::Int { op: i, level: now });
                int = now;
            }
        }
        out.decisions.push(decisions(device));
    }
    // The snapshot: OCW3 RR to read IRR then ISR, the data port for IMR.
    let mut regs = [0u8; 8];
    for (k, (command, data)) in [(MASTER_COMMAND, MASTER_DATA), (SLAVE_COMMAND, SLAVE_DATA)]
        .into_iter()
        .enumerate()
    {
        if tracker.read(command) {
            // A poll still pending: the program's, taken here unread.
            let _ = device.port_read(command);
        }
        device.port_write(command, 0x0a);
        regs[3 * k] = device.port_read(command);
        device.port_write(command, 0x0b);
        regs[3 * k + 1] = device.port_read(command);
        regs[3 * k + 2] = device.port_read(data);
    }
    regs[6] = device.port_read(ELCR_MASTER);
    regs[7] = device.port_read(ELCR_SLAVE);
    out.events.push(PicEvent::Snapshot {
        op: s.ops.len(),
        regs,
    });
    out
}

/// Runs `s` on the model's pair built for `profile`.
pub fn run_model(s: &PicScenario, profile: PicProfile) -> (PicRun, Option<&'static str>) {
    let mut model = ModelPic::new(PicConfig {
        edge_requests: profile.edge_requests,
    });
    let run = run(s, &mut model, |m| {
        let d = m.pic().decisions().to_vec();
        m.pic_mut().clear_decisions();
        d
    });
    (run, model.pic().unmodelled())
}

/// The skip reason of a program the model does not model (an INTA in
/// MCS-80/85 mode, before the last ICW, or handed to an absent slave).
pub const PIC_UNMODELLED: &str =
    "what the model does not model (MCS-80/85 mode, mid-initialisation, a slave that does not answer)";
/// The skip reason of an explicit INTA that finds no request on a device
/// declaring [`irqdiff_model::PicUnsupported::inta_without_request`].
pub const INTA_WITHOUT_REQUEST: &str =
    "an INTA that finds no request (the device's processor never asks for one)";

/// A divergence between the device and the model, minimised.
#[derive(Clone, Debug)]
pub struct PicFailure {
    pub scenario: String,
    pub diff: String,
    /// The datasheet rule the model followed at the first difference.
    pub rule: PicRule,
}

impl fmt::Display for PicFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the PIC diverges from the model: rule {} ({})",
            self.rule.name(),
            self.rule.citation()
        )?;
        writeln!(f, "\nminimal program:\n{}", self.scenario)?;
        write!(f, "events (model | device):\n{}", self.diff)
    }
}

#[derive(Clone, Debug)]
pub enum PicVerdict {
    Same,
    Skipped(&'static str),
    Diverged(PicFailure),
}

/// Why `s` cannot run on a device with `profile`.
fn needs(s: &PicScenario, profile: &PicProfile, model: &PicRun) -> Option<&'static str> {
    let mut tracker = Tracker::default();
    for op in &s.ops {
        if let PicOp::Out(port, value) = *op {
            let icw = Tracker::chip(port).and_then(|c| tracker.icw(c));
            if let Some(why) = profile.unsupported.refuses_write(port, value, icw) {
                return Some(why);
            }
            tracker.write(port, value);
        }
    }
    if profile.unsupported.inta_without_request {
        let raced = s.ops.iter().enumerate().any(|(i, op)| {
            *op == PicOp::Inta
                && model.decisions.get(i).is_some_and(|d| {
                    d.iter()
                        .any(|d| d.rule == PicRule::DefaultIr7 && d.irq == 7)
                })
        });
        if raced {
            return Some(INTA_WITHOUT_REQUEST);
        }
    }
    None
}

/// Runs one program on the model and on the device and compares them.
pub fn compare_pic<D, F>(s: &PicScenario, make: &F) -> PicVerdict
where
    D: PicDevice,
    F: Fn() -> D,
{
    let mut device = make();
    let profile = device.profile();
    let (model, unmodelled) = run_model(s, profile);
    if unmodelled.is_some() {
        return PicVerdict::Skipped(PIC_UNMODELLED);
    }
    if let Some(why) = needs(s, &profile, &model) {
        return PicVerdict::Skipped(why);
    }
    let reports_int = device.int_output().is_some();
    let theirs = run(s, &mut device, |_| Vec::new());
    let ours: Vec<PicEvent> = model
        .events
        .iter()
        .copied()
        .filter(|e| reports_int || !matches!(e, PicEvent::Int { .. }))
        .collect();
    let Some(first) =
        (0..ours.len().max(theirs.events.len())).find(|&i| ours.get(i) != theirs.events.get(i))
    else {
        return PicVerdict::Same;
    };
    let rule = rule_at(&model, ours.get(first), theirs.events.get(first));
    let mut diff = String::new();
    let len = ours.len().max(theirs.events.len());
    for i in 0..len {
        if i > first + 8 {
            let _ = writeln!(diff, "   ... {} more events", len - i);
            break;
        }
        let show = |e: Option<&PicEvent>| e.map_or("-".to_string(), |e| e.to_string());
        let (a, b) = (show(ours.get(i)), show(theirs.events.get(i)));
        let mark = if i == first {
            ">>"
        } else if a != b {
            " !"
        } else {
            "  "
        };
        let _ = writeln!(diff, "{mark} {a:<48} | {b}");
    }
    PicVerdict::Diverged(PicFailure {
        scenario: s.to_string(),
        diff,
        rule,
    })
}

/// The rule at the first difference: the model's last decision, up to
/// that op, about the IRQ the difference concerns; else the register's
/// own rule.
fn rule_at(model: &PicRun, ours: Option<&PicEvent>, theirs: Option<&PicEvent>) -> PicRule {
    let op = ours.or(theirs).map_or(0, PicEvent::op);
    let upto: Vec<PicDecision> = model
        .decisions
        .iter()
        .take(op + 1)
        .flatten()
        .copied()
        .collect();
    let last_about = |irq: u8| upto.iter().rev().find(|d| d.irq == irq).map(|d| d.rule);
    let in_op = model.decisions.get(op).cloned().unwrap_or_default();
    match (ours, theirs) {
        (Some(PicEvent::Read { port, value, .. }), Some(PicEvent::Read { value: v2, .. })) => {
            let base = if *port >= SLAVE_COMMAND && *port <= SLAVE_DATA {
                8
            } else {
                0
            };
            match *port {
                ELCR_MASTER | ELCR_SLAVE => PicRule::Elcr,
                MASTER_DATA | SLAVE_DATA if value & 0x80 == 0 && v2 & 0x80 == 0 => {
                    last_about(base).unwrap_or(PicRule::MaskRegister)
                }
                _ => {
                    let bit = (value ^ v2).trailing_zeros() as u8;
                    last_about(base + bit.min(7)).unwrap_or(PicRule::StatusRead)
                }
            }
        }
        (Some(PicEvent::Snapshot { regs: a, .. }), Some(PicEvent::Snapshot { regs: b, .. })) => {
            let k = (0..8).find(|&k| a[k] != b[k]).unwrap_or(0);
            if k >= 6 {
                return PicRule::Elcr;
            }
            let irq = 8 * (k as u8 / 3) + (a[k] ^ b[k]).trailing_zeros() as u8;
            match k % 3 {
                2 => last_about(8 * (k as u8 / 3)).unwrap_or(PicRule::MaskRegister),
                _ => last_about(irq).unwrap_or(PicRule::StatusRead),
            }
        }
        _ => in_op
            .iter()
            .find(|d| {
                !matches!(
                    d.rule,
                    PicRule::Acknowledge | PicRule::Cascade | PicRule::AutoEoi
                )
            })
            .or(in_op.first())
            .map(|d| d.rule)
            .unwrap_or(PicRule::FullyNested),
    }
}

/// Runs [`Config::default`] random programs against the device `make`
/// builds; panics with the minimised [`PicFailure`] on a divergence.
#[track_caller]
pub fn check_pic<D, F>(make: F) -> Summary
where
    D: PicDevice + 'static,
    F: Fn() -> D,
{
    let source = std::panic::Location::caller().file();
    match check_pic_with(&Config::default(), Some(source), make) {
        Ok(summary) => {
            eprintln!("irqdiff-check: {summary:?}");
            summary
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// [`check_pic`] with a [`Config`]; returns the minimised failure.
pub fn check_pic_with<D, F>(
    config: &Config,
    source: Option<&'static str>,
    make: F,
) -> Result<Summary, PicFailure>
where
    D: PicDevice + 'static,
    F: Fn() -> D,
{
    let mut runner = crate::runner(config, source);
    let summary = RefCell::new(Summary::default());
    let result = runner.run(&strategy(), |s| {
        match compare_pic(&s, &make) {
            PicVerdict::Same => summary.borrow_mut().compared += 1,
            PicVerdict::Skipped(why) => *summary.borrow_mut().skipped.entry(why).or_default() += 1,
            PicVerdict::Diverged(f) => return Err(TestCaseError::fail(f.to_string())),
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(summary.into_inner()),
        Err(TestError::Fail(_, minimal)) => match compare_pic(&minimal, &make) {
            PicVerdict::Diverged(f) => Err(f),
            _ => unreachable!("a failing program fails again"),
        },
        Err(TestError::Abort(why)) => panic!("irqdiff-check: proptest aborted: {why}"),
    }
}

/// The initialisation of a PC (ICW1 edge + ICW4, vectors, cascade on IR2,
/// ICW4 8086 with AEOI or SFNM at times) as ops.
fn init_ops() -> impl Strategy<Value = Vec<PicOp>> {
    let base = prop_oneof![
        3 => prop::sample::select(vec![0x08u8, 0x20, 0x28, 0x70]),
        1 => any::<u8>().prop_map(|v| v & 0xf8),
    ];
    let icw1 = prop_oneof![8 => Just(0x11u8), 1 => Just(0x13), 1 => Just(0x19), 1 => Just(0x10)];
    let master_icw3 = prop_oneof![9 => Just(0x04u8), 1 => any::<u8>()];
    let slave_icw3 = prop_oneof![9 => Just(0x02u8), 1 => 0u8..8];
    let icw4 = prop_oneof![6 => Just(0x01u8), 2 => Just(0x03), 1 => Just(0x11), 1 => Just(0x13)];
    (
        (icw1.clone(), base.clone(), master_icw3, icw4.clone()),
        (icw1, base, slave_icw3, icw4),
    )
        .prop_map(|(m, s)| {
            let mut ops = Vec::new();
            for (chip, (icw1, icw2, icw3, icw4)) in [(0u16, m), (0x80, s)] {
                ops.push(PicOp::Out(MASTER_COMMAND + chip, icw1));
                ops.push(PicOp::Out(MASTER_DATA + chip, icw2));
                if icw1 & 2 == 0 {
                    ops.push(PicOp::Out(MASTER_DATA + chip, icw3));
                }
                if icw1 & 1 != 0 {
                    ops.push(PicOp::Out(MASTER_DATA + chip, icw4));
                }
            }
            ops
        })
}

/// Random programs: an initialisation, then ops on few lines so that they
/// meet.
pub fn strategy() -> impl Strategy<Value = PicScenario> {
    let line = prop::sample::select(vec![0u8, 1, 3, 5, 7, 8, 9, 12, 15]);
    let command = prop::sample::select(vec![MASTER_COMMAND, SLAVE_COMMAND]);
    let data = prop::sample::select(vec![MASTER_DATA, SLAVE_DATA]);
    let any_port = prop::sample::select(vec![
        MASTER_COMMAND,
        MASTER_DATA,
        SLAVE_COMMAND,
        SLAVE_DATA,
        ELCR_MASTER,
        ELCR_SLAVE,
    ]);
    let ocw2 = prop_oneof![
        4 => Just(0x20u8),
        2 => (0u8..8).prop_map(|l| 0x60 | l),
        1 => Just(0xa0u8),
        1 => (0u8..8).prop_map(|l| 0xe0 | l),
        1 => (0u8..8).prop_map(|l| 0xc0 | l),
        1 => prop::sample::select(vec![0x80u8, 0x00, 0x40]),
    ];
    let ocw3 = prop::sample::select(vec![0x0au8, 0x0b, 0x0c, 0x68, 0x48, 0x0e]);
    let mask = prop_oneof![
        2 => Just(0x00u8),
        2 => (0u8..8).prop_map(|b| 1 << b),
        1 => any::<u8>(),
    ];
    let op = prop_oneof![
        5 => line.clone().prop_map(PicOp::Raise),
        4 => line.clone().prop_map(PicOp::Lower),
        4 => line.prop_map(PicOp::Pulse),
        5 => (command.clone(), ocw2).prop_map(|(p, v)| PicOp::Out(p, v)),
        2 => (command.clone(), ocw3).prop_map(|(p, v)| PicOp::Out(p, v)),
        2 => (data, mask).prop_map(|(p, v)| PicOp::Out(p, v)),
        1 => (prop::sample::select(vec![ELCR_MASTER, ELCR_SLAVE]), any::<u8>())
            .prop_map(|(p, v)| PicOp::Out(p, v)),
        3 => any_port.clone().prop_map(PicOp::In),
        1 => Just(PicOp::Inta),
        1 => Just(PicOp::Cli),
        1 => Just(PicOp::Sti),
        1 => (any_port, any::<u8>()).prop_map(|(p, v)| PicOp::Out(p, v)),
    ];
    // An op, or now and then a whole new initialisation of both chips.
    let step = prop_oneof![
        20 => op.prop_map(|o| vec![o]),
        1 => init_ops(),
    ];
    (init_ops(), prop::collection::vec(step, 1..24)).prop_map(|(mut ops, more)| {
        ops.extend(more.into_iter().flatten());
        PicScenario { ops }
    })
}
