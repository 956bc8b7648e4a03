//! The local APIC of the one vCPU: xAPIC (MMIO) and x2APIC (MSR) register
//! files, interrupt acceptance, priority and EOI (Intel SDM vol. 3A, chapter
//! "Advanced Programmable Interrupt Controller (APIC)", §11.x).
//!
//! Interrupt *sources* are not here: the machine hands accepted messages to
//! [`Lapic::accept`]; the processor side takes vectors with
//! [`Lapic::acknowledge`] and the guest's EOI write returns the vector to
//! broadcast, if any.

use crate::ioapic::{DeliveryMode, InterruptMessage};
use crate::lapic_timer::{Timer, TimerMode};
use crate::quirks::Quirks;
use crate::rules::{Deviations, Mode, Rule};

/// xAPIC MMIO offsets (SDM Table 11-1); x2APIC MSR = 0x800 + offset / 16.
pub mod reg {
    pub const ID: u16 = 0x020;
    pub const VERSION: u16 = 0x030;
    pub const TPR: u16 = 0x080;
    pub const APR: u16 = 0x090;
    pub const PPR: u16 = 0x0a0;
    pub const EOI: u16 = 0x0b0;
    pub const LDR: u16 = 0x0d0;
    pub const DFR: u16 = 0x0e0;
    pub const SVR: u16 = 0x0f0;
    pub const ISR: u16 = 0x100;
    pub const TMR: u16 = 0x180;
    pub const IRR: u16 = 0x200;
    pub const ESR: u16 = 0x280;
    pub const ICR_LOW: u16 = 0x300;
    pub const ICR_HIGH: u16 = 0x310;
    pub const LVT_TIMER: u16 = 0x320;
    pub const LVT_THERMAL: u16 = 0x330;
    pub const LVT_PERF: u16 = 0x340;
    pub const LVT_LINT0: u16 = 0x350;
    pub const LVT_LINT1: u16 = 0x360;
    pub const LVT_ERROR: u16 = 0x370;
    pub const TIMER_INITIAL: u16 = 0x380;
    pub const TIMER_CURRENT: u16 = 0x390;
    pub const TIMER_DIVIDE: u16 = 0x3e0;
    /// x2APIC only: the SELF IPI register (MSR 0x83F).
    pub const SELF_IPI: u16 = 0x3f0;
}

/// x2APIC MSR of a register offset.
pub const fn msr_of(offset: u16) -> u32 {
    0x800 + (offset as u32 >> 4)
}

/// SVR bits (SDM §11.9).
pub const SVR_ENABLE: u32 = 1 << 8;
pub const SVR_SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;
/// Version register: integrated APIC 0x14, six LVT entries, and bit 24 when
/// EOI-broadcast suppression is supported (SDM §11.4.8).
pub const VERSION_BASE: u32 = 0x0005_0014;
pub const VERSION_DIRECTED_EOI: u32 = 1 << 24;
/// ESR bits (SDM §11.5.3).
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// IA32_APIC_BASE bits 7:0 and 9 are reserved (SDM §11.4.4, Figure 11-5);
/// a write with one set raises #GP (as KVM's `kvm_apic_set_base`). The
/// bits above MAXPHYADDR are beyond the 32-bit value the model takes.
pub const APIC_BASE_RESERVED: u32 = 0x2ff;
/// x2APIC ICR bits 31:20, 17:16 and 13 are reserved: a WRMSR with one set
/// raises #GP (SDM §11.12.1.3 and Figure 11-28; KVM's
/// `X2APIC_ICR_RESERVED_BITS`).
pub const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 1 << 13;

/// The writable bits of each LVT entry (SDM Figure 11-8), in register
/// order: timer (vector, mask, timer mode 18:17), thermal and performance
/// (vector, delivery mode, mask), LINT0 and LINT1 (vector, delivery mode,
/// polarity, trigger mode, mask), error (vector, mask). Delivery status
/// (bit 12) and LINT remote IRR (bit 14) are read-only; the model delivers
/// instantly and has no LINT inputs, so they read 0. Reserved bits read 0.
pub const LVT_WRITABLE: [u32; 6] = [
    0x0007_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];
/// The LVT Error entry's index in [`LVT_WRITABLE`] (offset 0x370).
const LVT_ERROR_INDEX: usize = 5;

/// Whether an xAPIC MMIO offset (a multiple of 16, below 0x400) names a
/// register of SDM Table 11-1 that this APIC implements. Reserved slots,
/// the SELF IPI register (x2APIC only) and LVT CMCI (not advertised: the
/// version register reports six LVT entries) are not.
pub fn implemented_xapic_register(offset: u16) -> bool {
    matches!(offset, 0x020 | 0x030 | 0x080..=0x280 | 0x300..=0x390 | 0x3e0)
}

/// An access the x2APIC MSR interface rejects with #GP (SDM §11.12.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// A 256-bit register of one bit per vector (IRR, ISR, TMR; SDM §11.8.4),
/// held as four 64-bit words: setting, clearing and testing a vector is one
/// bit operation on one word, and the highest vector set, which the
/// processor needs at every boundary, is a leading-zero count on the
/// highest non-zero word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorSet([u64; 4]);

impl VectorSet {
    #[inline]
    fn test(&self, v: u8) -> bool {
        self.0[v as usize / 64] & (1 << (v % 64)) != 0
    }

    #[inline]
    fn set(&mut self, v: u8, on: bool) {
        if on {
            self.0[v as usize / 64] |= 1 << (v % 64);
        } else {
            self.0[v as usize / 64] &= !(1 << (v % 64));
        }
    }

    #[inline]
    fn highest(&self) -> Option<u8> {
        let [w0, w1, w2, w3] = self.0;
        if w3 | w2 != 0 {
            if w3 != 0 {
                Some(255 - w3.leading_zeros() as u8)
            } else {
                Some(191 - w2.leading_zeros() as u8)
            }
        } else if w1 != 0 {
            Some(127 - w1.leading_zeros() as u8)
        } else if w0 != 0 {
            Some(63 - w0.leading_zeros() as u8)
        } else {
            None
        }
    }

    /// 32-bit word `index` as the register reads (word 0: vectors 0-31).
    fn word(&self, index: usize) -> u32 {
        (self.0[index / 2] >> (32 * (index % 2))) as u32
    }

    /// The eight 32-bit words, word 0 first.
    fn words(&self) -> [u32; 8] {
        std::array::from_fn(|index| self.word(index))
    }
}

/// What an accepted or refused message did, for the decision log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// A fixed interrupt set its IRR bit.
    Accepted,
    /// An NMI for the processor.
    Nmi,
    /// Refused, with the rule that refused it.
    Refused(Rule),
    /// A delivery mode the model does not model (SMI, INIT, ExtINT, reserved).
    Unmodelled(DeliveryMode),
}

/// What an EOI write did (SDM §11.8.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eoi {
    /// The vector whose ISR bit was cleared (the highest in service).
    pub in_service: Option<u8>,
    /// The vector to broadcast to the IOAPICs, if the EOI is broadcast.
    pub broadcast: Option<u8>,
    /// The rule that decided.
    pub rule: Rule,
}

/// The local APIC's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    /// IA32_APIC_BASE bit 11: the APIC is globally enabled.
    hw_enabled: bool,
    /// IA32_APIC_BASE bits 31:12.
    base: u32,
    x2apic: bool,
    directed_eoi_supported: bool,
    quirks: Quirks,
    /// Rules broken on purpose (diagnosis: see [`crate::rules::Deviation`]).
    deviations: Deviations,
    id: u32,
    tpr: u32,
    svr: u32,
    ldr: u32,
    dfr: u32,
    irr: VectorSet,
    isr: VectorSet,
    tmr: VectorSet,
    /// ESR as last latched by a write, and errors since (SDM §11.5.3).
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    /// LVT timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; 6],
    /// The timer's counts, divide configuration and TSC deadline (SDM
    /// §11.5.4; its LVT entry is `lvt[0]`).
    timer: Timer,
    /// The vector of an error interrupt raised since the caller last took
    /// it ([`Lapic::take_error_interrupt`]), for the decision log.
    error_interrupt: Option<u8>,
    /// Deviation state (`held-by-ppr/late`): the TPR the priority check
    /// still uses after a raise it has not seen.
    stale_tpr: Option<u32>,
}

/// SDM §11.12.10.2: the x2APIC logical ID derived from the x2APIC ID:
/// cluster ID (bits 31:16) = ID[19:4], member bit (15:0) = 1 << ID[3:0].
pub const fn x2apic_ldr(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 0xf)
}

/// The mask bit of every LVT entry (SDM §11.5.1).
pub const LVT_MASKED: u32 = 1 << 16;

