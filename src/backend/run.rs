//! What the VMM backends (`kvm`, `hvf`) share: the irqchip shape, how a run
//! ends and becomes a trace, the call log, and the userspace IOAPIC of the
//! split shape.

use super::{BackendError, Result};
use crate::guest::layout::{EndCode, IOAPIC_BASE};
use crate::guest::{log, Image};
use crate::model::device::{read_entry, IoapicDevice, MessageQueue};
use crate::model::ioapic::RedirectionEntry;
use crate::model::ioapic::{Ioapic, IoapicVersion as ModelVersion};
use crate::model::lapic::reg;
use crate::model::{InterruptMessage, InterruptSink};
use crate::scenario::{IoapicVersion, Irqchip, Scenario};
use crate::trace::{Outcome, Trace};

/// The local vector table's registers (SDM Table 11-1), all masked in the
/// format's start state.
pub const LVTS: [u16; 6] = [
    reg::LVT_TIMER,
    reg::LVT_THERMAL,
    reg::LVT_PERF,
    reg::LVT_LINT0,
    reg::LVT_LINT1,
    reg::LVT_ERROR,
];

/// Where the IOAPIC lives: in the hypervisor with the local APIC (full) or
/// in userspace, the model's, with the hypervisor's local APIC (split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Full,
    Split,
}

impl Shape {
    /// The shape a run of `scenario` takes on a backend opened as `opened`:
    /// a split backend always runs split; a full one follows the
    /// scenario's `irqchip`.
    pub fn for_run(opened: Shape, scenario: &Scenario) -> Shape {
        if opened == Shape::Split || scenario.config.irqchip == Irqchip::Split {
            Shape::Split
        } else {
            Shape::Full
        }
    }

    pub fn is_split(self) -> bool {
        self == Shape::Split
    }
}

/// How a run of the guest ended.
pub enum End {
    /// The stub reported its end code.
    Stub(EndCode),
    /// The vCPU halted (or stayed idle) with nothing left to deliver.
    Hang,
    /// The VMM gave up on the run (the message says why).
    Error(String),
}

/// Turns a run's end and the guest's memory into the run's trace.
pub fn finish(name: &str, end: End, image: &Image, ram: &[u8]) -> Result<Trace> {
    let (cur_op, log_bytes) = image.read_back(ram);
    end_trace(name, end, cur_op, log::decode(log_bytes)?)
}

/// [`finish`] for a multi-CPU run: every CPU's log, merged by op.
pub fn finish_cpus(name: &str, end: End, image: &Image, ram: &[u8], cpus: usize) -> Result<Trace> {
    let (cur_op, _) = image.read_back(ram);
    let events = log::decode_cpus((0..cpus).map(|cpu| image.cpu_log_bytes(ram, cpu)))?;
    end_trace(name, end, cur_op, events)
}

/// The trace of a run that ended with `end` during op `cur_op`.
fn end_trace(
    name: &str,
    end: End,
    cur_op: usize,
    events: Vec<crate::trace::Event>,
) -> Result<Trace> {
    let mut trace = Trace::new(name);
    trace.events = events;
    match end {
        End::Stub(EndCode::Completed) => {}
        End::Stub(EndCode::Storm) => trace.outcome = Outcome::Storm,
        End::Stub(EndCode::LogFull) => return Err(BackendError::LogFull),
        End::Stub(EndCode::UnexpectedFault) => {
            trace.outcome = Outcome::Error;
            trace.error = Some(format!(
                "the guest took a #GP outside the stub's RDMSR/WRMSR (during op {cur_op})"
            ));
        }
        End::Hang => {
            trace.outcome = Outcome::Hang;
            trace.hang_op = Some(cur_op);
        }
        End::Error(message) => {
            trace.outcome = Outcome::Error;
            trace.error = Some(format!("{message} (during op {cur_op})"));
        }
    }
    Ok(trace)
}

/// The hypervisor calls and exits of a run, in order, for its report.
/// Once it holds [`CallLog::LIMIT`] entries it drops the rest before they
/// are built, so a long run pays nothing per exit. `C` is what an entry
/// is: a `String`, or a backend's own call type formatted only when a
/// report asks ([`CallLog::lines`]).
#[derive(Clone, Debug)]
pub struct CallLog<C = String> {
    calls: Vec<C>,
}

impl<C> Default for CallLog<C> {
    fn default() -> Self {
        CallLog { calls: Vec::new() }
    }
}

