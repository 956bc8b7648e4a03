//! A userspace IOAPIC as a device under test: the interface a VMM's own
//! IOAPIC implements so that irqdiff can run it in place of the model's.
//!
//! The shape follows real VMMs: crosvm's `Ioapic` (MMIO read/write,
//! `service_irq(pin, level)`, `end_of_interrupt(vector)` for the local
//! APIC's EOI broadcast) and alioth's `MsiSender` (the device sends each
//! interrupt message as an MSI address/data pair and does not learn whether
//! a local APIC accepted it).
//!
//! The model's own IOAPIC implements [`IoapicDevice`] through
//! [`ModelIoapic`]; [`crate::Machine::with_device`] runs the model's CPU and
//! local APIC with any device in place of the model's IOAPIC.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::ioapic::{
    InterruptMessage, InterruptSink, Ioapic, IoapicVersion, RedirectionEntry, IOREGSEL, IOWIN,
    REG_REDTBL,
};
use crate::msi;

/// Where a device sends its interrupt messages: an MSI write (SDM §11.11:
/// address 0xFEExxxxx with the destination, data with vector, delivery
/// mode and trigger mode), as alioth's `MsiSender::send(addr, data)`.
pub trait MsiSink: Send + Sync + 'static {
    fn send(&self, address: u64, data: u32);
}

/// The sink irqdiff hands a device: messages queue up and the machine
/// delivers them to its local APIC after each call into the device.
#[derive(Clone, Debug, Default)]
pub struct MessageQueue {
    queue: Arc<Mutex<VecDeque<(u64, u32)>>>,
}

impl MessageQueue {
    pub fn new() -> MessageQueue {
        MessageQueue::default()
    }

    /// The oldest message not yet taken.
    pub fn pop(&self) -> Option<(u64, u32)> {
        self.lock().pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u32)>> {
        // A poisoned queue is still a queue: a panic in a device is
        // reported by the caller, not here.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MsiSink for MessageQueue {
    fn send(&self, address: u64, data: u32) {
        self.lock().push_back((address, data));
    }
}

/// What a device declares it does not do: scenarios that need it are
/// skipped (and counted), not reported as bugs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Unsupported {
    /// Level-triggered entries (bit 15): no remote IRR, no EOI handling.
    pub level_triggered: bool,
    /// Logical destination mode (bit 11).
    pub logical_destination: bool,
    /// Delivery modes other than fixed and lowest priority (NMI, SMI,
    /// INIT, ExtINT).
    pub special_delivery: bool,
    /// Destinations other than this one local APIC's ID 0 (a device that
    /// ignores the destination field and always delivers to its one CPU).
    pub other_destinations: bool,
}

impl Unsupported {
    /// Everything supported.
    pub const NONE: Unsupported = Unsupported {
        level_triggered: false,
        logical_destination: false,
        special_delivery: false,
        other_destinations: false,
    };

    /// Whether a redirection entry (low dword in bits 31:0, destination in
    /// bits 63:56) needs something this device declares unsupported, and
    /// which. An entry that is masked needs nothing.
    pub fn refuses_entry(&self, entry: u64) -> Option<&'static str> {
        let e = RedirectionEntry { raw: entry };
        if e.masked() {
            return None;
        }
        if self.level_triggered && e.level() {
            return Some("level-triggered entries");
        }
        if self.logical_destination && e.logical() {
            return Some("logical destinations");
        }
        let mode = (entry >> 8) & 7;
        if self.special_delivery && mode > 1 {
            return Some("delivery modes other than fixed and lowest priority");
        }
        if self.other_destinations && e.dest() != 0 {
            return Some("destinations other than APIC ID 0");
        }
        None
    }
}

/// A userspace IOAPIC under test. Inputs are logical levels
/// (`set_irq(pin, true)`: interrupt requested), as KVM's `KVM_IRQ_LINE`
/// and crosvm's `service_irq` take them.
pub trait IoapicDevice: Send {
    /// A 32-bit read at `offset` in the IOAPIC's page (IOREGSEL 0x00,
    /// IOWIN 0x10, EOI 0x40 on version 0x20).
    fn mmio_read(&mut self, offset: u64) -> u32;
    /// A 32-bit write at `offset`.
    fn mmio_write(&mut self, offset: u64, value: u32);
    /// Input `pin` is driven to `level` (logical: true = requested).
    fn set_irq(&mut self, pin: usize, level: bool);
    /// The local APIC's EOI broadcast for `vector` (SDM §11.8.5).
    fn end_of_interrupt(&mut self, vector: u8);
    /// What this device does not do.
    fn unsupported(&self) -> Unsupported {
        Unsupported::NONE
    }
}

impl<D: IoapicDevice + ?Sized> IoapicDevice for Box<D> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        (**self).mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u64, value: u32) {
        (**self).mmio_write(offset, value)
    }
    fn set_irq(&mut self, pin: usize, level: bool) {
        (**self).set_irq(pin, level)
    }
    fn end_of_interrupt(&mut self, vector: u8) {
        (**self).end_of_interrupt(vector)
    }
    fn unsupported(&self) -> Unsupported {
        (**self).unsupported()
    }
}