impl Lapic {
    /// The scenario's start state: APIC ID 0, software-enabled (SVR 0x1FF),
    /// TPR 0, IRR/ISR/TMR empty, LINT0/LINT1 masked.
    #[inline]
    pub fn new(x2apic: bool, directed_eoi_supported: bool, quirks: Quirks) -> Lapic {
        Lapic {
            hw_enabled: true,
            base: 0xfee0_0000,
            x2apic,
            directed_eoi_supported,
            quirks,
            deviations: Deviations::default(),
            id: 0,
            tpr: 0,
            svr: 0x1ff,
            // x2APIC: the logical ID is derived from the x2APIC ID: cluster
            // id >> 4, bit 1 << (id & 0xf) (SDM §11.12.10.2).
            ldr: if x2apic { 1 } else { 0 },
            dfr: 0xffff_ffff,
            irr: VectorSet::default(),
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; 6],
            timer: Timer::new(),
            error_interrupt: None,
            stale_tpr: None,
        }
    }

    #[inline]
    pub fn x2apic(&self) -> bool {
        self.x2apic
    }
    #[inline]
    pub fn hw_enabled(&self) -> bool {
        self.hw_enabled
    }

    /// IA32_APIC_BASE as the guest reads it (low 32 bits): base, EN, EXTD,
    /// and BSP (bit 8, this is the boot processor).
    pub fn apic_base(&self) -> u32 {
        self.base | u32::from(self.hw_enabled) << 11 | u32::from(self.x2apic) << 10 | 1 << 8
    }

    /// Breaks the given rules from now on (kept across resets).
    #[inline]
    pub fn set_deviations(&mut self, deviations: Deviations) {
        self.deviations = deviations;
        // `eoi-broadcast-suppressed/inverted`: suppression advertised
        // (version bit 24) and honoured where the platform has it off, as
        // KVM does with the IOAPIC in userspace (kvm_apic_set_version).
        if deviations.breaks(Rule::EoiBroadcastSuppressed, Mode::Inverted) {
            self.directed_eoi_supported = true;
        }
    }

    /// A guest write of IA32_APIC_BASE (SDM §11.4.4, §11.12.5). Invalid
    /// mode transitions raise #GP: EXTD without EN; x2APIC back to xAPIC;
    /// disabled straight to x2APIC. Disabling resets the APIC (§11.4.3: all
    /// state is lost; it comes back in its power-up state, software-disabled).
    pub fn write_apic_base(&mut self, value: u32) -> Result<(), GeneralProtection> {
        // `apic-base-transition/inverted`: the checks below are not made
        // (reserved bits ignored, x2APIC straight back to xAPIC taken).
        let unchecked = self
            .deviations
            .breaks(Rule::ApicBaseTransition, Mode::Inverted);
        let value = if unchecked {
            value & !APIC_BASE_RESERVED
        } else {
            value
        };
        if value & APIC_BASE_RESERVED != 0 {
            return Err(GeneralProtection);
        }
        let (en, extd) = (value & 1 << 11 != 0, value & 1 << 10 != 0);
        if unchecked && self.x2apic && en && !extd {
            self.base = value & !0xfff;
            self.x2apic = false;
            return Ok(());
        }
        let invalid = (extd && !en) || (self.x2apic && en && !extd) || (!self.hw_enabled && extd);
        if invalid {
            return Err(GeneralProtection);
        }
        if (self
            .quirks
            .contains(Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS)
            || self
                .deviations
                .breaks(Rule::ApicBaseTransition, Mode::Skipped))
            && !self.hw_enabled
            && en
            && value & !0xfff != self.base
        {
            // The seed's FB14021745: the move and the enable together fail.
            self.base = value & !0xfff;
            return Ok(());
        }
        self.base = value & !0xfff;
        if self.deviations.breaks(Rule::ApicBaseTransition, Mode::Late) && (!en || !self.hw_enabled)
        {
            // `apic-base-transition/late`: disabled and enabled again with
            // its state kept (reset only by a later INIT), as KVM does.
            self.hw_enabled = en;
            return Ok(());
        }
        if !en {
            *self = Lapic {
                hw_enabled: false,
                base: self.base,
                deviations: self.deviations,
                id: self.id,
                ..Lapic::new(false, self.directed_eoi_supported, self.quirks)
            };
            self.svr = 0xff;
            return Ok(());
        }
        if !self.hw_enabled {
            // Re-enabled: the power-up state, software-disabled (§11.4.7.1).
            *self = Lapic {
                base: self.base,
                deviations: self.deviations,
                id: self.id,
                ..Lapic::new(false, self.directed_eoi_supported, self.quirks)
            };
            self.svr = 0xff;
            return Ok(());
        }
        if extd && !self.x2apic {
            // §11.12.5.1: xAPIC to x2APIC keeps the state; the logical ID
            // is now derived from the x2APIC ID.
            self.x2apic = true;
            self.ldr = x2apic_ldr(self.id);
        }
        Ok(())
    }

    /// The local APIC ID (8 bits in xAPIC mode, the x2APIC ID otherwise).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the APIC ID the platform assigned (SDM §11.4.6: the BIOS/
    /// hardware assigns it at power-up); in x2APIC mode the logical ID is
    /// derived from it (§11.12.10.2).
    pub fn set_id(&mut self, id: u32) {
        self.id = id;
        if self.x2apic {
            self.ldr = x2apic_ldr(id);
        }
    }

    /// The logical destination register as it reads.
    pub fn ldr(&self) -> u32 {
        self.ldr
    }

    /// SDM §11.4.7.3: after an INIT the local APIC is in its power-up
    /// state (§11.4.7.1: IRR, ISR, TMR, ICR, LDR, TPR zero, DFR all ones,
    /// LVTs masked, SVR 0xFF: software-disabled) except the APIC ID and
    /// arbitration ID; IA32_APIC_BASE (the base, EN and EXTD) is not
    /// changed by INIT, so an x2APIC keeps its mode and derived LDR.
    pub fn init_reset(&mut self) {
        let id = self.id;
        *self = Lapic {
            hw_enabled: self.hw_enabled,
            base: self.base,
            deviations: self.deviations,
            ..Lapic::new(self.x2apic, self.directed_eoi_supported, self.quirks)
        };
        self.set_id(id);
        self.svr = 0xff;
    }

    /// The start state the stub gives a CPU it starts (docs/guest-stub.md):
    /// the power-up state software-enabled (SVR 0x1FF).
    pub fn start(&mut self) {
        self.init_reset();
        self.svr = 0x1ff;
    }

    /// The ICR's low dword and its destination (8 bits in xAPIC mode,
    /// 32 in x2APIC mode), as last written.
    pub fn icr(&self) -> (u32, u32) {
        let dest = if self.x2apic {
            self.icr_high
        } else {
            self.icr_high >> 24
        };
        (self.icr_low, dest)
    }
    pub fn irr(&self) -> [u32; 8] {
        self.irr.words()
    }
    pub fn isr(&self) -> [u32; 8] {
        self.isr.words()
    }
    pub fn tmr(&self) -> [u32; 8] {
        self.tmr.words()
    }
    /// Whether `vector` was accepted level-triggered (its TMR bit, §11.8.4).
    #[inline]
    pub fn is_level(&self, vector: u8) -> bool {
        self.tmr.test(vector)
    }
    #[inline]
    pub fn tpr(&self) -> u32 {
        self.tpr
    }
    #[inline]
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }
    fn version(&self) -> u32 {
        VERSION_BASE
            | if self.directed_eoi_supported {
                VERSION_DIRECTED_EOI
            } else {
                0
            }
    }

    /// SDM §11.8.3.1: `PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4`.
    #[inline]
    pub fn ppr(&self) -> u32 {
        self.ppr_with(self.tpr)
    }

    fn ppr_with(&self, tpr: u32) -> u32 {
        let isrv = self.isr.highest().unwrap_or(0) as u32;
        if (tpr & 0xf0) >= (isrv & 0xf0) {
            tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// Whether a message's destination names this APIC (SDM §11.6.2.1
    /// physical, §11.6.2.2 logical; 0xFF is the broadcast of an 8-bit
    /// destination, which the model also honours in x2APIC mode, like KVM).
    pub fn matches(&self, logical: bool, dest: u32) -> bool {
        if !logical {
            if self
                .deviations
                .breaks(Rule::NoDestinationMatch, Mode::Inverted)
                && dest & 0xf == self.id & 0xf
            {
                return true; // Only 4 bits of the physical destination compared.
            }
            return dest == self.id || dest == 0xff || (self.x2apic && dest == 0xffff_ffff);
        }
        // QEMU_LAPIC: apic_get_delivery_bitmask matches a logical 0xFF
        // against the LDR like any other destination.
        if dest == 0xff && !self.quirks.contains(Quirks::QEMU_LAPIC) {
            return true;
        }
        if self.x2apic {
            // §11.12.10.2: cluster in bits 31:16, member bitmap in 15:0; an
            // 8-bit destination addresses cluster 0.
            let (cluster, members) = (dest >> 16, dest & 0xffff);
            return cluster == self.ldr >> 16 && members & self.ldr & 0xffff != 0;
        }
        let logical_id = self.ldr >> 24;
        match self.dfr >> 28 {
            // Flat model: the MDA and the LDR share a set bit.
            0xf => dest & logical_id != 0,
            // Cluster model: equal high nibble, shared low-nibble bit.
            0x0 => dest >> 4 == logical_id >> 4 && dest & logical_id & 0xf != 0,
            // §11.6.2.2 defines only 1111b and 0000b; the model matches
            // nothing, as KVM, QEMU and bhyve do (lib.rs, choices).
            _ => false,
        }
    }

    /// A message for this APIC arrives (the destination was matched).
    pub fn accept(&mut self, msg: &InterruptMessage) -> Acceptance {
        // §11.4.3: a globally disabled APIC takes nothing.
        if !self.hw_enabled {
            return Acceptance::Refused(Rule::ApicSoftwareDisabled);
        }
        match msg.delivery {
            DeliveryMode::Fixed | DeliveryMode::Lowest => {}
            DeliveryMode::Nmi => return Acceptance::Nmi,
            other => return Acceptance::Unmodelled(other),
        }
        // §11.5.3: an illegal vector (0-15) in a received message sets the
        // receive-illegal-vector bit and is not delivered.
        let qemu = self.quirks.contains(Quirks::QEMU_LAPIC);
        if msg.vector < 16 && !qemu && !self.deviations.breaks(Rule::IllegalVector, Mode::Skipped) {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return Acceptance::Refused(Rule::IllegalVector);
        }
        // §11.4.7.2: a software-disabled APIC does not take fixed interrupts
        // (as KVM's __apic_accept_irq); the sender sees no acceptance.
        if !self.software_enabled()
            && !qemu
            && !self
                .deviations
                .breaks(Rule::ApicSoftwareDisabled, Mode::Skipped)
        {
            return Acceptance::Refused(Rule::ApicSoftwareDisabled);
        }
        // §11.8.4: into the IRR; TMR cleared for edge, set for level.
        self.irr.set(msg.vector, true);
        // `accepted-into-irr/late`: acceptance only sets TMR; the EOI
        // clears it.
        if msg.level || !self.deviations.breaks(Rule::AcceptedIntoIrr, Mode::Late) {
            self.tmr.set(msg.vector, msg.level);
        }
        Acceptance::Accepted
    }

    /// §11.8.3: the vector the processor would take now, if any.
    #[inline]
    pub fn deliverable(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        self.dispatchable(v).then_some(v)
    }

    /// §11.8.3: whether requested vector `v` is above the processor
    /// priority class.
    #[inline]
    pub fn dispatchable(&self, v: u8) -> bool {
        let ppr = match self.stale_tpr {
            // `held-by-ppr/late`: PPR from the TPR before the unseen raise.
            Some(tpr) => self.ppr_with(tpr),
            None => self.ppr(),
        };
        if self.deviations.breaks(Rule::HeldByPpr, Mode::Skipped) {
            return v as u32 > ppr; // The whole vector, not its class.
        }
        if self.quirks.contains(Quirks::QEMU_LAPIC) {
            // QEMU's apic_irq_pending: nothing while software-disabled, and
            // any vector while PPR is 0.
            return self.software_enabled() && (ppr == 0 || (v as u32 & 0xf0) > (ppr & 0xf0));
        }
        (v as u32 & 0xf0) > (ppr & 0xf0)
    }

    /// The highest requested vector, deliverable or not.
    pub fn highest_irr(&self) -> Option<u8> {
        self.irr.highest()
    }

    /// The processor takes `vector`: IRR to ISR (§11.8.4 last step).
    #[inline]
    pub fn acknowledge(&mut self, vector: u8) {
        if self
            .deviations
            .breaks(Rule::AcceptedIntoIrr, Mode::Inverted)
        {
            return; // The vector stays requested, nothing goes in service.
        }
        self.irr.set(vector, false);
        if !self.quirks.contains(Quirks::ISR_NEVER_SET)
            && !self.deviations.breaks(Rule::AcceptedIntoIrr, Mode::Skipped)
        {
            self.isr.set(vector, true);
        }
    }

    /// An EOI write: clears the highest ISR bit (§11.8.5) and says whether
    /// the EOI is broadcast to the IOAPICs, and the rule that decided.
    pub fn end_of_interrupt(&mut self) -> Eoi {
        let Some(v) = self.isr.highest() else {
            return Eoi {
                in_service: None,
                broadcast: None,
                rule: Rule::EoiNothingInService,
            };
        };
        self.isr.set(v, false);
        let d = self.deviations;
        let level = self.tmr.test(v);
        if d.breaks(Rule::AcceptedIntoIrr, Mode::Late) {
            self.tmr.set(v, false); // Cleared by the EOI, after its test.
        }
        let (broadcast, rule) = if !level {
            if d.breaks(Rule::EoiEdgeNotBroadcast, Mode::Inverted) {
                return Eoi {
                    in_service: Some(v),
                    broadcast: Some(v),
                    rule: Rule::Quirk,
                };
            }
            // §11.8.5: only a level-triggered vector's EOI leaves the APIC.
            (None, Rule::EoiEdgeNotBroadcast)
        } else if self.directed_eoi_supported
            && self.svr & SVR_SUPPRESS_EOI_BROADCAST != 0
            && !d.breaks(Rule::EoiBroadcastSuppressed, Mode::Skipped)
        {
            // §11.8.5 and §11.9: SVR bit 12 suppresses the broadcast; it
            // takes effect only where the version register advertises it.
            (None, Rule::EoiBroadcastSuppressed)
        } else {
            (Some(v), Rule::EoiBroadcast)
        };
        Eoi {
            in_service: Some(v),
            broadcast,
            rule,
        }
    }

    /// A register read by xAPIC MMIO offset (or its x2APIC MSR, low 32 bits).
    pub fn read(&self, offset: u16) -> u32 {
        if !self.hw_enabled {
            return 0;
        }
        let word = |bits: &VectorSet| bits.word(((offset & 0x7f) >> 4) as usize);
        match offset {
            // §11.4.6: xAPIC ID in bits 31:24; x2APIC ID is 32-bit.
            reg::ID => {
                if self.x2apic {
                    self.id
                } else {
                    self.id << 24
                }
            }
            reg::VERSION => self.version(),
            reg::TPR => self.tpr,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => word(&self.isr),
            0x180..=0x1f0 => word(&self.tmr),
            0x200..=0x270 => word(&self.irr),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low & !(1 << 12),
            reg::ICR_HIGH => self.icr_high,
            0x320..=0x370 => self.lvt[((offset - 0x320) >> 4) as usize],
            reg::TIMER_INITIAL => self.timer.initial(),
            reg::TIMER_CURRENT => self.timer.current(self.timer_mode()),
            reg::TIMER_DIVIDE => self.timer.divide(),
            _ => 0,
        }
    }

    /// A register write by xAPIC offset. Returns a self IPI to send, if the
    /// write was one (the ICR with the self shorthand or the SELF IPI MSR).
    pub fn write(&mut self, offset: u16, value: u32) -> Option<InterruptMessage> {
        if !self.hw_enabled {
            return None;
        }
        if !self.x2apic && !implemented_xapic_register(offset) {
            // §11.5.3 bit 7: an access to an unimplemented register.
            self.signal_error(ESR_ILLEGAL_REGISTER);
            return None;
        }
        match offset {
            reg::TPR => {
                let old = self.tpr;
                self.tpr = value & 0xff;
                self.tpr_deviations(old);
            }
            // §11.6.2.2: LDR bits 31:24 are writable in xAPIC mode; in x2APIC
            // mode it is read-only.
            reg::LDR if !self.x2apic => self.ldr = value & 0xff00_0000,
            reg::DFR if !self.x2apic => self.dfr = value | 0x0fff_ffff,
            reg::SVR => {
                // §11.9: bit 12 is reserved where the version register does
                // not advertise EOI-broadcast suppression.
                let qemu = self.quirks.contains(Quirks::QEMU_LAPIC);
                // QEMU_LAPIC: apic_mem_write keeps bits 8:0 only.
                let mut mask = if qemu { 0x1ff } else { 0x3ff };
                if self.directed_eoi_supported {
                    mask |= SVR_SUPPRESS_EOI_BROADCAST;
                }
                self.svr = value & mask;
                // §11.4.7.2: software disable masks every LVT entry (not
                // under QEMU_LAPIC: QEMU leaves the LVTs as they are).
                if !self.software_enabled() && !qemu {
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            // §11.5.3: a write latches the errors since the last write.
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_HIGH if !self.x2apic => self.icr_high = value & 0xff00_0000,
            reg::ICR_LOW => {
                self.icr_low = value;
                return self.send_ipi();
            }
            0x320..=0x370 => {
                let index = ((offset - 0x320) >> 4) as usize;
                // QEMU_LAPIC: apic_mem_write stores the LVT value as written.
                let mut v = if self.quirks.contains(Quirks::QEMU_LAPIC) {
                    value
                } else {
                    value & LVT_WRITABLE[index]
                };
                if !self.software_enabled() && !self.quirks.contains(Quirks::QEMU_LAPIC) {
                    v |= LVT_MASKED;
                }
                let old_mode = self.timer_mode();
                self.lvt[index] = v;
                if index == 0 {
                    self.timer.change_mode(old_mode, self.timer_mode());
                }
            }
            reg::TIMER_INITIAL => {
                self.timer.write_initial(self.timer_mode(), value);
            }
            reg::TIMER_DIVIDE => self.timer.write_divide(value),
            reg::SELF_IPI if self.x2apic => {
                if self.deviations.breaks(Rule::SelfIpi, Mode::Skipped) {
                    return None;
                }
                // §11.12.11: a fixed, edge-triggered self IPI of bits 7:0.
                return self.self_ipi(value as u8);
            }
            _ => {}
        }
        None
    }

    /// The deviations of the TPR rules (SDM §11.8.3.1) after a TPR write
    /// from `old`: a raise kept from the priority check until the TPR is
    /// lowered (`held-by-ppr/late`), or requested vectors the raise holds
    /// dropped (`held-by-ppr/inverted`).
    fn tpr_deviations(&mut self, old: u32) {
        let d = self.deviations;
        if d.breaks(Rule::HeldByPpr, Mode::Late) {
            self.stale_tpr = if self.tpr > old {
                Some(self.stale_tpr.unwrap_or(old))
            } else {
                None
            };
        }
        if d.breaks(Rule::HeldByPpr, Mode::Inverted) {
            // The classes above the old TPR's up to the new one's: none
            // unless the class rose.
            for v in (old & 0xf0) + 0x10..=(self.tpr & 0xf0) | 0xf {
                self.irr.set(v as u8, false);
            }
        }
    }

    /// A guest's xAPIC MMIO read: [`Lapic::read`], and an access to an
    /// unimplemented register sets ESR bit 7 (SDM §11.5.3).
    pub fn read_mmio(&mut self, offset: u16) -> u32 {
        if self.hw_enabled && !implemented_xapic_register(offset) {
            self.signal_error(ESR_ILLEGAL_REGISTER);
        }
        self.read(offset)
    }

    /// SDM §11.5.3: an error sets its ESR bit (latched by the next ESR
    /// write) and generates the interrupt of the LVT Error entry unless it
    /// is masked: fixed, edge, into the IRR. An illegal vector in the LVT
    /// Error entry is itself a receive-illegal-vector error (bit 6: "an
    /// interrupt generated locally from the local vector table") and
    /// raises nothing further.
    fn signal_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR_INDEX];
        if lvt & LVT_MASKED != 0 {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            return;
        }
        self.irr.set(vector, true);
        self.tmr.set(vector, false);
        self.error_interrupt = Some(vector);
    }

    /// The LVT timer's mode (bits 18:17, SDM Figure 11-8).
    pub fn timer_mode(&self) -> TimerMode {
        TimerMode::of(self.lvt[0])
    }

    /// The timer's state (counts, divide configuration, TSC deadline).
    pub fn timer(&self) -> &Timer {
        &self.timer
    }

    /// Whether the timer counts towards an expiry (a one-shot or periodic
    /// count in progress, or a TSC deadline armed), masked or not.
    pub fn timer_armed(&self) -> bool {
        self.hw_enabled && self.timer.armed(self.timer_mode())
    }

    /// Time passes, up to `limit` ns (a wait of the scenario format): the
    /// timer expires if it fits ([`Timer::elapse`]) and raises its
    /// interrupt. Returns the rule that decided, and the vector raised.
    pub fn timer_elapse(&mut self, limit: u64) -> Option<(Rule, Option<u8>)> {
        if !self.hw_enabled {
            return None;
        }
        let expiry = self.timer.elapse(self.timer_mode(), limit)?;
        Some(self.timer_fire(expiry.rule))
    }

    /// A write of IA32_TSC_DEADLINE (SDM §11.5.4.1): ignored outside
    /// TSC-deadline mode; a deadline in the past expires at once.
    pub fn write_tsc_deadline(&mut self, value: u64) -> Option<(Rule, Option<u8>)> {
        if !self.hw_enabled {
            return None;
        }
        // Deviation timer-tsc-deadline/late: a deadline already passed at
        // the write stays armed (the MSR keeps it) until the next exit to
        // the VMM or wait, where `timer_elapse(0)` expires it.
        if self.deviations.breaks(Rule::TimerTscDeadline, Mode::Late) {
            self.timer.write_deadline_late(self.timer_mode(), value);
            return None;
        }
        let expiry = self.timer.write_deadline(self.timer_mode(), value)?;
        Some(self.timer_fire(expiry.rule))
    }

    /// IA32_TSC_DEADLINE as RDMSR reads it (SDM §11.5.4.1).
    pub fn read_tsc_deadline(&self) -> u64 {
        self.timer.read_deadline(self.timer_mode())
    }

    /// The timer reached its expiry: SDM §11.5.1, the LVT timer entry's
    /// interrupt, fixed and edge, into the IRR (as the LVT Error's, SDM
    /// §11.5.3) unless the entry is masked (`timer-masked`: nothing, the
    /// expiry is not held). An illegal vector (0-15) in the entry is a
    /// receive-illegal-vector error (§11.5.3 bit 6, "an interrupt generated
    /// locally from the local vector table").
    fn timer_fire(&mut self, rule: Rule) -> (Rule, Option<u8>) {
        let lvt = self.lvt[0];
        if lvt & LVT_MASKED != 0 {
            return (Rule::TimerMasked, None);
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return (Rule::IllegalVector, None);
        }
        self.irr.set(vector, true);
        self.tmr.set(vector, false);
        (rule, Some(vector))
    }

    /// The vector of the error interrupt raised since the last call, if any.
    pub fn take_error_interrupt(&mut self) -> Option<u8> {
        self.error_interrupt.take()
    }

    /// x2APIC RDMSR; #GP for write-only and reserved registers (§11.12.1.2).
    pub fn read_msr(&self, msr: u32) -> Result<u64, GeneralProtection> {
        if !self.x2apic || !(0x800..=0x8ff).contains(&msr) {
            return Err(GeneralProtection);
        }
        let offset = ((msr - 0x800) << 4) as u16;
        match offset {
            reg::EOI | reg::SELF_IPI | reg::DFR | reg::APR | reg::ICR_HIGH => {
                Err(GeneralProtection)
            }
            reg::ICR_LOW => Ok(((self.icr_high as u64) << 32) | self.read(offset) as u64),
            reg::ID
            | reg::VERSION
            | reg::TPR
            | reg::PPR
            | reg::LDR
            | reg::SVR
            | reg::ESR
            | 0x100..=0x270
            | 0x320..=0x390
            | reg::TIMER_DIVIDE => Ok(self.read(offset) as u64),
            _ => Err(GeneralProtection),
        }
    }

    /// x2APIC WRMSR; #GP for read-only and reserved registers and for
    /// reserved bits (§11.12.1.2, §11.12.1.3).
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
    ) -> Result<Option<InterruptMessage>, GeneralProtection> {
        if !self.x2apic || !(0x800..=0x8ff).contains(&msr) {
            return Err(GeneralProtection);
        }
        let offset = ((msr - 0x800) << 4) as u16;
        if offset != reg::ICR_LOW && value >> 32 != 0 {
            return Err(GeneralProtection);
        }
        if self.deviations.breaks(Rule::X2apicMsrGp, Mode::Inverted)
            && (offset == reg::ICR_LOW || (offset == reg::SVR && value & 1 << 9 != 0))
        {
            return Err(GeneralProtection);
        }
        match offset {
            // §11.12.1.3: only 0 may be written to EOI; SELF IPI bits 31:8
            // are reserved. §11.5.3: in x2APIC mode a non-zero write to the
            // ESR raises #GP.
            reg::EOI | reg::ESR if value != 0 => Err(GeneralProtection),
            reg::SELF_IPI if value > 0xff => Err(GeneralProtection),
            reg::EOI => Ok(None),
            reg::ICR_LOW if value & X2APIC_ICR_RESERVED != 0 => Err(GeneralProtection),
            reg::ICR_LOW => {
                self.icr_high = (value >> 32) as u32;
                Ok(self.write(offset, value as u32))
            }
            reg::TPR | reg::SVR | reg::ESR | reg::SELF_IPI | 0x320..=0x380 | reg::TIMER_DIVIDE => {
                Ok(self.write(offset, value as u32))
            }
            _ => Err(GeneralProtection),
        }
    }

    /// §11.6.1: an ICR write. Only what reaches this one APIC is modelled:
    /// the self shorthand, all-including-self, and a destination that
    /// matches this APIC.
    fn send_ipi(&mut self) -> Option<InterruptMessage> {
        let low = self.icr_low;
        let shorthand = (low >> 18) & 3;
        let logical = low & (1 << 11) != 0;
        let dest = if self.x2apic {
            self.icr_high
        } else {
            self.icr_high >> 24
        };
        let to_self = match shorthand {
            0 => self.matches(logical, dest),
            1 | 2 => true,
            _ => false,
        };
        let delivery = DeliveryMode::from_bits((low >> 8) as u8);
        if delivery == DeliveryMode::Fixed
            && (low as u8) < 16
            && !self.quirks.contains(Quirks::QEMU_LAPIC)
        {
            // §11.5.3: the sender flags an illegal vector (bit 5); a copy that
            // reaches this APIC itself is also a received illegal vector
            // (bit 6: "... or via a self IPI"); nothing is delivered.
            self.signal_error(if to_self {
                ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR
            } else {
                ESR_SEND_ILLEGAL_VECTOR
            });
            return None;
        }
        if !to_self {
            return None;
        }
        // §11.6.1: with a shorthand the destination field is not used; the
        // copy for this APIC is addressed to it by its own physical ID.
        let (logical, dest) = if shorthand == 0 {
            (logical, dest)
        } else {
            (false, self.id)
        };
        Some(InterruptMessage {
            vector: low as u8,
            delivery,
            logical,
            dest,
            // §11.6.1: the trigger mode bit; level applies only to INIT level
            // de-assert in practice, so IPIs are edge for TMR purposes.
            level: false,
            rule: Rule::SelfIpi,
        })
    }

    fn self_ipi(&mut self, vector: u8) -> Option<InterruptMessage> {
        if vector < 16
            && !self.quirks.contains(Quirks::QEMU_LAPIC)
            && !self.deviations.breaks(Rule::IllegalVector, Mode::Skipped)
        {
            // §11.5.3: both the send and the receive illegal-vector bits.
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR);
            return None;
        }
        Some(InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: self.id,
            level: false,
            rule: Rule::SelfIpi,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_sets_hold_each_vector_and_find_the_highest_in_every_word() {
        // SDM §11.8.4: one bit per vector; the register reads as eight
        // 32-bit words, word 0 holding vectors 0-31.
        for v in [
            0u8, 1, 31, 32, 63, 64, 65, 127, 128, 129, 191, 192, 193, 254, 255,
        ] {
            let mut set = VectorSet::default();
            assert_eq!(set.highest(), None);
            set.set(v, true);
            assert!(set.test(v), "{v}");
            assert_eq!(set.highest(), Some(v), "{v}");
            let mut words = [0u32; 8];
            words[v as usize / 32] = 1 << (v % 32);
            assert_eq!(set.words(), words, "{v}");
            if v > 0 {
                assert!(!set.test(v - 1), "{v}");
                set.set(v - 1, true);
                assert_eq!(set.highest(), Some(v), "a lower vector does not win");
                set.set(v, false);
                assert_eq!(set.highest(), Some(v - 1), "{v}");
                assert!(!set.test(v));
            } else {
                set.set(v, false);
                assert_eq!(set.highest(), None);
            }
        }
    }

    fn fixed(vector: u8, level: bool) -> InterruptMessage {
        InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            logical: false,
            dest: 0,
            level,
            rule: Rule::MsiDelivers,
        }
    }

    #[test]
    fn acceptance_sets_irr_and_tmr_by_trigger_mode() {
        // SDM §11.8.4: TMR cleared for edge, set for level, on acceptance.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x79, true));
        assert!(l.tmr.test(0x79) && l.irr.test(0x79));
        l.acknowledge(0x79);
        l.end_of_interrupt();
        assert!(
            l.tmr.test(0x79),
            "TMR keeps the last acceptance's mode after EOI"
        );
        l.accept(&fixed(0x79, false));
        assert!(!l.tmr.test(0x79));
    }

    #[test]
    fn ppr_from_tpr_and_isr_and_dispatch_above_its_class() {
        // SDM §11.8.3.1.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::TPR, 0x25);
        assert_eq!(l.ppr(), 0x25);
        l.accept(&fixed(0x2f, false));
        assert_eq!(l.deliverable(), None, "class 2 is not above PPR class 2");
        l.accept(&fixed(0x31, false));
        assert_eq!(l.deliverable(), Some(0x31));
        l.acknowledge(0x31);
        assert_eq!(l.ppr(), 0x30, "ISR class 3 above TPR class 2");
        l.write(reg::TPR, 0);
        assert_eq!(l.deliverable(), None, "0x2f is below the in-service class");
        l.end_of_interrupt();
        assert_eq!(l.deliverable(), Some(0x2f));
    }

    #[test]
    fn higher_vector_wins_within_and_across_classes() {
        // SDM §11.8.3: highest priority first (EV-2: 33 before 32).
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x20, false));
        l.accept(&fixed(0x21, false));
        assert_eq!(l.deliverable(), Some(0x21));
    }

    #[test]
    fn eoi_clears_highest_isr_and_broadcasts_only_level_vectors() {
        // SDM §11.8.5.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x40, true));
        l.acknowledge(0x40);
        l.accept(&fixed(0x50, false));
        l.acknowledge(0x50);
        let eoi = |l: &mut Lapic| {
            let e = l.end_of_interrupt();
            (e.in_service, e.broadcast, e.rule)
        };
        assert_eq!(
            eoi(&mut l),
            (Some(0x50), None, Rule::EoiEdgeNotBroadcast),
            "the highest in service first; an edge vector stays local"
        );
        assert_eq!(eoi(&mut l), (Some(0x40), Some(0x40), Rule::EoiBroadcast));
        assert_eq!(eoi(&mut l), (None, None, Rule::EoiNothingInService));
    }

    #[test]
    fn broadcast_suppression_needs_the_version_bit() {
        // SDM §11.8.5 and §11.9: SVR bit 12 only where version bit 24 is set.
        for (supported, expected) in [(true, None), (false, Some(0x40))] {
            let mut l = Lapic::new(false, supported, Quirks::empty());
            assert_eq!(l.read(reg::VERSION) & VERSION_DIRECTED_EOI != 0, supported);
            l.write(reg::SVR, 0x11ff);
            l.accept(&fixed(0x40, true));
            l.acknowledge(0x40);
            assert_eq!(l.end_of_interrupt().broadcast, expected);
            assert_eq!(
                l.read(reg::SVR) & SVR_SUPPRESS_EOI_BROADCAST != 0,
                supported
            );
        }
    }

    #[test]
    fn illegal_vectors_set_esr_and_are_not_accepted() {
        // SDM §11.5.3.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(
            l.accept(&fixed(0x0f, false)),
            Acceptance::Refused(Rule::IllegalVector)
        );
        assert_eq!(
            l.read(reg::ESR),
            0,
            "the ESR shows errors only after a write"
        );
        l.write(reg::ESR, 0);
        assert_eq!(l.read(reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        // A self IPI with an illegal vector: the sender's error (bit 5) and,
        // as it reaches this APIC, the receiver's (bit 6: "or via a self IPI").
        assert_eq!(l.write(reg::ICR_LOW, 0x4_0005), None);
        l.write(reg::ESR, 0);
        assert_eq!(
            l.read(reg::ESR),
            ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR
        );
        // To a destination that is not this APIC: only the sender's error.
        l.write(reg::ICR_HIGH, 0x0500_0000);
        assert_eq!(l.write(reg::ICR_LOW, 0x0005), None);
        l.write(reg::ESR, 0);
        assert_eq!(l.read(reg::ESR), ESR_SEND_ILLEGAL_VECTOR);
        // Back-to-back writes clear it.
        l.write(reg::ESR, 0);
        assert_eq!(l.read(reg::ESR), 0);
        assert_eq!(l.highest_irr(), None);
    }

    #[test]
    fn x2apic_illegal_self_ipi_and_esr_writes() {
        // SDM §11.5.3: SELF IPI with an illegal vector sets bits 5 and 6;
        // in x2APIC mode a non-zero ESR write raises #GP.
        let mut l = Lapic::new(true, false, Quirks::empty());
        assert_eq!(l.write_msr(msr_of(reg::SELF_IPI), 0x03), Ok(None));
        assert_eq!(l.write_msr(msr_of(reg::ESR), 1), Err(GeneralProtection));
        assert_eq!(l.write_msr(msr_of(reg::ESR), 0), Ok(None));
        assert_eq!(
            l.read_msr(msr_of(reg::ESR)),
            Ok((ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR) as u64)
        );
    }

    #[test]
    fn ppr_is_tpr_when_its_class_is_not_below_the_in_service_class() {
        // SDM §11.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4
        // (with the low nibble of TPR kept only in the first case).
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x47, false));
        l.acknowledge(0x47);
        l.write(reg::TPR, 0x43);
        assert_eq!(l.ppr(), 0x43, "equal classes: TPR");
        l.write(reg::TPR, 0x3f);
        assert_eq!(
            l.ppr(),
            0x40,
            "TPR class below: the ISR class, low nibble 0"
        );
        l.write(reg::TPR, 0x51);
        assert_eq!(l.ppr(), 0x51);
        assert_eq!(l.read(reg::PPR), 0x51);
    }

    #[test]
    fn cluster_logical_destinations_xapic_and_x2apic() {
        // SDM §11.6.2.2 cluster model (DFR 0x0FFFFFFF): equal high nibble and
        // a shared low-nibble bit. §11.12.10.2: the x2APIC logical ID of APIC
        // 0 is cluster 0, bit 0; an 8-bit destination addresses cluster 0.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::DFR, 0x0fff_ffff);
        l.write(reg::LDR, 0x2100_0000);
        assert!(l.matches(true, 0x21) && l.matches(true, 0x23));
        assert!(!l.matches(true, 0x11) && !l.matches(true, 0x22));
        let mut x2 = Lapic::new(true, false, Quirks::empty());
        assert!(!x2.matches(true, 0x0001_0001), "cluster 1");
        assert!(x2.matches(true, 0x0000_0003));
        x2.write(reg::LDR, 0x0001_0002);
        assert_eq!(x2.read(reg::LDR), 1, "the x2APIC LDR is read-only");
    }

    #[test]
    fn start_state_and_software_disable_masks_the_lvt() {
        // docs/scenario-format.md start state: SVR 0x1FF, LINT0/LINT1 masked.
        // SDM §11.4.7.2: software disable sets every LVT mask bit, and LVT
        // writes while disabled keep the mask set.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(l.read(reg::SVR), 0x1ff);
        assert_eq!(l.read(reg::VERSION), 0x0005_0014);
        assert!(l.read(reg::LVT_LINT0) & LVT_MASKED != 0);
        assert!(l.read(reg::LVT_LINT1) & LVT_MASKED != 0);
        l.write(reg::LVT_TIMER, 0x40);
        assert_eq!(l.read(reg::LVT_TIMER), 0x40);
        l.write(reg::SVR, 0xff);
        assert!(l.read(reg::LVT_TIMER) & LVT_MASKED != 0);
        l.write(reg::LVT_TIMER, 0x40);
        assert!(l.read(reg::LVT_TIMER) & LVT_MASKED != 0);
    }

    #[test]
    fn software_disabled_apic_refuses_fixed_interrupts() {
        // SDM §11.4.7.2.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::SVR, 0xff);
        assert_eq!(
            l.accept(&fixed(0x40, false)),
            Acceptance::Refused(Rule::ApicSoftwareDisabled)
        );
    }

    #[test]
    fn self_ipi_by_icr_shorthand_and_x2apic_register() {
        // SDM §11.6.1 (self shorthand) and §11.12.11 (SELF IPI).
        let mut x = Lapic::new(false, false, Quirks::empty());
        x.write(reg::ICR_HIGH, 0);
        assert_eq!(
            x.write(reg::ICR_LOW, 0x4_00f1).map(|m| m.vector),
            Some(0xf1)
        );
        let mut x2 = Lapic::new(true, false, Quirks::empty());
        assert_eq!(
            x2.write_msr(msr_of(reg::SELF_IPI), 0xf1)
                .unwrap()
                .map(|m| m.vector),
            Some(0xf1)
        );
        assert_eq!(
            x2.write_msr(msr_of(reg::SELF_IPI), 0x1f1),
            Err(GeneralProtection)
        );
        assert_eq!(x2.read_msr(msr_of(reg::EOI)), Err(GeneralProtection));
        assert_eq!(x2.write_msr(msr_of(reg::EOI), 1), Err(GeneralProtection));
    }

    #[test]
    fn destinations_physical_broadcast_and_logical() {
        // SDM §11.6.2.1 and §11.6.2.2.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert!(l.matches(false, 0) && l.matches(false, 0xff) && !l.matches(false, 1));
        assert!(
            !l.matches(true, 0x01),
            "LDR 0 matches no logical destination"
        );
        l.write(reg::LDR, 0x0100_0000);
        assert!(l.matches(true, 0x01) && !l.matches(true, 0x02));
        let x2 = Lapic::new(true, false, Quirks::empty());
        assert!(x2.matches(true, 0x01) && !x2.matches(true, 0x02));
    }

    #[test]
    fn apic_base_transitions() {
        // SDM §11.12.5: xAPIC -> x2APIC is fine, x2APIC -> xAPIC is #GP;
        // EXTD without EN is #GP; disabled -> x2APIC is #GP.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(l.write_apic_base(0xfee0_0400), Err(GeneralProtection));
        assert_eq!(l.write_apic_base(0xfee0_0c00), Ok(()));
        assert!(l.x2apic());
        assert_eq!(l.write_apic_base(0xfee0_0800), Err(GeneralProtection));
        assert_eq!(l.write_apic_base(0xfee0_0000), Ok(()));
        assert!(!l.hw_enabled());
        assert_eq!(l.write_apic_base(0xfee0_0c00), Err(GeneralProtection));
        // §11.4.3: re-enabled in the power-up state, software-disabled; moved.
        assert_eq!(l.write_apic_base(0xfed0_0800), Ok(()));
        assert_eq!(l.apic_base(), 0xfed0_0900);
        assert!(!l.software_enabled());
    }

    #[test]
    fn globally_disabled_apic_takes_nothing() {
        // SDM §11.4.3.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write_apic_base(0xfee0_0000).unwrap();
        assert!(matches!(
            l.accept(&fixed(0x40, false)),
            Acceptance::Refused(_)
        ));
    }

    #[test]
    fn quirk_move_and_enable_in_one_write_fails() {
        let mut l = Lapic::new(false, false, Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS);
        l.write_apic_base(0xfee0_0000).unwrap();
        l.write_apic_base(0xfed0_0800).unwrap();
        assert!(!l.hw_enabled());
    }

    #[test]
    fn a_shorthand_ipi_reaches_this_apic_whatever_the_destination_field() {
        // SDM §11.6.1: shorthands 01 (self) and 10 (all including self)
        // ignore the destination field, logical or physical.
        for shorthand in [1u32, 2] {
            let mut l = Lapic::new(false, false, Quirks::empty());
            l.write(reg::ICR_HIGH, 0x0500_0000);
            let msg = l
                .write(reg::ICR_LOW, shorthand << 18 | 1 << 11 | 0x14 | 0x40)
                .expect("a copy for this APIC");
            assert_eq!((msg.vector, msg.logical), (0x54, false));
            assert!(l.matches(msg.logical, msg.dest));
        }
    }

    #[test]
    fn quirk_qemu_lapic_accepts_what_the_sdm_refuses() {
        // hw/intc/apic.c: apic_set_irq checks neither the vector nor SVR;
        // apic_irq_pending dispatches nothing while software-disabled and
        // any vector while PPR is 0.
        let mut l = Lapic::new(false, false, Quirks::QEMU_LAPIC);
        assert_eq!(l.accept(&fixed(0x09, false)), Acceptance::Accepted);
        assert_eq!(l.read(reg::ESR), 0);
        assert_eq!(l.deliverable(), Some(0x09));
        l.acknowledge(0x09);
        l.end_of_interrupt();
        l.write(reg::SVR, 0xff);
        assert_eq!(l.accept(&fixed(0x40, false)), Acceptance::Accepted);
        assert_eq!(l.deliverable(), None);
        l.write(reg::SVR, 0x1ff);
        assert_eq!(l.deliverable(), Some(0x40));
        // apic_mem_write: SVR keeps bits 8:0; disable leaves LVTs alone.
        l.write(reg::SVR, 0x3ff);
        assert_eq!(l.read(reg::SVR), 0x1ff);
        l.write(reg::SVR, 0xff);
        l.write(0x350, 0x20);
        assert_eq!(l.read(0x350), 0x20);
        // apic_get_delivery_bitmask: logical 0xFF is no broadcast.
        assert!(!l.matches(true, 0xff));
        assert!(l.matches(false, 0xff));
    }

    #[test]
    fn apic_base_reserved_bits_raise_gp() {
        // SDM §11.4.4 (Figure 11-5): bits 7:0 and 9 are reserved; KVM's
        // kvm_apic_set_base and kvm-unit-tests test_apicbase ("reserved low
        // bits") expect #GP. Bit 8 (BSP) is not reserved.
        for bit in (0..8).chain([9]) {
            let mut l = Lapic::new(false, false, Quirks::empty());
            assert_eq!(
                l.write_apic_base(0xfee0_0800 | 1 << bit),
                Err(GeneralProtection),
                "bit {bit}"
            );
            assert_eq!(
                l.apic_base(),
                0xfee0_0900,
                "the faulting write changes nothing"
            );
        }
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(l.write_apic_base(0xfee0_0900), Ok(()));
    }

    #[test]
    fn deviation_apic_base_transition_inverted_leaves_out_the_checks() {
        // What `apic-base-transition/inverted` breaks: SDM §11.4.4 (reserved
        // bits raise #GP) and §11.12.5 (x2APIC goes back to xAPIC only
        // through the disabled state). The write is taken instead, at the
        // base it names.
        let inverted = Deviations::of(&[crate::rules::Deviation::new(
            Rule::ApicBaseTransition,
            Mode::Inverted,
        )]);
        let mut l = Lapic::new(true, false, Quirks::empty());
        l.set_deviations(inverted);
        assert_eq!(
            l.write_apic_base(0xfed0_0c01),
            Ok(()),
            "reserved bit 0 dropped"
        );
        assert_eq!(l.apic_base(), 0xfed0_0d00);
        assert_eq!(l.write_apic_base(0xfec0_0800), Ok(()), "x2APIC to xAPIC");
        assert!(!l.x2apic());
        assert_eq!(l.apic_base(), 0xfec0_0900, "moved to the new base");
        // Without the deviation both writes fault and change nothing.
        let mut l = Lapic::new(true, false, Quirks::empty());
        assert_eq!(l.write_apic_base(0xfed0_0c01), Err(GeneralProtection));
        assert_eq!(l.write_apic_base(0xfec0_0800), Err(GeneralProtection));
        assert!(l.x2apic());
        assert_eq!(l.apic_base(), 0xfee0_0d00);
    }

    #[test]
    fn deviation_no_destination_match_inverted_compares_four_bits() {
        // SDM §11.6.2.1: a physical destination names the APIC whose ID it
        // equals. `no-destination-match/inverted` compares only bits 3:0.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.set_id(3);
        assert!(!l.matches(false, 0x13));
        l.set_deviations(Deviations::of(&[crate::rules::Deviation::new(
            Rule::NoDestinationMatch,
            Mode::Inverted,
        )]));
        assert!(l.matches(false, 0x13));
        assert!(l.matches(false, 0x23));
        assert!(l.matches(false, 3));
        assert!(!l.matches(false, 0x12));
        assert!(!l.matches(false, 0x1f));
    }

    #[test]
    fn deviation_held_by_ppr_inverted_drops_the_vectors_a_tpr_raise_holds() {
        // SDM §11.8.3.1: a TPR raise only holds the lower classes, which
        // stay requested. `held-by-ppr/inverted` drops them instead: every
        // class above the old TPR's up to the new one's.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.set_deviations(Deviations::of(&[crate::rules::Deviation::new(
            Rule::HeldByPpr,
            Mode::Inverted,
        )]));
        for v in [0x25, 0x35, 0x4f, 0x50, 0x85] {
            l.accept(&fixed(v, false));
        }
        l.write(reg::TPR, 0x10);
        assert_eq!(l.irr()[1], 1 << 5 | 1 << 21, "class 1 held nothing");
        l.write(reg::TPR, 0x42);
        assert_eq!(l.irr()[1], 0, "classes 2 and 3 dropped");
        assert_eq!(l.irr()[2], 1 << 16, "class 4 dropped, 0x50 above it kept");
        assert_eq!(l.irr()[4], 1 << 5);
        l.write(reg::TPR, 0x42);
        l.write(reg::TPR, 0);
        assert_eq!(l.irr()[2], 1 << 16, "no raise, nothing dropped");
        assert_eq!(l.irr()[4], 1 << 5);
        // Without the deviation the raise holds and drops nothing.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x35, false));
        l.write(reg::TPR, 0x42);
        assert_eq!(l.irr()[1], 1 << (0x35 - 0x20));
    }

    #[test]
    fn resets_keep_the_apic_id_the_base_msr_and_the_deviations() {
        // SDM §11.4.7.3: INIT resets the local APIC except its APIC ID and
        // arbitration ID, and leaves IA32_APIC_BASE (base, EN) alone. A
        // hardware disable and re-enable (§11.4.3, §11.4.7.1) gives the
        // power-up state, whose APIC ID is still the one the platform
        // assigned (§11.4.6). Deviations are the model's, kept throughout.
        let four_bits = Deviations::of(&[crate::rules::Deviation::new(
            Rule::NoDestinationMatch,
            Mode::Inverted,
        )]);
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.set_deviations(four_bits);
        l.set_id(5);
        assert_eq!(l.write_apic_base(0xfee0_0000), Ok(()), "disable");
        assert_eq!((l.id(), l.matches(false, 0x15)), (5, true));
        assert_eq!(l.write_apic_base(0xfee0_0800), Ok(()), "enable");
        assert_eq!((l.id(), l.matches(false, 0x15)), (5, true));
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.set_deviations(four_bits);
        l.set_id(5);
        assert_eq!(l.write_apic_base(0xfed0_0800), Ok(()), "moved");
        l.init_reset();
        assert_eq!(l.apic_base(), 0xfed0_0900);
        assert_eq!((l.id(), l.matches(false, 0x15)), (5, true));
        assert_eq!(l.write_apic_base(0xfed0_0000), Ok(()), "disable");
        l.init_reset();
        assert_eq!(l.apic_base(), 0xfed0_0100, "still disabled");
        assert!(!l.hw_enabled());
    }

    #[test]
    fn x2apic_icr_reserved_bits_raise_gp_and_send_nothing() {
        // SDM §11.12.1.3: ICR bits 31:20, 17:16 and 13 are reserved in x2APIC
        // mode (KVM's X2APIC_ICR_RESERVED_BITS).
        for bit in [13, 16, 17, 20, 31] {
            let mut l = Lapic::new(true, false, Quirks::empty());
            assert_eq!(
                l.write_msr(msr_of(reg::ICR_LOW), 0x4_0041 | 1 << bit),
                Err(GeneralProtection),
                "bit {bit}"
            );
            assert_eq!(l.read_msr(msr_of(reg::ICR_LOW)), Ok(0), "ICR unchanged");
        }
        let mut l = Lapic::new(true, false, Quirks::empty());
        assert_eq!(
            l.write_msr(msr_of(reg::ICR_LOW), 0x4_0041)
                .unwrap()
                .map(|m| m.vector),
            Some(0x41)
        );
    }

    #[test]
    fn lvt_writes_keep_only_the_writable_bits_of_each_entry() {
        // SDM Figure 11-8: per-LVT layout; reserved bits and the read-only
        // delivery status (12) and LINT remote IRR (14) read 0 (KVM's
        // apic_lvt_mask and bhyve's vlapic_lvt_write_handler mask too).
        let mut l = Lapic::new(false, false, Quirks::empty());
        let expected = [
            (reg::LVT_TIMER, 0x0007_00ff),
            (0x330, 0x0001_07ff),
            (0x340, 0x0001_07ff),
            (reg::LVT_LINT0, 0x0001_a7ff),
            (reg::LVT_LINT1, 0x0001_a7ff),
            (reg::LVT_ERROR, 0x0001_00ff),
        ];
        for (offset, value) in expected {
            l.write(offset, 0xffff_ffff);
            assert_eq!(l.read(offset), value, "offset {offset:#x}");
        }
        // QEMU_LAPIC: apic_mem_write stores the value as written.
        let mut q = Lapic::new(false, false, Quirks::QEMU_LAPIC);
        q.write(reg::LVT_LINT0, 0xffff_ffff);
        assert_eq!(q.read(reg::LVT_LINT0), 0xffff_ffff);
    }

    #[test]
    fn an_error_raises_the_lvt_error_interrupt_unless_masked() {
        // SDM §11.5.3: a detected error sets its ESR bit and generates an
        // interrupt through the LVT Error register.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::LVT_ERROR, 0x3e);
        assert_eq!(l.write(reg::ICR_LOW, 0x4_0005), None, "illegal self IPI");
        assert_eq!(l.take_error_interrupt(), Some(0x3e));
        assert_eq!(l.take_error_interrupt(), None, "taken once");
        assert_eq!(l.deliverable(), Some(0x3e));
        assert!(!l.tmr.test(0x3e), "the error interrupt is edge");
        l.write(reg::ESR, 0);
        assert_eq!(
            l.read(reg::ESR),
            ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR
        );
        // Masked (the start state): the ESR bit, no interrupt.
        let mut m = Lapic::new(false, false, Quirks::empty());
        m.write(reg::ICR_LOW, 0x4_0005);
        assert_eq!(m.take_error_interrupt(), None);
        assert_eq!(m.highest_irr(), None);
        // A received illegal vector is an error too.
        let mut r = Lapic::new(false, false, Quirks::empty());
        r.write(reg::LVT_ERROR, 0x3e);
        r.accept(&fixed(0x07, false));
        assert_eq!(r.take_error_interrupt(), Some(0x3e));
    }

    #[test]
    fn an_illegal_lvt_error_vector_is_a_receive_error_and_raises_nothing() {
        // SDM §11.5.3 bit 6: an illegal vector "in an interrupt generated
        // locally from the local vector table".
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::LVT_ERROR, 0x05);
        l.write(reg::ICR_HIGH, 0x0500_0000);
        l.write(reg::ICR_LOW, 0x0005);
        assert_eq!(l.take_error_interrupt(), None);
        assert_eq!(l.highest_irr(), None);
        l.write(reg::ESR, 0);
        assert_eq!(
            l.read(reg::ESR),
            ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR
        );
    }

    #[test]
    fn unimplemented_xapic_registers_set_esr_bit_7() {
        // SDM §11.5.3 bit 7 (Illegal Register Address) and Table 11-1: the
        // reserved offsets, SELF IPI (x2APIC only) and LVT CMCI (not among
        // the six LVT entries the version register reports).
        for offset in [
            0x000, 0x010, 0x040, 0x070, 0x290, 0x2e0, 0x2f0, 0x3a0, 0x3d0, 0x3f0,
        ] {
            assert!(!implemented_xapic_register(offset), "{offset:#x}");
            let mut l = Lapic::new(false, false, Quirks::empty());
            assert_eq!(l.read_mmio(offset), 0);
            l.write(reg::ESR, 0);
            assert_eq!(l.read(reg::ESR), ESR_ILLEGAL_REGISTER, "read {offset:#x}");
            assert_eq!(l.write(offset, 0xf1), None);
            l.write(reg::ESR, 0);
            assert_eq!(l.read(reg::ESR), ESR_ILLEGAL_REGISTER, "write {offset:#x}");
        }
        for offset in [0x020, 0x030, 0x080, 0x0c0, 0x280, 0x300, 0x390, 0x3e0] {
            assert!(implemented_xapic_register(offset), "{offset:#x}");
            let mut l = Lapic::new(false, false, Quirks::empty());
            l.read_mmio(offset);
            l.write(reg::ESR, 0);
            assert_eq!(l.read(reg::ESR), 0, "{offset:#x}");
        }
        // In x2APIC mode these are #GP instead (§11.12.1.2).
        let l = Lapic::new(true, false, Quirks::empty());
        assert_eq!(l.read_msr(msr_of(0x040)), Err(GeneralProtection));
    }

    #[test]
    fn an_invalid_dfr_model_matches_no_logical_destination() {
        // SDM §11.6.2.2 defines DFR model 1111b (flat) and 0000b (cluster)
        // only; the model matches nothing otherwise (lib.rs, choices).
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::LDR, 0x0100_0000);
        assert!(l.matches(true, 0x01), "flat");
        l.write(reg::DFR, 0x5fff_ffff);
        assert_eq!(l.read(reg::DFR), 0x5fff_ffff);
        assert!(!l.matches(true, 0x01) && !l.matches(true, 0x0f));
        assert!(l.matches(true, 0xff), "the broadcast still reaches it");
        assert!(l.matches(false, 0), "physical destinations are unaffected");
    }

    #[test]
    fn xapic_register_writes_keep_their_defined_bits() {
        // SDM §11.8.3.1 TPR bits 7:0; §11.6.2.2 LDR bits 31:24 and DFR model
        // bits 31:28 (27:0 read as 1s); §11.9 SVR bits 9:0 (12 only with
        // directed EOI); §11.6.1 ICR high bits 31:24; §11.5.4 divide
        // configuration bits 3, 1:0; initial count all 32 bits.
        let mut l = Lapic::new(false, false, Quirks::empty());
        let writes = [
            (reg::TPR, 0xffff_ffff, 0xff),
            (reg::LDR, 0xffff_ffff, 0xff00_0000),
            (reg::DFR, 0x0000_0000, 0x0fff_ffff),
            (reg::SVR, 0xffff_ffff, 0x3ff),
            (reg::ICR_HIGH, 0xffff_ffff, 0xff00_0000),
            (reg::TIMER_DIVIDE, 0xffff_ffff, 0xb),
            (reg::TIMER_INITIAL, 0x1234_5678, 0x1234_5678),
        ];
        for (offset, value, read) in writes {
            l.write(offset, value);
            assert_eq!(l.read(offset), read, "offset {offset:#x}");
        }
        // §11.6.1: delivery status (bit 12) reads 0: delivery is instant.
        l.write(reg::ICR_HIGH, 0x0500_0000);
        l.write(reg::ICR_LOW, 0x0000_1040);
        assert_eq!(l.read(reg::ICR_LOW), 0x40);
        // §11.4.6: the xAPIC ID is in bits 31:24; read-only in this model.
        l.write(reg::ID, 0x0300_0000);
        assert_eq!(l.read(reg::ID), 0);
        assert_eq!(l.read(reg::VERSION), VERSION_BASE);
        assert_eq!(
            Lapic::new(false, true, Quirks::empty()).read(reg::VERSION),
            VERSION_BASE | VERSION_DIRECTED_EOI
        );
    }

    #[test]
    fn register_words_of_isr_tmr_and_irr() {
        // SDM §11.8.4, Figure 11-20: each 256-bit register is eight 32-bit
        // words at 16-byte steps, vector v in word v / 32, bit v % 32.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.accept(&fixed(0x21, true));
        l.accept(&fixed(0xfe, false));
        assert_eq!(l.read(0x200 + 0x10), 1 << 1, "IRR word 1");
        assert_eq!(l.read(0x200 + 0x70), 1 << 30, "IRR word 7");
        assert_eq!(l.read(0x180 + 0x10), 1 << 1, "TMR word 1");
        assert_eq!(l.read(0x180 + 0x70), 0);
        l.acknowledge(0xfe);
        assert_eq!(l.read(0x100 + 0x70), 1 << 30, "ISR word 7");
        assert_eq!(l.read(0x200 + 0x70), 0, "IRR bit moved to ISR");
        assert_eq!(l.irr(), [0, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(l.isr(), [0, 0, 0, 0, 0, 0, 0, 1 << 30]);
        assert_eq!(l.tmr(), [0, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(l.highest_irr(), Some(0x21));
    }

    #[test]
    fn x2apic_msr_interface_faults_and_widths() {
        // SDM §11.12.1.2: RDMSR of a write-only register (EOI, SELF IPI)
        // and of DFR, APR, ICR high (gone in x2APIC) is #GP, and so is any
        // access to a reserved MSR or from xAPIC mode; WRMSR of a read-only
        // register is #GP; §11.12.1.3: bits 63:32 are reserved except in
        // the 64-bit ICR; §11.12.9: the ICR is one 64-bit register with the
        // destination in bits 63:32.
        let mut l = Lapic::new(true, false, Quirks::empty());
        for offset in [
            reg::DFR,
            reg::APR,
            reg::ICR_HIGH,
            reg::SELF_IPI,
            0x040,
            0x3a0,
        ] {
            assert_eq!(
                l.read_msr(msr_of(offset)),
                Err(GeneralProtection),
                "{offset:#x}"
            );
        }
        for offset in [reg::ID, reg::VERSION, reg::PPR, reg::LDR, 0x100, 0x390] {
            assert_eq!(
                l.write_msr(msr_of(offset), 0),
                Err(GeneralProtection),
                "{offset:#x}"
            );
        }
        assert_eq!(l.read_msr(0x7ff), Err(GeneralProtection));
        assert_eq!(l.read_msr(0x900), Err(GeneralProtection));
        assert_eq!(l.write_msr(0x900, 0), Err(GeneralProtection));
        assert_eq!(
            l.write_msr(msr_of(reg::TPR), 1 << 32),
            Err(GeneralProtection)
        );
        assert_eq!(l.write_msr(msr_of(reg::TPR), 0x20), Ok(None));
        assert_eq!(l.read_msr(msr_of(reg::TPR)), Ok(0x20));
        assert_eq!(l.read_msr(msr_of(reg::ID)), Ok(0), "x2APIC ID, 32 bits");
        assert_eq!(l.read_msr(msr_of(reg::LDR)), Ok(1));
        // Destination 5 is not this APIC: nothing to send, the ICR is kept.
        assert_eq!(l.write_msr(msr_of(reg::ICR_LOW), 5 << 32 | 0x41), Ok(None));
        assert_eq!(l.read_msr(msr_of(reg::ICR_LOW)), Ok(5 << 32 | 0x41));
        let msg = l.write_msr(msr_of(reg::ICR_LOW), 0x41).unwrap().unwrap();
        assert_eq!((msg.vector, msg.dest, msg.logical), (0x41, 0, false));
        for offset in [0x320, 0x380, reg::TIMER_DIVIDE] {
            assert_eq!(l.write_msr(msr_of(offset), 0x3), Ok(None), "{offset:#x}");
        }
        let x = Lapic::new(false, false, Quirks::empty());
        assert_eq!(x.read_msr(msr_of(reg::TPR)), Err(GeneralProtection));
        let mut x = Lapic::new(false, false, Quirks::empty());
        assert_eq!(x.write_msr(msr_of(reg::TPR), 0), Err(GeneralProtection));
        // x2APIC destinations: physical 0xFFFFFFFF is the broadcast.
        assert!(l.matches(false, 0xffff_ffff) && !l.matches(false, 0x100));
    }

    #[test]
    fn ipis_by_delivery_mode_and_shorthand() {
        // SDM §11.6.1: shorthand 11 (all excluding self) never reaches this
        // APIC; an NMI IPI to self is an NMI message whatever its vector;
        // a destination field naming this APIC logically is delivered.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(l.write(reg::ICR_LOW, 3 << 18 | 0x41), None);
        let nmi = l.write(reg::ICR_LOW, 1 << 18 | 4 << 8 | 0x02).unwrap();
        assert_eq!((nmi.delivery, nmi.vector), (DeliveryMode::Nmi, 0x02));
        l.write(reg::ESR, 0);
        assert_eq!(l.read(reg::ESR), 0, "only fixed IPIs check the vector");
        l.write(reg::LDR, 0x0400_0000);
        l.write(reg::ICR_HIGH, 0x0400_0000);
        let m = l.write(reg::ICR_LOW, 1 << 11 | 0x51).unwrap();
        assert_eq!(
            (m.vector, m.logical, m.dest, m.level),
            (0x51, true, 0x04, false)
        );
        l.write(reg::ICR_HIGH, 0x0800_0000);
        assert_eq!(l.write(reg::ICR_LOW, 1 << 11 | 0x51), None, "another APIC");
        // §11.6.1: the trigger-mode bit is not used (lib.rs, choices).
        l.write(reg::ICR_HIGH, 0);
        assert!(
            !l.write(reg::ICR_LOW, 1 << 15 | 1 << 14 | 0x52)
                .unwrap()
                .level
        );
    }

    #[test]
    fn hardware_disable_resets_and_hides_the_registers() {
        // SDM §11.4.3: a globally disabled APIC's state is lost and its
        // registers are gone: reads 0, writes do nothing; re-enabled, it is
        // in its power-up state, software-disabled (lib.rs, choices).
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::TPR, 0x30);
        l.accept(&fixed(0x40, false));
        l.write_apic_base(0xfee0_0000).unwrap();
        assert_eq!(l.apic_base(), 0xfee0_0100, "BSP only");
        assert_eq!(l.read(reg::VERSION), 0);
        assert_eq!(l.read_mmio(0x040), 0);
        assert_eq!(l.write(reg::ICR_LOW, 1 << 18 | 0x41), None);
        assert_eq!(l.write(reg::TPR, 0x50), None);
        l.write_apic_base(0xfee0_0800).unwrap();
        assert_eq!((l.tpr(), l.read(reg::SVR)), (0, 0xff));
        assert_eq!(l.highest_irr(), None);
        l.write(reg::ESR, 0);
        assert_eq!(
            l.read(reg::ESR),
            0,
            "no illegal-register error while disabled"
        );
        // §11.12.5.1: xAPIC to x2APIC keeps the state; the LDR is derived.
        let mut x = Lapic::new(false, false, Quirks::empty());
        x.write(reg::TPR, 0x30);
        x.write(reg::LDR, 0x0800_0000);
        x.write_apic_base(0xfee0_0c00).unwrap();
        assert_eq!(x.apic_base(), 0xfee0_0d00);
        assert_eq!((x.tpr(), x.read(reg::LDR)), (0x30, 1));
        assert_eq!(
            x.write_apic_base(0xfee0_0c00),
            Ok(()),
            "x2APIC stays x2APIC"
        );
    }

    #[test]
    fn esr_bits_are_those_of_the_sdm() {
        // SDM §11.5.3, Figure 11-9: send illegal vector bit 5, receive
        // illegal vector bit 6, illegal register address bit 7.
        assert_eq!(
            (
                ESR_SEND_ILLEGAL_VECTOR,
                ESR_RECEIVE_ILLEGAL_VECTOR,
                ESR_ILLEGAL_REGISTER
            ),
            (0x20, 0x40, 0x80)
        );
        assert_eq!(X2APIC_ICR_RESERVED, 0xfff3_2000);
        assert_eq!(APIC_BASE_RESERVED, 0x2ff);
    }

    #[test]
    fn apic_base_keeps_its_address_through_disable_and_mode_writes() {
        // SDM §11.4.4: bits 35:12 are the base, kept by a disable (§11.4.3);
        // an xAPIC-enabled write in xAPIC mode stays xAPIC (§11.12.5).
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write_apic_base(0xfee0_0800).unwrap();
        assert!(!l.x2apic(), "EN without EXTD is xAPIC");
        l.write_apic_base(0xfed0_0000).unwrap();
        assert_eq!(l.apic_base(), 0xfed0_0100);
        // FB14021745's quirk needs a move: enabling in place still works,
        // and the failed move still records the new base.
        let mut q = Lapic::new(false, false, Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS);
        q.write_apic_base(0xfee0_0000).unwrap();
        q.write_apic_base(0xfee0_0800).unwrap();
        assert!(q.hw_enabled());
        q.write_apic_base(0xfee0_0000).unwrap();
        q.write_apic_base(0xfec0_0800).unwrap();
        assert_eq!((q.hw_enabled(), q.apic_base()), (false, 0xfec0_0100));
    }

    #[test]
    fn vector_16_is_the_first_legal_vector() {
        // SDM §11.5.3: vectors 0-15 are illegal; 16 is accepted.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(l.accept(&fixed(0x10, false)), Acceptance::Accepted);
        assert_eq!(
            l.accept(&fixed(0x0f, false)),
            Acceptance::Refused(Rule::IllegalVector)
        );
    }

    #[test]
    fn directed_eoi_support_alone_does_not_suppress_the_broadcast() {
        // SDM §11.8.5: only SVR bit 12 suppresses the broadcast.
        let mut l = Lapic::new(false, true, Quirks::empty());
        l.accept(&fixed(0x40, true));
        l.acknowledge(0x40);
        assert_eq!(l.end_of_interrupt().broadcast, Some(0x40));
    }

    #[test]
    fn quirk_qemu_lapic_dispatches_above_a_nonzero_ppr_class_only() {
        // hw/intc/apic.c apic_irq_pending: with PPR non-zero, the vector's
        // class must exceed PPR's, as SDM §11.8.3.
        let mut l = Lapic::new(false, false, Quirks::QEMU_LAPIC);
        l.write(reg::TPR, 0x40);
        l.accept(&fixed(0x4f, false));
        assert_eq!(l.deliverable(), None, "class 4 is not above class 4");
        l.accept(&fixed(0x35, false));
        assert_eq!(l.deliverable(), None);
        l.accept(&fixed(0x51, false));
        assert_eq!(l.deliverable(), Some(0x51));
    }

    #[test]
    fn x2apic_mode_ignores_the_xapic_only_registers() {
        // SDM §11.12.1.2: DFR and ICR high do not exist in x2APIC mode.
        let mut l = Lapic::new(true, false, Quirks::empty());
        l.write(reg::DFR, 0);
        assert_eq!(l.read(reg::DFR), 0xffff_ffff);
        l.write(reg::ICR_HIGH, 0x0500_0000);
        assert_eq!(l.read_msr(msr_of(reg::ICR_LOW)), Ok(0));
    }

    #[test]
    fn the_boundaries_of_legal_vectors_and_register_values() {
        // SDM §11.5.3: 16 is legal for IPIs, self IPIs and the LVT Error;
        // §11.12.11: SELF IPI takes bits 7:0, so 0xFF is legal; §11.12.1.3:
        // an x2APIC EOI write of 0 is the EOI.
        let mut l = Lapic::new(false, false, Quirks::empty());
        assert_eq!(
            l.write(reg::ICR_LOW, 1 << 18 | 0x10).map(|m| m.vector),
            Some(0x10)
        );
        l.write(reg::LVT_ERROR, 0x10);
        l.write(0x040, 0);
        assert_eq!(l.take_error_interrupt(), Some(0x10));
        let mut x2 = Lapic::new(true, false, Quirks::empty());
        assert_eq!(
            x2.write_msr(msr_of(reg::SELF_IPI), 0x10)
                .unwrap()
                .map(|m| m.vector),
            Some(0x10)
        );
        assert_eq!(
            x2.write_msr(msr_of(reg::SELF_IPI), 0xff)
                .unwrap()
                .map(|m| m.vector),
            Some(0xff)
        );
        assert_eq!(x2.write_msr(msr_of(reg::EOI), 0), Ok(None));
        x2.write_msr(msr_of(reg::ESR), 0).unwrap();
        assert_eq!(x2.read_msr(msr_of(reg::ESR)), Ok(0));
    }

    #[test]
    fn an_svr_write_that_keeps_the_apic_enabled_leaves_the_lvts() {
        // SDM §11.4.7.2: only a software disable masks the LVT entries.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::LVT_TIMER, 0x40);
        l.write(reg::SVR, 0x1ff);
        assert_eq!(l.read(reg::LVT_TIMER), 0x40);
    }

    #[test]
    fn quirk_isr_never_set_keeps_ppr_low() {
        let mut l = Lapic::new(false, false, Quirks::ISR_NEVER_SET);
        l.accept(&fixed(0x40, true));
        l.acknowledge(0x40);
        assert_eq!(l.isr(), [0; 8]);
        assert_eq!(l.end_of_interrupt().rule, Rule::EoiNothingInService);
    }

    #[test]
    fn timer_expiry_raises_the_lvt_vector_unless_masked_and_a_masked_one_is_not_held() {
        // SDM §11.5.1: the mask inhibits the timer interrupt; the timer
        // still counts (§11.5.4), so a one-shot that expired masked is
        // over: unmasking afterwards delivers nothing.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::TIMER_DIVIDE, 0xb);
        l.write(reg::LVT_TIMER, 0x40);
        l.write(reg::TIMER_INITIAL, 1000);
        assert_eq!(l.timer_elapse(1000), Some((Rule::TimerOneShot, Some(0x40))));
        assert_eq!(l.highest_irr(), Some(0x40));
        assert!(!l.is_level(0x40), "edge (TMR clear)");
        assert_eq!(l.read(reg::TIMER_CURRENT), 0);
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::TIMER_DIVIDE, 0xb);
        l.write(reg::LVT_TIMER, 0x40 | LVT_MASKED);
        l.write(reg::TIMER_INITIAL, 1000);
        assert_eq!(l.timer_elapse(1000), Some((Rule::TimerMasked, None)));
        l.write(reg::LVT_TIMER, 0x40);
        assert_eq!(l.highest_irr(), None, "the masked expiry is not held");
        assert_eq!(l.timer_elapse(u64::MAX), None, "the one-shot is over");
        // Periodic: masked expiries raise nothing, the next unmasked one does.
        l.write(reg::LVT_TIMER, 0x41 | 1 << 17 | LVT_MASKED);
        l.write(reg::TIMER_INITIAL, 10);
        assert_eq!(l.timer_elapse(10), Some((Rule::TimerMasked, None)));
        l.write(reg::LVT_TIMER, 0x41 | 1 << 17);
        assert_eq!(l.timer_elapse(10), Some((Rule::TimerPeriodic, Some(0x41))));
        assert_eq!(l.highest_irr(), Some(0x41));
    }

    #[test]
    fn the_timer_mode_reads_back_as_written() {
        // kvm-unit-tests test_timer_mode_read: LVT timer bits 18:17 read
        // back each mode written (SDM Figure 11-8; the model has the
        // TSC-deadline timer, CPUID.01H:ECX[24]).
        let mut l = Lapic::new(false, false, Quirks::empty());
        for mode in [0u32, 1 << 17, 2 << 17] {
            l.write(reg::LVT_TIMER, 0xee | mode);
            assert_eq!(l.read(reg::LVT_TIMER) & 3 << 17, mode);
            assert_eq!(l.timer_mode().bits(), mode);
        }
    }

    #[test]
    fn an_illegal_timer_vector_is_an_error_not_an_interrupt() {
        // SDM §11.5.3 bit 6: an interrupt generated locally from the LVT
        // with a vector of 0-15 is a receive-illegal-vector error.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::TIMER_DIVIDE, 0xb);
        l.write(reg::LVT_TIMER, 0x08);
        l.write(reg::TIMER_INITIAL, 1);
        assert_eq!(l.timer_elapse(1), Some((Rule::IllegalVector, None)));
        assert_eq!(l.highest_irr(), None);
        l.write(reg::ESR, 0);
        assert_eq!(l.read(reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn the_tsc_deadline_msr_and_the_timer_registers_through_the_lapic() {
        // SDM §11.5.4.1: the MSR only in TSC-deadline mode; a deadline in
        // the past expires at the write; the initial count is ignored.
        let mut l = Lapic::new(true, false, Quirks::empty());
        let now = l.timer().tsc();
        assert_eq!(l.write_tsc_deadline(now), None, "one-shot mode: ignored");
        l.write_msr(msr_of(reg::LVT_TIMER), 0xef | 2 << 17).unwrap();
        l.write_msr(msr_of(reg::TIMER_INITIAL), 100).unwrap();
        assert_eq!(l.read(reg::TIMER_INITIAL), 0);
        assert_eq!(l.read(reg::TIMER_CURRENT), 0);
        assert_eq!(l.write_tsc_deadline(now + 7), None);
        assert_eq!(l.read_tsc_deadline(), now + 7);
        assert!(l.timer_armed());
        assert_eq!(
            l.write_tsc_deadline(now),
            Some((Rule::TimerTscDeadline, Some(0xef)))
        );
        assert_eq!(l.read_tsc_deadline(), 0);
        assert_eq!(l.highest_irr(), Some(0xef));
        // The current count is read-only in x2APIC mode (#GP).
        assert!(l.write_msr(msr_of(reg::TIMER_CURRENT), 1).is_err());
    }

    #[test]
    fn under_timer_tsc_deadline_late_a_passed_deadline_waits_for_the_next_elapse() {
        // Deviation of SDM §11.5.4.1 ("if software writes a value that is
        // in the past" the timer expires at once): the deadline stays in
        // the MSR, nothing is raised, and the next elapse of any bound (an
        // exit to the VMM: 0) expires it and clears the MSR.
        let mut l = Lapic::new(true, false, Quirks::empty());
        l.set_deviations(Deviations::of(&[crate::rules::Deviation::new(
            Rule::TimerTscDeadline,
            Mode::Late,
        )]));
        l.write_msr(msr_of(reg::LVT_TIMER), 0xef | 2 << 17).unwrap();
        let now = l.timer().tsc();
        assert_eq!(l.write_tsc_deadline(now), None);
        assert_eq!(l.read_tsc_deadline(), now);
        assert_eq!(l.highest_irr(), None);
        assert_eq!(
            l.timer_elapse(0),
            Some((Rule::TimerTscDeadline, Some(0xef)))
        );
        assert_eq!(l.read_tsc_deadline(), 0);
        assert_eq!(l.highest_irr(), Some(0xef));
        // A deadline ahead is not due at a bound of 0.
        assert_eq!(l.write_tsc_deadline(l.timer().tsc() + 5), None);
        assert_eq!(l.timer_elapse(0), None);
    }

    #[test]
    fn an_init_reset_stops_the_timer() {
        // SDM §11.4.7.3/§11.4.7.1: the power-up state, LVTs masked, counts 0.
        let mut l = Lapic::new(false, false, Quirks::empty());
        l.write(reg::LVT_TIMER, 0x40);
        l.write(reg::TIMER_INITIAL, 5);
        l.init_reset();
        assert!(!l.timer_armed());
        assert_eq!(l.read(reg::TIMER_INITIAL), 0);
    }
}