impl<C> CallLog<C> {
    /// Most calls a run records.
    pub const LIMIT: usize = 400;

    /// Records the call `describe` builds, unless the log is full.
    pub fn note(&mut self, describe: impl FnOnce() -> C) {
        if self.calls.len() < Self::LIMIT {
            self.calls.push(describe());
        }
    }

    pub fn clear(&mut self) {
        self.calls.clear();
    }

    pub fn entries(&self) -> &[C] {
        &self.calls
    }
}

impl<C: std::fmt::Display> CallLog<C> {
    /// The log as text, one line per call.
    pub fn lines(&self) -> Vec<String> {
        self.calls.iter().map(ToString::to_string).collect()
    }
}

/// The size of the IOAPIC's MMIO window the VMMs claim (one page).
const IOAPIC_WINDOW: u64 = 0x1000;

/// Whether `gpa` is in the IOAPIC's MMIO window.
pub fn in_ioapic_window(gpa: u64) -> bool {
    (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_WINDOW).contains(&gpa)
}

/// How a backend injects the userspace IOAPIC's messages into its local
/// APIC (`KVM_SIGNAL_MSI`, `hv_vm_send_ioapic_intr`).
pub trait MessagePort {
    type Error;
    /// What the backend's call log holds.
    type Call;
    /// Sends `msg`, noting the call in `log`; `Ok(true)` when a local APIC
    /// accepted it.
    fn send(
        &mut self,
        msg: &InterruptMessage,
        log: &mut CallLog<Self::Call>,
    ) -> std::result::Result<bool, Self::Error>;
}

/// The split shape's IOAPIC: the model's, driven by MMIO exits, EOI
/// broadcasts from the hypervisor's local APIC and the host's pin changes,
/// its messages sent out through a [`MessagePort`].
///
/// With a device under test ([`UserspaceIoapic::with_device`],
/// `kvm-split-ioapic:NAME`) the device takes the model's place: the same
/// calls go through [`IoapicDevice`], and the messages it sends to its sink
/// go out through the port after each call.
pub struct UserspaceIoapic {
    ioapic: Ioapic,
    device: Option<SplitDevice>,
}

/// A device under test in the split shape.
struct SplitDevice {
    make: fn(MessageQueue) -> Box<dyn IoapicDevice>,
    device: Box<dyn IoapicDevice>,
    queue: MessageQueue,
}

impl SplitDevice {
    fn new(make: fn(MessageQueue) -> Box<dyn IoapicDevice>) -> SplitDevice {
        let queue = MessageQueue::new();
        SplitDevice {
            make,
            device: make(queue.clone()),
            queue,
        }
    }
}

impl Default for UserspaceIoapic {
    fn default() -> Self {
        UserspaceIoapic {
            ioapic: Ioapic::new(ModelVersion::V20),
            device: None,
        }
    }
}

/// An [`InterruptSink`] over a port that keeps the first failure (the
/// model's IOAPIC has no way to stop on one).
struct PortSink<'a, P: MessagePort> {
    port: &'a mut P,
    log: &'a mut CallLog<P::Call>,
    failure: Option<P::Error>,
}

impl<P: MessagePort> InterruptSink for PortSink<'_, P> {
    fn send(&mut self, msg: &InterruptMessage) -> bool {
        if self.failure.is_some() {
            return false;
        }
        match self.port.send(msg, self.log) {
            Ok(accepted) => accepted,
            Err(e) => {
                self.failure = Some(e);
                false
            }
        }
    }
}

impl UserspaceIoapic {
    /// A device under test in place of the model's IOAPIC.
    pub fn with_device(make: fn(MessageQueue) -> Box<dyn IoapicDevice>) -> UserspaceIoapic {
        UserspaceIoapic {
            device: Some(SplitDevice::new(make)),
            ..UserspaceIoapic::default()
        }
    }

    /// Redirection entry `pin` as the IOAPIC holds it now (for KVM's GSI
    /// routing): the model's, or the device's read through its MMIO.
    pub fn entry(&mut self, pin: usize) -> RedirectionEntry {
        match &mut self.device {
            Some(d) => RedirectionEntry {
                raw: read_entry(&mut *d.device, pin),
            },
            None => self.ioapic.entry(pin),
        }
    }

