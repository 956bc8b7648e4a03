//! One vCPU's interrupt hardware wired together: the IOAPIC's messages and
//! MSIs reach the local APIC, the local APIC's EOI broadcasts reach the
//! IOAPIC, and the processor takes what the local APIC offers.
//!
//! Every step allocates nothing; decisions go into a fixed-size log that the
//! caller drains.

use crate::cpu::Cpu;
use crate::device::{IoapicDevice, MessageQueue};
use crate::ioapic::{DeliveryMode, InterruptMessage, InterruptSink, Ioapic, IoapicVersion};
use crate::lapic::{reg, Acceptance, GeneralProtection, Lapic, LVT_MASKED};
use crate::pic::{EdgeRequests, Pic, PicConfig, PicRule};
use crate::quirks::Quirks;
use crate::rules::{Deviations, Mode, Rule};

/// How the machine is built (the scenario's `config`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineConfig {
    pub ioapic: IoapicVersion,
    pub x2apic: bool,
    /// EOI-broadcast suppression advertised (version register bit 24).
    pub directed_eoi: bool,
    /// The IOAPIC lives in userspace (`irqchip=split`); only quirks care.
    pub split: bool,
    pub quirks: Quirks,
    /// Rules broken on purpose, to explain a backend's trace (diagnosis).
    pub deviations: Deviations,
}

/// One decision: the rule and the vector it concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub rule: Rule,
    pub vector: u8,
}

/// A fixed-size log of decisions since the caller last drained it.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    entries: [Decision; DecisionLog::CAPACITY],
    len: usize,
    /// Off: decisions are not kept (a caller that never reads them).
    recording: bool,
}

impl DecisionLog {
    pub const CAPACITY: usize = 64;

    pub(crate) fn new() -> DecisionLog {
        DecisionLog {
            entries: [Decision {
                rule: Rule::Quirk,
                vector: 0,
            }; Self::CAPACITY],
            len: 0,
            recording: true,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, rule: Rule, vector: u8) {
        if !self.recording {
            return;
        }
        // Keep the newest: the last decisions before a divergence matter most.
        if self.len == Self::CAPACITY {
            self.entries.copy_within(1.., 0);
            self.len -= 1;
        }
        self.entries[self.len] = Decision { rule, vector };
        self.len += 1;
    }

    pub fn entries(&self) -> &[Decision] {
        &self.entries[..self.len]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The state of a machine that decides its later steps
/// ([`Machine::checkpoint`]): equal checkpoints behave the same from there
/// on (the machine is deterministic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    ioapic: Ioapic,
    lapic: Lapic,
    cpu: Cpu,
    unmodelled: Option<DeliveryMode>,
    pic: Option<Box<PicWiring>>,
    extint_message: bool,
    pin0_host: bool,
}

/// What the processor can take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    Maskable(u8),
    Nmi,
    /// An external interrupt (ExtINT through LVT LINT0 or an IOAPIC
    /// message): taking it is an INTA cycle to the 8259 pair, which gives
    /// the vector (SDM vol. 3A §11.5.1; 82093AA §3.2.4).
    ExtInt,
}

/// The 8259A pair and its INT output's wires (issue 15): the processor's
/// INTR through LVT LINT0, and IOAPIC pin 0 (the MP specification's
/// virtual wire mode through the I/O APIC: the 8259's INTR goes to INTIN0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicWiring {
    pub pic: Pic,
    /// The master's INT as last seen, for the edges LINT0 reacts to.
    int: bool,
    /// The first thing asked of the pair or of LINT0 that the model does
    /// not model: the run ends with an error.
    unmodelled: Option<&'static str>,
}

/// LVT LINT delivery modes (SDM vol. 3A §11.5.1, bits 10:8).
const LVT_FIXED: u32 = 0;
const LVT_NMI: u32 = 4;
const LVT_EXTINT: u32 = 7;
/// LVT LINT trigger mode bit (1: level), used in fixed mode only.
const LVT_LEVEL: u32 = 1 << 15;

/// NMIs arrive through IDT vector 2.
pub const NMI_VECTOR: u8 = 2;

#[derive(Debug)]
pub struct Machine {
    /// The model's IOAPIC; unused when a device under test takes its
    /// place ([`Machine::with_device`]).
    pub ioapic: Ioapic,
    pub lapic: Lapic,
    pub cpu: Cpu,
    config: MachineConfig,
    log: DecisionLog,
    /// A message with a delivery mode the model does not model arrived.
    unmodelled: Option<DeliveryMode>,
    /// A device under test in place of `ioapic`.
    device: Option<External>,
    /// The 8259A pair, made at its first use: most scenarios never reach
    /// it, and a pair that was never used is masked with its INT low.
    pic: Option<Box<PicWiring>>,
    /// An ExtINT message was accepted (82093AA §3.2.4 delivery mode 111):
    /// the processor owes an INTA cycle. Edge: one INTA per message.
    extint_message: bool,
    /// The host's request at IOAPIC pin 0 (`assert 0`, `isa-assert 0`),
    /// which the master's INT is ORed with.
    pin0_host: bool,
}

/// A device under test and the queue its messages arrive in.
struct External {
    device: Box<dyn IoapicDevice>,
    queue: MessageQueue,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("External(IoapicDevice)")
    }
}

/// The message path from a source to the local APIC and processor.
struct Bus<'a> {
    lapic: &'a mut Lapic,
    cpu: &'a mut Cpu,
    log: &'a mut DecisionLog,
    unmodelled: &'a mut Option<DeliveryMode>,
    extint: &'a mut bool,
}

impl InterruptSink for Bus<'_> {
    fn send(&mut self, msg: &InterruptMessage) -> bool {
        // §11.6.2: a destination that names no local APIC reaches nobody.
        if !self.lapic.matches(msg.logical, msg.dest) {
            self.log.push(Rule::NoDestinationMatch, msg.vector);
            return false;
        }
        let acceptance = self.lapic.accept(msg);
        note_error_interrupt(&mut *self.lapic, &mut *self.log);
        match acceptance {
            Acceptance::Accepted => {
                self.log.push(msg.rule, msg.vector);
                true
            }
            Acceptance::Nmi => {
                // §6.7.1: one NMI can be held while NMIs are blocked.
                let rule = if self.cpu.nmi_blocked {
                    Rule::NmiBlocked
                } else {
                    Rule::NmiDelivers
                };
                self.cpu.nmi_pending = true;
                self.log.push(rule, NMI_VECTOR);
                true
            }
            Acceptance::Refused(rule) => {
                self.log.push(rule, msg.vector);
                false
            }
            // 82093AA §3.2.4 delivery mode 111: the processor will INTA
            // the 8259 pair when it can take a maskable interrupt.
            Acceptance::Unmodelled(DeliveryMode::ExtInt) => {
                *self.extint = true;
                self.log.push(Rule::ExtintIoapic, 0);
                true
            }
            Acceptance::Unmodelled(mode) => {
                *self.unmodelled = Some(mode);
                false
            }
        }
    }

    fn note(&mut self, rule: Rule, vector: u8) {
        self.log.push(rule, vector);
    }
}

/// Logs the error interrupt the local APIC raised, if any (SDM §11.5.3).
pub(crate) fn note_error_interrupt(lapic: &mut Lapic, log: &mut DecisionLog) {
    if let Some(vector) = lapic.take_error_interrupt() {
        log.push(Rule::ApicErrorInterrupt, vector);
    }
}

