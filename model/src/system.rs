//! Several processors on one interrupt bus: N local APICs (each with its
//! processor's interrupt state), one IOAPIC, and the message routing between
//! them (SDM vol. 3A §11.6 Issuing Interprocessor Interrupts, §11.11 MSIs,
//! §11.12.9-10 x2APIC destinations).
//!
//! [`crate::Machine`] stays the one-CPU fast path; this is its N-CPU form.
//! With one CPU it behaves exactly as `Machine` does (the backend tests run
//! every committed single-CPU scenario through both).
//!
//! Choices where the SDM leaves the behaviour open (also in lib.rs):
//! - Lowest-priority arbitration (§11.6.2.4 "model specific"): among the
//!   matched APICs that can accept (globally and software enabled, not
//!   waiting for SIPI), the one with the lowest TPR, then the lowest CPU
//!   index. Focus-processor checking is not modelled (§11.6.2.4: not on
//!   Pentium 4 / Xeon). The choice is an allowed difference (the oracle).
//! - A processor waiting for SIPI (§11.4.7.3) takes no fixed interrupt (its
//!   APIC is software-disabled after INIT, §11.4.7.2) and no NMI: the NMI is
//!   dropped, as the SIPI starts the processor afresh (KVM's
//!   `kvm_vcpu_reset` clears a pending NMI).
//! - A STARTUP IPI to a running processor is ignored; INIT level de-assert
//!   does nothing (§11.6.1: not supported on Pentium 4 / Xeon).
//! - A STARTUP IPI brings the processor to the stub's start state: its APIC
//!   software-enabled (SVR 0x1FF) with everything else as after INIT, IF = 1.
//! - An x2APIC ICR destination is 32 bits: 0xFFFFFFFF is the broadcast and
//!   0xFF is cluster 0, members 0-7 (§11.12.9, §11.12.10.2); an 8-bit
//!   destination (IOAPIC, MSI, xAPIC ICR) of 0xFF is a broadcast in either
//!   mode, as on one CPU (KVM's `kvm_apic_mda`).

use crate::cpu::Cpu;
use crate::ioapic::{DeliveryMode, InterruptMessage, InterruptSink, Ioapic};
use crate::lapic::{reg, Acceptance, GeneralProtection, Lapic};
use crate::machine::{
    note_error_interrupt, Decision, DecisionLog, Interrupt, MachineConfig, NMI_VECTOR,
};
use crate::quirks::Quirks;
use crate::rules::{Mode, Rule};

/// The x2APIC broadcast destination (SDM §11.12.9).
pub const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// One processor: its local APIC and its interrupt state.
#[derive(Clone, Debug)]
pub struct Node {
    pub lapic: Lapic,
    pub cpu: Cpu,
    /// In the wait-for-SIPI state (SDM §11.4.7.3): runs nothing.
    pub waiting_for_sipi: bool,
}

impl Node {
    /// Whether the processor runs (is not waiting for SIPI).
    pub fn running(&self) -> bool {
        !self.waiting_for_sipi
    }
}

/// N processors and one IOAPIC.
#[derive(Clone, Debug)]
pub struct System {
    pub ioapic: Ioapic,
    pub nodes: Vec<Node>,
    config: MachineConfig,
    log: DecisionLog,
    unmodelled: Option<DeliveryMode>,
    /// CPUs an INIT reached since [`System::take_inited`] (bit per CPU).
    inited: u32,
    /// Whether a lowest-priority message had more than one eligible target
    /// since [`System::take_lowest_choice`].
    lowest_choice: bool,
}

/// Where an IPI comes from: a fixed destination or a shorthand relative to
/// the sender (SDM §11.6.1 bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Targets {
    /// Match the destination against each APIC.
    Destination {
        logical: bool,
        dest: u32,
        wide: bool,
    },
    SelfOnly(usize),
    All,
    AllBut(usize),
}

/// The message path from a source to the local APICs and processors.
struct Bus<'a> {
    nodes: &'a mut [Node],
    log: &'a mut DecisionLog,
    unmodelled: &'a mut Option<DeliveryMode>,
    inited: &'a mut u32,
    lowest_choice: &'a mut bool,
    quirks: Quirks,
    deviations: crate::rules::Deviations,
}

