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
use crate::model::lapic_timer::MSR_TSC_DEADLINE;
use crate::model::machine::Interrupt;
use crate::model::{
    Deviations, IoapicVersion as ModelIoapicVersion, Machine, MachineConfig, Quirks, Rule,
};
use crate::oracle::Divergence;
use crate::scenario::{
    ApicMode, Deadline, HandlerKey, HostOp, IoapicVersion, Irqchip, Op, Scenario, TimerOpMode,
    TimerSetup,
};
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
    pub(super) quirks: Quirks,
    pub(super) deviations: Deviations,
    /// A device under test in place of the model's IOAPIC (byo.rs).
    device: Option<super::byo::Device>,
    /// Guest ops executed by the last run (top-level and handler bodies),
    /// for the benchmarks.
    pub last_ops: u64,
    /// Runs every delivery of a storm that repeats itself instead of
    /// counting out the repeats ([`Run::deliver_checked`]): the tests'
    /// reference for the shortcut.
    pub(crate) no_storm_shortcut: bool,
    /// The last run counted out a storm's repeats (for the tests).
    pub(crate) last_storm_shortcut: bool,
    /// A host exit of its own right after every injection (a timer tick,
    /// a preemption of the vCPU thread): under `eoi-broadcast/inverted`
    /// with the IOAPIC in userspace the early EOI then comes at the take,
    /// before the handler's first op, as with the IOAPIC in the kernel.
    /// Not a rule: where a host exit falls is the host's timing
    /// ([`crate::diagnose::diagnose_reruns`] tries it for a trace that
    /// varied).
    pub host_exit_at_take: bool,
    /// The event buffer of a trace handed back ([`ModelBackend::recycle`]),
    /// emptied, for the next run: no allocation per run.
    spare_events: Vec<Event>,
}

impl ModelBackend {
    pub fn new() -> Self {
        ModelBackend::default()
    }

    pub fn with_quirks(quirks: Quirks) -> Self {
        ModelBackend {
            quirks,
            ..ModelBackend::default()
        }
    }

    /// The model with quirks and spec rules broken on purpose (a `sim:`
    /// backend that names deviations, e.g. a real bug's shape).
    pub fn with_quirks_and_deviations(quirks: Quirks, deviations: Deviations) -> Self {
        ModelBackend {
            quirks,
            deviations,
            ..ModelBackend::default()
        }
    }

    /// The model with spec rules broken on purpose (diagnosis).
    pub fn with_deviations(deviations: Deviations) -> Self {
        ModelBackend {
            deviations,
            ..ModelBackend::default()
        }
    }

    /// The model's CPU and local APIC with `device`'s IOAPIC.
    pub fn with_device(device: super::byo::Device) -> Self {
        ModelBackend {
            device: Some(device),
            ..ModelBackend::default()
        }
    }

    /// Hands back a trace of this backend's that the caller is done with:
    /// its event buffer serves the next run, which then allocates nothing
    /// for its events (the differ's runs, most of which agree).
    pub fn recycle(&mut self, trace: Trace) {
        let mut events = trace.events;
        if events.capacity() > self.spare_events.capacity() {
            events.clear();
            self.spare_events = events;
        }
    }

    /// Runs `scenario`, returning the trace and the decisions behind it.
    /// The trace is the one [`Backend::execute`] gives; recording the
    /// decisions costs time, so the differ asks for them only to explain a
    /// divergence.
    pub fn run_explained(&mut self, scenario: &Scenario) -> (Trace, Vec<Decision>) {
        if !scenario.uses_smp_outside_handlers() {
            if let Some((trace, explanation)) =
                self.run_recording(scenario, Explanation::new(scenario))
            {
                return (trace, explanation.decisions);
            }
        }
        self.run_smp(scenario, true)
    }