impl Machine {
    #[inline]
    pub fn new(config: MachineConfig) -> Machine {
        let ioapic = Ioapic::with_deviations(config.ioapic, config.quirks, config.deviations);
        let mut lapic = Lapic::new(config.x2apic, config.directed_eoi, config.quirks);
        lapic.set_deviations(config.deviations);
        Machine {
            ioapic,
            lapic,
            cpu: Cpu::new(),
            config,
            log: DecisionLog::new(),
            unmodelled: None,
            device: None,
            pic: None,
            extint_message: false,
            pin0_host: false,
        }
    }

    /// The model's CPU and local APIC with `make`'s IOAPIC in place of the
    /// model's: every IOAPIC access, input change and EOI broadcast goes to
    /// the device, and the messages it sends to its sink are delivered to
    /// the local APIC after each call (docs/byo-irqchip.md).
    pub fn with_device(
        config: MachineConfig,
        make: impl FnOnce(MessageQueue) -> Box<dyn IoapicDevice>,
    ) -> Machine {
        let queue = MessageQueue::new();
        let device = make(queue.clone());
        let mut m = Machine::new(config);
        m.device = Some(External { device, queue });
        m
    }

    /// The device under test, if one replaces the model's IOAPIC.
    pub fn device(&mut self) -> Option<&mut dyn IoapicDevice> {
        self.device
            .as_mut()
            .map(|e| &mut *e.device as &mut dyn IoapicDevice)
    }

    /// Calls into the device and delivers what it sent (SDM §11.11: each
    /// message is an MSI); `None` when the model's IOAPIC is in use.
    /// The check is inline (one compare on the model's path); the call is
    /// out of line.
    #[inline(always)]
    fn on_device<T>(&mut self, call: impl FnOnce(&mut dyn IoapicDevice) -> T) -> Option<T> {
        self.device.as_ref()?;
        Some(self.call_device(call))
    }

    #[cold]
    #[inline(never)]
    fn call_device<T>(&mut self, call: impl FnOnce(&mut dyn IoapicDevice) -> T) -> T {
        let ext = self.device.as_mut().expect("checked by on_device");
        let result = call(&mut *ext.device);
        let queue = ext.queue.clone();
        while let Some((address, data)) = queue.pop() {
            match crate::msi::decode(address, data) {
                Ok(msg) => {
                    self.message(&msg);
                }
                // §11.11.1: a write outside 0xFEExxxxx is no interrupt.
                Err(_) => self.log.push(Rule::MsiDelivers, data as u8),
            }
        }
        result
    }

    pub fn config(&self) -> MachineConfig {
        self.config
    }

    /// Splits the borrows: the IOAPIC and the message path to the LAPIC.
    fn parts(&mut self) -> (&mut Ioapic, Bus<'_>) {
        (
            &mut self.ioapic,
            Bus {
                lapic: &mut self.lapic,
                cpu: &mut self.cpu,
                log: &mut self.log,
                unmodelled: &mut self.unmodelled,
                extint: &mut self.extint_message,
            },
        )
    }

    pub fn decisions(&self) -> &[Decision] {
        self.log.entries()
    }

    #[inline]
    pub fn clear_decisions(&mut self) {
        self.log.clear();
    }

    /// Whether decisions are logged (on at construction). A caller that
    /// never reads [`Machine::decisions`] turns it off: the machine then
    /// behaves the same and logs nothing.
    pub fn set_recording(&mut self, on: bool) {
        self.log.recording = on;
        self.log.clear();
    }

    #[inline]
    pub fn note(&mut self, rule: Rule, vector: u8) {
        self.log.push(rule, vector);
    }

    /// A delivery mode the model does not model was sent (SMI, INIT,
    /// ExtINT or reserved); the caller ends the run with an error.
    #[inline]
    pub fn take_unmodelled(&mut self) -> Option<DeliveryMode> {
        self.unmodelled.take()
    }

    pub fn ioapic_mmio_read(&mut self, offset: u64) -> u32 {
        if let Some(v) = self.on_device(|d| d.mmio_read(offset)) {
            return v;
        }
        self.ioapic.mmio_read(offset)
    }

    pub fn ioapic_mmio_write(&mut self, offset: u64, value: u32) {
        if self.on_device(|d| d.mmio_write(offset, value)).is_some() {
            return;
        }
        let (ioapic, mut bus) = self.parts();
        ioapic.mmio_write(offset, value, &mut bus);
    }

    /// An IOAPIC indirect register read: IOREGSEL = `index`, then IOWIN.
    #[inline]
    pub fn ioapic_read_indirect(&mut self, index: u8) -> u32 {
        if let Some(v) = self.on_device(|d| {
            d.mmio_write(crate::ioapic::IOREGSEL, index as u32);
            d.mmio_read(crate::ioapic::IOWIN)
        }) {
            return v;
        }
        self.ioapic.select_and_read(index)
    }

    /// An IOAPIC indirect register write: IOREGSEL = `index`, then IOWIN.
    #[inline]
    pub fn ioapic_write_indirect(&mut self, index: u8, value: u32) {
        if self
            .on_device(|d| {
                d.mmio_write(crate::ioapic::IOREGSEL, index as u32);
                d.mmio_write(crate::ioapic::IOWIN, value)
            })
            .is_some()
        {
            return;
        }
        let (ioapic, mut bus) = self.parts();
        ioapic.select_and_write(index, value, &mut bus);
    }

    /// Drives IOAPIC input `pin` (logical level). Pin 0 is also the
    /// master 8259's INT ([`PicWiring`]): its input is the OR of both.
    #[inline]
    pub fn set_irq(&mut self, pin: usize, requested: bool) {
        if pin == 0 {
            return self.set_pin0(requested);
        }
        self.drive_ioapic(pin, requested);
    }

    #[cold]
    #[inline(never)]
    fn set_pin0(&mut self, requested: bool) {
        self.pin0_host = requested;
        let level = requested || self.pic.as_ref().is_some_and(|p| p.int);
        self.drive_ioapic(0, level);
    }

    #[inline]
    fn drive_ioapic(&mut self, pin: usize, requested: bool) {
        if self.on_device(|d| d.set_irq(pin, requested)).is_some() {
            return;
        }
        let (ioapic, mut bus) = self.parts();
        ioapic.set_irq(pin, requested, &mut bus);
    }

    /// An MSI or other message from outside.
    #[inline]
    pub fn message(&mut self, msg: &InterruptMessage) -> bool {
        let (_, mut bus) = self.parts();
        bus.send(msg)
    }

    /// A local APIC register read by the guest, through MMIO in xAPIC mode
    /// and RDMSR in x2APIC mode.
    pub fn lapic_read(&mut self, offset: u16) -> Result<u32, GeneralProtection> {
        if self.lapic.x2apic() {
            let read = self.lapic.read_msr(crate::lapic::msr_of(offset));
            self.x2apic_gp(read).map(|v| v.unwrap_or(0) as u32)
        } else {
            let value = self.lapic.read_mmio(offset);
            note_error_interrupt(&mut self.lapic, &mut self.log);
            Ok(value)
        }
    }

    /// A local APIC register write by the guest (MMIO or WRMSR), with its
    /// effects: EOI broadcast, self IPI.
    #[inline]
    pub fn lapic_write(&mut self, offset: u16, value: u32) -> Result<(), GeneralProtection> {
        if offset == reg::EOI && value == 0 {
            // The guest's usual EOI (every handler's): in either mode the
            // register write itself has no effect and cannot fault (SDM
            // §11.8.5, §11.12.1.3), so only the EOI's effect follows.
            if self.lapic.hw_enabled() {
                self.end_of_interrupt();
            }
            return Ok(());
        }
        self.lapic_write_register(offset, value)
    }

