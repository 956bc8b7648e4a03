//! The I/O APIC: Intel 82093AA (version 0x11) and the ICH-family IOAPIC
//! (version 0x20, with the EOI register).
//!
//! Usable on its own, as the userspace IOAPIC of a split irqchip: serve MMIO
//! with [`Ioapic::mmio_read`] / [`Ioapic::mmio_write`], drive inputs with
//! [`Ioapic::set_irq`], feed local APIC EOI broadcasts to [`Ioapic::eoi`];
//! messages leave through an [`InterruptSink`], which says whether a local
//! APIC accepted them (remote IRR depends on it).
//!
//! Inputs are *logical*: `set_irq(pin, true)` means "interrupt requested".
//! The polarity bit (13) is stored and read back; converting an electrical
//! level is the caller's business, as the scenario format specifies.

use crate::quirks::Quirks;
use crate::rules::{Deviations, Mode, Rule};

/// Redirection entries (82093AA §3.2.2: maximum redirection entry 0x17).
pub const PINS: usize = 24;

/// MMIO offsets within the IOAPIC's page (82093AA §3.1).
pub const IOREGSEL: u64 = 0x00;
pub const IOWIN: u64 = 0x10;
/// ICH-family EOI register (version 0x20 only).
pub const IOEOI: u64 = 0x40;

/// Indirect register indices (82093AA §3.2).
pub const REG_ID: u8 = 0x00;
pub const REG_VERSION: u8 = 0x01;
pub const REG_ARBITRATION: u8 = 0x02;
pub const REG_REDTBL: u8 = 0x10;

/// Redirection-entry bits (82093AA §3.2.4).
pub mod bits {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const POLARITY_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DEST_SHIFT: u32 = 56;
    /// Bits a guest write cannot change.
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IoapicVersion {
    /// The 82093AA: no EOI register.
    V11,
    /// ICH-family: EOI register at offset 0x40.
    #[default]
    V20,
}

impl IoapicVersion {
    pub fn value(self) -> u32 {
        match self {
            IoapicVersion::V11 => 0x11,
            IoapicVersion::V20 => 0x20,
        }
    }
}

/// Delivery mode of an interrupt message (82093AA §3.2.4 bits 10:8; SDM
/// §11.11.2 for MSIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    Fixed,
    Lowest,
    Smi,
    Nmi,
    Init,
    ExtInt,
    /// Encodings 011 and 110 (reserved).
    Reserved(u8),
}

impl DeliveryMode {
    pub fn from_bits(bits: u8) -> DeliveryMode {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::Lowest,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            other => DeliveryMode::Reserved(other),
        }
    }
    pub const fn bits(self) -> u8 {
        match self {
            DeliveryMode::Fixed => 0,
            DeliveryMode::Lowest => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::ExtInt => 7,
            DeliveryMode::Reserved(b) => b & 7,
        }
    }
}

/// What an interrupt message is: from an IOAPIC pin, an MSI or an IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterruptMessage {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub logical: bool,
    pub dest: u32,
    pub level: bool,
    /// The rule that caused the message.
    pub rule: Rule,
}

/// Where messages go. `send` returns whether a local APIC accepted it.
pub trait InterruptSink {
    fn send(&mut self, msg: &InterruptMessage) -> bool;
    /// A decision that sent nothing (masked, coalesced, ...), for reports.
    fn note(&mut self, _rule: Rule, _vector: u8) {}
}

/// A redirection entry, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry {
    pub raw: u64,
}

impl RedirectionEntry {
    pub fn vector(self) -> u8 {
        (self.raw & bits::VECTOR) as u8
    }
    pub fn delivery(self) -> DeliveryMode {
        DeliveryMode::from_bits((self.raw >> bits::DELIVERY_MODE_SHIFT) as u8)
    }
    pub fn logical(self) -> bool {
        self.raw & bits::DEST_LOGICAL != 0
    }
    pub fn delivery_status(self) -> bool {
        self.raw & bits::DELIVERY_STATUS != 0
    }
    pub fn polarity_low(self) -> bool {
        self.raw & bits::POLARITY_LOW != 0
    }
    pub fn remote_irr(self) -> bool {
        self.raw & bits::REMOTE_IRR != 0
    }
    pub fn level(self) -> bool {
        self.raw & bits::LEVEL != 0
    }
    pub fn masked(self) -> bool {
        self.raw & bits::MASKED != 0
    }
    pub fn dest(self) -> u8 {
        (self.raw >> bits::DEST_SHIFT) as u8
    }
}

/// The IOAPIC's state: an explicit struct, as in crosvm's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ioapic {
    version: IoapicVersion,
    quirks: Quirks,
    /// Rules broken on purpose (diagnosis: see [`crate::rules::Deviation`]).
    deviations: Deviations,
    /// IOREGSEL (8 bits).
    select: u8,
    /// IOAPIC ID, bits 27:24 of register 0.
    id: u8,
    /// Arbitration ID, bits 27:24 of register 2.
    arbitration: u8,
    /// The redirection entries without their remote IRR bit, which
    /// `remote_irr` holds: an EOI then visits only the pins that have one.
    redirection: [u64; PINS],
    /// Remote IRR (§3.2.4 bit 14) of each pin, bit `pin`.
    remote_irr: u32,
    /// The logical level of each input.
    asserted: u32,
    /// Quirk state: pins whose assert was swallowed by an unmask
    /// (LEVEL_UNMASK_NO_DELIVER) until the next deassert.
    stuck: u32,
    /// Quirk state: pins that saw a deassert/assert while remote IRR was set
    /// (LEVEL_COALESCE_REDELIVER).
    coalesced: u32,
    /// Quirk state (QEMU_IOAPIC): QEMU's per-pin latched request (`irr`).
    latched: u32,
    /// Deviation state (`edge-masked-lost/skipped`): edges seen on masked
    /// pins, sent when the pin is unmasked.
    held_edges: u32,
}