impl Bus<'_> {
    /// Whether node `i` is addressed; logs the logical-match rule.
    fn addressed(&mut self, i: usize, targets: Targets) -> bool {
        let lapic = &self.nodes[i].lapic;
        match targets {
            Targets::SelfOnly(s) => i == s,
            Targets::All => true,
            Targets::AllBut(s) => i != s,
            Targets::Destination {
                logical,
                dest,
                wide: true,
            } => {
                // §11.12.9, §11.12.10.2: a 32-bit x2APIC destination.
                if dest == X2APIC_BROADCAST {
                    return true;
                }
                if !logical {
                    return dest == lapic.id();
                }
                let hit = x2apic_logical_match(lapic, dest, self.quirks, self.deviations);
                if hit {
                    self.log.push(Rule::X2apicClusterMatch, 0);
                }
                hit
            }
            Targets::Destination { logical, dest, .. } => {
                let hit = if logical && dest != 0xff && lapic.x2apic() {
                    // An 8-bit destination addresses cluster 0 (§11.12.10.2).
                    x2apic_logical_match(lapic, dest, self.quirks, self.deviations)
                } else {
                    lapic.matches(logical, dest)
                };
                if hit && logical && dest != 0xff {
                    let rule = if lapic.x2apic() {
                        Rule::X2apicClusterMatch
                    } else if lapic.read(reg::DFR) >> 28 == 0xf {
                        Rule::LogicalFlatMatch
                    } else {
                        Rule::LogicalClusterMatch
                    };
                    self.log.push(rule, 0);
                }
                hit
            }
        }
    }

    /// Whether node `i` could accept a fixed interrupt now.
    fn can_accept_fixed(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.running() && n.lapic.hw_enabled() && n.lapic.software_enabled()
    }

    /// Sends `msg` to the addressed APICs; returns whether one accepted.
    fn route(&mut self, msg: &InterruptMessage, targets: Targets) -> bool {
        let mut set = 0u32;
        for i in 0..self.nodes.len() {
            if self.addressed(i, targets) {
                set |= 1 << i;
            }
        }
        if set == 0 {
            self.log.push(Rule::NoDestinationMatch, msg.vector);
            return false;
        }
        if msg.delivery == DeliveryMode::Lowest {
            // §11.6.2.4: one processor of the set; the model's choice is the
            // lowest TPR among those that can accept, then the lowest index.
            let eligible: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| set & 1 << i != 0 && self.can_accept_fixed(i))
                .collect();
            if eligible.len() > 1 {
                *self.lowest_choice = true;
            }
            if let Some(&chosen) = eligible
                .iter()
                .min_by_key(|&&i| (self.nodes[i].lapic.tpr(), i))
            {
                set = 1 << chosen;
            } else {
                // Nobody can take it: offer it to the first, which refuses
                // it with its reason.
                set &= set.wrapping_neg();
            }
            self.log.push(Rule::LowestPriority, msg.vector);
        }
        let mut accepted = false;
        for i in 0..self.nodes.len() {
            if set & 1 << i != 0 {
                accepted |= self.deliver_to(i, msg);
            }
        }
        accepted
    }

    /// One addressed processor receives `msg`.
    fn deliver_to(&mut self, i: usize, msg: &InterruptMessage) -> bool {
        let node = &mut self.nodes[i];
        match msg.delivery {
            DeliveryMode::Init if msg.vector == INIT_DEASSERT => {
                // §11.6.1: INIT level de-assert only resyncs arbitration IDs
                // (not on Pentium 4 / Xeon); nothing observable.
                self.log.push(Rule::WaitForSipiIgnores, 0);
                return false;
            }
            DeliveryMode::Init => {
                // §11.4.7.3: the power-up state except the APIC ID; the
                // processor waits for SIPI.
                node.lapic.init_reset();
                node.cpu = Cpu::new();
                node.cpu.interrupts_enabled = false;
                node.waiting_for_sipi = true;
                *self.inited |= 1 << i;
                self.log.push(Rule::InitResets, 0);
                return true;
            }
            DeliveryMode::Reserved(STARTUP_MODE) => {
                if !node.waiting_for_sipi {
                    self.log.push(Rule::WaitForSipiIgnores, msg.vector);
                    return false;
                }
                node.lapic.start();
                node.cpu = Cpu::new();
                node.waiting_for_sipi = false;
                self.log.push(Rule::StartupStarts, msg.vector);
                return true;
            }
            _ => {}
        }
        if node.waiting_for_sipi {
            // §11.4.7.3: nothing but INIT and SIPI reaches it.
            self.log.push(
                Rule::WaitForSipiIgnores,
                if msg.delivery == DeliveryMode::Nmi {
                    NMI_VECTOR
                } else {
                    msg.vector
                },
            );
            return false;
        }
        let acceptance = node.lapic.accept(msg);
        note_error_interrupt(&mut node.lapic, self.log);
        match acceptance {
            Acceptance::Accepted => {
                self.log.push(msg.rule, msg.vector);
                true
            }
            Acceptance::Nmi => {
                // §6.7.1: one NMI can be held while NMIs are blocked.
                let rule = if node.cpu.nmi_blocked {
                    Rule::NmiBlocked
                } else {
                    Rule::NmiDelivers
                };
                node.cpu.nmi_pending = true;
                self.log.push(rule, NMI_VECTOR);
                true
            }
            Acceptance::Refused(rule) => {
                self.log.push(rule, msg.vector);
                false
            }
            Acceptance::Unmodelled(mode) => {
                *self.unmodelled = Some(mode);
                false
            }
        }
    }
}

impl InterruptSink for Bus<'_> {
    /// A message from the IOAPIC or an MSI: an 8-bit destination.
    fn send(&mut self, msg: &InterruptMessage) -> bool {
        self.route(
            msg,
            Targets::Destination {
                logical: msg.logical,
                dest: msg.dest,
                wide: false,
            },
        )
    }

    fn note(&mut self, rule: Rule, vector: u8) {
        self.log.push(rule, vector);
    }
}

/// §11.12.10.1: an x2APIC logical destination matches when the cluster IDs
/// (bits 31:16) are equal and the member bitmaps (15:0) share a bit, the
/// LDR being derived from the x2APIC ID (§11.12.10.2); with the quirks, the
/// LDR not derived (0) or the cluster not compared.
fn x2apic_logical_match(
    lapic: &Lapic,
    dest: u32,
    quirks: Quirks,
    deviations: crate::rules::Deviations,
) -> bool {
    let not_derived = quirks.contains(Quirks::X2APIC_LDR_NOT_DERIVED)
        || deviations.breaks(Rule::X2apicClusterMatch, Mode::Skipped);
    let ldr = if not_derived { 0 } else { lapic.ldr() };
    let same_cluster = dest >> 16 == ldr >> 16
        || quirks.contains(Quirks::X2APIC_CLUSTER_IGNORED)
        || deviations.breaks(Rule::X2apicClusterMatch, Mode::Inverted);
    same_cluster && dest & ldr & 0xffff != 0
}

/// The STARTUP delivery mode (ICR bits 10:8 = 110), which the IOAPIC's
/// [`DeliveryMode`] calls reserved.
const STARTUP_MODE: u8 = 6;

/// The vector an INIT level de-assert message carries inside the system
/// (INIT's vector field is otherwise 0).
const INIT_DEASSERT: u8 = 0xff;