    /// [`Machine::lapic_write`] but for the usual EOI.
    fn lapic_write_register(&mut self, offset: u16, value: u32) -> Result<(), GeneralProtection> {
        let ipi = if self.lapic.x2apic() {
            let write = self
                .lapic
                .write_msr(crate::lapic::msr_of(offset), value as u64);
            self.x2apic_gp(write)?.flatten()
        } else {
            self.lapic.write(offset, value)
        };
        note_error_interrupt(&mut self.lapic, &mut self.log);
        // §11.4.3: a globally disabled APIC has no registers; the write
        // reaches nothing.
        if offset == reg::EOI && self.lapic.hw_enabled() {
            self.end_of_interrupt();
        }
        if let Some(msg) = ipi {
            self.message(&msg);
        }
        Ok(())
    }

    /// Time passes for the LAPIC timer, up to `limit` ns: the scenario
    /// format's waits (`timer-wait`, a `hlt` nothing else wakes). The
    /// expiry's interrupt, if any, is in the IRR afterwards; the caller
    /// delivers it. Returns whether the timer expired.
    pub fn timer_elapse(&mut self, limit: u64) -> bool {
        let Some((rule, vector)) = self.lapic.timer_elapse(limit) else {
            return false;
        };
        self.note(
            rule,
            vector.unwrap_or(self.lapic.read(reg::LVT_TIMER) as u8),
        );
        note_error_interrupt(&mut self.lapic, &mut self.log);
        true
    }

    /// WRMSR IA32_TSC_DEADLINE (SDM §11.5.4.1) with `value`; `#GP` where
    /// the processor has no TSC-deadline timer is the backend's (the model
    /// has one).
    pub fn write_tsc_deadline(&mut self, value: u64) {
        if let Some((rule, vector)) = self.lapic.write_tsc_deadline(value) {
            self.note(
                rule,
                vector.unwrap_or(self.lapic.read(reg::LVT_TIMER) as u8),
            );
            note_error_interrupt(&mut self.lapic, &mut self.log);
        }
    }

    /// RDMSR IA32_TSC_DEADLINE (SDM §11.5.4.1).
    pub fn read_tsc_deadline(&self) -> u64 {
        self.lapic.read_tsc_deadline()
    }

    /// An ICR write of `low` to destination `dest` (xAPIC: ICR high
    /// `dest << 24`, then ICR low; x2APIC: one WRMSR of MSR 0x830, SDM
    /// §11.12.9). On one CPU only what reaches this APIC is delivered.
    pub fn send_icr(&mut self, low: u32, dest: u32) -> Result<(), GeneralProtection> {
        if !self.lapic.x2apic() {
            self.lapic_write(reg::ICR_HIGH, (dest & 0xff) << 24)?;
            return self.lapic_write(reg::ICR_LOW, low);
        }
        let write = self.lapic.write_msr(
            crate::lapic::msr_of(reg::ICR_LOW),
            (dest as u64) << 32 | low as u64,
        );
        let ipi = self.x2apic_gp(write)?.flatten();
        note_error_interrupt(&mut self.lapic, &mut self.log);
        if let Some(msg) = ipi {
            self.message(&msg);
        }
        Ok(())
    }

    /// An x2APIC MSR access's #GP, or `Ok(None)` where the
    /// `X2APIC_GP_IGNORED` quirk swallows it.
    fn x2apic_gp<T>(
        &mut self,
        access: Result<T, GeneralProtection>,
    ) -> Result<Option<T>, GeneralProtection> {
        match access {
            Ok(v) => Ok(Some(v)),
            Err(_)
                if self.config.quirks.contains(Quirks::X2APIC_GP_IGNORED)
                    || self
                        .config
                        .deviations
                        .breaks(Rule::X2apicMsrGp, Mode::Skipped) =>
            {
                self.log.push(Rule::Quirk, 0);
                Ok(None)
            }
            Err(gp) => Err(gp),
        }
    }

    /// A guest write of IA32_APIC_BASE (SDM §11.4.4, §11.12.5).
    pub fn write_apic_base(&mut self, value: u32) -> Result<(), GeneralProtection> {
        let result = self.lapic.write_apic_base(value);
        self.log.push(Rule::ApicBaseTransition, 0);
        result
    }

    /// §11.8.5: the EOI clears the highest ISR bit and, for a level vector,
    /// is broadcast to the IOAPIC.
    fn end_of_interrupt(&mut self) {
        let Some(vector) = self.local_eoi() else {
            return;
        };
        let lost = self.config.split && self.config.quirks.contains(Quirks::SPLIT_EOI_LOST);
        let d = self.config.deviations;
        // `eoi-broadcast/inverted`: the VMM sent it at the first exit after
        // the vector was taken (the model backend's run does that).
        if lost
            || d.breaks(Rule::EoiBroadcast, Mode::Skipped)
            || d.breaks(Rule::EoiBroadcast, Mode::Inverted)
        {
            self.log.push(Rule::Quirk, vector);
            return;
        }
        self.ioapic_eoi(vector);
    }

    /// The local APIC's half of an EOI (§11.8.5): clears the highest ISR bit
    /// and returns the vector to broadcast, without broadcasting it. For
    /// VMMs that route the broadcast themselves (a userspace IOAPIC).
    pub fn local_eoi(&mut self) -> Option<u8> {
        let eoi = self.lapic.end_of_interrupt();
        self.log.push(eoi.rule, eoi.in_service.unwrap_or(0));
        eoi.broadcast
    }

    /// An EOI broadcast for `vector` reaching this machine's IOAPIC.
    pub fn ioapic_eoi(&mut self, vector: u8) {
        if self.on_device(|d| d.end_of_interrupt(vector)).is_some() {
            return;
        }
        let (ioapic, mut bus) = self.parts();
        ioapic.eoi(vector, &mut bus);
    }

    /// What the processor would take at this instruction boundary.
    #[inline]
    pub fn pending(&self) -> Option<Interrupt> {
        // §6.7.1: an NMI is not masked by IF, only blocked by another NMI.
        if self.cpu.nmi_pending && !self.cpu.nmi_blocked {
            return Some(Interrupt::Nmi);
        }
        // §6.8.1 and §11.8.3.
        if self.cpu.accepts_maskable() {
            // An external interrupt bypasses the local APIC's IRR and
            // priority (SDM §11.8.1: ExtINT goes straight to the core);
            // it is taken before a fixed one (KVM's kvm_cpu_get_interrupt
            // asks the PIC first; QEMU's cpu_get_pic_interrupt asks the
            // APIC first: an open choice, docs/pic.md).
            if self.extint_message || (self.pic.is_some() && self.lint0_intr()) {
                return Some(Interrupt::ExtInt);
            }
            return self.lapic.deliverable().map(Interrupt::Maskable);
        }
        None
    }

    /// Whether the master's INT reaches the processor's INTR: LVT LINT0
    /// unmasked in ExtINT mode (level-sensitive, SDM §11.5.1), or the APIC
    /// hardware-disabled (§11.4.3: no APIC, LINT0 is INTR).
    #[cold]
    #[inline(never)]
    fn lint0_intr(&self) -> bool {
        match &self.pic {
            Some(p) if p.int => {
                if !self.lapic.hw_enabled() {
                    return true;
                }
                let lvt = self.lapic.read(reg::LVT_LINT0);
                lvt & LVT_MASKED == 0 && (lvt >> 8) & 7 == LVT_EXTINT
            }
            _ => false,
        }
    }

    /// Why a requested vector is not being taken, if one is waiting.
    pub fn held_reason(&self) -> Option<(Rule, u8)> {
        let v = self.lapic.highest_irr()?;
        if !self.lapic.dispatchable(v) {
            Some((Rule::HeldByPpr, v))
        } else if !self.cpu.accepts_maskable() {
            Some((Rule::HeldByIf, v))
        } else {
            None
        }
    }