impl Ioapic {
    /// The start state of a scenario: every entry masked with vector 0,
    /// every input deasserted, ID 0.
    pub fn new(version: IoapicVersion) -> Ioapic {
        Ioapic::with_quirks(version, Quirks::empty())
    }

    #[inline]
    pub fn with_quirks(version: IoapicVersion, quirks: Quirks) -> Ioapic {
        Ioapic::with_deviations(version, quirks, Deviations::default())
    }

    /// The start state with `deviations` broken from the start (some break
    /// the reset state itself: `ioapic-reset-masked/skipped`).
    pub fn with_deviations(
        version: IoapicVersion,
        quirks: Quirks,
        deviations: Deviations,
    ) -> Ioapic {
        // 82093AA §3.2.4 bit 16: "the mask bit is set to 1 on reset"
        // (rule ioapic-reset-masked); the deviation leaves every entry 0:
        // unmasked, fixed, edge, vector 0 to APIC 0 (alioth 0.12, A1 in
        // docs/byo-findings.md).
        let reset_entry = if deviations.breaks(Rule::IoapicResetMasked, Mode::Skipped) {
            0
        } else {
            bits::MASKED
        };
        Ioapic {
            version,
            quirks,
            deviations,
            select: 0,
            id: 0,
            arbitration: 0,
            redirection: [reset_entry; PINS],
            remote_irr: 0,
            asserted: 0,
            stuck: 0,
            coalesced: 0,
            latched: 0,
            held_edges: 0,
        }
    }

    pub fn reset(&mut self) {
        *self = Ioapic::with_deviations(self.version, self.quirks, self.deviations);
    }

    /// Breaks the given rules from now on (kept across [`Ioapic::reset`]).
    /// A deviation of the reset state takes effect at the next reset; use
    /// [`Ioapic::with_deviations`] to start with it.
    #[inline]
    pub fn set_deviations(&mut self, deviations: Deviations) {
        self.deviations = deviations;
    }

    pub fn version(&self) -> IoapicVersion {
        self.version
    }

    pub fn entry(&self, pin: usize) -> RedirectionEntry {
        let remote_irr = if self.remote_irr & (1 << pin) != 0 {
            bits::REMOTE_IRR
        } else {
            0
        };
        RedirectionEntry {
            raw: self.redirection[pin] | remote_irr,
        }
    }

    /// Remote IRR (§3.2.4 bit 14) of every pin, bit `pin`.
    pub fn remote_irr_pins(&self) -> u32 {
        self.remote_irr
    }

    /// Delivery status (§3.2.4 bit 12) of every pin, bit `pin`: never
    /// pending, since delivery is instantaneous, unless the guest wrote it
    /// under `ioapic-read-only-bits/skipped`.
    pub fn delivery_status_pins(&self) -> u32 {
        if !self
            .deviations
            .breaks(Rule::IoapicReadOnlyBits, Mode::Skipped)
        {
            return 0;
        }
        (0..PINS)
            .filter(|&pin| self.redirection[pin] & bits::DELIVERY_STATUS != 0)
            .fold(0, |pins, pin| pins | 1 << pin)
    }

    pub fn is_asserted(&self, pin: usize) -> bool {
        self.asserted & (1 << pin) != 0
    }

