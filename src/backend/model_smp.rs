//! The model backend's interpreter for scenarios of several CPUs
//! ([`irqdiff_model::System`]), with the ordering semantics of
//! docs/scenario-format.md ("Several CPUs"):
//!
//! - each top-level op runs on its CPU (`cpu K:`, CPU 0 by default) and
//!   takes what it made deliverable on that CPU, as on one CPU;
//! - then every CPU reaches a quiescent point before the next op: in rounds
//!   over the CPUs in index order, each CPU that can take an interrupt (with
//!   its own IF, NMI blocking and PPR) takes everything it can, handler
//!   bodies included; the rounds end when no CPU can take anything;
//! - events carry the CPU that observed them, and the top-level op during
//!   or after which they happened.
//!
//! The order between CPUs inside one op is the model's (index order); the
//! oracle does not compare it (src/oracle.rs, [`crate::oracle::canonical`]).
//!
//! The one-CPU interpreter (src/backend/model.rs) is kept as the fast path;
//! on one CPU both give the same trace (tests/model_smp.rs runs every
//! committed single-CPU scenario through both).

use super::model::{Decision, ModelBackend};
use crate::model::ioapic::IOEOI;
use crate::model::lapic::reg;
use crate::model::machine::Interrupt;
use crate::model::{IoapicVersion as ModelIoapicVersion, MachineConfig, Rule, System};
use crate::scenario::{ApStart, ApicMode, HostOp, IoapicVersion, Irqchip, Op, Scenario};
use crate::trace::{Event, EventKind, Outcome, Snapshot, Space, Trace, GP_VECTOR, STORM_LIMIT};

const MAX_NESTING: usize = STORM_LIMIT + 2;

enum Stop {
    Hang(usize),
    Storm,
    Error(String),
}

type Step = Result<(), Stop>;

impl ModelBackend {
    /// Runs `scenario` on the multi-CPU interpreter whatever it asks for:
    /// on one CPU it gives the trace [`super::Backend::execute`] gives (the
    /// test of the two interpreters' agreement).
    pub fn execute_on_system(&mut self, scenario: &Scenario) -> Trace {
        self.run_smp(scenario, false).0
    }

    /// Runs a scenario of the multi-CPU extension; the decisions are
    /// recorded only with `explain`.
    pub(super) fn run_smp(&mut self, scenario: &Scenario, explain: bool) -> (Trace, Vec<Decision>) {
        let mut run = SmpRun::new(scenario, self, explain);
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

struct SmpRun<'s> {
    scenario: &'s Scenario,
    sys: System,
    events: Vec<Event>,
    deliveries: usize,
    /// Deliveries of each vector on each CPU so far (`V#N` counts per CPU).
    count: Vec<[u8; 256]>,
    ops: u64,
    explain: bool,
    decisions: Vec<Decision>,
    current: &'static str,
}

/// Decisions that put a vector into an IRR: a delivery's cause.
fn is_cause(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::EdgeDelivers
            | Rule::LevelDelivers
            | Rule::LevelUnmaskDelivers
            | Rule::EoiRedelivers
            | Rule::SelfIpi
            | Rule::IpiDelivers
            | Rule::MsiDelivers
            | Rule::ApicErrorInterrupt
            | Rule::NmiDelivers
            | Rule::NmiBlocked
            | Rule::Quirk
    )
}