    /// Runs `scenario` on the one-CPU interpreter; `None` if it turns out to
    /// have per-CPU handler bodies (the multi-CPU interpreter's), which
    /// only a walk of its handlers, done here anyway, shows.
    fn run_recording<R: Recorder>(
        &mut self,
        scenario: &Scenario,
        recorder: R,
    ) -> Option<(Trace, R)> {
        let mut events = std::mem::take(&mut self.spare_events);
        // Sized for a typical run so that the log rarely grows: an event
        // per op and a delivery for about every other one.
        events.reserve(2 * scenario.ops.len() + 4);
        let mut run = Run::new(scenario, self.quirks, self.deviations, recorder, events);
        run.host_exit_at_take = self.host_exit_at_take;
        // The deviating path keeps state outside the machine (an early EOI
        // owed, an exit awaited) that a checkpoint does not see.
        run.storm_shortcut = !self.no_storm_shortcut && !run.dispatch_deviates;
        if let Some(device) = &self.device {
            let config = run.machine.config();
            run.machine = Machine::with_device(config, device.make);
        }
        let stop = run.program();
        if let Err(Stop::SeveralCpus) = stop {
            self.spare_events = run.events;
            return None;
        }
        self.last_ops = run.ops;
        self.last_storm_shortcut = run.storm_shortcut_taken;
        let mut trace = Trace::named(self.device.map_or("model", |d| d.name));
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
                trace.error = Some(message.into());
            }
            Err(Stop::SeveralCpus) => unreachable!("returned above"),
        }
        Some((trace, run.recorder))
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> &str {
        self.device.map_or("model", |d| d.name)
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        if scenario.uses_timer_ops() && scenario.uses_smp() {
            return Some("the LAPIC timer ops run on one CPU only".into());
        }
        self.device.and_then(|d| d.refuses(scenario))
    }

    fn fit(&self, scenario: &mut Scenario) {
        if let Some(d) = self.device {
            d.fit(scenario);
        }
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        if !scenario.uses_smp_outside_handlers() {
            if let Some((trace, _)) = self.run_recording(scenario, NoRecorder) {
                return Ok(trace);
            }
        }
        Ok(self.run_smp(scenario, false).0)
    }

    fn max_cpus(&self) -> usize {
        // A device under test is one IOAPIC wired to the one-CPU machine.
        if self.device.is_some() {
            1
        } else {
            crate::scenario::MAX_CPUS
        }
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

/// No decision caused the vector (see [`Explanation::cause_of`]).
const NO_CAUSE: u32 = u32::MAX;

enum Stop {
    Hang(usize),
    Storm,
    /// Boxed, so that a [`Step`] is returned in registers.
    Error(Box<str>),
    /// A handler body is for one CPU (`V@K`): the scenario is for the
    /// multi-CPU interpreter.
    SeveralCpus,
}

type Step = std::result::Result<(), Stop>;

/// What a run records besides its trace: nothing ([`NoRecorder`], the
/// differ's run) or the decisions behind it ([`Explanation`]). The
/// interpreter calls it at each step; with [`NoRecorder`] the calls compile
/// to nothing, and the machine keeps no log.
trait Recorder {
    /// Whether the run reads the machine's decision log (it is off
    /// otherwise: [`Machine::set_recording`]).
    const RECORDS: bool;
    /// An op (top-level or in a handler body) starts.
    fn start_op(&mut self, op: &Op);
    /// Takes the machine's decisions made since the last call, during
    /// top-level op `k`, and drains the machine's log.
    fn collect(&mut self, machine: &mut Machine, k: usize);
    /// `interrupt` was delivered as `vector`, recorded as event
    /// `event_index` of top-level op `k`.
    fn delivered(&mut self, interrupt: Interrupt, vector: u8, k: usize, event_index: usize);
    /// After an op and its deliveries: why a requested vector waits.
    fn note_held(&mut self, machine: &Machine, k: usize);
}

/// A plain run: no decisions.
struct NoRecorder;

impl Recorder for NoRecorder {
    const RECORDS: bool = false;
    fn start_op(&mut self, _: &Op) {}
    // The machine logs nothing: there is nothing to drain.
    fn collect(&mut self, _: &mut Machine, _: usize) {}
    fn delivered(&mut self, _: Interrupt, _: u8, _: usize, _: usize) {}
    fn note_held(&mut self, _: &Machine, _: usize) {}
}

/// The decisions of a run, each placed at its op, and the cause of each
/// delivery.
struct Explanation {
    decisions: Vec<Decision>,
    /// The cause of the IRR bit of each vector (or the NMI): the index of
    /// its decision in `decisions`, [`NO_CAUSE`] if none.
    cause: [u32; 256],
    nmi_cause: u32,
    /// The cause of the external interrupt being requested (issue 15).
    extint_cause: u32,
    /// The op being executed (top-level or in a body).
    current: &'static str,
}

impl Explanation {
    fn new(scenario: &Scenario) -> Explanation {
        Explanation {
            // Sized for a typical run so that the log rarely grows.
            decisions: Vec::with_capacity(4 * scenario.ops.len() + 8),
            cause: [NO_CAUSE; 256],
            nmi_cause: NO_CAUSE,
            extint_cause: NO_CAUSE,
            current: "none",
        }
    }

    /// The rule and op keyword of decision `index`, or `default` with
    /// "none" for [`NO_CAUSE`].
    fn cause_of(&self, index: u32, default: Rule) -> (Rule, &'static str) {
        match self.decisions.get(index as usize) {
            Some(d) => (d.rule, d.cause),
            None => (default, "none"),
        }
    }
}

impl Recorder for Explanation {
    const RECORDS: bool = true;
    fn start_op(&mut self, op: &Op) {
        self.current = op.keyword();
    }

    /// Moves the machine's decisions into the log, remembering the cause of
    /// each vector that entered the IRR.
    fn collect(&mut self, machine: &mut Machine, k: usize) {
        for d in machine.decisions() {
            let index = self.decisions.len() as u32;
            match d.rule {
                Rule::NmiDelivers | Rule::NmiBlocked | Rule::LintNmi => self.nmi_cause = index,
                Rule::ExtintLint0 | Rule::ExtintIoapic => self.extint_cause = index,
                Rule::EdgeDelivers
                | Rule::LevelDelivers
                | Rule::LevelUnmaskDelivers
                | Rule::EoiRedelivers
                | Rule::SelfIpi
                | Rule::MsiDelivers
                | Rule::ApicErrorInterrupt
                | Rule::LintFixed
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
        machine.clear_decisions();
    }

    fn delivered(&mut self, interrupt: Interrupt, vector: u8, k: usize, event_index: usize) {
        let (rule, cause) = match interrupt {
            Interrupt::Maskable(v) => self.cause_of(self.cause[v as usize], Rule::AcceptedIntoIrr),
            Interrupt::Nmi => self.cause_of(self.nmi_cause, Rule::NmiDelivers),
            Interrupt::ExtInt => self.cause_of(self.extint_cause, Rule::ExtintLint0),
        };
        self.decisions.push(Decision {
            op: k,
            event_index: Some(event_index),
            rule,
            vector,
            cause,
        });
    }

    fn note_held(&mut self, machine: &Machine, k: usize) {
        if let Some((rule, vector)) = machine.held_reason() {
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

struct Run<'s, R> {
    deviations: Deviations,
    scenario: &'s Scenario,
    machine: Machine,
    events: Vec<Event>,
    recorder: R,
    deliveries: usize,
    /// Deliveries of each vector so far (at most [`STORM_LIMIT`] in all).
    count: [u8; 256],
    /// Vectors with a `handler` line: the others run the default body
    /// without a look-up.
    handled: [u64; 4],
    /// The scenario's handler bodies, decoded once per run: a look-up is a
    /// scan of a few entries, not a map search per delivery.
    bodies: Bodies<'s>,
    /// Ops executed so far.
    ops: u64,
    /// Deviation `dispatch-above-ppr/skipped`: a TPR write lowered the
    /// priority and nothing is taken until the next exit to the VMM.
    waiting_for_exit: bool,
    /// Either dispatch-above-ppr deviation (skipped or late), or
    /// `eoi-broadcast/inverted`, is on: ops go through [`Run::op_deviating`].
    dispatch_deviates: bool,
    /// Deviation `eoi-broadcast/inverted`: the level vector taken whose
    /// EOI the VMM broadcasts at the next exit.
    early_eoi: Option<u8>,
    /// [`ModelBackend::host_exit_at_take`].
    host_exit_at_take: bool,
    /// A delivery that leaves the machine as it found it is counted out to
    /// the storm limit ([`Run::deliver_checked`]).
    storm_shortcut: bool,
    storm_shortcut_taken: bool,
}

/// Where an op's first exit falls (see [`Run::early_eoi_point`]).
#[derive(Clone, Copy)]
enum EoiPoint {
    Before,
    After,
}

/// The handler bodies of a scenario with up to [`Bodies::INLINE`] `handler`
/// lines, in a fixed array (no allocation per run); more fall back to the
/// scenario's map.
struct Bodies<'s> {
    len: usize,
    entries: [(HandlerKey, &'s [Op]); Bodies::INLINE],
    scenario: &'s Scenario,
}

impl<'s> Bodies<'s> {
    const INLINE: usize = 8;

    #[inline(always)]
    fn empty(scenario: &'s Scenario) -> Bodies<'s> {
        Bodies {
            len: 0,
            entries: [(HandlerKey::plain(0), &[]); Bodies::INLINE],
            scenario,
        }
    }

    /// Reads the scenario's handlers, marking each vector with one in
    /// `handled`; false if a body is for one CPU (`V@K`).
    fn load(&mut self, handled: &mut [u64; 4]) -> bool {
        let inline = self.scenario.handlers.len() <= Bodies::INLINE;
        for (key, body) in &self.scenario.handlers {
            if key.cpu.is_some() {
                return false;
            }
            handled[key.vector as usize / 64] |= 1 << (key.vector % 64);
            if inline {
                self.entries[self.len] = (*key, body.as_slice());
                self.len += 1;
            }
        }
        if !inline {
            self.len = usize::MAX;
        }
        true
    }

    /// [`Scenario::handler_body`]: the `V#N` body, else the `V` body, else
    /// the default one (this one-CPU path never sees `V@K` bodies: such a
    /// scenario runs on the multi-CPU interpreter).
    #[inline]
    fn get(&self, vector: u8, nth: u32) -> &'s [Op] {
        if self.len == usize::MAX {
            return self.scenario.handler_body(vector, nth);
        }
        let mut body = crate::scenario::DEFAULT_HANDLER;
        for (key, ops) in &self.entries[..self.len] {
            if key.vector == vector {
                match key.nth {
                    Some(n) if n == nth => return ops,
                    Some(_) => {}
                    None => body = ops,
                }
            }
        }
        body
    }
}

impl<'s, R: Recorder> Run<'s, R> {
    #[inline(always)]
    fn new(
        scenario: &'s Scenario,
        quirks: Quirks,
        deviations: Deviations,
        recorder: R,
        events: Vec<Event>,
    ) -> Run<'s, R> {
        let config = MachineConfig {
            ioapic: match scenario.config.ioapic {
                IoapicVersion::V11 => ModelIoapicVersion::V11,
                IoapicVersion::V20 => ModelIoapicVersion::V20,
            },
            x2apic: scenario.config.apic == ApicMode::X2apic,
            directed_eoi: scenario.config.directed_eoi,
            split: scenario.config.irqchip == Irqchip::Split,
            quirks,
            deviations,
        };
        // The tail expression, so that the run is built in place; the
        // setup that needs it built is in `program`.
        Run {
            deviations,
            scenario,
            machine: Machine::new(config),
            events,
            recorder,
            deliveries: 0,
            count: [0; 256],
            handled: [0; 4],
            bodies: Bodies::empty(scenario),
            ops: 0,
            waiting_for_exit: false,
            dispatch_deviates: deviations
                .breaks(Rule::DispatchAbovePpr, crate::model::Mode::Skipped)
                || deviations.breaks(Rule::DispatchAbovePpr, crate::model::Mode::Late)
                || deviations.breaks(Rule::EoiBroadcast, crate::model::Mode::Inverted)
                || deviations.breaks(Rule::TimerTscDeadline, crate::model::Mode::Late),
            early_eoi: None,
            host_exit_at_take: false,
            storm_shortcut: true,
            storm_shortcut_taken: false,
        }
    }

    fn program(&mut self) -> Step {
        self.machine.set_recording(R::RECORDS);
        if !self.bodies.load(&mut self.handled) {
            return Err(Stop::SeveralCpus);
        }
        for (k, op) in self.scenario.ops.iter().enumerate() {
            self.op(op, k, 0)?;
        }
        Ok(())
    }

    /// Executes one op (top-level or in a handler body) of top-level op `k`,
    /// then takes whatever became deliverable.
    fn op(&mut self, op: &Op, k: usize, depth: usize) -> Step {
        if self.dispatch_deviates {
            return self.op_deviating(op, k, depth);
        }
        // Neither dispatch-above-ppr deviation: `op_deviating` with its
        // threshold and late paths off (the usual run, kept small).
        self.recorder.start_op(op);
        self.ops += 1;
        self.execute(op, k, depth)?;
        self.recorder.collect(&mut self.machine, k);
        self.deliver_pending(k, depth)?;
        self.recorder.note_held(&self.machine, k);
        Ok(())
    }

    /// [`Run::op`] under a dispatch-above-ppr deviation (skipped or late).
    #[cold]
    #[inline(never)]
    fn op_deviating(&mut self, op: &Op, k: usize, depth: usize) -> Step {
        self.recorder.start_op(op);
        self.ops += 1;
        let threshold = self
            .deviations
            .breaks(Rule::DispatchAbovePpr, crate::model::Mode::Skipped);
        let tpr_before = if threshold {
            self.machine.lapic.tpr()
        } else {
            0
        };
        // Deviation eoi-broadcast/inverted: the EOI of the level vector
        // taken last reaches the IOAPIC at the first exit after it was
        // taken, before the handler's EOI write (this host's KVM;
        // docs/known-divergences.md#kvm-early-eoi).
        if self.accesses_exit(op) {
            return self.op_by_access(op, k, depth);
        }
        let early = match self.early_eoi {
            Some(vector) => self.early_eoi_point(op).map(|point| (vector, point)),
            None => None,
        };
        if let Some((vector, EoiPoint::Before)) = early {
            self.send_early_eoi(vector);
        }
        self.execute(op, k, depth)?;
        if let Some((vector, EoiPoint::After)) = early {
            self.send_early_eoi(vector);
        }
        // Deviation timer-tsc-deadline/late: a deadline passed at its write
        // expires at the exit (a bound of 0 expires only what is due).
        if self.exits(op)
            && self
                .deviations
                .breaks(Rule::TimerTscDeadline, crate::model::Mode::Late)
        {
            self.machine.timer_elapse(0);
        }
        self.recorder.collect(&mut self.machine, k);
        // Deviation dispatch-above-ppr/skipped (a stale TPR threshold): a TPR
        // write that lowers the priority takes nothing it unblocks until
        // the next exit to the VMM (a host op).
        if threshold {
            if self.exits(op) {
                self.waiting_for_exit = false;
            } else if matches!(op, Op::Tpr(_) | Op::Cr8(_)) && self.machine.lapic.tpr() < tpr_before
            {
                self.waiting_for_exit = true;
            }
        }
        // Deviation dispatch-above-ppr/late: what the guest made pending is
        // taken only at the entry after an exit to the VMM (a host op).
        let late = self.waiting_for_exit
            || self
                .deviations
                .breaks(Rule::DispatchAbovePpr, crate::model::Mode::Late);
        // Then one interrupt per entry, as a VMM injects them.
        if !late {
            self.deliver_pending(k, depth)?;
        } else if let (true, Some(interrupt)) = (self.exits(op), self.machine.pending()) {
            self.deliver(interrupt, k, depth)?;
        }
        self.recorder.note_held(&self.machine, k);
        Ok(())
    }

    /// Whether `op` runs access by access ([`Run::op_by_access`]): under
    /// `dispatch-above-ppr/late` with the IOAPIC in userspace, an IOAPIC op
    /// the stub performs as several MMIO accesses with interrupts enabled
    /// (a `route`'s four, a `mask`'s or `unmask`'s three, an
    /// `ioapic-write`'s two; `ioapic-read` and `snapshot` hold interrupts,
    /// `ioapic-eoi` is one access), each an exit to the VMM.
    fn accesses_exit(&self, op: &Op) -> bool {
        matches!(
            op,
            Op::Route { .. } | Op::Mask(_) | Op::Unmask(_) | Op::IoapicWrite { .. }
        ) && self.scenario.config.irqchip == Irqchip::Split
            && self
                .deviations
                .breaks(Rule::DispatchAbovePpr, crate::model::Mode::Late)
    }

    /// Deviation dispatch-above-ppr/late, with the IOAPIC in userspace: an
    /// IOAPIC op as the stub performs it (guest/stub.rs `op_route`,
    /// `op_mask`, `op_ioapic_write`), one MMIO access at a time. Each
    /// access is an exit to the VMM; at the entry after it the VMM sends
    /// the early EOI it owes (`eoi-broadcast/inverted`) and injects one
    /// pending interrupt, whose handler runs before the op's next access.
    /// The IOAPIC's IOREGSEL is one register (82093AA §3.1): the accesses
    /// after the handler use the index the handler left there, as the
    /// stub's do (a `route` interrupted after its IOREGSEL write by a
    /// handler that selects another register writes its next dword there;
    /// docs/known-divergences.md#kvm-early-eoi).
    #[cold]
    #[inline(never)]
    fn op_by_access(&mut self, op: &Op, k: usize, depth: usize) -> Step {
        // (offset, value); a `None` value is the read of a mask or unmask,
        // whose write follows with bit 16 set or cleared in what it read.
        let mut accesses = [(0u64, None::<u32>); 4];
        let count = match *op {
            Op::Route { pin, route } => {
                let [first, second] = route.dword_writes(pin);
                accesses = [
                    (IOREGSEL, Some(first.0 as u32)),
                    (IOWIN, Some(first.1)),
                    (IOREGSEL, Some(second.0 as u32)),
                    (IOWIN, Some(second.1)),
                ];
                4
            }
            Op::Mask(pin) | Op::Unmask(pin) => {
                accesses[0] = (IOREGSEL, Some(0x10 + 2 * pin.get() as u32));
                accesses[1] = (IOWIN, None);
                3
            }
            Op::IoapicWrite { index, value } => {
                accesses[0] = (IOREGSEL, Some(index as u32));
                accesses[1] = (IOWIN, Some(value));
                2
            }
            _ => unreachable!("accesses_exit"),
        };
        for i in 0..count {
            match (i, accesses[i]) {
                (2, _) if matches!(op, Op::Mask(_) | Op::Unmask(_)) => {
                    let low = accesses[1].1.unwrap_or(0);
                    let low = if matches!(op, Op::Mask(_)) {
                        low | 1 << 16
                    } else {
                        low & !(1 << 16)
                    };
                    self.machine.ioapic_mmio_write(IOWIN, low);
                }
                (_, (offset, Some(value))) => self.machine.ioapic_mmio_write(offset, value),
                (_, (offset, None)) => {
                    accesses[i].1 = Some(self.machine.ioapic_mmio_read(offset));
                }
            }
            // The exit: the VMM's early EOI, then one interrupt at the entry
            // (an exit also ends a stale TPR threshold's wait).
            self.waiting_for_exit = false;
            if let Some(vector) = self.early_eoi {
                self.send_early_eoi(vector);
            }
            self.recorder.collect(&mut self.machine, k);
            if let Some(interrupt) = self.machine.pending() {
                self.deliver(interrupt, k, depth)?;
            }
        }
        self.recorder.note_held(&self.machine, k);
        Ok(())
    }

    /// Deviation eoi-broadcast/inverted: the IOAPIC gets the EOI of the
    /// level vector taken last.
    fn send_early_eoi(&mut self, vector: u8) {
        self.early_eoi = None;
        self.machine.note(Rule::Quirk, vector);
        self.machine.ioapic_eoi(vector);
    }

    /// Where in `op` the first exit to the VMM after a take comes, with
    /// the IOAPIC in userspace, for `eoi-broadcast/inverted`: an IOAPIC
    /// access's first access is its IOREGSEL write (before the op's
    /// effect); a host op exits to do its work (after); a snapshot's IOAPIC
    /// reads follow its local APIC reads (in between).
    fn early_eoi_point(&self, op: &Op) -> Option<EoiPoint> {
        match op {
            Op::Host(_) | Op::IoapicEoi(_) => Some(EoiPoint::After),
            // Between its local APIC and IOAPIC reads (`execute`).
            Op::Snapshot => None,
            Op::Route { .. }
            | Op::Mask(_)
            | Op::Unmask(_)
            | Op::IoapicRead(_)
            | Op::IoapicWrite { .. } => Some(EoiPoint::Before),
            _ => None,
        }
    }

    /// Whether `op` exits to the VMM: a host op, or with the IOAPIC in
    /// userspace (`irqchip=split`) an IOAPIC access.
    fn exits(&self, op: &Op) -> bool {
        match op {
            Op::Host(_) => true,
            Op::Route { .. }
            | Op::Mask(_)
            | Op::Unmask(_)
            | Op::IoapicEoi(_)
            | Op::IoapicRead(_)
            | Op::IoapicWrite { .. } => self.scenario.config.irqchip == Irqchip::Split,
            _ => false,
        }
    }

    #[inline(always)]
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
                // ---- PIC (issue 15): out of the hot path.
                HostOp::IsaAssert(_) | HostOp::IsaDeassert(_) | HostOp::IsaPulse(_) => {
                    return self.pic_op(op, k)
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
                let (irr, isr, tmr) = (m.lapic.irr(), m.lapic.isr(), m.lapic.tmr());
                let (tpr, ppr) = (m.lapic.tpr(), m.lapic.ppr());
                // Deviation eoi-broadcast/inverted with the IOAPIC in
                // userspace: the stub reads the local APIC first; its
                // first IOAPIC read is the exit that sends the EOI.
                if let Some(vector) = self.early_eoi {
                    self.send_early_eoi(vector);
                }
                let (remote_irr, delivery_status) = self.machine.ioapic_status();
                let snapshot = Snapshot {
                    irr,
                    isr,
                    tmr,
                    tpr,
                    ppr,
                    remote_irr,
                    delivery_status,
                };
                self.events.push(Event {
                    op: k,
                    cpu: 0,
                    kind: EventKind::Snapshot(Box::new(snapshot)),
                });
            }
            Op::IoapicRead(index) => {
                let value = read_register(m, index);
                self.events.push(Event {
                    op: k,
                    cpu: 0,
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
                    cpu: 0,
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
                cpu: 0,
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
                    cpu: 0,
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
            // SDM §11.6.1, §11.12.9: on one CPU only what reaches it counts.
            Op::Ipi(ipi) => fault = m.send_icr(ipi.icr_low(), ipi.dest).is_err(),
            // ---- PIC (issue 15): out of the hot path.
            Op::PicWrite { .. } | Op::PicRead(_) => return self.pic_op(op, k),
            // The LAPIC timer (SDM §11.5.4): the divide configuration, the
            // LVT entry, then (one-shot, periodic) the initial count.
            Op::Timer(t) => fault = timer_setup(m, &t),
            // SDM §11.5.4.1: relative to the model's TSC, which moves only
            // at waits; `now` is a deadline passed by the write.
            Op::TscDeadline(d) => m.write_tsc_deadline(deadline_value(m, d)),
            Op::TscDeadlineRead => {
                let value = u32::from(m.read_tsc_deadline() != 0);
                self.events.push(Event {
                    op: k,
                    cpu: 0,
                    kind: EventKind::Read {
                        space: Space::Msr,
                        reg: MSR_TSC_DEADLINE,
                        value,
                    },
                });
            }
            // docs/scenario-format.md "The LAPIC timer": the wait lets the
            // timer expire if its period fits the bound; `op` then delivers.
            Op::TimerWait(us) => {
                m.timer_elapse(us as u64 * 1000);
            }
        }
        if fault {
            self.events.push(Event {
                op: k,
                cpu: 0,
                kind: EventKind::Exception { vector: GP_VECTOR },
            });
        }
        if let Some(mode) = self.machine.take_unmodelled() {
            return Err(Stop::Error(String::into_boxed_str(format!(
                "op {k} ({}): delivery mode {mode:?} is not modelled (SMI, INIT and ExtINT change the processor's state beyond the scenario)",
                op.keyword()
            ))));
        }
        Ok(())
    }

    /// ---- PIC (issue 15): an op that reaches the 8259 pair: byte I/O to
    /// the pair and the ELCRs, or an ISA line (PIC IR N, then IOAPIC pin
    /// N); then what the pair or LINT0 could not model ends the run.
    #[cold]
    #[inline(never)]
    fn pic_op(&mut self, op: &Op, k: usize) -> Step {
        let m = &mut self.machine;
        match *op {
            Op::PicWrite { port, value } => m.pic_port_write(port.get(), value),
            Op::PicRead(port) => {
                let value = m.pic_port_read(port.get());
                self.events.push(Event {
                    op: k,
                    cpu: 0,
                    kind: EventKind::Read {
                        space: Space::Pic,
                        reg: port.get() as u32,
                        value: value as u32,
                    },
                });
            }
            Op::Host(HostOp::IsaAssert(line)) => m.isa_line(line.get(), true),
            Op::Host(HostOp::IsaDeassert(line)) => m.isa_line(line.get(), false),
            Op::Host(HostOp::IsaPulse(line)) => {
                m.isa_line(line.get(), true);
                m.isa_line(line.get(), false);
            }
            _ => {}
        }
        self.pic_unmodelled(op, k)?;
        if let Some(mode) = self.machine.take_unmodelled() {
            return Err(Stop::Error(String::into_boxed_str(format!(
                "op {k} ({}): delivery mode {mode:?} is not modelled",
                op.keyword()
            ))));
        }
        Ok(())
    }

    /// What the pair or LINT0 was asked that the model does not model.
    #[cold]
    fn pic_unmodelled(&self, op: &Op, k: usize) -> Step {
        match self.machine.pic_unmodelled() {
            Some(what) => Err(Stop::Error(String::into_boxed_str(format!(
                "op {k} ({}): not modelled: {what}",
                op.keyword()
            )))),
            None => Ok(()),
        }
    }

    /// HLT: wakes on a deliverable interrupt, which is delivered; otherwise
    /// the guest can never wake (no timers, host ops come later).
    fn halt(&mut self, k: usize, depth: usize) -> Step {
        self.recorder.collect(&mut self.machine, k);
        // docs/scenario-format.md "The LAPIC timer": a HLT that nothing
        // else wakes is a wait of the hlt bound; an expiry may wake it.
        if self.machine.pending().is_none() && self.machine.lapic.timer_armed() {
            self.machine
                .timer_elapse(crate::scenario::HLT_TIMER_BOUND_US as u64 * 1000);
        }
        match self.machine.pending() {
            Some(interrupt) => {
                self.machine.note(Rule::HltWakes, 0);
                if self
                    .deviations
                    .breaks(Rule::DispatchAbovePpr, crate::model::Mode::Late)
                {
                    // dispatch-above-ppr/late: one interrupt per entry, the
                    // one that wakes the HLT.
                    return self.deliver(interrupt, k, depth);
                }
                self.deliver_pending(k, depth)
            }
            None => {
                self.machine.note(Rule::HltNoWake, 0);
                self.recorder.collect(&mut self.machine, k);
                Err(Stop::Hang(k))
            }
        }
    }

    /// Takes every deliverable interrupt, back to back. Most ops leave
    /// nothing deliverable: that check is inline, the loop is not.
    #[inline(always)]
    fn deliver_pending(&mut self, k: usize, depth: usize) -> Step {
        match self.machine.pending() {
            None => Ok(()),
            Some(interrupt) => self.deliver_all(interrupt, k, depth),
        }
    }

    /// [`Run::deliver_pending`] once `first` is deliverable.
    #[inline(never)]
    fn deliver_all(&mut self, first: Interrupt, k: usize, depth: usize) -> Step {
        let mut next = Some(first);
        while let Some(interrupt) = next {
            // A few times in a long run of deliveries, whether it repeats
            // itself.
            if self.deliveries >= 4
                && self.deliveries.is_power_of_two()
                && self.deliveries < STORM_LIMIT
                && !R::RECORDS
                && self.storm_shortcut
            {
                self.deliver_checked(interrupt, k, depth)?;
            } else {
                self.deliver(interrupt, k, depth)?;
            }
            next = self.machine.pending();
        }
        Ok(())
    }

    /// [`Run::deliver`], then, if the delivery (with its handler, which
    /// delivered nothing more) left the machine in the state it found, the
    /// rest of the storm without running it: the machine is deterministic,
    /// so every further delivery would take the same interrupt, run the
    /// same body and record the same events, until the storm limit. Only
    /// where nothing outside the machine changes what a delivery does: a
    /// plain run (no decisions), no dispatch-above-ppr deviation (its
    /// waiting state is the run's), a vector whose body does not depend on
    /// its delivery count (no `V#N` handler).
    #[cold]
    #[inline(never)]
    fn deliver_checked(&mut self, interrupt: Interrupt, k: usize, depth: usize) -> Step {
        let before = match self.machine.checkpoint() {
            Some(c) if !self.dispatch_deviates => c,
            _ => return self.deliver(interrupt, k, depth),
        };
        let (events, ops, deliveries) = (self.events.len(), self.ops, self.deliveries);
        self.deliver(interrupt, k, depth)?;
        let vector = match self.events[events].kind {
            EventKind::Deliver { vector } => vector,
            _ => unreachable!("a delivery records its event first"),
        };
        let counted = self.handled[vector as usize / 64] & (1 << (vector % 64)) != 0
            && self
                .scenario
                .handlers
                .keys()
                .any(|key| key.vector == vector && key.nth.is_some());
        if self.deliveries != deliveries + 1 || counted || !self.machine.is_at(&before) {
            return Ok(());
        }
        let repeats = STORM_LIMIT - self.deliveries;
        let end = self.events.len();
        if end - events == 1 {
            // The usual storm: the delivery alone, its body records nothing.
            self.events.reserve(repeats);
            for _ in 0..repeats {
                self.events.push(Event {
                    op: k,
                    cpu: 0,
                    kind: EventKind::Deliver { vector },
                });
            }
        } else {
            self.events.reserve(repeats * (end - events));
            for _ in 0..repeats {
                self.events.extend_from_within(events..end);
            }
        }
        self.ops += repeats as u64 * (self.ops - ops);
        self.count[vector as usize] += repeats as u8;
        self.deliveries = STORM_LIMIT;
        self.storm_shortcut_taken = true;
        Ok(())
    }

    fn deliver(&mut self, interrupt: Interrupt, k: usize, depth: usize) -> Step {
        if self.deliveries == STORM_LIMIT || depth >= MAX_NESTING {
            return Err(Stop::Storm);
        }
        self.deliveries += 1;
        let (vector, saved_if) = self.machine.take(interrupt);
        if interrupt == Interrupt::ExtInt {
            // The INTA of a pair that cannot answer (docs/pic.md).
            if let Some(what) = self.machine.pic_unmodelled() {
                return Err(Stop::Error(String::into_boxed_str(format!(
                    "op {k}: an external interrupt's INTA is not modelled: {what}"
                ))));
            }
        }
        // The delivery's own decision is its cause, recorded below.
        self.machine.clear_decisions();
        if self.dispatch_deviates
            && self.machine.lapic.is_level(vector)
            && self
                .deviations
                .breaks(Rule::EoiBroadcast, crate::model::Mode::Inverted)
        {
            // Deviation eoi-broadcast/inverted. With the IOAPIC in the
            // kernel the first exit comes before the handler's first op
            // (this host: the EOI is there by then); with the IOAPIC in
            // userspace, at the first exit to the VMM (`early_eoi_point`).
            if self.scenario.config.irqchip == Irqchip::Split && !self.host_exit_at_take {
                self.early_eoi = Some(vector);
            } else {
                self.send_early_eoi(vector);
            }
        }
        let event_index = self.events.len();
        self.events.push(Event {
            op: k,
            cpu: 0,
            kind: EventKind::Deliver { vector },
        });
        self.recorder.delivered(interrupt, vector, k, event_index);
        self.count[vector as usize] += 1;
        let body = if self.handled[vector as usize / 64] & (1 << (vector % 64)) != 0 {
            self.bodies.get(vector, self.count[vector as usize].into())
        } else {
            crate::scenario::DEFAULT_HANDLER
        };
        for op in body {
            self.op(op, k, depth + 1)?;
        }
        self.machine.iret(saved_if);
        Ok(())
    }
}

/// `timer ...`: the three register writes (SDM §11.5.4), in the order the
/// stub makes them; true if one faulted.
pub(crate) fn timer_setup(m: &mut Machine, t: &TimerSetup) -> bool {
    let mut fault = m
        .lapic_write(reg::TIMER_DIVIDE, t.divide_register())
        .is_err();
    fault |= m.lapic_write(reg::LVT_TIMER, t.lvt()).is_err();
    if t.mode != TimerOpMode::TscDeadline {
        fault |= m.lapic_write(reg::TIMER_INITIAL, t.count).is_err();
    }
    fault
}

/// The IA32_TSC_DEADLINE value a `tsc-deadline` op writes, in the model's TSC.
pub(crate) fn deadline_value(m: &Machine, d: Deadline) -> u64 {
    let tsc = m.lapic.timer().tsc();
    match d {
        Deadline::Disarm => 0,
        Deadline::Now => tsc,
        Deadline::After(n) => tsc + n as u64,
    }
}

fn read_register(m: &mut Machine, index: u8) -> u32 {
    m.ioapic_read_indirect(index)
}

fn write_register(m: &mut Machine, index: u8, value: u32) {
    m.ioapic_write_indirect(index, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::generate::{case_seed, random, GenConfig};

    /// The trace, the op count and whether the storm shortcut was taken.
    fn run(model: &mut ModelBackend, s: &Scenario, shortcut: bool) -> (Trace, u64, bool) {
        model.no_storm_shortcut = !shortcut;
        let trace = model.execute(s).unwrap();
        (trace, model.last_ops, model.last_storm_shortcut)
    }

    #[test]
    fn a_storm_counted_out_is_the_storm_run_in_full() {
        // docs/scenario-format.md: a storm is the 65th delivery; the trace
        // keeps the first 64 with everything their handlers recorded.
        let s = crate::scenario::parse(
            "handler 0x51: snapshot; eoi\nroute 2 vector=0x51 level\nassert 2\nnop\n",
        )
        .unwrap();
        let mut model = ModelBackend::new();
        let (full, full_ops, taken) = run(&mut model, &s, false);
        assert!(!taken);
        assert_eq!(full.outcome, Outcome::Storm);
        assert_eq!(full.events.len(), 2 * STORM_LIMIT);
        let (counted, ops, taken) = run(&mut model, &s, true);
        assert!(taken, "the level storm repeats itself");
        assert_eq!(counted, full);
        assert_eq!(ops, full_ops);
        assert_eq!(full_ops, 2 + 2 * STORM_LIMIT as u64);
    }

    #[test]
    fn a_storm_whose_handler_counts_its_deliveries_runs_in_full() {
        // A `V#N` body makes the Nth delivery differ from the others: here
        // the 20th blocks the vector (SDM §11.8.3).
        let s = crate::scenario::parse(
            "handler 0x51#20: tpr 0xf0; eoi\nroute 2 vector=0x51 level\nassert 2\n",
        )
        .unwrap();
        let mut model = ModelBackend::new();
        let (full, _, _) = run(&mut model, &s, false);
        let (counted, _, taken) = run(&mut model, &s, true);
        assert!(!taken);
        assert_eq!(counted, full);
        assert_eq!(
            counted.outcome,
            Outcome::Completed,
            "the 20th raises the TPR above the vector"
        );
    }

    #[test]
    fn random_programs_give_the_same_traces_with_the_storm_shortcut() {
        // The campaign's programs, with and without quirks and deviations
        // (the sim: backends), each with and without the shortcut.
        let cfg = GenConfig {
            max_ops: 32,
            ..GenConfig::default()
        };
        let backends = [
            ModelBackend::new(),
            ModelBackend::with_quirks(Quirks::QEMU_IOAPIC | Quirks::LEVEL_COALESCE_REDELIVER),
            ModelBackend::with_quirks(Quirks::EDGE_EVERY_ASSERT | Quirks::ISR_NEVER_SET),
            ModelBackend::with_deviations(Deviations::of(&[crate::model::Deviation::new(
                Rule::DispatchAbovePpr,
                crate::model::Mode::Late,
            )])),
        ];
        let mut taken = 0;
        for mut model in backends {
            for i in 0..1500 {
                let s = random(case_seed(3, i), &cfg);
                if s.uses_smp() {
                    continue;
                }
                let (full, full_ops, _) = run(&mut model, &s, false);
                let (counted, ops, shortcut) = run(&mut model, &s, true);
                assert_eq!(counted, full, "{s}");
                assert_eq!(ops, full_ops, "{s}");
                taken += shortcut as u32;
            }
        }
        assert!(taken > 50, "the shortcut was taken {taken} times");
    }
}