    /// The processor takes `interrupt` through its IDT gate: returns the
    /// vector and the IF that IRET restores.
    #[inline]
    pub fn take(&mut self, interrupt: Interrupt) -> (u8, bool) {
        match interrupt {
            Interrupt::Maskable(v) => {
                self.lapic.acknowledge(v);
                self.log.push(Rule::DispatchAbovePpr, v);
                (v, self.cpu.enter_interrupt_gate())
            }
            Interrupt::Nmi => (NMI_VECTOR, self.cpu.enter_nmi()),
            Interrupt::ExtInt => self.take_extint(),
        }
    }

    /// [`Machine::take`] of an external interrupt: the INTA, then the gate.
    #[cold]
    #[inline(never)]
    fn take_extint(&mut self) -> (u8, bool) {
        self.extint_message = false;
        let vector = self.pic_acknowledge();
        (vector, self.cpu.enter_interrupt_gate())
    }

    /// The 8259A pair, made in its start state at first use: the format's
    /// start machine has it masked (OCW1 0xff to both chips, as the stub
    /// writes), uninitialised, with every ISA line low. It latches edges
    /// until their INTA ([`EdgeRequests::HeldUntilAck`], the one IRR bit
    /// of QEMU, KVM and v86, docs/pic.md): the format's ISA lines are a
    /// VMM's, driven by ops with no width, and the datasheet's transparent
    /// latch would lose every `isa-pulse` the processor cannot take at
    /// once.
    fn pic_wiring(&mut self) -> &mut PicWiring {
        self.pic.get_or_insert_with(|| {
            let mut pic = Pic::new(PicConfig {
                edge_requests: EdgeRequests::HeldUntilAck,
            });
            for port in [0x21, 0xa1] {
                pic.port_write(port, 0xff).expect("a PIC port");
            }
            pic.clear_decisions();
            Box::new(PicWiring {
                pic,
                int: false,
                unmodelled: None,
            })
        })
    }

    /// The pair's state, if it was ever used.
    pub fn pic(&self) -> Option<&Pic> {
        self.pic.as_deref().map(|w| &w.pic)
    }