/// Reads redirection entry `pin` through the device's MMIO window
/// (IOREGSEL, IOWIN), leaving IOREGSEL as it found it.
pub fn read_entry(device: &mut (impl IoapicDevice + ?Sized), pin: usize) -> u64 {
    let saved = device.mmio_read(IOREGSEL);
    let index = REG_REDTBL as u32 + 2 * pin as u32;
    device.mmio_write(IOREGSEL, index);
    let low = device.mmio_read(IOWIN);
    device.mmio_write(IOREGSEL, index + 1);
    let high = device.mmio_read(IOWIN);
    device.mmio_write(IOREGSEL, saved);
    (high as u64) << 32 | low as u64
}

/// The model's IOAPIC behind [`IoapicDevice`], sending through an
/// [`MsiSink`]. A sink cannot say whether a message was accepted, so a
/// level message sets remote IRR as if it was (as crosvm's and QEMU's
/// userspace IOAPICs do); the model's own choice for a refused message
/// (lib.rs, G-8) needs the acceptance that only [`InterruptSink`] gives.
pub struct ModelIoapic<S: MsiSink> {
    ioapic: Ioapic,
    sink: S,
}

impl<S: MsiSink> ModelIoapic<S> {
    pub fn new(version: IoapicVersion, sink: S) -> ModelIoapic<S> {
        ModelIoapic {
            ioapic: Ioapic::new(version),
            sink,
        }
    }

    pub fn ioapic(&self) -> &Ioapic {
        &self.ioapic
    }
}

/// An [`InterruptSink`] over an [`MsiSink`]: every message counts as
/// accepted.
struct MsiBus<'a, S: MsiSink>(&'a S);

impl<S: MsiSink> InterruptSink for MsiBus<'_, S> {
    fn send(&mut self, msg: &InterruptMessage) -> bool {
        self.0.send(
            msi::address(msg.dest as u8, msg.logical),
            msi::data(msg.vector, msg.delivery, msg.level),
        );
        true
    }
}

impl<S: MsiSink> IoapicDevice for ModelIoapic<S> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        self.ioapic.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u64, value: u32) {
        self.ioapic
            .mmio_write(offset, value, &mut MsiBus(&self.sink));
    }
    fn set_irq(&mut self, pin: usize, level: bool) {
        self.ioapic.set_irq(pin, level, &mut MsiBus(&self.sink));
    }
    fn end_of_interrupt(&mut self, vector: u8) {
        self.ioapic.eoi(vector, &mut MsiBus(&self.sink));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::bits;

    #[test]
    fn the_model_behind_the_trait_sends_msis_and_takes_eois() {
        // 82093AA §3.2.4 (level entry, remote IRR) and SDM §11.11 (the
        // message as an MSI address/data pair).
        let queue = MessageQueue::new();
        let mut dev = ModelIoapic::new(IoapicVersion::V20, queue.clone());
        dev.mmio_write(IOREGSEL, 0x10 + 2 * 3 + 1);
        dev.mmio_write(IOWIN, 0);
        dev.mmio_write(IOREGSEL, 0x10 + 2 * 3);
        dev.mmio_write(IOWIN, 0x61 | 1 << 15);
        dev.set_irq(3, true);
        assert_eq!(queue.pop(), Some((0xfee0_0000, 0x61 | 1 << 15 | 1 << 14)));
        assert_eq!(queue.pop(), None);
        let entry = read_entry(&mut dev, 3);
        assert_ne!(entry & bits::REMOTE_IRR, 0);
        assert_eq!(dev.mmio_read(IOREGSEL), 0x10 + 2 * 3, "IOREGSEL kept");
        dev.end_of_interrupt(0x61);
        assert_eq!(queue.pop(), Some((0xfee0_0000, 0x61 | 1 << 15 | 1 << 14)));
        dev.set_irq(3, false);
        dev.end_of_interrupt(0x61);
        assert!(queue.is_empty());
        assert_eq!(read_entry(&mut dev, 3) & bits::REMOTE_IRR, 0);
    }

    #[test]
    fn unsupported_names_what_an_entry_needs() {
        let all = Unsupported {
            level_triggered: true,
            logical_destination: true,
            special_delivery: true,
            other_destinations: true,
        };
        assert_eq!(all.refuses_entry(0x30 | bits::MASKED | bits::LEVEL), None);
        assert_eq!(
            all.refuses_entry(0x30 | bits::LEVEL),
            Some("level-triggered entries")
        );
        assert_eq!(
            all.refuses_entry(0x30 | bits::DEST_LOGICAL),
            Some("logical destinations")
        );
        assert_eq!(
            all.refuses_entry(0x30 | 4 << 8),
            Some("delivery modes other than fixed and lowest priority")
        );
        assert_eq!(
            all.refuses_entry(0x30 | 1 << 56),
            Some("destinations other than APIC ID 0")
        );
        assert_eq!(Unsupported::NONE.refuses_entry(0x30 | bits::LEVEL), None);
    }
}

#[cfg(test)]
#[path = "rule_tests/device.rs"]
mod rule_tests;
