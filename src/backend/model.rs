//! The reference model as a backend: runs a scenario on
//! [`irqdiff_model::Machine`] with the guest semantics of
//! docs/scenario-format.md.
//!
//! Timing follows the guest stub exactly (docs/guest-stub.md): each op runs
//! to completion and its triggering instruction is its last, so a delivery
//! it causes happens at the boundary after it and carries its index; after
//! a handler's IRET, further deliverable interrupts are taken back to back,
//! still carrying that index. `sti` leaves its shadow to the stub's own
//! bookkeeping inside the op; `sti-hlt` is `sti; hlt` with the HLT in the
//! shadow.

use super::{Availability, Backend, BackendKind, Result};
use crate::model::ioapic::{IOEOI, IOREGSEL, IOWIN};
use crate::model::lapic::reg;
use crate::model::machine::Interrupt;
use crate::model::{IoapicVersion as ModelIoapicVersion, Machine, MachineConfig, Quirks, Rule};
use crate::oracle::Divergence;
use crate::scenario::{ApicMode, HostOp, IoapicVersion, Irqchip, Op, Scenario};
use crate::trace::{Event, EventKind, Outcome, Snapshot, Space, Trace, GP_VECTOR, STORM_LIMIT};

pub const KIND: BackendKind = BackendKind {
    name: "model",
    description: "the reference model (pure Rust, no VM)",
    takes_options: false,
    probe: || Availability::Available,
    open: |_, _| Ok(Box::new(ModelBackend::new())),
};

/// Handler nesting deeper than this cannot happen within the storm limit,
/// but a bound keeps the recursion safe whatever the scenario.
const MAX_NESTING: usize = STORM_LIMIT + 2;

/// A model decision placed in the run: the top-level op it happened in, the
/// event it decided (a delivery), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub op: usize,
    pub event_index: Option<usize>,
    pub rule: Rule,
    pub vector: u8,
    /// Keyword of the op (top-level or in a handler body) whose execution
    /// made the decision: for a delivery, the op that caused it.
    pub cause: &'static str,
}

/// The model backend, optionally with quirks (the `sim:` backends).
#[derive(Clone, Debug, Default)]
pub struct ModelBackend {
    quirks: Quirks,
    /// Guest ops executed by the last run (top-level and handler bodies),
    /// for the benchmarks.
    pub last_ops: u64,
}

impl ModelBackend {
    pub fn new() -> Self {
        ModelBackend::with_quirks(Quirks::empty())
    }

    pub fn with_quirks(quirks: Quirks) -> Self {
        ModelBackend {
            quirks,
            last_ops: 0,
        }
    }

    /// Runs `scenario`, returning the trace and the decisions behind it.
    pub fn run_explained(&mut self, scenario: &Scenario) -> (Trace, Vec<Decision>) {
        let mut run = Run::new(scenario, self.quirks);
        let stop = run.program();
        self.last_ops = run.ops;
        let mut trace = Trace::new("model");
        trace.events = run.events;
        match stop {
            Ok(()) => {}
            Err(Stop::Hang(op)) => {
                trace.outcome = Outcome::Hang;
                trace.hang_op = Some(op);
            }
            Err(Stop::Storm) => trace.outcome = Outcome::Storm,
            Err(Stop::Error(message)) => {
                trace.outcome = Outcome::Error;
                trace.error = Some(message);
            }
        }
        (trace, run.decisions)
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> &str {
        "model"
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        Ok(self.run_explained(scenario).0)
    }
}

/// The model decision behind the event where a backend diverges: for a
/// delivery the model made, its cause; for a delivery only the backend made,
/// the model's last decision about that vector; for a state difference, the
/// model's last decision before it.
pub fn deciding_decision<'d>(
    decisions: &'d [Decision],
    divergence: &Divergence,
) -> Option<&'d Decision> {
    let op = divergence.op.unwrap_or(usize::MAX);
    let relevant = |d: &&Decision| {
        d.op <= op
            && d.event_index.is_none()
            && !matches!(
                d.rule,
                Rule::DispatchAbovePpr
                    | Rule::HeldByIf
                    | Rule::HeldByPpr
                    | Rule::HltWakes
                    | Rule::StiShadow
            )
    };
    if let Some(EventKind::Deliver { .. }) = divergence.expected.as_ref().map(|e| &e.kind) {
        return decisions
            .iter()
            .find(|d| d.event_index == Some(divergence.event_index));
    }
    if let Some(EventKind::Deliver { vector }) = divergence.observed.as_ref().map(|e| &e.kind) {
        let vector = *vector;
        return decisions
            .iter()
            .rev()
            .filter(relevant)
            .find(|d| d.vector == vector)
            .or_else(|| decisions.iter().rev().find(relevant));
    }
    decisions.iter().rev().find(relevant)
}