    /// A 32-bit MMIO read at `offset` within the IOAPIC page.
    pub fn mmio_read(&mut self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => self.select as u32,
            IOWIN => self.read_register(self.select),
            _ => 0,
        }
    }

    /// A 32-bit MMIO write at `offset` within the IOAPIC page.
    pub fn mmio_write(&mut self, offset: u64, value: u32, bus: &mut impl InterruptSink) {
        match offset {
            // 82093AA §3.1: IOREGSEL bits 7:0 select the register.
            IOREGSEL => self.select = value as u8,
            IOWIN => self.write_register(self.select, value, bus),
            // The EOI register exists only on version 0x20; the 82093AA
            // decodes nothing at 0x40.
            IOEOI if self.version == IoapicVersion::V20 => {
                self.end_of_interrupt(value as u8, Rule::IoapicEoiRegister, bus)
            }
            _ => {}
        }
    }

    /// The guest's access to indirect register `index`: IOREGSEL = `index`,
    /// then a read of IOWIN (§3.1), in one call.
    pub fn select_and_read(&mut self, index: u8) -> u32 {
        self.select = index;
        self.read_register(index)
    }

    /// IOREGSEL = `index`, then a write of `value` to IOWIN (§3.1).
    pub fn select_and_write(&mut self, index: u8, value: u32, bus: &mut impl InterruptSink) {
        self.select = index;
        self.write_register(index, value, bus);
    }

    /// Reads indirect register `index`.
    pub fn read_register(&self, index: u8) -> u32 {
        match index {
            // 82093AA §3.2.1: ID in bits 27:24, the rest reserved (read 0).
            REG_ID => (self.id as u32) << 24,
            // §3.2.2: version in bits 7:0, maximum redirection entry in 23:16.
            REG_VERSION => ((PINS as u32 - 1) << 16) | self.version.value(),
            // §3.2.3: arbitration ID in bits 27:24.
            REG_ARBITRATION => (self.arbitration as u32) << 24,
            i if (REG_REDTBL..REG_REDTBL + 2 * PINS as u8).contains(&i) => {
                let raw = self.entry(((i - REG_REDTBL) / 2) as usize).raw;
                // REG_REDTBL is even: even indices are low dwords.
                if i % 2 == 0 {
                    raw as u32
                } else {
                    (raw >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes indirect register `index`.
    pub fn write_register(&mut self, index: u8, value: u32, bus: &mut impl InterruptSink) {
        match index {
            // 82093AA §3.2.1: only bits 27:24 are writable. §3.2.3: the
            // arbitration register "is loaded when the IOAPIC ID Register is
            // written".
            REG_ID => {
                self.id = ((value >> 24) & 0xf) as u8;
                self.arbitration = self.id;
            }
            i if (REG_REDTBL..REG_REDTBL + 2 * PINS as u8).contains(&i) => {
                let pin = ((i - REG_REDTBL) / 2) as usize;
                let old = self.entry(pin).raw;
                let mut new = if i % 2 == 0 {
                    (old & !0xffff_ffff) | value as u64
                } else {
                    (old & 0xffff_ffff) | ((value as u64) << 32)
                };
                // §3.2.4: delivery status (bit 12) and remote IRR (bit 14) are
                // read-only (rule ioapic-read-only-bits). The deviation stores
                // the written low dword whole, as alioth 0.12's `write_reg`
                // does (A2 in docs/byo-findings.md): the written bits read
                // back, and remote IRR is what was written.
                let stored_as_written = self
                    .deviations
                    .breaks(Rule::IoapicReadOnlyBits, Mode::Skipped);
                if stored_as_written {
                    if (new ^ old) & bits::READ_ONLY != 0 {
                        bus.note(Rule::Quirk, new as u8);
                    }
                } else {
                    new = (new & !bits::READ_ONLY) | (old & bits::READ_ONLY);
                }
                // §3.2.4 bit 14 leaves remote IRR undefined for edge entries;
                // the model clears it, as KVM (ioapic_write_indirect) and QEMU
                // (ioapic_fix_edge_remote_irr) do.
                if !stored_as_written
                    && new & bits::LEVEL == 0
                    && new & bits::REMOTE_IRR != 0
                    && !self
                        .deviations
                        .breaks(Rule::EdgeRetypeClearsRemoteIrr, Mode::Skipped)
                {
                    new &= !bits::REMOTE_IRR;
                    bus.note(Rule::EdgeRetypeClearsRemoteIrr, new as u8);
                }
                self.redirection[pin] = new & !bits::REMOTE_IRR;
                self.set_remote_irr(pin, new & bits::REMOTE_IRR != 0);
                if self.quirks.contains(Quirks::QEMU_IOAPIC) {
                    return self.qemu_service(bus);
                }
                let unmasked_now = old & bits::MASKED != 0 && new & bits::MASKED == 0;
                if self.held_edges & (1 << pin) != 0 && new & bits::MASKED == 0 {
                    // `edge-masked-lost/skipped`: the held edge is sent now.
                    self.held_edges &= !(1 << pin);
                    if new & bits::LEVEL == 0 {
                        return self.send(pin, Rule::Quirk, bus);
                    }
                }
                self.after_entry_write(pin, unmasked_now, bus);
            }
            // §3.2.2 and §3.2.3: version and arbitration are read-only; the
            // other indices name no register.
            _ => {}
        }
    }

    /// §3.2.4 bit 16: a level input still asserted when its pin is unmasked
    /// (or the entry rewritten) is delivered; edges never are.
    fn after_entry_write(&mut self, pin: usize, unmasked_now: bool, bus: &mut impl InterruptSink) {
        let e = self.entry(pin);
        if !e.level() || e.masked() || !self.is_asserted(pin) || e.remote_irr() {
            return;
        }
        if unmasked_now && self.quirks.contains(Quirks::LEVEL_UNMASK_NO_DELIVER) {
            self.stuck |= 1 << pin;
            bus.note(Rule::Quirk, e.vector());
            return;
        }
        if self.stuck & (1 << pin) != 0 {
            bus.note(Rule::Quirk, e.vector());
            return;
        }
        let rule = if unmasked_now {
            Rule::LevelUnmaskDelivers
        } else {
            Rule::LevelDelivers
        };
        if self.deviations.breaks(rule, Mode::Skipped) {
            bus.note(Rule::Quirk, e.vector());
            return;
        }
        self.send(pin, rule, bus);
    }

    /// Drives input `pin` (logical level: true = interrupt requested).
    pub fn set_irq(&mut self, pin: usize, requested: bool, bus: &mut impl InterruptSink) {
        if pin >= PINS {
            return;
        }
        let was = self.is_asserted(pin);
        if requested {
            self.asserted |= 1 << pin;
        } else {
            self.asserted &= !(1 << pin);
            self.stuck &= !(1 << pin);
        }
        let e = self.entry(pin);
        if self.quirks.contains(Quirks::QEMU_IOAPIC) {
            // hw/intc/ioapic.c, ioapic_set_irq.
            let m = 1 << pin;
            if e.level() {
                if !requested {
                    self.latched &= !m;
                    return;
                }
                self.latched |= m;
                if !e.remote_irr() {
                    self.qemu_service(bus);
                }
            } else if requested && !e.masked() {
                self.latched |= m;
                self.qemu_service(bus);
            }
            return;
        }
        if !e.level() {
            if !requested {
                return;
            }
            let every_assert = self.quirks.contains(Quirks::EDGE_EVERY_ASSERT)
                || self.deviations.breaks(Rule::EdgeNoNewEdge, Mode::Skipped);
            if was && !every_assert {
                // §3.2.4 bit 15: no edge while the input stays asserted.
                bus.note(Rule::EdgeNoNewEdge, e.vector());
            } else if e.masked() {
                // §3.2.4 bit 16: a masked edge is lost, not latched.
                if self.deviations.breaks(Rule::EdgeMaskedLost, Mode::Skipped) {
                    self.held_edges |= 1 << pin;
                }
                bus.note(Rule::EdgeMaskedLost, e.vector());
            } else {
                self.send(pin, if was { Rule::Quirk } else { Rule::EdgeDelivers }, bus);
            }
            return;
        }
        if !requested {
            return;
        }
        if e.masked() {
            bus.note(Rule::LevelMaskedHeld, e.vector());
        } else if e.remote_irr() {
            // §3.2.4 bit 14: nothing new while remote IRR is set; an assert
            // after a deassert here is coalesced.
            if !was
                && (self.quirks.contains(Quirks::LEVEL_COALESCE_REDELIVER)
                    || self
                        .deviations
                        .breaks(Rule::LevelRemoteIrrBlocks, Mode::Late))
            {
                self.coalesced |= 1 << pin;
            }
            bus.note(Rule::LevelRemoteIrrBlocks, e.vector());
        } else if self.stuck & (1 << pin) != 0 {
            bus.note(Rule::Quirk, e.vector());
        } else {
            self.send(pin, Rule::LevelDelivers, bus);
        }
    }

    /// A local APIC's EOI broadcast for `vector`.
    pub fn eoi(&mut self, vector: u8, bus: &mut impl InterruptSink) {
        self.end_of_interrupt(vector, Rule::EoiClearsRemoteIrr, bus);
    }

    /// §3.2.4 bit 14: an EOI with a matching vector (the entry's current
    /// vector) clears remote IRR on every level entry with that vector; an
    /// input still asserted on an unmasked pin is then sent again (ICH EOI
    /// register text).
    fn end_of_interrupt(&mut self, vector: u8, rule: Rule, bus: &mut impl InterruptSink) {
        // Only pins with remote IRR set can match; the set is read again
        // after each pin, since servicing one (QEMU_IOAPIC) can set another's.
        let mut next = 0;
        while let Some(pin) = lowest_pin_from(self.remote_irr, next) {
            next = pin + 1;
            if self.redirection[pin] & (bits::LEVEL | bits::VECTOR) != bits::LEVEL | vector as u64 {
                continue;
            }
            if self
                .deviations
                .breaks(Rule::EoiClearsRemoteIrr, Mode::Skipped)
            {
                bus.note(Rule::Quirk, vector);
                continue;
            }
            let e = self.entry(pin);
            self.set_remote_irr(pin, false);
            bus.note(rule, vector);
            if self
                .deviations
                .breaks(Rule::EoiClearsRemoteIrr, Mode::Inverted)
            {
                // Only the first matching entry (Xen's get_eoi_gsi): the
                // search stops here.
                next = PINS;
            }
            if self.quirks.contains(Quirks::QEMU_IOAPIC) {
                // ioapic_eoi_broadcast: a latched request is serviced again.
                if !e.masked() && self.latched & (1 << pin) != 0 {
                    self.qemu_service(bus);
                }
                continue;
            }
            let coalesced = self.coalesced & (1 << pin) != 0;
            self.coalesced &= !(1 << pin);
            if e.masked() {
                continue;
            }
            if self.is_asserted(pin) {
                if self.quirks.contains(Quirks::LEVEL_EOI_NO_REDELIVER)
                    || self.deviations.breaks(Rule::EoiRedelivers, Mode::Skipped)
                {
                    bus.note(Rule::Quirk, vector);
                } else if self.stuck & (1 << pin) == 0 {
                    self.send(pin, Rule::EoiRedelivers, bus);
                }
            } else if coalesced {
                self.send(pin, Rule::Quirk, bus);
            }
        }
    }

    fn set_remote_irr(&mut self, pin: usize, on: bool) {
        if on {
            self.remote_irr |= 1 << pin;
        } else {
            self.remote_irr &= !(1 << pin);
        }
    }

    /// QEMU_IOAPIC: hw/intc/ioapic.c, ioapic_service. Every latched,
    /// unmasked pin is sent: an edge pin's latch clears; a level pin sets
    /// remote IRR before sending, accepted or not, and waits while it is set.
    fn qemu_service(&mut self, bus: &mut impl InterruptSink) {
        for pin in 0..PINS {
            let m = 1 << pin;
            let e = self.entry(pin);
            if self.latched & m == 0 || e.masked() {
                continue;
            }
            if e.level() {
                if e.remote_irr() {
                    continue;
                }
                self.set_remote_irr(pin, true);
            } else {
                self.latched &= !m;
            }
            let msg = InterruptMessage {
                vector: e.vector(),
                delivery: e.delivery(),
                logical: e.logical(),
                dest: e.dest() as u32,
                level: e.level(),
                rule: Rule::Quirk,
            };
            bus.send(&msg);
        }
    }

    fn send(&mut self, pin: usize, rule: Rule, bus: &mut impl InterruptSink) {
        let e = self.entry(pin);
        let msg = InterruptMessage {
            vector: e.vector(),
            delivery: e.delivery(),
            logical: e.logical(),
            dest: e.dest() as u32,
            level: e.level(),
            rule,
        };
        // §3.2.4 bit 14: remote IRR is set when a local APIC accepts a level
        // interrupt. Delivery is instantaneous here, so delivery status
        // (bit 12) never reads as pending.
        if bus.send(&msg) && e.level() {
            self.set_remote_irr(pin, true);
        }
    }
}

/// The lowest pin of `pins` (bit `pin`) at or above `from`.
fn lowest_pin_from(pins: u32, from: usize) -> Option<usize> {
    let above = pins.checked_shr(from as u32).unwrap_or(0);
    (above != 0).then(|| from + above.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records messages; accepts everything unless told otherwise.
    #[derive(Default)]
    struct Bus {
        sent: Vec<(u8, Rule)>,
        messages: Vec<InterruptMessage>,
        notes: Vec<Rule>,
        refuse: bool,
    }

    impl InterruptSink for Bus {
        fn send(&mut self, msg: &InterruptMessage) -> bool {
            self.sent.push((msg.vector, msg.rule));
            self.messages.push(*msg);
            !self.refuse
        }
        fn note(&mut self, rule: Rule, _vector: u8) {
            self.notes.push(rule);
        }
    }

    fn route(io: &mut Ioapic, pin: usize, low: u32, bus: &mut Bus) {
        io.write_register(REG_REDTBL + 2 * pin as u8 + 1, 0, bus);
        io.write_register(REG_REDTBL + 2 * pin as u8, low, bus);
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;

    #[test]
    fn edge_delivers_once_per_rising_edge() {
        // 82093AA §3.2.4 bits 15/16.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x76, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, true, &mut bus); // still asserted: no new edge
        io.set_irq(14, false, &mut bus);
        io.set_irq(14, true, &mut bus);
        assert_eq!(
            bus.sent,
            vec![(0x76, Rule::EdgeDelivers), (0x76, Rule::EdgeDelivers)]
        );
        assert!(bus.notes.contains(&Rule::EdgeNoNewEdge));
        assert!(
            !io.entry(14).remote_irr(),
            "edge entries never set remote IRR"
        );
    }

    #[test]
    fn edge_on_masked_pin_is_lost_not_latched() {
        // 82093AA §3.2.4 bit 16: not delivered or held pending.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x81 | MASK, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, false, &mut bus);
        route(&mut io, 14, 0x81, &mut bus);
        assert!(bus.sent.is_empty());
        assert_eq!(bus.notes, vec![Rule::EdgeMaskedLost]);
    }

    #[test]
    fn level_sets_remote_irr_and_blocks_until_eoi_then_redelivers() {
        // 82093AA §3.2.4 bit 14; ICH EOI register: re-issued if still active.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x9a | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        assert!(io.entry(14).remote_irr());
        io.set_irq(14, true, &mut bus); // blocked by remote IRR
        assert_eq!(bus.sent.len(), 1);
        io.eoi(0x9a, &mut bus);
        assert_eq!(
            bus.sent,
            vec![(0x9a, Rule::LevelDelivers), (0x9a, Rule::EoiRedelivers)]
        );
        assert!(io.entry(14).remote_irr());
        io.set_irq(14, false, &mut bus);
        io.eoi(0x9a, &mut bus);
        assert!(!io.entry(14).remote_irr());
        assert_eq!(bus.sent.len(), 2);
    }

    #[test]
    fn remote_irr_is_set_only_when_accepted() {
        // 82093AA §3.2.4 bit 14: "set when the local APIC(s) accept".
        let (mut io, mut bus) = (
            Ioapic::new(IoapicVersion::V20),
            Bus {
                refuse: true,
                ..Bus::default()
            },
        );
        route(&mut io, 3, 0x40 | LEVEL, &mut bus);
        io.set_irq(3, true, &mut bus);
        assert_eq!(bus.sent.len(), 1);
        assert!(!io.entry(3).remote_irr());
    }

    #[test]
    fn eoi_matches_the_current_vector_on_every_pin() {
        // §3.2.4 bit 14 "matching interrupt vector"; two pins, one vector.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 1, 0x50 | LEVEL, &mut bus);
        route(&mut io, 2, 0x50 | LEVEL, &mut bus);
        io.set_irq(1, true, &mut bus);
        io.set_irq(2, true, &mut bus);
        io.set_irq(1, false, &mut bus);
        io.set_irq(2, false, &mut bus);
        // Reprogramming pin 1's vector: an EOI of the old vector no longer matches it.
        route(&mut io, 1, 0x51 | LEVEL, &mut bus);
        io.eoi(0x50, &mut bus);
        assert!(io.entry(1).remote_irr());
        assert!(!io.entry(2).remote_irr());
        io.eoi(0x51, &mut bus);
        assert!(!io.entry(1).remote_irr());
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        // §3.2.4 bit 16 (kvm-unit-tests test_ioapic_level_mask).
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x82 | LEVEL | MASK, &mut bus);
        io.set_irq(14, true, &mut bus);
        assert!(bus.sent.is_empty());
        route(&mut io, 14, 0x82 | LEVEL, &mut bus);
        assert_eq!(bus.sent, vec![(0x82, Rule::LevelUnmaskDelivers)]);
    }

    #[test]
    fn deassert_assert_deassert_while_remote_irr_coalesces() {
        // §3.2.4 bit 14 (test_ioapic_level_coalesce).
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x98 | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, false, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, false, &mut bus);
        io.eoi(0x98, &mut bus);
        assert_eq!(bus.sent.len(), 1);
        assert!(bus.notes.contains(&Rule::LevelRemoteIrrBlocks));
    }

    #[test]
    fn version_0x20_eoi_register_clears_remote_irr_and_0x11_has_none() {
        for (version, cleared) in [(IoapicVersion::V20, true), (IoapicVersion::V11, false)] {
            let (mut io, mut bus) = (Ioapic::new(version), Bus::default());
            route(&mut io, 5, 0x60 | LEVEL, &mut bus);
            io.set_irq(5, true, &mut bus);
            io.set_irq(5, false, &mut bus);
            io.mmio_write(IOEOI, 0x60, &mut bus);
            assert_eq!(!io.entry(5).remote_irr(), cleared, "{version:?}");
        }
    }

    #[test]
    fn id_version_and_arbitration_registers() {
        // §3.2.1: only ID bits 27:24 writable; §3.2.2 version read-only;
        // §3.2.3 arbitration loaded from the ID and read-only.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V11), Bus::default());
        assert_eq!(io.read_register(REG_VERSION), 0x0017_0011);
        io.write_register(REG_VERSION, !0x0017_0011, &mut bus);
        assert_eq!(io.read_register(REG_VERSION), 0x0017_0011);
        io.write_register(REG_ID, 0xffff_ffff, &mut bus);
        assert_eq!(io.read_register(REG_ID), 0x0f00_0000);
        assert_eq!(io.read_register(REG_ARBITRATION), 0x0f00_0000);
        io.write_register(REG_ARBITRATION, 0, &mut bus);
        assert_eq!(io.read_register(REG_ARBITRATION), 0x0f00_0000);
        assert_eq!(
            Ioapic::new(IoapicVersion::V20).read_register(REG_VERSION),
            0x0017_0020
        );
    }

    #[test]
    fn deviation_reset_unmasked_sends_vector_0_from_an_unrouted_pin() {
        // 82093AA §3.2.4 bit 16: masked after reset (ioapic-reset-masked);
        // the deviation is alioth 0.12's reset state (byo-findings A1).
        let broken = Deviations::of(&[crate::rules::Deviation::new(
            Rule::IoapicResetMasked,
            Mode::Skipped,
        )]);
        let mut bus = Bus::default();
        let mut spec = Ioapic::new(IoapicVersion::V11);
        assert_eq!(spec.read_register(REG_REDTBL), MASK);
        spec.set_irq(0, true, &mut bus);
        assert!(bus.sent.is_empty());
        let mut io = Ioapic::with_deviations(IoapicVersion::V11, Quirks::empty(), broken);
        assert_eq!(io.read_register(REG_REDTBL), 0);
        assert_eq!(io.read_register(REG_REDTBL + 2 * 23), 0);
        io.set_irq(0, true, &mut bus);
        assert_eq!(bus.sent, vec![(0, Rule::EdgeDelivers)]);
        // Kept across a reset, and a later set_deviations takes effect there.
        io.reset();
        assert_eq!(io.read_register(REG_REDTBL), 0);
        spec.set_deviations(broken);
        assert_eq!(spec.read_register(REG_REDTBL), MASK);
        spec.reset();
        assert_eq!(spec.read_register(REG_REDTBL), 0);
    }

    #[test]
    fn deviation_read_only_bits_stores_the_written_low_dword() {
        // 82093AA §3.2.4 bits 12 and 14 are RO (ioapic-read-only-bits); the
        // deviation is alioth 0.12's write_reg (byo-findings A2).
        let broken = Deviations::of(&[crate::rules::Deviation::new(
            Rule::IoapicReadOnlyBits,
            Mode::Skipped,
        )]);
        let mut bus = Bus::default();
        let mut io = Ioapic::with_deviations(IoapicVersion::V11, Quirks::empty(), broken);
        let written = MASK | 1 << 14 | 1 << 12 | 0x30;
        route(&mut io, 1, written, &mut bus);
        assert_eq!(io.read_register(REG_REDTBL + 2), written);
        assert!(io.entry(1).remote_irr() && io.entry(1).delivery_status());
        assert_eq!(io.delivery_status_pins(), 1 << 1);
        assert_eq!(bus.notes, vec![Rule::Quirk]);
        // The high dword's write keeps the low dword as it is.
        io.write_register(REG_REDTBL + 3, 0x0100_0000, &mut bus);
        assert_eq!(io.read_register(REG_REDTBL + 2), written);
        // A write with the bits clear clears them.
        route(&mut io, 1, MASK | 0x30, &mut bus);
        assert_eq!(io.read_register(REG_REDTBL + 2), MASK | 0x30);
        assert!(!io.entry(1).remote_irr());
        // The spec keeps them: the same write reads back without them.
        let mut spec = Ioapic::new(IoapicVersion::V11);
        route(&mut spec, 1, written, &mut bus);
        assert_eq!(spec.read_register(REG_REDTBL + 2), MASK | 0x30);
    }

    #[test]
    fn guest_cannot_write_remote_irr_or_delivery_status() {
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 0, 0x30 | LEVEL | (1 << 14) | (1 << 12), &mut bus);
        assert!(!io.entry(0).remote_irr());
        assert!(!io.entry(0).delivery_status());
        assert_eq!(io.read_register(REG_REDTBL) & (1 << 12 | 1 << 14), 0);
    }

    #[test]
    fn each_dword_write_keeps_the_other_half_of_the_entry() {
        // 82093AA §3.2.4: the 64-bit entry is written as two dwords, low at
        // 0x10 + 2n and high at 0x11 + 2n, in either order.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V11), Bus::default());
        io.write_register(REG_REDTBL + 6, 0x0001_a0f3, &mut bus);
        io.write_register(REG_REDTBL + 7, 0xab00_0000, &mut bus);
        assert_eq!(io.read_register(REG_REDTBL + 6), 0x0001_a0f3);
        assert_eq!(io.read_register(REG_REDTBL + 7), 0xab00_0000);
        assert_eq!(io.entry(3).raw, 0xab00_0000_0001_a0f3);
        assert_eq!(io.version(), IoapicVersion::V11);
    }

    #[test]
    fn rewriting_an_unmasked_asserted_level_entry_is_a_level_delivery() {
        // §3.2.4 bits 15-16: an entry already unmasked is not "unmasked" by
        // a rewrite; a refused message left remote IRR clear, so the
        // rewrite sends it again (lib.rs, choices).
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        bus.refuse = true;
        route(&mut io, 6, 0x66 | LEVEL, &mut bus);
        io.set_irq(6, true, &mut bus);
        assert!(!io.entry(6).remote_irr());
        bus.refuse = false;
        route(&mut io, 6, 0x66 | LEVEL, &mut bus);
        assert_eq!(
            bus.sent,
            vec![(0x66, Rule::LevelDelivers), (0x66, Rule::LevelDelivers)]
        );
        // Masking it is no unmask either: nothing is sent.
        route(&mut io, 6, 0x66 | LEVEL | MASK, &mut bus);
        assert_eq!(bus.sent.len(), 2);
    }

    #[test]
    fn retyping_to_edge_clears_remote_irr() {
        // §3.2.4 bit 14 undefined for edge; the model clears it (G-5).
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 0, 0x30 | LEVEL, &mut bus);
        io.set_irq(0, true, &mut bus);
        assert!(io.entry(0).remote_irr());
        route(&mut io, 0, 0x30, &mut bus);
        assert!(!io.entry(0).remote_irr());
        assert!(bus.notes.contains(&Rule::EdgeRetypeClearsRemoteIrr));
    }

    #[test]
    fn masked_level_assert_is_held_and_sends_nothing() {
        // §3.2.4 bit 16: a masked pin sends no message; the input level is kept.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 7, 0x70 | LEVEL | MASK, &mut bus);
        io.set_irq(7, true, &mut bus);
        assert!(bus.sent.is_empty());
        assert_eq!(bus.notes, vec![Rule::LevelMaskedHeld]);
        assert!(io.is_asserted(7) && !io.entry(7).remote_irr());
    }

    #[test]
    fn deassert_does_not_clear_remote_irr() {
        // §3.2.4 bit 14: only an EOI resets remote IRR (kvm-unit-tests
        // vmx_apic_passthrough checks this between deassert and EOI).
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 15, 0x78 | LEVEL, &mut bus);
        io.set_irq(15, true, &mut bus);
        io.set_irq(15, false, &mut bus);
        assert!(io.entry(15).remote_irr());
        io.eoi(0x78, &mut bus);
        assert!(!io.entry(15).remote_irr());
        assert_eq!(bus.sent.len(), 1, "the line was low at the EOI");
    }

    #[test]
    fn eoi_on_a_masked_pin_clears_remote_irr_and_unmask_resamples() {
        // §3.2.4 bits 14 and 16 (test_ioapic_level_retrigger_mask): the EOI
        // clears remote IRR even while masked, without a message; unmasking
        // with the input still asserted sends it.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 14, 0x83 | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        route(&mut io, 14, 0x83 | LEVEL | MASK, &mut bus);
        io.eoi(0x83, &mut bus);
        assert!(!io.entry(14).remote_irr());
        assert_eq!(bus.sent.len(), 1);
        route(&mut io, 14, 0x83 | LEVEL, &mut bus);
        assert_eq!(
            bus.sent,
            vec![
                (0x83, Rule::LevelDelivers),
                (0x83, Rule::LevelUnmaskDelivers)
            ]
        );
    }

    #[test]
    fn unmask_while_remote_irr_is_set_sends_nothing() {
        // §3.2.4 bit 14 (catalogue G-4): mask and unmask without an EOI.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 4, 0x44 | LEVEL, &mut bus);
        io.set_irq(4, true, &mut bus);
        route(&mut io, 4, 0x44 | LEVEL | MASK, &mut bus);
        route(&mut io, 4, 0x44 | LEVEL, &mut bus);
        assert_eq!(bus.sent.len(), 1);
        io.eoi(0x44, &mut bus);
        assert_eq!(
            bus.sent,
            vec![(0x44, Rule::LevelDelivers), (0x44, Rule::EoiRedelivers)]
        );
    }

    #[test]
    fn edge_asserted_while_masked_then_unmasked_needs_a_new_edge() {
        // §3.2.4 bits 15/16 (catalogue G-3): 0, 0, 0, then 1 delivery.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 1, 0x41 | MASK, &mut bus);
        io.set_irq(1, true, &mut bus);
        route(&mut io, 1, 0x41, &mut bus);
        io.set_irq(1, true, &mut bus);
        io.set_irq(1, false, &mut bus);
        assert!(bus.sent.is_empty());
        io.set_irq(1, true, &mut bus);
        assert_eq!(bus.sent, vec![(0x41, Rule::EdgeDelivers)]);
    }

    #[test]
    fn mmio_indirect_access_and_unknown_offsets() {
        // 82093AA §3.1: IOREGSEL at 0x00 selects, IOWIN at 0x10 reads/writes;
        // each 64-bit entry is two dwords, low at 0x10+2n, high at 0x11+2n.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V11), Bus::default());
        io.mmio_write(IOREGSEL, 0x11 + 2 * 23, &mut bus);
        io.mmio_write(IOWIN, 0xab00_0000, &mut bus);
        io.mmio_write(IOREGSEL, 0x10 + 2 * 23, &mut bus);
        io.mmio_write(IOWIN, 0x0001_a0f3, &mut bus);
        assert_eq!(io.mmio_read(IOREGSEL), 0x10 + 2 * 23);
        assert_eq!(io.mmio_read(IOWIN), 0x0001_a0f3);
        let e = io.entry(23);
        assert_eq!(
            (
                e.vector(),
                e.dest(),
                e.masked(),
                e.level(),
                e.polarity_low()
            ),
            (0xf3, 0xab, true, true, true)
        );
        assert_eq!(e.raw, 0xab00_0000_0001_a0f3);
        // The 82093AA decodes nothing at 0x40 and reads 0 elsewhere.
        io.mmio_write(IOEOI, 0xf3, &mut bus);
        assert_eq!(io.mmio_read(0x20), 0);
        assert!(bus.sent.is_empty());
    }

    #[test]
    fn indices_outside_the_table_read_0_and_write_nothing() {
        // 82093AA §3.2: indices 0x03-0x0F and above 0x3F (0x10 + 2 * 24 - 1)
        // name no register.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 23, 0x41, &mut bus);
        route(&mut io, 0, 0x42, &mut bus);
        let before = io.clone();
        for index in (0x03..0x10).chain(0x40..=0xff) {
            assert_eq!(io.read_register(index), 0, "{index:#x}");
            io.write_register(index, 0xffff_ffff, &mut bus);
        }
        assert_eq!(io, before);
        assert!(bus.sent.is_empty());
    }

    #[test]
    fn a_message_carries_every_field_of_its_entry() {
        // 82093AA §3.2.4: vector 7:0, delivery mode 10:8, destination mode
        // 11, trigger mode 15, destination 63:56.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        io.write_register(REG_REDTBL + 9, 0x0f00_0000, &mut bus);
        io.write_register(REG_REDTBL + 8, 0x5a | 1 << 8 | 1 << 11 | LEVEL, &mut bus);
        io.set_irq(4, true, &mut bus);
        let e = io.entry(4);
        assert!(e.logical() && !e.polarity_low() && !e.delivery_status());
        assert_eq!(e.delivery(), DeliveryMode::Lowest);
        assert_eq!(
            bus.messages,
            vec![InterruptMessage {
                vector: 0x5a,
                delivery: DeliveryMode::Lowest,
                logical: true,
                dest: 0x0f,
                level: true,
                rule: Rule::LevelDelivers,
            }]
        );
        // A physical, edge, NMI entry.
        route(&mut io, 5, 4 << 8, &mut bus);
        io.set_irq(5, true, &mut bus);
        let m = bus.messages[1];
        assert_eq!(
            (m.delivery, m.logical, m.dest, m.level),
            (DeliveryMode::Nmi, false, 0, false)
        );
        assert!(!io.entry(5).remote_irr(), "edge sends never set remote IRR");
    }

    #[test]
    fn inputs_beyond_the_last_pin_are_ignored() {
        // §3.2.2: 24 entries; the model has no input 24.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        io.set_irq(PINS, true, &mut bus);
        assert_eq!(io, Ioapic::new(IoapicVersion::V20));
        assert!(bus.sent.is_empty() && bus.notes.is_empty());
    }

    #[test]
    fn delivery_modes_decode_from_three_bits() {
        // 82093AA §3.2.4 bits 10:8 (and SDM §11.11.2 for MSI data).
        let modes = [
            (0, DeliveryMode::Fixed),
            (1, DeliveryMode::Lowest),
            (2, DeliveryMode::Smi),
            (3, DeliveryMode::Reserved(3)),
            (4, DeliveryMode::Nmi),
            (5, DeliveryMode::Init),
            (6, DeliveryMode::Reserved(6)),
            (7, DeliveryMode::ExtInt),
        ];
        for (bits, mode) in modes {
            assert_eq!(DeliveryMode::from_bits(bits), mode);
            assert_eq!(DeliveryMode::from_bits(bits | 0xf8), mode, "only bits 2:0");
            assert_eq!(mode.bits(), bits);
        }
    }

    #[test]
    fn reset_returns_to_the_start_state() {
        // docs/scenario-format.md start state; §3.2.4: masked after reset.
        let (mut io, mut bus) = (Ioapic::new(IoapicVersion::V20), Bus::default());
        route(&mut io, 2, 0x52 | LEVEL, &mut bus);
        io.set_irq(2, true, &mut bus);
        io.write_register(REG_ID, 0x0300_0000, &mut bus);
        io.reset();
        assert_eq!(io, Ioapic::new(IoapicVersion::V20));
        assert!((0..PINS).all(|p| io.entry(p).raw == bits::MASKED));
    }

    #[test]
    fn quirk_level_unmask_no_deliver_until_deassert_and_assert() {
        let mut io = Ioapic::with_quirks(IoapicVersion::V20, Quirks::LEVEL_UNMASK_NO_DELIVER);
        let mut bus = Bus::default();
        route(&mut io, 14, 0x82 | LEVEL | MASK, &mut bus);
        io.set_irq(14, true, &mut bus);
        route(&mut io, 14, 0x82 | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        // Rewriting the entry, or an EOI, does not unstick it either.
        route(&mut io, 14, 0x82 | LEVEL, &mut bus);
        io.set_irq(15, true, &mut bus);
        assert!(bus.sent.is_empty());
        io.set_irq(14, false, &mut bus);
        io.set_irq(14, true, &mut bus);
        assert_eq!(bus.sent.len(), 1);
        io.eoi(0x82, &mut bus);
        assert_eq!(
            bus.sent.len(),
            2,
            "unstuck: the EOI re-sends the asserted line"
        );
    }

    #[test]
    fn quirk_qemu_ioapic_latches_requests_instead_of_line_levels() {
        // hw/intc/ioapic.c: ioapic_set_irq, ioapic_service.
        let q = Quirks::QEMU_IOAPIC;
        // A level request latched while masked is sent when the entry is
        // rewritten as an unmasked edge (the 82093AA sees no edge).
        let mut io = Ioapic::with_quirks(IoapicVersion::V20, q);
        let mut bus = Bus::default();
        route(&mut io, 15, 0x20 | LEVEL | MASK, &mut bus);
        io.set_irq(15, true, &mut bus);
        route(&mut io, 15, 0x20, &mut bus);
        assert_eq!(bus.sent, [(0x20, Rule::Quirk)]);
        // An edge pin's line level is not kept: made level while high, it
        // sends nothing (the 82093AA sends).
        let mut io = Ioapic::with_quirks(IoapicVersion::V20, q);
        let mut bus = Bus::default();
        route(&mut io, 1, 0x21, &mut bus);
        io.set_irq(1, true, &mut bus);
        route(&mut io, 1, 0x21 | LEVEL, &mut bus);
        assert_eq!(bus.sent, [(0x21, Rule::Quirk)]);
        // Every assert of an edge pin sends, high already or not.
        io.set_irq(2, false, &mut bus);
        route(&mut io, 2, 0x22, &mut bus);
        io.set_irq(2, true, &mut bus);
        io.set_irq(2, true, &mut bus);
        assert_eq!(bus.sent.len(), 3);
        // Remote IRR is set even when no APIC accepts.
        let mut bus = Bus {
            refuse: true,
            ..Bus::default()
        };
        route(&mut io, 3, 0x23 | LEVEL, &mut bus);
        io.set_irq(3, true, &mut bus);
        assert!(io.entry(3).remote_irr());
        // An EOI clears it and sends the still-latched request again.
        let mut bus = Bus::default();
        io.eoi(0x23, &mut bus);
        assert_eq!(bus.sent, [(0x23, Rule::Quirk)]);
        // A deassert clears a level pin's latch: the next EOI sends nothing;
        // deasserting an unmasked edge pin latches nothing.
        io.set_irq(3, false, &mut bus);
        io.eoi(0x23, &mut bus);
        io.set_irq(2, false, &mut bus);
        assert_eq!(bus.sent.len(), 1);
        // A masked level pin's latch waits for the unmask, not the EOI.
        route(&mut io, 4, 0x24 | LEVEL, &mut bus);
        io.set_irq(4, true, &mut bus);
        route(&mut io, 4, 0x24 | LEVEL | MASK, &mut bus);
        io.eoi(0x24, &mut bus);
        assert_eq!(bus.sent.len(), 2, "0x24 once, at the assert");
    }

    #[test]
    fn quirk_level_eoi_no_redeliver() {
        let mut io = Ioapic::with_quirks(IoapicVersion::V20, Quirks::LEVEL_EOI_NO_REDELIVER);
        let mut bus = Bus::default();
        route(&mut io, 14, 0x9a | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.eoi(0x9a, &mut bus);
        assert_eq!(bus.sent.len(), 1);
    }

    #[test]
    fn quirk_level_coalesce_redeliver() {
        let mut io = Ioapic::with_quirks(IoapicVersion::V20, Quirks::LEVEL_COALESCE_REDELIVER);
        let mut bus = Bus::default();
        route(&mut io, 14, 0x98 | LEVEL, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, false, &mut bus);
        io.set_irq(14, true, &mut bus);
        io.set_irq(14, false, &mut bus);
        io.eoi(0x98, &mut bus);
        assert_eq!(bus.sent.len(), 2);
    }
}
