//! A userspace local APIC as a device under test: the interface a VMM's
//! own LAPIC implements so that irqdiff can compare it with the model's
//! (`irqdiff_check::check_lapic`).
//!
//! The shape follows crosvm's userspace `Apic` (devices/src/irqchip/apic.rs):
//! `read(offset)` and `write(offset) -> Option<ApicBusMsg>` for the MMIO
//! page, where the message is the EOI to broadcast or an IPI to route;
//! `accept_irq` for a message whose destination matched; and the processor
//! taking the highest deliverable vector (`inject_interrupt`). v86's APIC
//! (native-v86-core `cpu::apic`: `read32`, `write32`, `route`,
//! `acknowledge_irq`) has the same four entry points.
//!
//! The model's own [`Lapic`] implements [`LapicDevice`].

use crate::ioapic::{DeliveryMode, InterruptMessage};
use crate::lapic::{reg, Lapic};
use crate::rules::Rule;

/// What a register write sends on the APIC bus (crosvm's `ApicBusMsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicBusMessage {
    /// The EOI of a level-triggered vector, for the IOAPICs (SDM §11.8.5).
    Eoi(u8),
    /// An IPI (SDM §11.6.1); one to this APIC itself is delivered back by
    /// the caller with [`LapicDevice::accept_interrupt`].
    Ipi(InterruptMessage),
}

/// What a LAPIC device declares it does not do: scenarios that need it
/// are skipped (and counted), not reported as bugs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LapicUnsupported {
    /// xAPIC register offsets the device does not implement (reads and
    /// writes of them are skipped).
    pub registers: &'static [u16],
    /// Vectors 0-15 (SDM §11.5.3: illegal, refused with an ESR bit).
    pub illegal_vectors: bool,
    /// A software disable by the SVR (SDM §11.4.7.2).
    pub software_disable: bool,
    /// Delivery modes other than fixed (NMI, SMI, INIT, ExtINT).
    pub special_delivery: bool,
}

impl LapicUnsupported {
    /// Everything supported.
    pub const NONE: LapicUnsupported = LapicUnsupported {
        registers: &[],
        illegal_vectors: false,
        software_disable: false,
        special_delivery: false,
    };
}

/// A userspace local APIC under test, in xAPIC mode, as the one CPU's APIC
/// with ID 0.
pub trait LapicDevice: Send {
    /// A 32-bit read of the register at `offset` in the APIC page.
    fn mmio_read(&mut self, offset: u16) -> u32;
    /// A 32-bit write of the register at `offset`, and what it sends.
    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage>;
    /// A message whose destination matched this APIC arrives.
    fn accept_interrupt(&mut self, message: &InterruptMessage);
    /// The processor, with RFLAGS.IF = 1, takes the highest-priority
    /// deliverable vector, if any: its IRR bit moves to ISR (SDM §11.8.3,
    /// §11.8.4).
    fn acknowledge_interrupt(&mut self) -> Option<u8>;
    /// What this device does not do.
    fn unsupported(&self) -> LapicUnsupported {
        LapicUnsupported::NONE
    }
}

impl<D: LapicDevice + ?Sized> LapicDevice for Box<D> {
    fn mmio_read(&mut self, offset: u16) -> u32 {
        (**self).mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage> {
        (**self).mmio_write(offset, value)
    }
    fn accept_interrupt(&mut self, message: &InterruptMessage) {
        (**self).accept_interrupt(message)
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        (**self).acknowledge_interrupt()
    }
    fn unsupported(&self) -> LapicUnsupported {
        (**self).unsupported()
    }
}

impl LapicDevice for Lapic {
    fn mmio_read(&mut self, offset: u16) -> u32 {
        self.read_mmio(offset)
    }

    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage> {
        if offset == reg::EOI {
            // SDM §11.8.5: the EOI clears the highest ISR bit and is
            // broadcast for a level vector.
            return self.end_of_interrupt().broadcast.map(ApicBusMessage::Eoi);
        }
        self.write(offset, value).map(ApicBusMessage::Ipi)
    }

    fn accept_interrupt(&mut self, message: &InterruptMessage) {
        let _ = self.accept(message);
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let vector = self.deliverable()?;
        self.acknowledge(vector);
        Some(vector)
    }
}

/// A fixed message for the APIC with ID 0 (what an IOAPIC entry or an MSI
/// sends, SDM §11.11.2).
pub fn fixed_message(vector: u8, level: bool) -> InterruptMessage {
    InterruptMessage {
        vector,
        delivery: DeliveryMode::Fixed,
        logical: false,
        dest: 0,
        level,
        rule: Rule::AcceptedIntoIrr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quirks::Quirks;

    #[test]
    fn the_models_lapic_behind_the_trait_takes_eois_and_self_ipis() {
        // SDM §11.8.4 (accepted into IRR, TMR for level), §11.8.3 (the
        // highest class above PPR), §11.8.5 (only a level EOI broadcast),
        // §11.6.1 (self shorthand).
        let mut apic: Box<dyn LapicDevice> = Box::new(Lapic::new(false, false, Quirks::empty()));
        apic.accept_interrupt(&fixed_message(0x41, true));
        apic.accept_interrupt(&fixed_message(0x52, false));
        assert_eq!(apic.mmio_read(reg::IRR + 0x20), 1 << 1 | 1 << 18);
        assert_eq!(apic.mmio_read(reg::TMR + 0x20), 1 << 1);
        assert_eq!(apic.acknowledge_interrupt(), Some(0x52));
        assert_eq!(apic.acknowledge_interrupt(), None, "0x41 is below PPR 0x50");
        assert_eq!(
            apic.mmio_write(reg::EOI, 0),
            None,
            "an edge EOI stays local"
        );
        assert_eq!(apic.acknowledge_interrupt(), Some(0x41));
        assert_eq!(
            apic.mmio_write(reg::EOI, 0),
            Some(ApicBusMessage::Eoi(0x41))
        );
        assert_eq!(apic.mmio_write(reg::TPR, 0x30), None);
        match apic.mmio_write(reg::ICR_LOW, 1 << 18 | 0x66) {
            Some(ApicBusMessage::Ipi(m)) => assert_eq!((m.vector, m.dest), (0x66, 0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(apic.unsupported(), LapicUnsupported::NONE);
    }
}

#[cfg(test)]
#[path = "rule_tests/lapic_device.rs"]
mod rule_tests;