impl System {
    /// `cpus` processors with the given APIC IDs; CPU 0 is the BSP. With
    /// `aps_wait_for_sipi`, CPUs 1 and up start in the wait-for-SIPI state
    /// (SDM §9.4.1: the APs after RESET), otherwise in the start state.
    pub fn new(config: MachineConfig, apic_ids: &[u32], aps_wait_for_sipi: bool) -> System {
        let ioapic = Ioapic::with_deviations(config.ioapic, config.quirks, config.deviations);
        let nodes = apic_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let mut lapic = Lapic::new(config.x2apic, config.directed_eoi, config.quirks);
                lapic.set_deviations(config.deviations);
                lapic.set_id(id);
                let waiting = i > 0 && aps_wait_for_sipi;
                let mut cpu = Cpu::new();
                if waiting {
                    lapic.init_reset();
                    cpu.interrupts_enabled = false;
                }
                Node {
                    lapic,
                    cpu,
                    waiting_for_sipi: waiting,
                }
            })
            .collect();
        System {
            ioapic,
            nodes,
            config,
            log: DecisionLog::new(),
            unmodelled: None,
            inited: 0,
            lowest_choice: false,
        }
    }

    pub fn config(&self) -> MachineConfig {
        self.config
    }

    pub fn cpus(&self) -> usize {
        self.nodes.len()
    }

    fn parts(&mut self) -> (&mut Ioapic, Bus<'_>) {
        (
            &mut self.ioapic,
            Bus {
                nodes: &mut self.nodes,
                log: &mut self.log,
                unmodelled: &mut self.unmodelled,
                inited: &mut self.inited,
                lowest_choice: &mut self.lowest_choice,
                quirks: self.config.quirks,
                deviations: self.config.deviations,
            },
        )
    }

    pub fn decisions(&self) -> &[Decision] {
        self.log.entries()
    }

    pub fn clear_decisions(&mut self) {
        self.log.clear();
    }

    pub fn note(&mut self, rule: Rule, vector: u8) {
        self.log.push(rule, vector);
    }

    /// A delivery mode the model does not model was sent (SMI, ExtINT or
    /// reserved); the caller ends the run with an error.
    pub fn take_unmodelled(&mut self) -> Option<DeliveryMode> {
        self.unmodelled.take()
    }

    /// The CPUs an INIT reached since the last call, one bit per CPU.
    pub fn take_inited(&mut self) -> u32 {
        std::mem::take(&mut self.inited)
    }

    /// Whether a lowest-priority message had several eligible targets
    /// since the last call (the choice among them is open).
    pub fn take_lowest_choice(&mut self) -> bool {
        std::mem::take(&mut self.lowest_choice)
    }

    pub fn ioapic_mmio_read(&mut self, offset: u64) -> u32 {
        self.ioapic.mmio_read(offset)
    }

    pub fn ioapic_mmio_write(&mut self, offset: u64, value: u32) {
        let (ioapic, mut bus) = self.parts();
        ioapic.mmio_write(offset, value, &mut bus);
    }

    pub fn ioapic_read_indirect(&mut self, index: u8) -> u32 {
        self.ioapic.select_and_read(index)
    }

    pub fn ioapic_write_indirect(&mut self, index: u8, value: u32) {
        let (ioapic, mut bus) = self.parts();
        ioapic.select_and_write(index, value, &mut bus);
    }

    /// Drives IOAPIC input `pin` (logical level).
    pub fn set_irq(&mut self, pin: usize, requested: bool) {
        let (ioapic, mut bus) = self.parts();
        ioapic.set_irq(pin, requested, &mut bus);
    }

    /// An MSI or other message with an 8-bit destination.
    pub fn message(&mut self, msg: &InterruptMessage) -> bool {
        let (_, mut bus) = self.parts();
        bus.send(msg)
    }

    /// CPU `cpu`'s local APIC (read-only: its timer state, for example).
    pub fn lapic(&self, cpu: usize) -> &Lapic {
        &self.nodes[cpu].lapic
    }

    /// [`crate::Machine::timer_elapse`] on CPU `cpu`'s LAPIC timer: time
    /// passes for it, up to `limit` ns (a wait of that CPU).
    pub fn timer_elapse(&mut self, cpu: usize, limit: u64) -> bool {
        let lapic = &mut self.nodes[cpu].lapic;
        let Some((rule, vector)) = lapic.timer_elapse(limit) else {
            return false;
        };
        let vector = vector.unwrap_or(lapic.read(reg::LVT_TIMER) as u8);
        note_error_interrupt(lapic, &mut self.log);
        self.log.push(rule, vector);
        true
    }

    /// [`crate::Machine::write_tsc_deadline`] on CPU `cpu`.
    pub fn write_tsc_deadline(&mut self, cpu: usize, value: u64) {
        let lapic = &mut self.nodes[cpu].lapic;
        if let Some((rule, vector)) = lapic.write_tsc_deadline(value) {
            let vector = vector.unwrap_or(lapic.read(reg::LVT_TIMER) as u8);
            note_error_interrupt(lapic, &mut self.log);
            self.log.push(rule, vector);
        }
    }

    /// A local APIC register read by CPU `cpu`.
    pub fn lapic_read(&mut self, cpu: usize, offset: u16) -> Result<u32, GeneralProtection> {
        let quirks = self.config.quirks;
        let node = &mut self.nodes[cpu];
        if node.lapic.x2apic() {
            match node.lapic.read_msr(crate::lapic::msr_of(offset)) {
                Ok(_) if offset == reg::LDR && quirks.contains(Quirks::X2APIC_LDR_NOT_DERIVED) => {
                    self.log.push(Rule::Quirk, 0);
                    Ok(0)
                }
                Ok(v) => Ok(v as u32),
                Err(_) if quirks.contains(Quirks::X2APIC_GP_IGNORED) => {
                    self.log.push(Rule::Quirk, 0);
                    Ok(0)
                }
                Err(gp) => Err(gp),
            }
        } else {
            let value = node.lapic.read_mmio(offset);
            note_error_interrupt(&mut node.lapic, &mut self.log);
            Ok(value)
        }
    }

    /// A local APIC register write by CPU `cpu` (MMIO or WRMSR), with its
    /// effects: EOI broadcast, IPIs.
    pub fn lapic_write(
        &mut self,
        cpu: usize,
        offset: u16,
        value: u32,
    ) -> Result<(), GeneralProtection> {
        if offset == reg::EOI && value == 0 {
            if self.nodes[cpu].lapic.hw_enabled() {
                self.end_of_interrupt(cpu);
            }
            return Ok(());
        }
        if self.nodes[cpu].lapic.x2apic() {
            return self.write_msr(cpu, offset, value as u64);
        }
        let lapic = &mut self.nodes[cpu].lapic;
        // The one-CPU copy to self is not used: the ICR is routed below.
        let _ = lapic.write(offset, value);
        note_error_interrupt(lapic, &mut self.log);
        let enabled = self.nodes[cpu].lapic.hw_enabled();
        if offset == reg::EOI && enabled {
            self.end_of_interrupt(cpu);
        }
        if offset == reg::ICR_LOW && enabled {
            self.send_ipi(cpu);
        }
        Ok(())
    }

    /// An x2APIC WRMSR by CPU `cpu` of the register at `offset`.
    fn write_msr(&mut self, cpu: usize, offset: u16, value: u64) -> Result<(), GeneralProtection> {
        let quirks = self.config.quirks;
        let lapic = &mut self.nodes[cpu].lapic;
        match lapic.write_msr(crate::lapic::msr_of(offset), value) {
            Ok(_) => {}
            Err(_) if quirks.contains(Quirks::X2APIC_GP_IGNORED) => {
                self.log.push(Rule::Quirk, 0);
                return Ok(());
            }
            Err(gp) => return Err(gp),
        }
        note_error_interrupt(&mut self.nodes[cpu].lapic, &mut self.log);
        if offset == reg::EOI {
            self.end_of_interrupt(cpu);
        }
        if offset == reg::ICR_LOW {
            self.send_ipi(cpu);
        }
        if offset == reg::SELF_IPI {
            // §11.12.11: a fixed, edge self IPI of bits 7:0.
            let vector = value as u8;
            if vector >= 16 || quirks.contains(Quirks::QEMU_LAPIC) {
                let msg = ipi_message(vector, DeliveryMode::Fixed, Rule::SelfIpi);
                let (_, mut bus) = self.parts();
                bus.route(&msg, Targets::SelfOnly(cpu));
            }
        }
        Ok(())
    }

    /// An ICR write of `low` to `dest` by CPU `cpu` (the `ipi` op): xAPIC
    /// ICR high then low, x2APIC one WRMSR of MSR 0x830 (SDM §11.12.9).
    pub fn send_icr(&mut self, cpu: usize, low: u32, dest: u32) -> Result<(), GeneralProtection> {
        if self.nodes[cpu].lapic.x2apic() {
            return self.write_msr(cpu, reg::ICR_LOW, (dest as u64) << 32 | low as u64);
        }
        self.lapic_write(cpu, reg::ICR_HIGH, (dest & 0xff) << 24)?;
        self.lapic_write(cpu, reg::ICR_LOW, low)
    }

    /// §11.6.1: the IPI the ICR of CPU `cpu` now holds goes out.
    fn send_ipi(&mut self, cpu: usize) {
        let (low, dest) = self.nodes[cpu].lapic.icr();
        let x2apic = self.nodes[cpu].lapic.x2apic();
        let mode = DeliveryMode::from_bits((low >> 8) as u8);
        let vector = low as u8;
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::Lowest)
            && vector < 16
            && !self.config.quirks.contains(Quirks::QEMU_LAPIC)
        {
            // §11.5.3: the sending APIC flagged the illegal vector (Lapic::
            // write); nothing is sent.
            return;
        }
        let targets = match (low >> 18) & 3 {
            0 => Targets::Destination {
                logical: low & 1 << 11 != 0,
                dest,
                wide: x2apic,
            },
            1 => Targets::SelfOnly(cpu),
            2 => Targets::All,
            _ => Targets::AllBut(cpu),
        };
        // §11.6.1: INIT with level 0 and trigger level is the de-assert.
        let init_deassert = mode == DeliveryMode::Init && low & 1 << 14 == 0;
        let vector = match mode {
            DeliveryMode::Init if init_deassert => INIT_DEASSERT,
            DeliveryMode::Init | DeliveryMode::Nmi => 0,
            _ => vector,
        };
        let rule = if targets == Targets::SelfOnly(cpu) {
            Rule::SelfIpi
        } else {
            Rule::IpiDelivers
        };
        let msg = ipi_message(vector, mode, rule);
        // INIT de-assert goes to everybody whatever the destination.
        let targets = if init_deassert { Targets::All } else { targets };
        self.log.push(Rule::IpiDelivers, vector);
        let (_, mut bus) = self.parts();
        bus.route(&msg, targets);
    }

    /// A guest write of IA32_APIC_BASE by CPU `cpu` (SDM §11.4.4, §11.12.5).
    pub fn write_apic_base(&mut self, cpu: usize, value: u32) -> Result<(), GeneralProtection> {
        let result = self.nodes[cpu].lapic.write_apic_base(value);
        self.log.push(Rule::ApicBaseTransition, 0);
        result
    }

    /// §11.8.5: the EOI of CPU `cpu` clears its highest ISR bit and, for a
    /// level vector, is broadcast to the IOAPIC, whatever CPU the pin now
    /// targets (the IOAPIC matches the vector only).
    fn end_of_interrupt(&mut self, cpu: usize) {
        let eoi = self.nodes[cpu].lapic.end_of_interrupt();
        self.log.push(eoi.rule, eoi.in_service.unwrap_or(0));
        let Some(vector) = eoi.broadcast else {
            return;
        };
        let lost = self.config.split && self.config.quirks.contains(Quirks::SPLIT_EOI_LOST);
        let stale = self.config.quirks.contains(Quirks::EOI_STALE_ROUTE_LOST)
            && !self.routes_vector_to(vector, cpu);
        if lost
            || stale
            || self
                .config
                .deviations
                .breaks(Rule::EoiBroadcast, Mode::Skipped)
        {
            self.log.push(Rule::Quirk, vector);
            return;
        }
        let (ioapic, mut bus) = self.parts();
        ioapic.eoi(vector, &mut bus);
    }

    /// §11.8.5: the EOI of CPU `cpu` without its broadcast: the highest
    /// ISR bit cleared, and the vector to broadcast if it was level (TMR
    /// set). For an irqchip whose IOAPIC is elsewhere (a split VMM, or an
    /// in-kernel APIC that hands the EOI to the VMM), which then calls
    /// [`System::ioapic_eoi`] or its own IOAPIC.
    pub fn local_eoi(&mut self, cpu: usize) -> Option<u8> {
        let eoi = self.nodes[cpu].lapic.end_of_interrupt();
        self.log.push(eoi.rule, eoi.in_service.unwrap_or(0));
        eoi.broadcast
    }

    /// §11.8.5, 82093AA §3.2.4: an EOI broadcast for `vector` reaching this
    /// system's IOAPIC (every entry with that vector clears remote IRR).
    pub fn ioapic_eoi(&mut self, vector: u8) {
        let (ioapic, mut bus) = self.parts();
        ioapic.eoi(vector, &mut bus);
    }

    /// Whether a level pin with `vector` targets CPU `cpu` now (for the
    /// `EOI_STALE_ROUTE_LOST` quirk).
    fn routes_vector_to(&self, vector: u8, cpu: usize) -> bool {
        let lapic = &self.nodes[cpu].lapic;
        (0..crate::ioapic::PINS).any(|pin| {
            let e = self.ioapic.entry(pin);
            e.vector() == vector
                && e.level()
                && if e.logical() {
                    lapic.matches(true, e.dest() as u32)
                } else {
                    e.dest() as u32 == lapic.id() || e.dest() == 0xff
                }
        })
    }

    /// What CPU `cpu` would take at this instruction boundary.
    pub fn pending(&self, cpu: usize) -> Option<Interrupt> {
        let node = &self.nodes[cpu];
        if node.waiting_for_sipi {
            return None;
        }
        if node.cpu.nmi_pending && !node.cpu.nmi_blocked {
            return Some(Interrupt::Nmi);
        }
        if node.cpu.accepts_maskable() {
            return node.lapic.deliverable().map(Interrupt::Maskable);
        }
        None
    }

    /// Why a requested vector of CPU `cpu` is not being taken.
    pub fn held_reason(&self, cpu: usize) -> Option<(Rule, u8)> {
        let node = &self.nodes[cpu];
        let v = node.lapic.highest_irr()?;
        if !node.lapic.dispatchable(v) {
            Some((Rule::HeldByPpr, v))
        } else if !node.cpu.accepts_maskable() {
            Some((Rule::HeldByIf, v))
        } else {
            None
        }
    }

    /// CPU `cpu` takes `interrupt`: the vector and the IF IRET restores.
    pub fn take(&mut self, cpu: usize, interrupt: Interrupt) -> (u8, bool) {
        let node = &mut self.nodes[cpu];
        match interrupt {
            Interrupt::Maskable(v) => {
                node.lapic.acknowledge(v);
                self.log.push(Rule::DispatchAbovePpr, v);
                (v, node.cpu.enter_interrupt_gate())
            }
            Interrupt::Nmi => (NMI_VECTOR, node.cpu.enter_nmi()),
            // Several CPUs have no 8259 pair ([`System::pending`] never
            // offers one): reported like any ExtINT here.
            Interrupt::ExtInt => {
                self.unmodelled = Some(DeliveryMode::ExtInt);
                (0, node.cpu.enter_interrupt_gate())
            }
        }
    }

    pub fn iret(&mut self, cpu: usize, saved_if: bool) {
        self.nodes[cpu].cpu.iret(saved_if);
    }

    /// The redirection entries' remote IRR and delivery status, per pin.
    pub fn ioapic_status(&self) -> ([bool; 24], [bool; 24]) {
        let mut remote_irr = [false; 24];
        let mut delivery_status = [false; 24];
        for pin in 0..24 {
            let e = self.ioapic.entry(pin);
            remote_irr[pin] = e.remote_irr();
            delivery_status[pin] = e.delivery_status();
        }
        (remote_irr, delivery_status)
    }
}

