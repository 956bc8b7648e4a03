//! Rules of the [`LapicDevice`] interface that the test next to it leaves
//! open.

use super::*;
use crate::quirks::Quirks;

/// A device that declares what it does not do, and is otherwise the
/// model's LAPIC.
struct Partial(Lapic);

impl LapicDevice for Partial {
    fn mmio_read(&mut self, offset: u16) -> u32 {
        self.0.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage> {
        self.0.mmio_write(offset, value)
    }
    fn accept_interrupt(&mut self, message: &InterruptMessage) {
        self.0.accept_interrupt(message)
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        self.0.acknowledge_interrupt()
    }
    fn unsupported(&self) -> LapicUnsupported {
        LapicUnsupported {
            registers: &[reg::LVT_LINT0],
            illegal_vectors: true,
            ..LapicUnsupported::NONE
        }
    }
}

#[test]
fn a_boxed_device_declares_what_the_device_declares() {
    // A device's declared gaps decide which scenarios are skipped: boxing
    // it must not lose them.
    let apic: Box<dyn LapicDevice> = Box::new(Partial(Lapic::new(false, false, Quirks::empty())));
    assert_eq!(apic.unsupported().registers, [reg::LVT_LINT0]);
    assert!(apic.unsupported().illegal_vectors);
    assert!(!apic.unsupported().software_disable);
}

#[test]
fn a_write_that_is_no_eoi_is_stored_and_sends_nothing() {
    // SDM §11.8.5: only the EOI register ends an interrupt; a TPR write
    // (§11.8.3.1) is stored, ends nothing and broadcasts nothing.
    let mut apic = Lapic::new(false, false, Quirks::empty());
    apic.accept_interrupt(&fixed_message(0x41, true));
    assert_eq!(apic.acknowledge_interrupt(), Some(0x41));
    assert_eq!(LapicDevice::mmio_write(&mut apic, reg::TPR, 0x20), None);
    assert_eq!(LapicDevice::mmio_read(&mut apic, reg::TPR), 0x20);
    assert_eq!(LapicDevice::mmio_read(&mut apic, reg::ISR + 0x20), 1 << 1);
    assert_eq!(
        LapicDevice::mmio_write(&mut apic, reg::EOI, 0),
        Some(ApicBusMessage::Eoi(0x41))
    );
    assert_eq!(LapicDevice::mmio_read(&mut apic, reg::ISR + 0x20), 0);
}