impl<'s> SmpRun<'s> {
    fn new(scenario: &'s Scenario, backend: &ModelBackend, explain: bool) -> SmpRun<'s> {
        let c = &scenario.config;
        let config = MachineConfig {
            ioapic: match c.ioapic {
                IoapicVersion::V11 => ModelIoapicVersion::V11,
                IoapicVersion::V20 => ModelIoapicVersion::V20,
            },
            x2apic: c.apic == ApicMode::X2apic,
            directed_eoi: c.directed_eoi,
            split: c.irqchip == Irqchip::Split,
            quirks: backend.quirks,
            deviations: backend.deviations,
        };
        let ids: Vec<u32> = (0..scenario.cpus()).map(|i| c.apic_id(i) as u32).collect();
        SmpRun {
            scenario,
            sys: System::new(config, &ids, c.ap_start == ApStart::Sipi),
            events: Vec::with_capacity(scenario.ops.len()),
            deliveries: 0,
            count: vec![[0; 256]; ids.len()],
            ops: 0,
            explain,
            decisions: Vec::new(),
            current: "none",
        }
    }

    fn program(&mut self) -> Step {
        for (k, op) in self.scenario.ops.iter().enumerate() {
            let cpu = self.scenario.cpu_of(k) as usize;
            if cpu >= self.sys.cpus() {
                return Err(Stop::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, and the scenario has {} CPU(s)",
                    op.keyword(),
                    self.sys.cpus()
                )));
            }
            if !self.sys.nodes[cpu].running() {
                return Err(Stop::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, which waits for a startup IPI (send it `ipi init` and `ipi startup` first)",
                    op.keyword()
                )));
            }
            self.op(cpu, op, k, 0)?;
            self.quiesce(k)?;
        }
        Ok(())
    }

    /// Every CPU takes what it can, in rounds in index order, until none
    /// can take anything.
    fn quiesce(&mut self, k: usize) -> Step {
        loop {
            let mut took = false;
            for cpu in 0..self.sys.cpus() {
                if self.sys.pending(cpu).is_some() {
                    self.deliver_pending(cpu, k, 0)?;
                    took = true;
                }
            }
            if !took {
                return Ok(());
            }
        }
    }

    fn collect(&mut self, k: usize) {
        if self.explain {
            for d in self.sys.decisions() {
                self.decisions.push(Decision {
                    op: k,
                    event_index: None,
                    rule: d.rule,
                    vector: d.vector,
                    cause: self.current,
                });
            }
        }
        self.sys.clear_decisions();
    }

    fn op(&mut self, cpu: usize, op: &Op, k: usize, depth: usize) -> Step {
        self.current = op.keyword();
        self.ops += 1;
        self.execute(cpu, op, k, depth)?;
        self.collect(k);
        if self.sys.take_inited() & 1 << cpu != 0 {
            return Err(Stop::Error(format!(
                "op {k} ({}): an INIT reached CPU {cpu}, the CPU running the op (its program cannot go on)",
                op.keyword()
            )));
        }
        self.deliver_pending(cpu, k, depth)?;
        if self.explain {
            if let Some((rule, vector)) = self.sys.held_reason(cpu) {
                self.decisions.push(Decision {
                    op: k,
                    event_index: None,
                    rule,
                    vector,
                    cause: self.current,
                });
            }
        }
        Ok(())
    }

    fn event(&mut self, k: usize, cpu: usize, kind: EventKind) {
        self.events.push(Event {
            op: k,
            cpu: cpu as u8,
            kind,
        });
    }

    fn execute(&mut self, cpu: usize, op: &Op, k: usize, depth: usize) -> Step {
        // ---- PIC (issue 15): the 8259 pair is wired to the one-CPU machine
        // only (its INT is CPU 0's LINT0 and IOAPIC pin 0 there).
        if op.uses_pic() {
            return Err(Stop::Error(format!(
                "op {k} ({}): the 8259 pair is modelled on one CPU only",
                op.keyword()
            )));
        }
        let s = &mut self.sys;
        let mut fault = false;
        match *op {
            Op::Route { pin, route } => {
                let [first, second] = route.dword_writes(pin);
                s.ioapic_write_indirect(first.0, first.1);
                s.ioapic_write_indirect(second.0, second.1);
            }
            Op::Mask(pin) | Op::Unmask(pin) => {
                let index = 0x10 + 2 * pin.get();
                let low = s.ioapic_read_indirect(index);
                let low = if matches!(op, Op::Mask(_)) {
                    low | 1 << 16
                } else {
                    low & !(1 << 16)
                };
                s.ioapic_write_indirect(index, low);
            }
            Op::Host(host) => match host {
                HostOp::Assert(pin) => s.set_irq(pin.get() as usize, true),
                HostOp::Deassert(pin) => s.set_irq(pin.get() as usize, false),
                HostOp::Pulse(pin) => {
                    s.set_irq(pin.get() as usize, true);
                    s.set_irq(pin.get() as usize, false);
                }
                HostOp::Msi(msi) => {
                    s.message(&msi.message());
                }
                HostOp::IsaAssert(_) | HostOp::IsaDeassert(_) | HostOp::IsaPulse(_) => {}
            },
            Op::Eoi => fault = s.lapic_write(cpu, reg::EOI, 0).is_err(),
            Op::IoapicEoi(v) => s.ioapic_mmio_write(IOEOI, v as u32),
            Op::SelfIpi(v) => {
                fault = if s.nodes[cpu].lapic.x2apic() {
                    s.lapic_write(cpu, reg::SELF_IPI, v as u32).is_err()
                } else {
                    s.lapic_write(cpu, reg::ICR_HIGH, 0).is_err()
                        || s.lapic_write(cpu, reg::ICR_LOW, 1 << 18 | v as u32)
                            .is_err()
                }
            }
            Op::Tpr(v) => fault = s.lapic_write(cpu, reg::TPR, v as u32).is_err(),
            Op::Cr8(v) => {
                s.nodes[cpu].lapic.write(reg::TPR, (v as u32) << 4);
            }
            Op::Svr(v) => fault = s.lapic_write(cpu, reg::SVR, v).is_err(),
            Op::Cli => s.nodes[cpu].cpu.cli(),
            Op::Sti => {
                s.nodes[cpu].cpu.sti();
                if !s.nodes[cpu].cpu.accepts_maskable() {
                    s.note(Rule::StiShadow, 0);
                }
                s.nodes[cpu].cpu.end_of_instruction();
            }
            Op::Nop => {}
            Op::Hlt => self.halt(cpu, k, depth)?,
            Op::StiHlt => {
                s.nodes[cpu].cpu.sti();
                s.nodes[cpu].cpu.end_of_instruction();
                self.halt(cpu, k, depth)?;
            }
            Op::Snapshot => {
                let (remote_irr, delivery_status) = s.ioapic_status();
                let l = &s.nodes[cpu].lapic;
                let snapshot = Snapshot {
                    irr: l.irr(),
                    isr: l.isr(),
                    tmr: l.tmr(),
                    tpr: l.tpr(),
                    ppr: l.ppr(),
                    remote_irr,
                    delivery_status,
                };
                self.event(k, cpu, EventKind::Snapshot(Box::new(snapshot)));
            }
            Op::IoapicRead(index) => {
                let value = s.ioapic_read_indirect(index);
                self.event(
                    k,
                    cpu,
                    EventKind::Read {
                        space: Space::Ioapic,
                        reg: index as u32,
                        value,
                    },
                );
            }
            Op::IoapicWrite { index, value } => s.ioapic_write_indirect(index, value),
            Op::LapicRead(offset) => match s.lapic_read(cpu, offset) {
                Ok(value) => self.event(
                    k,
                    cpu,
                    EventKind::Read {
                        space: Space::Lapic,
                        reg: offset as u32,
                        value,
                    },
                ),
                Err(_) => fault = true,
            },
            Op::LapicWrite { offset, value } => fault = s.lapic_write(cpu, offset, value).is_err(),
            Op::LapicMmioRead(offset) if s.nodes[cpu].lapic.x2apic() => self.event(
                k,
                cpu,
                EventKind::Read {
                    space: Space::LapicMmio,
                    reg: offset as u32,
                    value: u32::MAX,
                },
            ),
            Op::LapicMmioWrite { .. } if s.nodes[cpu].lapic.x2apic() => {}
            Op::LapicMmioRead(offset) => {
                let value = s.lapic_read(cpu, offset).unwrap_or(0);
                self.event(
                    k,
                    cpu,
                    EventKind::Read {
                        space: Space::Lapic,
                        reg: offset as u32,
                        value,
                    },
                );
            }
            Op::LapicMmioWrite { offset, value } => {
                fault = s.lapic_write(cpu, offset, value).is_err()
            }
            Op::ApicBase(value) => fault = s.write_apic_base(cpu, value).is_err(),
            Op::Ipi(ipi) => fault = s.send_icr(cpu, ipi.icr_low(), ipi.dest).is_err(),
            Op::PicWrite { .. } | Op::PicRead(_) => {}
            // The timer ops as on one CPU (`model.rs`), on the CPU of the
            // op: a wait passes time for its own CPU's timer. The format
            // defines them for one CPU (`ModelBackend::unsupported` refuses
            // them with several); this path runs them for the one-CPU
            // equivalence of the two interpreters.
            Op::Timer(t) => {
                let mut fault = s
                    .lapic_write(cpu, reg::TIMER_DIVIDE, t.divide_register())
                    .is_err();
                fault |= s.lapic_write(cpu, reg::LVT_TIMER, t.lvt()).is_err();
                if t.mode != crate::scenario::TimerOpMode::TscDeadline {
                    fault |= s.lapic_write(cpu, reg::TIMER_INITIAL, t.count).is_err();
                }
                if fault {
                    self.event(k, cpu, EventKind::Exception { vector: GP_VECTOR });
                }
            }
            Op::TscDeadline(d) => {
                let tsc = s.lapic(cpu).timer().tsc();
                let value = match d {
                    crate::scenario::Deadline::Disarm => 0,
                    crate::scenario::Deadline::Now => tsc,
                    crate::scenario::Deadline::After(n) => tsc + n as u64,
                };
                s.write_tsc_deadline(cpu, value);
            }
            Op::TscDeadlineRead => {
                let value = u32::from(s.lapic(cpu).read_tsc_deadline() != 0);
                self.event(
                    k,
                    cpu,
                    EventKind::Read {
                        space: Space::Msr,
                        reg: crate::model::lapic_timer::MSR_TSC_DEADLINE,
                        value,
                    },
                );
            }
            Op::TimerWait(us) => {
                s.timer_elapse(cpu, us as u64 * 1000);
            }
        }
        if fault {
            self.event(k, cpu, EventKind::Exception { vector: GP_VECTOR });
        }
        if let Some(mode) = self.sys.take_unmodelled() {
            return Err(Stop::Error(format!(
                "op {k} ({}): delivery mode {mode:?} is not modelled (SMI and ExtINT change the processor's state beyond the scenario)",
                op.keyword()
            )));
        }
        Ok(())
    }

    /// HLT on `cpu`: every other CPU is quiescent, so only what is pending
    /// on `cpu` can wake it.
    fn halt(&mut self, cpu: usize, k: usize, depth: usize) -> Step {
        self.collect(k);
        // The hlt as a wait of the hlt bound (docs/scenario-format.md "The
        // LAPIC timer"), for this CPU's timer.
        if self.sys.pending(cpu).is_none() && self.sys.lapic(cpu).timer_armed() {
            self.sys
                .timer_elapse(cpu, crate::scenario::HLT_TIMER_BOUND_US as u64 * 1000);
        }
        if self.sys.pending(cpu).is_some() {
            self.sys.note(Rule::HltWakes, 0);
            self.deliver_pending(cpu, k, depth)
        } else {
            self.sys.note(Rule::HltNoWake, 0);
            self.collect(k);
            Err(Stop::Hang(k))
        }
    }

    fn deliver_pending(&mut self, cpu: usize, k: usize, depth: usize) -> Step {
        while let Some(interrupt) = self.sys.pending(cpu) {
            self.deliver(cpu, interrupt, k, depth)?;
        }
        Ok(())
    }

    fn deliver(&mut self, cpu: usize, interrupt: Interrupt, k: usize, depth: usize) -> Step {
        if self.deliveries == STORM_LIMIT || depth >= MAX_NESTING {
            return Err(Stop::Storm);
        }
        self.deliveries += 1;
        let (vector, saved_if) = self.sys.take(cpu, interrupt);
        self.sys.clear_decisions();
        let event_index = self.events.len();
        self.event(k, cpu, EventKind::Deliver { vector });
        if self.explain {
            let cause = self
                .decisions
                .iter()
                .rev()
                .find(|d| d.vector == vector && is_cause(d.rule))
                .map_or((Rule::AcceptedIntoIrr, "none"), |d| (d.rule, d.cause));
            self.decisions.push(Decision {
                op: k,
                event_index: Some(event_index),
                rule: cause.0,
                vector,
                cause: cause.1,
            });
        }
        self.count[cpu][vector as usize] += 1;
        let nth = self.count[cpu][vector as usize] as u32;
        let body = self.scenario.handler_body_on(cpu as u8, vector, nth);
        for op in body {
            self.op(cpu, op, k, depth + 1)?;
        }
        self.sys.iret(cpu, saved_if);
        Ok(())
    }
}