/// The rule of [`deciding_decision`].
pub fn deciding_rule(decisions: &[Decision], divergence: &Divergence) -> Option<Rule> {
    deciding_decision(decisions, divergence).map(|d| d.rule)
}

/// No decision caused the vector (see [`Run::cause_of`]).
const NO_CAUSE: u32 = u32::MAX;

enum Stop {
    Hang(usize),
    Storm,
    Error(String),
}

type Step = std::result::Result<(), Stop>;

struct Run<'s> {
    scenario: &'s Scenario,
    machine: Machine,
    events: Vec<Event>,
    decisions: Vec<Decision>,
    deliveries: usize,
    count: [u32; 256],
    /// Vectors with a `handler` line: the others run the default body
    /// without a look-up.
    handled: [u64; 4],
    /// The cause of the IRR bit of each vector (or the NMI): the index of
    /// its decision in `decisions`, [`NO_CAUSE`] if none.
    cause: [u32; 256],
    nmi_cause: u32,
    /// The op being executed (top-level or in a body).
    current: &'static str,
    /// Ops executed so far.
    ops: u64,
}

impl<'s> Run<'s> {
    fn new(scenario: &'s Scenario, quirks: Quirks) -> Run<'s> {
        let config = MachineConfig {
            ioapic: match scenario.config.ioapic {
                IoapicVersion::V11 => ModelIoapicVersion::V11,
                IoapicVersion::V20 => ModelIoapicVersion::V20,
            },
            x2apic: scenario.config.apic == ApicMode::X2apic,
            directed_eoi: scenario.config.directed_eoi,
            split: scenario.config.irqchip == Irqchip::Split,
            quirks,
        };
        let mut handled = [0u64; 4];
        for key in scenario.handlers.keys() {
            handled[key.vector as usize / 64] |= 1 << (key.vector % 64);
        }
        // Sized for a typical run so that the logs rarely grow.
        let ops = scenario.ops.len();
        Run {
            scenario,
            machine: Machine::new(config),
            events: Vec::with_capacity(ops),
            decisions: Vec::with_capacity(4 * ops + 8),
            deliveries: 0,
            count: [0; 256],
            handled,
            cause: [NO_CAUSE; 256],
            nmi_cause: NO_CAUSE,
            current: "none",
            ops: 0,
        }
    }

    fn program(&mut self) -> Step {
        for (k, op) in self.scenario.ops.iter().enumerate() {
            self.op(op, k, 0)?;
        }
        Ok(())
    }

    /// Executes one op (top-level or in a handler body) of top-level op `k`,
    /// then takes whatever became deliverable.
    fn op(&mut self, op: &Op, k: usize, depth: usize) -> Step {
        self.current = op.keyword();
        self.ops += 1;
        self.execute(op, k, depth)?;
        self.collect(k);
        self.deliver_pending(k, depth)?;
        self.note_held(k);
        Ok(())
    }

    fn execute(&mut self, op: &Op, k: usize, depth: usize) -> Step {
        let m = &mut self.machine;
        // A register access the processor refuses raises #GP: the guest's
        // handler logs it and skips the instruction (docs/guest-stub.md),
        // so the op has no other effect and the run goes on.
        let mut fault = false;
        match *op {
            Op::Route { pin, route } => {
                // Either order of the two dwords (docs/scenario-format.md).
                let [first, second] = route.dword_writes(pin);
                write_register(m, first.0, first.1);
                write_register(m, second.0, second.1);
            }
            Op::Mask(pin) | Op::Unmask(pin) => {
                let index = 0x10 + 2 * pin.get();
                let low = read_register(m, index);
                let low = if matches!(op, Op::Mask(_)) {
                    low | 1 << 16
                } else {
                    low & !(1 << 16)
                };
                write_register(m, index, low);
            }
            Op::Host(host) => match host {
                HostOp::Assert(pin) => m.set_irq(pin.get() as usize, true),
                HostOp::Deassert(pin) => m.set_irq(pin.get() as usize, false),
                HostOp::Pulse(pin) => {
                    m.set_irq(pin.get() as usize, true);
                    m.set_irq(pin.get() as usize, false);
                }
                HostOp::Msi(msi) => {
                    m.message(&msi.message());
                }
            },
            Op::Eoi => fault = m.lapic_write(reg::EOI, 0).is_err(),
            Op::IoapicEoi(v) => m.ioapic_mmio_write(IOEOI, v as u32),
            Op::SelfIpi(v) => {
                fault = if m.lapic.x2apic() {
                    m.lapic_write(reg::SELF_IPI, v as u32).is_err()
                } else {
                    // ICR high (destination 0), then ICR low: fixed, physical,
                    // edge, the self shorthand (SDM §11.6.1).
                    m.lapic_write(reg::ICR_HIGH, 0).is_err()
                        || m.lapic_write(reg::ICR_LOW, 1 << 18 | v as u32).is_err()
                }
            }
            Op::Tpr(v) => fault = m.lapic_write(reg::TPR, v as u32).is_err(),
            // SDM §10.8.6.1/§11.8.6: MOV to CR8 sets TPR[7:4] = CR8[3:0] and
            // TPR[3:0] = 0, in either mode; it never faults for 0-15.
            Op::Cr8(v) => {
                m.lapic.write(reg::TPR, (v as u32) << 4);
            }
            Op::Svr(v) => fault = m.lapic_write(reg::SVR, v).is_err(),
            Op::Cli => m.cpu.cli(),
            Op::Sti => {
                m.cpu.sti();
                // The shadow covers the stub's next instruction, inside this op.
                if !m.cpu.accepts_maskable() {
                    m.note(Rule::StiShadow, 0);
                }
                m.cpu.end_of_instruction();
            }
            Op::Nop => {}
            Op::Hlt => self.halt(k, depth)?,
            Op::StiHlt => {
                m.cpu.sti();
                // SDM §6.8.3: the HLT is in the STI shadow; an interrupt
                // pending at the STI is recognised after it and wakes it.
                m.cpu.end_of_instruction();
                self.halt(k, depth)?;
            }
            Op::Snapshot => {
                let (remote_irr, delivery_status) = m.ioapic_status();
                let snapshot = Snapshot {
                    irr: m.lapic.irr(),
                    isr: m.lapic.isr(),
                    tmr: m.lapic.tmr(),
                    tpr: m.lapic.tpr(),
                    ppr: m.lapic.ppr(),
                    remote_irr,
                    delivery_status,
                };
                self.events.push(Event {
                    op: k,
                    kind: EventKind::Snapshot(Box::new(snapshot)),
                });
            }
            Op::IoapicRead(index) => {
                let value = read_register(m, index);
                self.events.push(Event {
                    op: k,
                    kind: EventKind::Read {
                        space: Space::Ioapic,
                        reg: index as u32,
                        value,
                    },
                });
            }
            Op::IoapicWrite { index, value } => write_register(m, index, value),
            Op::LapicRead(offset) => match m.lapic_read(offset) {
                Ok(value) => self.events.push(Event {
                    op: k,
                    kind: EventKind::Read {
                        space: Space::Lapic,
                        reg: offset as u32,
                        value,
                    },
                }),
                Err(_) => fault = true,
            },
            Op::LapicWrite { offset, value } => fault = m.lapic_write(offset, value).is_err(),
            // SDM §11.12.1.2: in x2APIC mode the MMIO interface is not
            // available and an access behaves as with a globally disabled
            // APIC (§11.4.3): nothing answers at the page, so the load reads
            // all ones (the model's choice; the oracle leaves the value open)
            // and the store reaches no register.
            Op::LapicMmioRead(offset) if m.lapic.x2apic() => self.events.push(Event {
                op: k,
                kind: EventKind::Read {
                    space: Space::LapicMmio,
                    reg: offset as u32,
                    value: u32::MAX,
                },
            }),
            Op::LapicMmioWrite { .. } if m.lapic.x2apic() => {}
            Op::LapicMmioRead(offset) => {
                let value = m.lapic_read(offset).unwrap_or(0);
                self.events.push(Event {
                    op: k,
                    kind: EventKind::Read {
                        space: Space::Lapic,
                        reg: offset as u32,
                        value,
                    },
                });
            }
            Op::LapicMmioWrite { offset, value } => fault = m.lapic_write(offset, value).is_err(),
            // SDM §11.4.4, §11.12.5: reserved bits and invalid transitions.
            Op::ApicBase(value) => fault = m.write_apic_base(value).is_err(),
        }
        if fault {
            self.events.push(Event {
                op: k,
                kind: EventKind::Exception { vector: GP_VECTOR },
            });
        }
        if let Some(mode) = self.machine.take_unmodelled() {
            return Err(Stop::Error(format!(
                "op {k} ({}): delivery mode {mode:?} is not modelled (SMI, INIT and ExtINT change the processor's state beyond the scenario)",
                op.keyword()
            )));
        }
        Ok(())
    }

    /// HLT: wakes on a deliverable interrupt, which is delivered; otherwise
    /// the guest can never wake (no timers, host ops come later).
    fn halt(&mut self, k: usize, depth: usize) -> Step {
        self.collect(k);
        match self.machine.pending() {
            Some(_) => {
                self.machine.note(Rule::HltWakes, 0);
                self.deliver_pending(k, depth)
            }
            None => {
                self.machine.note(Rule::HltNoWake, 0);
                self.collect(k);
                Err(Stop::Hang(k))
            }
        }
    }

    /// Takes every deliverable interrupt, back to back.
    fn deliver_pending(&mut self, k: usize, depth: usize) -> Step {
        while let Some(interrupt) = self.machine.pending() {
            self.deliver(interrupt, k, depth)?;
        }
        Ok(())
    }

    fn deliver(&mut self, interrupt: Interrupt, k: usize, depth: usize) -> Step {
        if self.deliveries == STORM_LIMIT || depth >= MAX_NESTING {
            return Err(Stop::Storm);
        }
        self.deliveries += 1;
        let cause = match interrupt {
            Interrupt::Maskable(v) => self.cause_of(self.cause[v as usize], Rule::AcceptedIntoIrr),
            Interrupt::Nmi => self.cause_of(self.nmi_cause, Rule::NmiDelivers),
        };
        let (vector, saved_if) = self.machine.take(interrupt);
        self.machine.clear_decisions();
        let event_index = self.events.len();
        self.events.push(Event {
            op: k,
            kind: EventKind::Deliver { vector },
        });
        self.decisions.push(Decision {
            op: k,
            event_index: Some(event_index),
            rule: cause.0,
            vector,
            cause: cause.1,
        });
        self.count[vector as usize] += 1;
        let body = if self.handled[vector as usize / 64] & (1 << (vector % 64)) != 0 {
            self.scenario
                .handler_body(vector, self.count[vector as usize])
        } else {
            crate::scenario::DEFAULT_HANDLER
        };
        for op in body {
            self.op(op, k, depth + 1)?;
        }
        self.machine.iret(saved_if);
        Ok(())
    }

    /// The rule and op keyword of decision `index`, or `default` with
    /// "none" for [`NO_CAUSE`].
    fn cause_of(&self, index: u32, default: Rule) -> (Rule, &'static str) {
        match self.decisions.get(index as usize) {
            Some(d) => (d.rule, d.cause),
            None => (default, "none"),
        }
    }

    /// Moves the machine's decisions into the run's log, remembering the
    /// cause of each vector that entered the IRR.
    fn collect(&mut self, k: usize) {
        for d in self.machine.decisions() {
            let index = self.decisions.len() as u32;
            match d.rule {
                Rule::NmiDelivers | Rule::NmiBlocked => self.nmi_cause = index,
                Rule::EdgeDelivers
                | Rule::LevelDelivers
                | Rule::LevelUnmaskDelivers
                | Rule::EoiRedelivers
                | Rule::SelfIpi
                | Rule::MsiDelivers
                | Rule::ApicErrorInterrupt
                | Rule::Quirk => self.cause[d.vector as usize] = index,
                _ => {}
            }
            self.decisions.push(Decision {
                op: k,
                event_index: None,
                rule: d.rule,
                vector: d.vector,
                cause: self.current,
            });
        }
        self.machine.clear_decisions();
    }

    fn note_held(&mut self, k: usize) {
        if let Some((rule, vector)) = self.machine.held_reason() {
            self.decisions.push(Decision {
                op: k,
                event_index: None,
                rule,
                vector,
                cause: self.current,
            });
        }
    }
}

fn read_register(m: &mut Machine, index: u8) -> u32 {
    m.ioapic_mmio_write(IOREGSEL, index as u32);
    m.ioapic_mmio_read(IOWIN)
}

fn write_register(m: &mut Machine, index: u8, value: u32) {
    m.ioapic_mmio_write(IOREGSEL, index as u32);
    m.ioapic_mmio_write(IOWIN, value);
}
