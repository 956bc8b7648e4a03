//! The local APIC harness: `check_lapic(|| MyLapic::new())` runs random
//! programs of local APIC operations on the model's [`Lapic`] and on the
//! device ([`LapicDevice`]) and compares what the processor observes: the
//! vectors it takes, the EOIs broadcast to the IOAPICs, and the registers
//! it reads. No IOAPIC and no CPU model are involved: the harness is the
//! processor (it takes an interrupt when asked, with RFLAGS.IF = 1) and
//! the IOAPIC (it sends fixed messages to APIC 0).

use std::cell::RefCell;
use std::fmt::{self, Write};

use irqdiff_model::lapic::reg;
use irqdiff_model::lapic_device::fixed_message;
use irqdiff_model::quirks::Quirks;
use irqdiff_model::{ApicBusMessage, Lapic, LapicDevice, LapicUnsupported, Rule};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};

use crate::{runner, Config, Summary};

/// One operation on the local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicOp {
    /// A fixed message to APIC 0 (an IOAPIC entry's or an MSI's), edge or
    /// level-triggered.
    Accept { vector: u8, level: bool },
    /// A 32-bit write of the register at `offset` (an EOI, a TPR, an SVR,
    /// a self IPI by the ICR).
    Write { offset: u16, value: u32 },
    /// A 32-bit read, recorded.
    Read(u16),
    /// The processor takes the highest deliverable interrupt, if any.
    Take,
}

impl fmt::Display for LapicOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LapicOp::Accept { vector, level } => write!(
                f,
                "accept {vector:#04x} {}",
                if level { "level" } else { "edge" }
            ),
            LapicOp::Write { offset, value } => write!(f, "lapic-write {offset:#05x} {value:#x}"),
            LapicOp::Read(offset) => write!(f, "lapic-read {offset:#05x}"),
            LapicOp::Take => f.write_str("take"),
        }
    }
}

/// A program of local APIC operations (printed one op a line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapicScenario {
    pub ops: Vec<LapicOp>,
}

impl fmt::Display for LapicScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

/// What the processor observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicEvent {
    /// What a `take` took (None: nothing deliverable).
    Took { op: usize, vector: Option<u8> },
    /// An EOI broadcast to the IOAPICs.
    Broadcast { op: usize, vector: u8 },
    /// A register read.
    Read { op: usize, offset: u16, value: u32 },
}

impl fmt::Display for LapicEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LapicEvent::Took {
                op,
                vector: Some(v),
            } => write!(f, "op {op}: took {v:#04x}"),
            LapicEvent::Took { op, vector: None } => write!(f, "op {op}: took nothing"),
            LapicEvent::Broadcast { op, vector } => {
                write!(f, "op {op}: eoi broadcast {vector:#04x}")
            }
            LapicEvent::Read { op, offset, value } => {
                write!(f, "op {op}: read {offset:#05x} = {value:#x}")
            }
        }
    }
}

/// The registers a run reads at its end: IRR, ISR, TMR and TPR.
const FINAL_READS: [u16; 25] = {
    let mut offsets = [0u16; 25];
    let mut i = 0;
    while i < 8 {
        offsets[i] = reg::IRR + 0x10 * i as u16;
        offsets[8 + i] = reg::ISR + 0x10 * i as u16;
        offsets[16 + i] = reg::TMR + 0x10 * i as u16;
        i += 1;
    }
    offsets[24] = reg::TPR;
    offsets
};

/// Runs `scenario` on `apic`: what the processor observed.
pub fn run_lapic(scenario: &LapicScenario, apic: &mut dyn LapicDevice) -> Vec<LapicEvent> {
    let mut events = Vec::new();
    for (op, step) in scenario.ops.iter().enumerate() {
        match *step {
            LapicOp::Accept { vector, level } => {
                apic.accept_interrupt(&fixed_message(vector, level))
            }
            LapicOp::Write { offset, value } => match apic.mmio_write(offset, value) {
                Some(ApicBusMessage::Eoi(vector)) => {
                    events.push(LapicEvent::Broadcast { op, vector })
                }
                // SDM §11.6.1: an IPI to this APIC (the self shorthand, or
                // physical destination 0) comes back to it.
                Some(ApicBusMessage::Ipi(m)) if !m.logical && m.dest == 0 => {
                    apic.accept_interrupt(&m)
                }
                _ => {}
            },
            LapicOp::Read(offset) => events.push(LapicEvent::Read {
                op,
                offset,
                value: apic.mmio_read(offset),
            }),
            LapicOp::Take => events.push(LapicEvent::Took {
                op,
                vector: apic.acknowledge_interrupt(),
            }),
        }
    }
    let op = scenario.ops.len();
    for offset in FINAL_READS {
        events.push(LapicEvent::Read {
            op,
            offset,
            value: apic.mmio_read(offset),
        });
    }
    events
}