    /// The format's start state for a scenario asking for `version` (a
    /// device under test is made anew: its own reset state).
    pub fn reset(&mut self, version: IoapicVersion) {
        if let Some(d) = &mut self.device {
            // The old device goes first: a device may be a process-wide
            // singleton (v86's).
            let make = d.make;
            self.device = None;
            self.device = Some(SplitDevice::new(make));
        }
        self.ioapic = Ioapic::new(match version {
            IoapicVersion::V11 => ModelVersion::V11,
            IoapicVersion::V20 => ModelVersion::V20,
        });
    }

    /// A read sends nothing (a device's messages queued by a read go out
    /// with the next call's).
    pub fn mmio_read(&mut self, offset: u64) -> u32 {
        if let Some(d) = &mut self.device {
            return d.device.mmio_read(offset);
        }
        self.ioapic.mmio_read(offset)
    }

    /// Sends what the device queued, in order (acceptance is not the
    /// device's to know: MsiSink).
    fn drain<P: MessagePort>(
        d: &mut SplitDevice,
        port: &mut P,
        log: &mut CallLog<P::Call>,
    ) -> std::result::Result<(), P::Error> {
        while let Some((address, data)) = d.queue.pop() {
            // §11.11.1: a write outside 0xFEExxxxx is no interrupt.
            if let Ok(msg) = crate::model::msi::decode(address, data) {
                port.send(&msg, log)?;
            }
        }
        Ok(())
    }

    pub fn mmio_write<P: MessagePort>(
        &mut self,
        offset: u64,
        value: u32,
        port: &mut P,
        log: &mut CallLog<P::Call>,
    ) -> std::result::Result<(), P::Error> {
        if let Some(d) = &mut self.device {
            d.device.mmio_write(offset, value);
            return Self::drain(d, port, log);
        }
        self.with_sink(port, log, |ioapic, sink| {
            ioapic.mmio_write(offset, value, sink)
        })
    }

    /// An EOI broadcast from the local APIC (82093AA §3.4: it clears the
    /// matching Remote IRR bits).
    pub fn eoi<P: MessagePort>(
        &mut self,
        vector: u8,
        port: &mut P,
        log: &mut CallLog<P::Call>,
    ) -> std::result::Result<(), P::Error> {
        if let Some(d) = &mut self.device {
            d.device.end_of_interrupt(vector);
            return Self::drain(d, port, log);
        }
        self.with_sink(port, log, |ioapic, sink| ioapic.eoi(vector, sink))
    }

    /// The host drives `pin` (`requested`: the logical level).
    pub fn set_irq<P: MessagePort>(
        &mut self,
        pin: usize,
        requested: bool,
        port: &mut P,
        log: &mut CallLog<P::Call>,
    ) -> std::result::Result<(), P::Error> {
        if let Some(d) = &mut self.device {
            d.device.set_irq(pin, requested);
            return Self::drain(d, port, log);
        }
        self.with_sink(port, log, |ioapic, sink| {
            ioapic.set_irq(pin, requested, sink)
        })
    }

    /// The routes the model's IOAPIC holds now (for KVM's GSI routing).
    pub fn ioapic(&self) -> &Ioapic {
        &self.ioapic
    }

    fn with_sink<P: MessagePort>(
        &mut self,
        port: &mut P,
        log: &mut CallLog<P::Call>,
        act: impl FnOnce(&mut Ioapic, &mut PortSink<'_, P>),
    ) -> std::result::Result<(), P::Error> {
        let mut sink = PortSink {
            port,
            log,
            failure: None,
        };
        act(&mut self.ioapic, &mut sink);
        sink.failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    #[test]
    fn a_full_call_log_formats_nothing() {
        let mut log: CallLog = CallLog::default();
        for i in 0..CallLog::<String>::LIMIT {
            log.note(|| format!("call {i}"));
        }
        let mut formatted = false;
        log.note(|| {
            formatted = true;
            "one too many".into()
        });
        assert!(!formatted);
        assert_eq!(log.entries().len(), CallLog::<String>::LIMIT);
        assert_eq!(log.entries()[CallLog::<String>::LIMIT - 1], "call 399");
    }

    #[test]
    fn a_split_backend_always_runs_split() {
        let full = parse("nop\n").unwrap();
        let split = parse("config irqchip=split\nnop\n").unwrap();
        assert_eq!(Shape::for_run(Shape::Full, &full), Shape::Full);
        assert_eq!(Shape::for_run(Shape::Full, &split), Shape::Split);
        assert_eq!(Shape::for_run(Shape::Split, &full), Shape::Split);
    }
}