/// An IPI as a message on the bus: edge (the model's choice for the ICR
/// trigger bit, lib.rs).
fn ipi_message(vector: u8, delivery: DeliveryMode, rule: Rule) -> InterruptMessage {
    InterruptMessage {
        vector,
        delivery,
        logical: false,
        dest: 0,
        level: false,
        rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::{IOREGSEL, IOWIN};

    fn system(ids: &[u32], x2apic: bool) -> System {
        System::new(
            MachineConfig {
                x2apic,
                ..MachineConfig::default()
            },
            ids,
            false,
        )
    }

    /// The CPUs with `vector` requested.
    fn requested(s: &System, vector: u8) -> Vec<usize> {
        (0..s.cpus())
            .filter(|&i| s.nodes[i].lapic.irr()[vector as usize / 32] >> (vector % 32) & 1 == 1)
            .collect()
    }

    fn fixed(vector: u8) -> u32 {
        vector as u32 | 1 << 14
    }

    fn route(s: &mut System, pin: u8, low: u32, dest: u8) {
        s.ioapic_mmio_write(IOREGSEL, 0x11 + 2 * pin as u32);
        s.ioapic_mmio_write(IOWIN, (dest as u32) << 24);
        s.ioapic_mmio_write(IOREGSEL, 0x10 + 2 * pin as u32);
        s.ioapic_mmio_write(IOWIN, low);
    }

    #[test]
    fn a_local_eoi_leaves_the_broadcast_to_the_caller() {
        // SDM §11.8.5: the EOI clears the highest ISR bit; for a level
        // vector (TMR set) the broadcast reaches the IOAPIC only through
        // ioapic_eoi (82093AA §3.2.4: remote IRR cleared by the EOI of its
        // vector), which a split irqchip sends itself.
        let mut s = system(&[0, 1], false);
        route(&mut s, 14, 0x71 | 1 << 15, 1);
        s.set_irq(14, true);
        let taken = s.take(1, s.pending(1).unwrap());
        assert_eq!(taken.0, 0x71);
        assert!(s.ioapic.entry(14).remote_irr());
        assert_eq!(s.local_eoi(1), Some(0x71), "a level vector to broadcast");
        assert!(s.ioapic.entry(14).remote_irr(), "not broadcast yet");
        assert_eq!(s.nodes[1].lapic.isr(), [0; 8]);
        s.set_irq(14, false);
        s.ioapic_eoi(0x71);
        assert!(!s.ioapic.entry(14).remote_irr());
        // Nothing in service: nothing to broadcast.
        assert_eq!(s.local_eoi(1), None);
    }

    #[test]
    fn vector_16_is_the_first_vector_an_ipi_carries() {
        // SDM §11.5.3: vectors 0-15 are illegal (send illegal vector, nothing
        // sent); 16 is legal and delivered.
        let mut s = system(&[0, 1], false);
        s.send_icr(0, fixed(0x0f), 1).unwrap();
        assert_eq!(requested(&s, 0x0f), [] as [usize; 0]);
        s.send_icr(0, fixed(0x10), 1).unwrap();
        assert_eq!(requested(&s, 0x10), [1]);
    }

    #[test]
    fn iret_restores_the_flag_the_gate_saved_on_that_cpu_only() {
        // SDM §6.12.1.3: entry through an interrupt gate clears IF; IRET
        // restores the saved RFLAGS.IF, of the CPU that took the interrupt.
        let mut s = system(&[0, 1], false);
        assert!(system(&[0, 1], true).config().x2apic, "built with x2APIC");
        s.send_icr(0, fixed(0x40), 1).unwrap();
        s.send_icr(0, fixed(0x41), 1).unwrap();
        let (v, saved) = s.take(1, s.pending(1).unwrap());
        assert_eq!((v, saved), (0x41, true));
        assert_eq!(s.pending(1), None, "IF = 0 in the handler");
        s.lapic_write(1, reg::EOI, 0).unwrap();
        s.iret(1, saved);
        assert_eq!(s.pending(1), Some(Interrupt::Maskable(0x40)));
        assert_eq!(s.nodes[0].cpu, Cpu::new(), "CPU 0 untouched");
    }

    #[test]
    fn physical_ipi_reaches_the_apic_with_that_id() {
        // SDM §11.6.2.1: the destination is the APIC ID, not the index.
        let mut s = system(&[0, 5, 2], false);
        s.send_icr(0, fixed(0x40), 5).unwrap();
        assert_eq!(requested(&s, 0x40), [1]);
        assert_eq!(s.decisions().last().unwrap().rule, Rule::IpiDelivers);
        s.send_icr(0, fixed(0x41), 1).unwrap();
        assert_eq!(requested(&s, 0x41), [] as [usize; 0]);
        assert_eq!(s.decisions().last().unwrap().rule, Rule::NoDestinationMatch);
    }

    #[test]
    fn broadcasts_reach_every_cpu_in_both_modes() {
        // §11.6.2.1 (0xFF), §11.12.9 (0xFFFFFFFF).
        let mut s = system(&[0, 1, 2], false);
        s.send_icr(1, fixed(0x40), 0xff).unwrap();
        assert_eq!(requested(&s, 0x40), [0, 1, 2]);
        let mut s = system(&[0, 1, 2], true);
        s.send_icr(1, fixed(0x40), X2APIC_BROADCAST).unwrap();
        assert_eq!(requested(&s, 0x40), [0, 1, 2]);
        // In x2APIC mode a 32-bit 0xFF is cluster 0, members 0-7, not a
        // broadcast: the APIC with ID 0x10 (cluster 1) is not reached.
        let mut s = system(&[0, 1, 0x10], true);
        s.send_icr(0, fixed(0x42) | 1 << 11, 0xff).unwrap();
        assert_eq!(requested(&s, 0x42), [0, 1]);
    }

    #[test]
    fn shorthands_self_all_and_all_but_self() {
        // §11.6.1 bits 19:18; the destination field is ignored.
        let mut s = system(&[0, 1, 2], false);
        s.send_icr(1, fixed(0x50) | 1 << 18, 0).unwrap();
        assert_eq!(requested(&s, 0x50), [1]);
        s.send_icr(1, fixed(0x51) | 2 << 18, 7).unwrap();
        assert_eq!(requested(&s, 0x51), [0, 1, 2]);
        s.send_icr(1, fixed(0x52) | 3 << 18, 1).unwrap();
        assert_eq!(requested(&s, 0x52), [0, 2]);
    }

    #[test]
    fn logical_flat_and_cluster_models() {
        // §11.6.2.2: flat matches any shared LDR bit; cluster matches the
        // high nibble and a low-nibble bit.
        let mut s = system(&[0, 1, 2, 3], false);
        for (i, ldr) in [0x01u32, 0x02, 0x04, 0x08].iter().enumerate() {
            s.lapic_write(i, reg::LDR, ldr << 24).unwrap();
        }
        s.send_icr(0, fixed(0x60) | 1 << 11, 0x0d).unwrap();
        assert_eq!(requested(&s, 0x60), [0, 2, 3]);
        assert!(s
            .decisions()
            .iter()
            .any(|d| d.rule == Rule::LogicalFlatMatch));
        for (i, ldr) in [0x11u32, 0x12, 0x21, 0x22].iter().enumerate() {
            s.lapic_write(i, reg::DFR, 0x0fff_ffff).unwrap();
            s.lapic_write(i, reg::LDR, ldr << 24).unwrap();
        }
        s.clear_decisions();
        s.send_icr(0, fixed(0x61) | 1 << 11, 0x23).unwrap();
        assert_eq!(requested(&s, 0x61), [2, 3]);
        assert!(s
            .decisions()
            .iter()
            .any(|d| d.rule == Rule::LogicalClusterMatch));
        s.send_icr(0, fixed(0x62) | 1 << 11, 0x12).unwrap();
        assert_eq!(requested(&s, 0x62), [1]);
    }

    #[test]
    fn x2apic_cluster_matching_uses_the_ldr_derived_from_the_id() {
        // §11.12.10.2: ID 0x13 has LDR 0x0001_0008 (cluster 1, bit 3).
        let mut s = system(&[0x03, 0x13, 0x14], true);
        assert_eq!(s.nodes[1].lapic.ldr(), 0x0001_0008);
        assert_eq!(s.lapic_read(1, reg::LDR), Ok(0x0001_0008));
        s.send_icr(0, fixed(0x70) | 1 << 11, 0x0001_0018).unwrap();
        assert_eq!(requested(&s, 0x70), [1, 2]);
        assert!(s
            .decisions()
            .iter()
            .any(|d| d.rule == Rule::X2apicClusterMatch));
        // The same member bits in cluster 0 reach only ID 0x03.
        s.send_icr(0, fixed(0x71) | 1 << 11, 0x0000_0018).unwrap();
        assert_eq!(requested(&s, 0x71), [0]);
        // An 8-bit IOAPIC destination addresses cluster 0.
        route(&mut s, 3, 0x72 | 1 << 11, 0x08);
        s.set_irq(3, true);
        assert_eq!(requested(&s, 0x72), [0]);
    }

    #[test]
    fn lowest_priority_picks_the_lowest_tpr_then_the_lowest_index() {
        // §11.6.2.4, the model's documented choice.
        let mut s = system(&[0, 1, 2], false);
        s.lapic_write(0, reg::TPR, 0x20).unwrap();
        s.send_icr(0, 0x80 | 1 << 8 | 1 << 14, 0xff).unwrap();
        assert_eq!(requested(&s, 0x80), [1]);
        assert!(s.take_lowest_choice());
        s.lapic_write(1, reg::TPR, 0x30).unwrap();
        s.lapic_write(2, reg::TPR, 0x10).unwrap();
        s.send_icr(0, 0x81 | 1 << 8 | 1 << 14, 0xff).unwrap();
        assert_eq!(requested(&s, 0x81), [2]);
        // One eligible target: no open choice.
        s.take_lowest_choice();
        s.lapic_write(1, reg::SVR, 0xff).unwrap();
        s.lapic_write(2, reg::SVR, 0xff).unwrap();
        s.send_icr(0, 0x82 | 1 << 8 | 1 << 14, 0xff).unwrap();
        assert_eq!(requested(&s, 0x82), [0]);
        assert!(!s.take_lowest_choice());
        assert!(s.decisions().iter().any(|d| d.rule == Rule::LowestPriority));
    }

    #[test]
    fn init_resets_and_startup_starts_a_cpu() {
        // §11.4.7.3 and §11.6.1: INIT, then SIPI; what the CPU had is gone.
        let mut s = system(&[0, 1], false);
        s.send_icr(0, fixed(0x40), 1).unwrap();
        s.lapic_write(1, reg::TPR, 0x30).unwrap();
        s.send_icr(0, 5 << 8 | 1 << 14 | 1 << 15, 1).unwrap();
        assert_eq!(s.take_inited(), 0b10);
        assert!(s.nodes[1].waiting_for_sipi);
        assert_eq!(s.nodes[1].lapic.irr(), [0; 8]);
        assert_eq!(s.nodes[1].lapic.tpr(), 0);
        assert_eq!(s.lapic_read(1, reg::SVR), Ok(0xff));
        assert_eq!(s.lapic_read(1, reg::ID), Ok(1 << 24), "the ID is kept");
        // Waiting for SIPI: neither a fixed interrupt nor an NMI is taken.
        s.send_icr(0, fixed(0x41), 1).unwrap();
        s.send_icr(0, 4 << 8 | 1 << 14, 1).unwrap();
        assert_eq!(s.pending(1), None);
        assert_eq!(s.decisions().last().unwrap().rule, Rule::WaitForSipiIgnores);
        // INIT de-assert changes nothing; SIPI starts it in the start state.
        s.send_icr(0, 5 << 8 | 1 << 15 | 2 << 18, 0).unwrap();
        assert!(s.nodes[1].waiting_for_sipi);
        assert!(!s.nodes[0].waiting_for_sipi);
        s.send_icr(0, 6 << 8 | 1 << 14 | 0x08, 1).unwrap();
        assert!(!s.nodes[1].waiting_for_sipi);
        assert_eq!(s.decisions().last().unwrap().rule, Rule::StartupStarts);
        assert_eq!(s.lapic_read(1, reg::SVR), Ok(0x1ff));
        assert!(s.nodes[1].cpu.interrupts_enabled);
        // A second SIPI to the running CPU is ignored.
        s.send_icr(0, 6 << 8 | 1 << 14 | 0x08, 1).unwrap();
        assert_eq!(s.decisions().last().unwrap().rule, Rule::WaitForSipiIgnores);
        s.send_icr(0, fixed(0x42), 1).unwrap();
        assert_eq!(s.pending(1), Some(Interrupt::Maskable(0x42)));
    }

    #[test]
    fn multi_cpu_quirks_break_their_rules() {
        // X2APIC_LDR_NOT_DERIVED: no logical x2APIC destination matches,
        // and the LDR reads 0 (SDM §11.12.10.2 broken).
        let quirky = |quirks| {
            System::new(
                MachineConfig {
                    x2apic: true,
                    quirks,
                    ..MachineConfig::default()
                },
                &[0, 1, 0x11],
                false,
            )
        };
        let mut s = quirky(Quirks::X2APIC_LDR_NOT_DERIVED);
        s.send_icr(0, fixed(0x40) | 1 << 11, 0x3).unwrap();
        assert_eq!(requested(&s, 0x40), [] as [usize; 0]);
        assert_eq!(s.lapic_read(1, reg::LDR), Ok(0));
        // The deviations that explain them (diagnosis).
        let deviated = |mode| {
            System::new(
                MachineConfig {
                    x2apic: true,
                    deviations: crate::rules::Deviations::of(&[crate::rules::Deviation::new(
                        Rule::X2apicClusterMatch,
                        mode,
                    )]),
                    ..MachineConfig::default()
                },
                &[0, 1, 0x11],
                false,
            )
        };
        let mut d = deviated(Mode::Skipped);
        d.send_icr(0, fixed(0x40) | 1 << 11, 0x3).unwrap();
        assert_eq!(requested(&d, 0x40), [] as [usize; 0]);
        let mut d = deviated(Mode::Inverted);
        d.send_icr(0, fixed(0x41) | 1 << 11, 0x2).unwrap();
        assert_eq!(requested(&d, 0x41), [1, 2]);
        // X2APIC_CLUSTER_IGNORED: member bit 1 of cluster 0 also reaches
        // ID 0x11 (cluster 1, bit 1).
        let mut s = quirky(Quirks::X2APIC_CLUSTER_IGNORED);
        s.send_icr(0, fixed(0x41) | 1 << 11, 0x2).unwrap();
        assert_eq!(requested(&s, 0x41), [1, 2]);
        let mut s = quirky(Quirks::empty());
        s.send_icr(0, fixed(0x41) | 1 << 11, 0x2).unwrap();
        assert_eq!(requested(&s, 0x41), [1]);
        // EOI_STALE_ROUTE_LOST: the EOI of a vector whose pin now targets
        // another CPU does not clear remote IRR.
        for (quirks, stuck) in [
            (Quirks::EOI_STALE_ROUTE_LOST, true),
            (Quirks::empty(), false),
        ] {
            let mut s = quirky(quirks);
            route(&mut s, 14, 0x84 | 1 << 15, 0);
            s.set_irq(14, true);
            let (_, saved) = s.take(0, s.pending(0).unwrap());
            s.set_irq(14, false);
            route(&mut s, 14, 0x84 | 1 << 15, 1);
            s.lapic_write(0, reg::EOI, 0).unwrap();
            s.iret(0, saved);
            assert_eq!(s.ioapic.entry(14).remote_irr(), stuck, "{quirks:?}");
        }
    }

    #[test]
    fn aps_can_start_waiting_for_sipi() {
        // §9.4.1: after RESET the APs wait for SIPI; the BSP runs.
        let s = System::new(MachineConfig::default(), &[0, 1, 2], true);
        assert!(!s.nodes[0].waiting_for_sipi);
        assert!(s.nodes[1].waiting_for_sipi && s.nodes[2].waiting_for_sipi);
    }

    #[test]
    fn nmi_ipi_to_another_cpu() {
        // §11.6.1 delivery mode 100, §6.7.1.
        let mut s = system(&[0, 1], false);
        s.send_icr(0, 4 << 8 | 1 << 14, 1).unwrap();
        assert_eq!(s.pending(1), Some(Interrupt::Nmi));
        assert_eq!(s.pending(0), None);
    }

    #[test]
    fn an_eoi_on_one_cpu_clears_remote_irr_of_a_pin_routed_elsewhere() {
        // §11.8.5 with 82093AA §3.2.4 bit 14: the IOAPIC matches the vector;
        // the pin's current destination plays no part (ioapic.c
        // self_reconfigure).
        let mut s = system(&[0, 1], false);
        route(&mut s, 14, 0x84 | 1 << 15, 1);
        s.set_irq(14, true);
        assert_eq!(requested(&s, 0x84), [1]);
        let (v, saved) = s.take(1, s.pending(1).unwrap());
        assert_eq!(v, 0x84);
        s.set_irq(14, false);
        // Reroute to CPU 0, then EOI on CPU 1.
        route(&mut s, 14, 0x84 | 1 << 15, 0);
        assert!(s.ioapic.entry(14).remote_irr());
        s.lapic_write(1, reg::EOI, 0).unwrap();
        s.iret(1, saved);
        assert!(!s.ioapic.entry(14).remote_irr());
        // Asserted again: the message now goes to CPU 0.
        s.set_irq(14, true);
        assert_eq!(requested(&s, 0x84), [0]);
    }

    #[test]
    fn msi_to_another_cpu_and_logical_ioapic_destination() {
        // §11.11.1: the MSI's destination ID; 82093AA bit 11 logical.
        let mut s = system(&[0, 1, 2, 3], true);
        s.message(&InterruptMessage {
            vector: 0x90,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 3,
            level: false,
            rule: Rule::MsiDelivers,
        });
        assert_eq!(requested(&s, 0x90), [3]);
        route(&mut s, 14, 0x86 | 1 << 15 | 1 << 11, 0x0d);
        s.set_irq(14, true);
        assert_eq!(requested(&s, 0x86), [0, 2, 3]);
        assert!(s.ioapic.entry(14).remote_irr());
    }
}

#[cfg(test)]
#[path = "rule_tests/system.rs"]
mod rule_tests;