/// Why `scenario` needs what a device declaring `unsupported` lacks.
pub fn lapic_needs(scenario: &LapicScenario, u: &LapicUnsupported) -> Option<&'static str> {
    scenario.ops.iter().find_map(|op| match *op {
        LapicOp::Read(offset) | LapicOp::Write { offset, .. } if u.registers.contains(&offset) => {
            Some("registers the device does not implement")
        }
        LapicOp::Accept { vector, .. } if vector < 16 && u.illegal_vectors => {
            Some("illegal vectors (0-15)")
        }
        LapicOp::Write {
            offset: reg::ICR_LOW,
            value,
        } if value & 0xf0 == 0 && u.illegal_vectors => Some("illegal vectors (0-15)"),
        LapicOp::Write {
            offset: reg::SVR,
            value,
        } if value & 1 << 8 == 0 && u.software_disable => Some("a software disable (SVR bit 8)"),
        _ => None,
    })
}

/// The rule a device breaks at the first differing event `first` (the
/// model's event, else the device's): what decides that kind of event.
fn lapic_rule(
    scenario: &LapicScenario,
    model: &[LapicEvent],
    device: &[LapicEvent],
    first: usize,
) -> Rule {
    let event = model.get(first).or(device.get(first));
    let op = match event {
        Some(
            LapicEvent::Took { op, .. }
            | LapicEvent::Broadcast { op, .. }
            | LapicEvent::Read { op, .. },
        ) => *op,
        None => 0,
    };
    let disabled = scenario.ops[..op.min(scenario.ops.len())]
        .iter()
        .any(|o| matches!(o, LapicOp::Write { offset: reg::SVR, value } if value & 1 << 8 == 0));
    match (model.get(first), device.get(first)) {
        (
            Some(LapicEvent::Took {
                vector: Some(_), ..
            }),
            _,
        ) => Rule::DispatchAbovePpr,
        (Some(LapicEvent::Took { vector: None, .. }), _) => Rule::HeldByPpr,
        (Some(LapicEvent::Broadcast { .. }), _) => Rule::EoiBroadcast,
        (_, Some(LapicEvent::Broadcast { .. })) => Rule::EoiEdgeNotBroadcast,
        (Some(LapicEvent::Read { offset, .. }), _) => match *offset {
            reg::TPR | reg::PPR => Rule::HeldByPpr,
            reg::ESR => Rule::IllegalVector,
            0x100..=0x270 if disabled => Rule::ApicSoftwareDisabled,
            0x100..=0x270 => Rule::AcceptedIntoIrr,
            reg::SVR => Rule::ApicSoftwareDisabled,
            _ => Rule::AcceptedIntoIrr,
        },
        _ => Rule::AcceptedIntoIrr,
    }
}

/// A divergence of a LAPIC device from the model, minimised.
#[derive(Clone, Debug)]
pub struct LapicFailure {
    pub scenario: String,
    pub diff: String,
    pub rule: Rule,
}

impl fmt::Display for LapicFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the local APIC diverges from the model: rule {} ({})",
            self.rule.name(),
            self.rule.citation()
        )?;
        writeln!(f, "\nminimal program:\n{}", self.scenario)?;
        write!(f, "observed (model | device):\n{}", self.diff)
    }
}