    /// What the pair or LINT0 was asked that the model does not model, if
    /// anything: the run ends with an error naming it.
    pub fn pic_unmodelled(&self) -> Option<&'static str> {
        let w = self.pic.as_deref()?;
        w.unmodelled.or(w.pic.unmodelled())
    }

    /// A guest `out` to an 8259 or ELCR port (0x20, 0x21, 0xa0, 0xa1,
    /// 0x4d0, 0x4d1; other ports reach nothing).
    pub fn pic_port_write(&mut self, port: u16, value: u8) {
        let _ = self.pic_wiring().pic.port_write(port, value);
        self.after_pic();
    }

    /// A guest `in` from an 8259 or ELCR port (a poll read is an INTA of
    /// its own, docs/pic.md); other ports read 0xff (nothing drives the bus).
    pub fn pic_port_read(&mut self, port: u16) -> u8 {
        let value = self.pic_wiring().pic.port_read(port).unwrap_or(0xff);
        self.after_pic();
        value
    }

    /// ISA line `line` (0-15 but 2) driven high or low: PIC IR `line` and
    /// IOAPIC pin `line`, in that order (KVM's default GSI routing lists
    /// the PIC's entry first).
    pub fn isa_line(&mut self, line: u8, high: bool) {
        let _ = self.pic_wiring().pic.set_irq(line, high);
        self.after_pic();
        self.set_irq(line as usize, high);
    }

    /// The INTA cycle of an external interrupt: the pair's vector.
    fn pic_acknowledge(&mut self) -> u8 {
        let w = self.pic_wiring();
        let vector = w.pic.acknowledge();
        let spurious = w
            .pic
            .decisions()
            .iter()
            .any(|d| d.rule == PicRule::DefaultIr7);
        let rule = if spurious {
            Rule::PicSpurious
        } else {
            Rule::PicVector
        };
        self.log.push(rule, vector);
        self.after_pic();
        vector
    }

    /// After the pair changed: its INT to IOAPIC pin 0 and to LINT0.
    fn after_pic(&mut self) {
        let Some(w) = self.pic.as_deref_mut() else {
            return;
        };
        w.pic.clear_decisions();
        let int = w.pic.int_output();
        if int == w.int {
            return;
        }
        w.int = int;
        let pin0 = self.pin0_host || int;
        self.drive_ioapic(0, pin0);
        if int {
            self.lint0_rising();
        }
    }

    /// A rising edge of the master's INT at LINT0 (SDM §11.5.1). ExtINT
    /// mode is level-sensitive and sampled by [`Machine::pending`].
    fn lint0_rising(&mut self) {
        if !self.lapic.hw_enabled() {
            return;
        }
        let lvt = self.lapic.read(reg::LVT_LINT0);
        if lvt & LVT_MASKED != 0 {
            self.log.push(Rule::LintMasked, lvt as u8);
            return;
        }
        match (lvt >> 8) & 7 {
            LVT_EXTINT => self.log.push(Rule::ExtintLint0, 0),
            LVT_FIXED if lvt & LVT_LEVEL == 0 => {
                let msg = InterruptMessage {
                    vector: lvt as u8,
                    delivery: DeliveryMode::Fixed,
                    logical: false,
                    dest: self.lapic.id(),
                    level: false,
                    rule: Rule::LintFixed,
                };
                let (_, bus) = self.parts();
                let acceptance = bus.lapic.accept(&msg);
                note_error_interrupt(&mut *bus.lapic, &mut *bus.log);
                if acceptance == Acceptance::Accepted {
                    self.log.push(Rule::LintFixed, msg.vector);
                }
            }
            LVT_NMI => {
                let rule = if self.cpu.nmi_blocked {
                    Rule::NmiBlocked
                } else {
                    Rule::LintNmi
                };
                self.cpu.nmi_pending = true;
                self.log.push(rule, NMI_VECTOR);
            }
            mode => {
                let what = if mode == LVT_FIXED {
                    "a level-triggered LVT LINT0 in fixed mode (its remote IRR, SDM 11.5.1)"
                } else {
                    "LVT LINT0 in SMI, INIT or a reserved delivery mode"
                };
                if let Some(w) = self.pic.as_deref_mut() {
                    w.unmodelled.get_or_insert(what);
                }
            }
        }
    }

    #[inline]
    pub fn iret(&mut self, saved_if: bool) {
        self.cpu.iret(saved_if);
    }

    /// A copy of the state that decides every later step, to tell whether
    /// a sequence of steps came back to where it started (a storm that
    /// repeats itself). `None` when a device under test replaces the IOAPIC
    /// (its state is not the model's to copy) or decisions are being
    /// logged (the log is an output, and it differs).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        if self.device.is_some() || self.log.recording {
            return None;
        }
        Some(Checkpoint {
            ioapic: self.ioapic.clone(),
            lapic: self.lapic.clone(),
            cpu: self.cpu,
            unmodelled: self.unmodelled,
            pic: self.pic.clone(),
            extint_message: self.extint_message,
            pin0_host: self.pin0_host,
        })
    }

    /// Whether the machine is in the state of `checkpoint`: the same steps
    /// from here do the same as they did from there.
    pub fn is_at(&self, checkpoint: &Checkpoint) -> bool {
        self.cpu == checkpoint.cpu
            && self.unmodelled == checkpoint.unmodelled
            && self.extint_message == checkpoint.extint_message
            && self.pin0_host == checkpoint.pin0_host
            && self.pic == checkpoint.pic
            && self.lapic == checkpoint.lapic
            && self.ioapic == checkpoint.ioapic
    }

    /// The redirection entry's remote IRR and delivery status, per pin.
    pub fn ioapic_status(&mut self) -> ([bool; 24], [bool; 24]) {
        if let Some(ext) = &mut self.device {
            let mut remote_irr = [false; 24];
            let mut delivery_status = [false; 24];
            for pin in 0..24 {
                let e = crate::ioapic::RedirectionEntry {
                    raw: crate::device::read_entry(&mut *ext.device, pin),
                };
                remote_irr[pin] = e.remote_irr();
                delivery_status[pin] = e.delivery_status();
            }
            return (remote_irr, delivery_status);
        }
        let remote = self.ioapic.remote_irr_pins();
        let mut remote_irr = [false; 24];
        for (pin, bit) in remote_irr.iter_mut().enumerate() {
            *bit = remote & (1 << pin) != 0;
        }
        // Delivery is instantaneous (crate docs): no entry's delivery
        // status reads as pending, unless a guest wrote it
        // (`ioapic-read-only-bits/skipped`).
        let pending = self.ioapic.delivery_status_pins();
        (
            remote_irr,
            std::array::from_fn(|pin| pending & (1 << pin) != 0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::{IOREGSEL, IOWIN};

    fn route(m: &mut Machine, pin: u8, low: u32) {
        m.ioapic_mmio_write(IOREGSEL, 0x11 + 2 * pin as u32);
        m.ioapic_mmio_write(IOWIN, 0);
        m.ioapic_mmio_write(IOREGSEL, 0x10 + 2 * pin as u32);
        m.ioapic_mmio_write(IOWIN, low);
    }

    #[test]
    fn level_eoi_broadcast_reaches_the_ioapic_and_redelivers() {
        // SDM §11.8.5 with 82093AA §3.2.4 bit 14.
        let mut m = Machine::new(MachineConfig::default());
        route(&mut m, 14, 0x9a | 1 << 15);
        m.set_irq(14, true);
        let (v, saved) = m.take(m.pending().unwrap());
        assert_eq!(v, 0x9a);
        assert!(m.pending().is_none(), "IF = 0 in the handler");
        m.lapic_write(reg::EOI, 0).unwrap();
        m.iret(saved);
        assert_eq!(
            m.pending(),
            Some(Interrupt::Maskable(0x9a)),
            "still asserted: sent again"
        );
    }

    #[test]
    fn suppressed_broadcast_leaves_remote_irr_until_the_ioapic_eoi_register() {
        // SDM §11.8.5 / §11.9 SVR bit 12; ICH EOI register.
        let mut m = Machine::new(MachineConfig {
            directed_eoi: true,
            ..MachineConfig::default()
        });
        m.lapic_write(reg::SVR, 0x11ff).unwrap();
        route(&mut m, 3, 0x60 | 1 << 15);
        m.set_irq(3, true);
        let (_, saved) = m.take(m.pending().unwrap());
        m.set_irq(3, false);
        m.lapic_write(reg::EOI, 0).unwrap();
        m.iret(saved);
        assert!(m.ioapic.entry(3).remote_irr());
        m.ioapic_mmio_write(crate::ioapic::IOEOI, 0x60);
        assert!(!m.ioapic.entry(3).remote_irr());
    }

    #[test]
    fn split_eoi_lost_quirk_only_in_split_mode() {
        for (split, stuck) in [(true, true), (false, false)] {
            let mut m = Machine::new(MachineConfig {
                split,
                quirks: Quirks::SPLIT_EOI_LOST,
                ..MachineConfig::default()
            });
            route(&mut m, 3, 0x60 | 1 << 15);
            m.set_irq(3, true);
            let (_, saved) = m.take(m.pending().unwrap());
            m.set_irq(3, false);
            m.lapic_write(reg::EOI, 0).unwrap();
            m.iret(saved);
            assert_eq!(m.ioapic.entry(3).remote_irr(), stuck);
        }
    }

    #[test]
    fn nmi_ignores_if_and_waits_for_iret_when_blocked() {
        // SDM §6.7.1.
        let mut m = Machine::new(MachineConfig::default());
        m.cpu.cli();
        let nmi = InterruptMessage {
            vector: 0,
            delivery: DeliveryMode::Nmi,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        };
        m.message(&nmi);
        assert_eq!(m.pending(), Some(Interrupt::Nmi));
        let (v, saved) = m.take(Interrupt::Nmi);
        assert_eq!(v, NMI_VECTOR);
        m.message(&nmi);
        assert_eq!(m.pending(), None, "blocked until IRET");
        m.iret(saved);
        assert_eq!(m.pending(), Some(Interrupt::Nmi));
    }

    #[test]
    fn software_disabled_apic_leaves_remote_irr_clear() {
        // SDM §11.4.7.2 with 82093AA §3.2.4 bit 14 (catalogue G-8): the
        // refused level message is not accepted, so remote IRR stays clear
        // (as KVM; QEMU sets it before sending). Re-enabling does not make
        // the IOAPIC resend; rewriting the entry of the asserted pin does.
        let mut m = Machine::new(MachineConfig::default());
        m.lapic_write(reg::SVR, 0xff).unwrap();
        route(&mut m, 3, 0x60 | 1 << 15);
        m.set_irq(3, true);
        assert!(!m.ioapic.entry(3).remote_irr());
        assert!(m.pending().is_none());
        assert_eq!(
            m.decisions().last().unwrap().rule,
            Rule::ApicSoftwareDisabled
        );
        m.lapic_write(reg::SVR, 0x1ff).unwrap();
        assert!(m.pending().is_none());
        route(&mut m, 3, 0x60 | 1 << 15);
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x60)));
        assert!(m.ioapic.entry(3).remote_irr());
    }

    #[test]
    fn edge_eoi_is_not_broadcast() {
        // SDM §11.8.5: an edge vector's EOI never reaches the IOAPIC, so a
        // level entry with the same vector keeps its remote IRR.
        let mut m = Machine::new(MachineConfig::default());
        route(&mut m, 5, 0x70 | 1 << 15);
        m.set_irq(5, true);
        m.set_irq(5, false);
        // Take 0x70 (level, TMR set) and EOI it through the IOAPIC path later;
        // first an edge MSI of a higher vector goes in service and is EOId.
        let (_, saved) = m.take(m.pending().unwrap());
        m.message(&InterruptMessage {
            vector: 0x80,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        });
        m.iret(saved);
        let (v, saved) = m.take(m.pending().unwrap());
        assert_eq!(v, 0x80);
        m.clear_decisions();
        m.lapic_write(reg::EOI, 0).unwrap();
        assert_eq!(
            m.decisions(),
            &[Decision {
                rule: Rule::EoiEdgeNotBroadcast,
                vector: 0x80
            }]
        );
        assert!(m.ioapic.entry(5).remote_irr());
        m.lapic_write(reg::EOI, 0).unwrap();
        assert!(!m.ioapic.entry(5).remote_irr());
        m.iret(saved);
    }

    #[test]
    fn an_illegal_self_ipi_is_delivered_as_the_lvt_error_vector() {
        // SDM §11.5.3: the error interrupt goes through LVT Error; the
        // illegal vector itself is not delivered.
        let mut m = Machine::new(MachineConfig::default());
        m.lapic_write(reg::LVT_ERROR, 0xe3).unwrap();
        m.clear_decisions();
        m.lapic_write(reg::ICR_LOW, 1 << 18 | 0x03).unwrap();
        assert_eq!(
            m.decisions(),
            &[Decision {
                rule: Rule::ApicErrorInterrupt,
                vector: 0xe3
            }]
        );
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0xe3)));
        // An illegal vector from the IOAPIC or an MSI raises it too.
        let mut m = Machine::new(MachineConfig::default());
        m.lapic_write(reg::LVT_ERROR, 0xe3).unwrap();
        m.lapic_read(0x040).unwrap();
        assert_eq!(m.decisions().last().unwrap().rule, Rule::ApicErrorInterrupt);
        m.lapic.acknowledge(0xe3);
        m.clear_decisions();
        m.message(&InterruptMessage {
            vector: 0x0a,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        });
        assert_eq!(m.decisions()[0].rule, Rule::ApicErrorInterrupt);
        assert_eq!(m.decisions()[1].rule, Rule::IllegalVector);
    }

    #[test]
    fn indirect_access_selects_then_reads_or_writes_the_window() {
        // 82093AA §3.1: IOREGSEL selects the register, IOWIN accesses it;
        // the one-call form does both and leaves IOREGSEL selected.
        let mut m = Machine::new(MachineConfig::default());
        m.ioapic_write_indirect(0x18, 0x41 | 1 << 15);
        assert_eq!(m.ioapic_mmio_read(IOREGSEL), 0x18);
        assert_eq!(m.ioapic_read_indirect(0x18), 0x41 | 1 << 15);
        assert_eq!(m.ioapic_read_indirect(0x19), 0);
        // §3.2.4: the entry written is the one that routes pin 4.
        m.set_irq(4, true);
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x41)));
        assert_eq!(m.ioapic_read_indirect(0x18), 0x41 | 1 << 15 | 1 << 14);
    }

    #[test]
    fn a_non_zero_x2apic_eoi_faults_and_does_not_end_the_interrupt() {
        // SDM §11.12.1.3: in x2APIC mode only 0 may be written to the EOI
        // MSR; any other value raises #GP and the write has no effect. In
        // xAPIC mode the value is ignored (§11.8.5).
        let mut m = Machine::new(MachineConfig {
            x2apic: true,
            ..MachineConfig::default()
        });
        m.message(&InterruptMessage {
            vector: 0x45,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        });
        let (v, _) = m.take(m.pending().unwrap());
        assert_eq!(v, 0x45);
        assert_eq!(m.lapic_write(reg::EOI, 1), Err(GeneralProtection));
        assert_eq!(m.lapic.isr()[2], 1 << 5, "0x45 still in service");
        assert_eq!(m.lapic_write(reg::EOI, 0), Ok(()));
        assert_eq!(m.lapic.isr(), [0; 8]);
        let mut m = Machine::new(MachineConfig::default());
        m.lapic.acknowledge(0x45);
        assert_eq!(m.lapic_write(reg::EOI, 1), Ok(()));
        assert_eq!(m.lapic.isr(), [0; 8], "xAPIC: any value ends it");
    }

    #[test]
    fn the_x2apic_gp_ignored_quirk_swallows_only_faulting_accesses() {
        // Rule x2apic-msr-gp (SDM §11.12.1.2, §11.12.1.3): a reserved MSR
        // faults; under X2APIC_GP_IGNORED it reads 0 and writes nothing,
        // logged as the quirk, while accesses that do not fault are unchanged.
        let x2apic = |quirks| {
            Machine::new(MachineConfig {
                x2apic: true,
                quirks,
                ..MachineConfig::default()
            })
        };
        let mut m = x2apic(Quirks::empty());
        assert_eq!(m.lapic_read(0x3a0), Err(GeneralProtection));
        assert_eq!(m.lapic_write(0x3a0, 1), Err(GeneralProtection));
        let mut m = x2apic(Quirks::X2APIC_GP_IGNORED);
        m.clear_decisions();
        assert_eq!(m.lapic_read(0x3a0), Ok(0));
        assert_eq!(m.decisions().last().unwrap().rule, Rule::Quirk);
        assert_eq!(m.lapic_write(0x3a0, 1), Ok(()));
        m.lapic_write(reg::TPR, 0x20).unwrap();
        assert_eq!(m.lapic_read(reg::TPR), Ok(0x20));
        assert_eq!(m.lapic.tpr(), 0x20);
    }

    #[test]
    fn a_machine_not_recording_logs_nothing_and_behaves_the_same() {
        // The log explains; it never decides (SDM §11.8.5 EOI here).
        let run = |recording: bool| {
            let mut m = Machine::new(MachineConfig::default());
            m.set_recording(recording);
            route(&mut m, 3, 0x60 | 1 << 15);
            m.set_irq(3, true);
            let (v, saved) = m.take(m.pending().unwrap());
            m.lapic_write(reg::EOI, 0).unwrap();
            m.iret(saved);
            (v, m.pending(), m.decisions().len())
        };
        let (v, pending, logged) = run(false);
        assert_eq!(
            (v, pending, logged),
            (0x60, Some(Interrupt::Maskable(0x60)), 0)
        );
        let (v, pending, logged) = run(true);
        assert_eq!((v, pending), (0x60, Some(Interrupt::Maskable(0x60))));
        assert!(logged >= 4, "{logged}");
        // Turning it off drops what was logged.
        let mut m = Machine::new(MachineConfig::default());
        m.note(Rule::HltNoWake, 0);
        m.set_recording(false);
        assert!(m.decisions().is_empty());
        m.note(Rule::HltNoWake, 0);
        assert!(m.decisions().is_empty());
        m.set_recording(true);
        m.note(Rule::HltNoWake, 1);
        assert_eq!(m.decisions().len(), 1);
    }

    #[test]
    fn the_decision_log_keeps_the_newest_entries() {
        // The log is bounded; a divergence is explained by what came last.
        let mut log = DecisionLog::new();
        for v in 0..(DecisionLog::CAPACITY as u8 + 3) {
            log.push(Rule::HeldByIf, v);
        }
        let entries = log.entries();
        assert_eq!(entries.len(), DecisionLog::CAPACITY);
        assert_eq!(entries[0].vector, 3);
        assert_eq!(
            entries.last().unwrap().vector,
            DecisionLog::CAPACITY as u8 + 2
        );
        log.clear();
        assert!(log.entries().is_empty());
    }

    #[test]
    fn held_reason_names_ppr_before_if() {
        // SDM §11.8.3 (PPR holds the class) and §6.8.1 (IF holds the rest).
        let mut m = Machine::new(MachineConfig::default());
        assert_eq!(m.held_reason(), None);
        m.lapic_write(reg::TPR, 0x50).unwrap();
        m.message(&InterruptMessage {
            vector: 0x45,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        });
        m.cpu.cli();
        assert_eq!(m.held_reason(), Some((Rule::HeldByPpr, 0x45)));
        m.lapic_write(reg::TPR, 0).unwrap();
        assert_eq!(m.held_reason(), Some((Rule::HeldByIf, 0x45)));
        assert_eq!(m.pending(), None);
        m.cpu.sti();
        m.cpu.end_of_instruction();
        assert_eq!(m.held_reason(), None);
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x45)));
    }

    #[test]
    fn unmodelled_delivery_modes_are_reported_once() {
        // SMI, INIT and ExtINT are not modelled (lib.rs): the machine says so.
        let mut m = Machine::new(MachineConfig::default());
        let init = InterruptMessage {
            vector: 0,
            delivery: DeliveryMode::Init,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        };
        assert!(!m.message(&init));
        assert_eq!(m.take_unmodelled(), Some(DeliveryMode::Init));
        assert_eq!(m.take_unmodelled(), None);
    }

    #[test]
    fn apic_base_writes_and_eois_of_a_disabled_apic() {
        // SDM §11.4.4: every IA32_APIC_BASE write is logged with its rule;
        // §11.4.3: a globally disabled APIC takes no EOI.
        let config = MachineConfig {
            directed_eoi: true,
            split: true,
            ..MachineConfig::default()
        };
        let mut m = Machine::new(config);
        assert_eq!(m.config(), config);
        route(&mut m, 3, 0x60 | 1 << 15);
        m.set_irq(3, true);
        assert!(m.ioapic.entry(3).remote_irr());
        m.clear_decisions();
        assert_eq!(m.write_apic_base(0xfee0_0001), Err(GeneralProtection));
        assert_eq!(m.decisions()[0].rule, Rule::ApicBaseTransition);
        m.write_apic_base(0xfee0_0000).unwrap();
        m.clear_decisions();
        m.lapic_write(reg::EOI, 0).unwrap();
        assert!(m.decisions().is_empty(), "no EOI reaches a disabled APIC");
        assert!(m.ioapic.entry(3).remote_irr());
        let (remote_irr, delivery_status) = m.ioapic_status();
        assert!(remote_irr[3] && !remote_irr[2] && delivery_status == [false; 24]);
    }

    #[test]
    fn local_eoi_logs_its_rule_and_returns_the_broadcast() {
        // SDM §11.8.5: the local half of an EOI, for a userspace IOAPIC.
        let mut m = Machine::new(MachineConfig::default());
        route(&mut m, 3, 0x60 | 1 << 15);
        m.set_irq(3, true);
        let (_, saved) = m.take(m.pending().unwrap());
        m.clear_decisions();
        assert_eq!(m.local_eoi(), Some(0x60));
        assert_eq!(
            m.decisions(),
            &[Decision {
                rule: Rule::EoiBroadcast,
                vector: 0x60
            }]
        );
        assert!(m.ioapic.entry(3).remote_irr(), "not broadcast yet");
        m.ioapic_eoi(0x60);
        assert_eq!(m.pending(), None, "IF is still 0");
        m.iret(saved);
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x60)), "re-sent");
        assert_eq!(m.local_eoi(), None);
        assert_eq!(
            m.decisions().last().unwrap().rule,
            Rule::EoiNothingInService
        );
    }

    #[test]
    fn ioapic_decisions_and_notes_reach_the_log() {
        // 82093AA §3.2.4 bit 16: a masked edge is lost; the IOAPIC's note of
        // it is the machine's decision, as is one the caller adds.
        let mut m = Machine::new(MachineConfig::default());
        route(&mut m, 2, 0x33 | 1 << 16);
        m.clear_decisions();
        m.set_irq(2, true);
        assert_eq!(
            m.decisions(),
            &[Decision {
                rule: Rule::EdgeMaskedLost,
                vector: 0x33
            }]
        );
        m.note(Rule::HltNoWake, 7);
        assert_eq!(
            m.decisions()[1],
            Decision {
                rule: Rule::HltNoWake,
                vector: 7
            }
        );
        // §3.1: the machine's MMIO read is the IOAPIC's.
        m.ioapic_mmio_write(IOREGSEL, 0x14);
        assert_eq!(m.ioapic_mmio_read(IOWIN), 0x0001_0033);
    }

    #[test]
    fn unrouted_destination_is_not_delivered() {
        // SDM §11.6.2.1.
        let mut m = Machine::new(MachineConfig::default());
        let msg = InterruptMessage {
            vector: 0x40,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 5,
            level: false,
            rule: Rule::MsiDelivers,
        };
        assert!(!m.message(&msg));
        assert!(m.pending().is_none());
        assert_eq!(m.decisions().last().unwrap().rule, Rule::NoDestinationMatch);
    }

    #[test]
    fn a_device_in_place_of_the_ioapic_reaches_the_lapic_and_takes_the_eoi() {
        // docs/byo-irqchip.md: the model's IOAPIC behind the device trait
        // behaves as the model's own for a level pin (82093AA §3.2.4 bit
        // 14, SDM §11.8.5).
        let mut m = Machine::with_device(MachineConfig::default(), |sink| {
            Box::new(crate::device::ModelIoapic::new(IoapicVersion::V20, sink))
        });
        route(&mut m, 4, 0x71 | 1 << 15);
        m.set_irq(4, true);
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x71)));
        assert!(m.device().is_some());
        let (_, saved) = m.take(m.pending().unwrap());
        assert!(m.ioapic_status().0[4], "remote IRR, read by MMIO");
        m.set_irq(4, false);
        m.lapic_write(reg::EOI, 0).unwrap();
        m.iret(saved);
        assert!(!m.ioapic_status().0[4]);
        assert_eq!(m.pending(), None);
        assert_eq!(m.ioapic_read_indirect(0x18), 0x71 | 1 << 15);
    }

    #[test]
    fn a_level_storm_comes_back_to_its_checkpoint_and_other_steps_do_not() {
        // 82093AA §3.2.4 bit 14 with SDM §11.8.5: an asserted level pin is
        // sent again at each EOI, so delivery, EOI and IRET leave the
        // machine as they found it; a step that changes any state does not.
        let mut m = Machine::new(MachineConfig::default());
        assert!(m.checkpoint().is_none(), "decisions are logged");
        m.set_recording(false);
        route(&mut m, 2, 0x51 | 1 << 15);
        m.set_irq(2, true);
        let start = m.checkpoint().unwrap();
        assert!(m.is_at(&start));
        let (_, saved) = m.take(m.pending().unwrap());
        assert!(!m.is_at(&start), "in service, IF = 0");
        m.lapic_write(reg::EOI, 0).unwrap();
        m.iret(saved);
        assert!(m.is_at(&start), "requested again, remote IRR set again");
        m.cpu.cli();
        assert!(!m.is_at(&start), "the processor's state counts");
        m.cpu.sti();
        m.cpu.end_of_instruction();
        assert!(m.is_at(&start));
        m.set_irq(2, false);
        assert!(!m.is_at(&start), "the IOAPIC's input counts");
        m.set_irq(2, true);
        m.lapic_write(reg::TPR, 0x20).unwrap();
        assert!(!m.is_at(&start), "the local APIC's state counts");
        m.lapic_write(reg::TPR, 0).unwrap();
        assert!(m.is_at(&start));
        let mut d = Machine::with_device(MachineConfig::default(), |sink| {
            Box::new(crate::device::ModelIoapic::new(IoapicVersion::V20, sink))
        });
        d.set_recording(false);
        assert!(d.checkpoint().is_none(), "a device's state is its own");
    }

    #[test]
    fn an_unmodelled_message_is_part_of_the_state() {
        // SDM §10.6.1 / §11.6.1: SMI, INIT and ExtINT are not modelled; the
        // run stops on one, so a checkpoint must not hide it.
        let mut m = Machine::new(MachineConfig::default());
        m.set_recording(false);
        let start = m.checkpoint().unwrap();
        m.message(&InterruptMessage {
            vector: 0x30,
            delivery: DeliveryMode::Smi,
            logical: false,
            dest: 0,
            level: false,
            rule: Rule::MsiDelivers,
        });
        assert!(!m.is_at(&start));
        assert_eq!(m.take_unmodelled(), Some(DeliveryMode::Smi));
        assert!(m.is_at(&start));
    }

    // ---- PIC and LINT (issue 15): each rule of the wiring, with its test.

    /// Linux's init_8259A: bases 0x30/0x38, cascade on IR2, 8086 mode
    /// (AEOI with `aeoi`), then the IMRs.
    fn pic_machine(aeoi: bool, imr: [u8; 2]) -> Machine {
        let mut m = Machine::new(MachineConfig::default());
        let icw4 = if aeoi { 0x03 } else { 0x01 };
        for (port, value) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, icw4),
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, icw4),
            (0x21, imr[0]),
            (0xa1, imr[1]),
        ] {
            m.pic_port_write(port, value);
        }
        m
    }

    fn logged(m: &Machine, rule: Rule) -> bool {
        m.decisions().iter().any(|d| d.rule == rule)
    }

    #[test]
    fn the_pair_starts_masked_and_reaches_nothing() {
        // docs/scenario-format.md: the start machine has the 8259s masked.
        let mut m = Machine::new(MachineConfig::default());
        assert_eq!(m.pic_port_read(0x21), 0xff);
        assert_eq!(m.pic_port_read(0xa1), 0xff);
        m.lapic_write(reg::LVT_LINT0, 0x700).unwrap();
        m.isa_line(1, true);
        assert_eq!(m.pending(), None);
    }

    #[test]
    fn extint_through_lint0_takes_the_pairs_vector() {
        // Rules extint-lint0 and pic-vector: SDM §11.5.1 ExtINT; 8259A
        // Interrupt Sequence.
        let mut m = pic_machine(false, [0xf9, 0xef]);
        m.lapic_write(reg::LVT_LINT0, 0x700).unwrap();
        m.isa_line(1, true);
        assert!(logged(&m, Rule::ExtintLint0));
        assert_eq!(m.pending(), Some(Interrupt::ExtInt));
        let (vector, _) = m.take(Interrupt::ExtInt);
        assert_eq!(vector, 0x31);
        assert!(logged(&m, Rule::PicVector));
        // The local APIC is bypassed: no IRR or ISR bit.
        assert_eq!(m.lapic.isr(), [0; 8]);
        assert_eq!(m.pic().unwrap().master().isr(), 1 << 1);
        // Through the cascade: IRQ 12 is the slave's IR4.
        m.pic_port_write(0x20, 0x20);
        m.isa_line(12, true);
        m.iret(true);
        let (vector, _) = m.take(m.pending().unwrap());
        assert_eq!(vector, 0x3c);
    }

    #[test]
    fn extint_is_level_sensitive_ignores_tpr_and_waits_for_if() {
        // SDM §11.5.1: ExtINT is always level-sensitive; §11.8.1: it does
        // not go through the IRR, so the PPR does not hold it.
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.lapic_write(reg::LVT_LINT0, 0x1_0700).unwrap();
        m.isa_line(1, true);
        assert_eq!(m.pending(), None, "masked LINT0");
        m.lapic_write(reg::TPR, 0xf0).unwrap();
        m.lapic_write(reg::LVT_LINT0, 0x700).unwrap();
        assert_eq!(
            m.pending(),
            Some(Interrupt::ExtInt),
            "unmasked with INT high"
        );
        m.cpu.cli();
        assert_eq!(m.pending(), None, "IF clear");
        // The INT falls (a level line, ELCR): nothing is owed any more.
        m.cpu.sti();
        m.cpu.end_of_instruction();
        m.pic_port_write(0x4d0, 0x02);
        m.isa_line(1, false);
        m.pic_port_write(0x20, 0x11); // ICW1: the edge latch is cleared.
        assert!(!m.pic().unwrap().int_output());
    }

    #[test]
    fn a_masked_lint0_logs_its_rule() {
        // Rule lint-masked: SDM §11.5.1 mask bit.
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.isa_line(1, true);
        assert!(logged(&m, Rule::LintMasked));
        assert_eq!(m.pending(), None);
    }

    #[test]
    fn lint0_in_nmi_mode_is_an_nmi_on_the_rising_edge_only() {
        // Rule lint-nmi: SDM §11.5.1 delivery mode 100, edge-sensitive.
        let mut m = pic_machine(false, [0xf9, 0xff]);
        m.lapic_write(reg::LVT_LINT0, 0x400).unwrap();
        m.isa_line(1, true);
        assert!(logged(&m, Rule::LintNmi));
        assert_eq!(m.pending(), Some(Interrupt::Nmi));
        let (vector, saved) = m.take(Interrupt::Nmi);
        assert_eq!(vector, NMI_VECTOR);
        m.iret(saved);
        // INT stays high (IRQ 1 latched, no INTA): no second NMI.
        m.isa_line(1, false);
        m.isa_line(3, true);
        assert_eq!(m.pending(), None);
        assert_eq!(m.pic().unwrap().master().irr(), 1 << 1 | 1 << 3);
    }

    #[test]
    fn lint0_in_fixed_mode_requests_its_vector_on_the_rising_edge() {
        // Rule lint-fixed: SDM §11.5.1 delivery mode 000, edge.
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.lapic_write(reg::LVT_LINT0, 0x55).unwrap();
        m.isa_line(1, true);
        assert!(logged(&m, Rule::LintFixed));
        assert_eq!(m.pending(), Some(Interrupt::Maskable(0x55)));
        // Level-triggered fixed mode (remote IRR) is not modelled.
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.lapic_write(reg::LVT_LINT0, 0x8055).unwrap();
        m.isa_line(1, true);
        assert!(m.pic_unmodelled().is_some());
    }

    #[test]
    fn an_extint_entry_on_ioapic_pin_0_owes_one_inta() {
        // Rule extint-ioapic: 82093AA §3.2.4 delivery mode 111, with the
        // 8259's INT on INTIN0 (MP spec virtual wire mode B).
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.ioapic_write_indirect(0x11, 0);
        m.ioapic_write_indirect(0x10, 0x700);
        m.isa_line(1, true);
        assert!(logged(&m, Rule::ExtintIoapic));
        let (vector, _) = m.take(m.pending().unwrap());
        assert_eq!(vector, 0x31);
        assert_eq!(m.pending(), None, "one INTA per message");
    }

    #[test]
    fn an_inta_with_nothing_requested_is_a_spurious_irq7() {
        // Rule pic-spurious: 8259A Interrupt Sequence step 4. The ExtINT
        // message is latched at the processor while IF is clear; the level
        // request goes away before the INTA.
        let mut m = pic_machine(false, [0xdf, 0xff]);
        m.pic_port_write(0x4d0, 0x20);
        m.ioapic_write_indirect(0x10, 0x700);
        m.cpu.cli();
        m.isa_line(5, true);
        m.isa_line(5, false);
        m.cpu.sti();
        m.cpu.end_of_instruction();
        let (vector, _) = m.take(m.pending().unwrap());
        assert_eq!(vector, 0x37);
        assert!(logged(&m, Rule::PicSpurious));
        assert_eq!(m.pic().unwrap().master().isr(), 0, "no IS bit");
    }

    #[test]
    fn auto_eoi_leaves_no_is_bit_and_an_uninitialised_pair_is_not_modelled() {
        let mut m = pic_machine(true, [0xf7, 0xff]);
        m.lapic_write(reg::LVT_LINT0, 0x700).unwrap();
        m.isa_line(3, true);
        let (vector, _) = m.take(Interrupt::ExtInt);
        assert_eq!(vector, 0x33);
        assert_eq!(m.pic().unwrap().master().isr(), 0);
        // An INTA of a pair never initialised (MCS-80/85 mode).
        let mut m = Machine::new(MachineConfig::default());
        m.ioapic_write_indirect(0x12, 0x700);
        m.set_irq(1, true);
        let _ = m.take(m.pending().unwrap());
        assert!(m.pic_unmodelled().is_some());
    }

    #[test]
    fn a_hardware_disabled_apic_makes_int_the_processors_intr() {
        // SDM §11.4.3: with IA32_APIC_BASE[11] clear there is no APIC.
        let mut m = pic_machine(false, [0xfd, 0xff]);
        m.write_apic_base(0xfee0_0000).unwrap();
        m.isa_line(1, true);
        assert_eq!(m.pending(), Some(Interrupt::ExtInt));
    }
}