/// The outcome of one program.
#[derive(Clone, Debug)]
pub enum LapicVerdict {
    Same,
    Skipped(&'static str),
    Diverged(LapicFailure),
}

/// The skip reason of a program that sends a message for a vector already
/// requested in IRR with the other trigger mode. SDM §11.8.4 sets or clears
/// the TMR bit "upon acceptance of an interrupt into the IRR", and a
/// message for a vector already in IRR is collapsed into it: whether it
/// changes TMR is not said (the model and KVM's `__apic_accept_irq` take
/// the new trigger mode, v86 keeps the old; docs/byo-findings.md M3).
pub const RETRIGGERED: &str =
    "a message for a vector already in IRR with the other trigger mode (TMR open, SDM §11.8.4)";

/// Whether the model, running `scenario`, receives a message for a vector
/// already in its IRR with the other trigger mode ([`RETRIGGERED`]).
fn retriggers_a_requested_vector(scenario: &LapicScenario) -> bool {
    let mut model = Lapic::new(false, false, Quirks::empty());
    let bit = |words: [u32; 8], v: u8| words[v as usize / 32] & 1 << (v % 32) != 0;
    for op in &scenario.ops {
        let message = match *op {
            LapicOp::Accept { vector, level } => fixed_message(vector, level),
            // A self IPI is edge-triggered (SDM §11.6.1).
            LapicOp::Write {
                offset: reg::ICR_LOW,
                value,
            } => fixed_message(value as u8, false),
            _ => {
                run_lapic_op(op, &mut model);
                continue;
            }
        };
        if bit(model.irr(), message.vector) && bit(model.tmr(), message.vector) != message.level {
            return true;
        }
        run_lapic_op(op, &mut model);
    }
    false
}

/// One op, without recording what it observed.
fn run_lapic_op(op: &LapicOp, apic: &mut dyn LapicDevice) {
    run_lapic(&LapicScenario { ops: vec![*op] }, apic);
}

/// Runs one program on the model's LAPIC and on the device and compares.
pub fn compare_lapic<D, F>(scenario: &LapicScenario, make: &F) -> LapicVerdict
where
    D: LapicDevice + 'static,
    F: Fn() -> D,
{
    let mut device = make();
    if let Some(why) = lapic_needs(scenario, &device.unsupported()) {
        return LapicVerdict::Skipped(why);
    }
    if retriggers_a_requested_vector(scenario) {
        return LapicVerdict::Skipped(RETRIGGERED);
    }
    // The model's start state: xAPIC, ID 0, software-enabled, no
    // EOI-broadcast suppression (docs/scenario-format.md).
    let mut model = Lapic::new(false, false, Quirks::empty());
    let expected = run_lapic(scenario, &mut model);
    let observed = run_lapic(scenario, &mut device);
    let len = expected.len().max(observed.len());
    let Some(first) = (0..len).find(|&i| expected.get(i) != observed.get(i)) else {
        return LapicVerdict::Same;
    };
    let mut diff = String::new();
    for i in 0..len {
        if i > first + 8 {
            let _ = writeln!(diff, "   ... {} more events", len - i);
            break;
        }
        let show = |e: Option<&LapicEvent>| e.map_or("-".to_string(), |e| e.to_string());
        let (a, b) = (show(expected.get(i)), show(observed.get(i)));
        let mark = if i == first {
            ">>"
        } else if a != b {
            " !"
        } else {
            "  "
        };
        let _ = writeln!(diff, "{mark} {a:<36} | {b}");
    }
    LapicVerdict::Diverged(LapicFailure {
        scenario: scenario.to_string(),
        diff,
        rule: lapic_rule(scenario, &expected, &observed, first),
    })
}

/// Registers a program reads: the ones the processor's view depends on.
const READS: [u16; 11] = [
    reg::ID,
    reg::VERSION,
    reg::TPR,
    reg::PPR,
    reg::SVR,
    reg::ESR,
    reg::ISR + 0x30,
    reg::ISR + 0x70,
    reg::IRR + 0x30,
    reg::IRR + 0x70,
    reg::TMR + 0x30,
];

fn vector() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => 0x10u8..=0xff,
        // A few classes, so that priorities meet.
        8 => prop::sample::select(vec![0x31u8, 0x32, 0x41, 0x4f, 0x61, 0x62, 0x7e, 0xf1, 0xff]),
        1 => 0u8..16,
    ]
}

/// A random LAPIC program.
pub fn lapic_strategy() -> impl Strategy<Value = LapicScenario> {
    let op = prop_oneof![
        6 => (vector(), any::<bool>()).prop_map(|(vector, level)| LapicOp::Accept { vector, level }),
        6 => Just(LapicOp::Take),
        4 => Just(LapicOp::Write { offset: reg::EOI, value: 0 }),
        3 => prop_oneof![0u32..=0xff, any::<u32>()]
            .prop_map(|value| LapicOp::Write { offset: reg::TPR, value }),
        2 => vector().prop_map(|v| LapicOp::Write {
            offset: reg::ICR_LOW,
            value: 1 << 18 | v as u32,
        }),
        1 => prop::sample::select(vec![0x1ffu32, 0xff, 0x13f, 0x3f])
            .prop_map(|value| LapicOp::Write { offset: reg::SVR, value }),
        1 => Just(LapicOp::Write { offset: reg::ESR, value: 0 }),
        3 => prop::sample::select(READS.to_vec()).prop_map(LapicOp::Read),
    ];
    prop::collection::vec(op, 1..24).prop_map(|ops| LapicScenario { ops })
}

/// Runs [`Config::default`] random programs against the LAPIC `make`
/// builds; panics with the minimised [`LapicFailure`] on a divergence.
#[track_caller]
pub fn check_lapic<D, F>(make: F) -> Summary
where
    D: LapicDevice + 'static,
    F: Fn() -> D,
{
    let source = std::panic::Location::caller().file();
    match check_lapic_with(&Config::default(), Some(source), make) {
        Ok(summary) => {
            eprintln!("irqdiff-check: {summary:?}");
            summary
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// [`check_lapic`] with a [`Config`]; returns the minimised failure.
pub fn check_lapic_with<D, F>(
    config: &Config,
    source: Option<&'static str>,
    make: F,
) -> Result<Summary, LapicFailure>
where
    D: LapicDevice + 'static,
    F: Fn() -> D,
{
    let mut runner: TestRunner = runner(config, source);
    let summary = RefCell::new(Summary::default());
    let result = runner.run(&lapic_strategy(), |s| {
        match compare_lapic(&s, &make) {
            LapicVerdict::Same => summary.borrow_mut().compared += 1,
            LapicVerdict::Skipped(why) => {
                *summary.borrow_mut().skipped.entry(why).or_default() += 1
            }
            LapicVerdict::Diverged(f) => return Err(TestCaseError::fail(f.to_string())),
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(summary.into_inner()),
        Err(TestError::Fail(_, minimal)) => match compare_lapic(&minimal, &make) {
            LapicVerdict::Diverged(f) => Err(f),
            _ => unreachable!("a failing program fails again"),
        },
        Err(TestError::Abort(why)) => panic!("irqdiff-check: proptest aborted: {why}"),
    }
}
