//! Rules of the [`IoapicDevice`] interface and [`Unsupported`] that the
//! tests next to them leave open.

use super::*;
use crate::ioapic::bits;

#[test]
fn a_queue_with_a_message_is_not_empty() {
    let queue = MessageQueue::new();
    assert!(queue.is_empty());
    queue.send(0xfee0_1000, 0x41);
    assert!(!queue.is_empty());
    assert_eq!(queue.pop(), Some((0xfee0_1000, 0x41)));
    assert!(queue.is_empty());
}

#[test]
fn a_device_that_supports_everything_refuses_no_entry() {
    // Each declaration refuses only what it names: with nothing declared,
    // no unmasked entry is refused, whatever it needs (82093AA §3.2.4:
    // bit 15 level, bit 11 logical, bits 10:8 delivery mode, 63:56 the
    // destination).
    for entry in [
        0x30 | bits::LEVEL,
        0x30 | bits::DEST_LOGICAL,
        0x30 | 4 << 8,
        0x30 | 1 << 56,
    ] {
        assert_eq!(Unsupported::NONE.refuses_entry(entry), None, "{entry:#x}");
    }
}

#[test]
fn special_delivery_is_every_mode_but_fixed_and_lowest_priority() {
    // 82093AA §3.2.4 bits 10:8: 000 fixed and 001 lowest priority are
    // ordinary; every other mode (SMI, NMI, INIT, ExtINT) is special.
    let special = Unsupported {
        special_delivery: true,
        ..Unsupported::NONE
    };
    assert_eq!(special.refuses_entry(0x30), None);
    assert_eq!(special.refuses_entry(0x30 | 1 << 8), None);
    for mode in 2..8u64 {
        assert!(special.refuses_entry(0x30 | mode << 8).is_some(), "{mode}");
    }
    // A device limited to APIC ID 0 takes an entry for ID 0.
    let one_cpu = Unsupported {
        other_destinations: true,
        ..Unsupported::NONE
    };
    assert_eq!(one_cpu.refuses_entry(0x30), None);
    assert!(one_cpu.refuses_entry(0x30 | 0xffu64 << 56).is_some());
}

/// The model's IOAPIC that declares level entries unsupported.
struct EdgeOnly(ModelIoapic<MessageQueue>);

impl IoapicDevice for EdgeOnly {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        self.0.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u64, value: u32) {
        self.0.mmio_write(offset, value)
    }
    fn set_irq(&mut self, pin: usize, level: bool) {
        self.0.set_irq(pin, level)
    }
    fn end_of_interrupt(&mut self, vector: u8) {
        self.0.end_of_interrupt(vector)
    }
    fn unsupported(&self) -> Unsupported {
        Unsupported {
            level_triggered: true,
            ..Unsupported::NONE
        }
    }
}

#[test]
fn a_boxed_device_is_the_device() {
    // Every call through a Box reaches the device: its registers, its
    // inputs, the EOI broadcast (SDM §11.8.5, 82093AA §3.2.4 bit 14) and
    // what it declares unsupported.
    let queue = MessageQueue::new();
    let mut dev: Box<dyn IoapicDevice> = Box::new(EdgeOnly(ModelIoapic::new(
        IoapicVersion::V20,
        queue.clone(),
    )));
    assert!(dev.unsupported().level_triggered);
    dev.mmio_write(IOREGSEL, 1);
    assert_eq!(dev.mmio_read(IOWIN), 0x0017_0020);
    dev.mmio_write(IOREGSEL, 0x10 + 2 * 5);
    dev.mmio_write(IOWIN, 0x62 | 1 << 15);
    dev.set_irq(5, true);
    assert_eq!(queue.pop(), Some((0xfee0_0000, 0x62 | 1 << 15 | 1 << 14)));
    assert_ne!(read_entry(&mut dev, 5) & bits::REMOTE_IRR, 0);
    dev.set_irq(5, false);
    dev.end_of_interrupt(0x62);
    assert_eq!(read_entry(&mut dev, 5) & bits::REMOTE_IRR, 0);
    assert!(queue.is_empty());
}

#[test]
fn model_ioapic_exposes_its_state() {
    // The wrapped IOAPIC is the one the device writes.
    let mut dev = ModelIoapic::new(IoapicVersion::V11, MessageQueue::new());
    dev.mmio_write(IOREGSEL, 0x10 + 2 * 2);
    dev.mmio_write(IOWIN, 0x77);
    assert_eq!(dev.ioapic().entry(2).vector(), 0x77);
    assert_eq!(dev.ioapic().version(), IoapicVersion::V11);
}

#[test]
fn read_entry_returns_both_dwords_of_the_entry() {
    // 82093AA §3.2.4: entry N is the low dword at index 0x10 + 2N and the
    // high dword (destination, bits 63:56) at 0x11 + 2N; the neighbours'
    // dwords are not read.
    let mut dev = ModelIoapic::new(IoapicVersion::V20, MessageQueue::new());
    for (index, value) in [
        (0x15, 0x0300_0000),
        (0x16, 0x0001_0044),
        (0x17, 0x0f00_0000),
    ] {
        dev.mmio_write(IOREGSEL, index);
        dev.mmio_write(IOWIN, value);
    }
    assert_eq!(read_entry(&mut dev, 3), 0x0f00_0000_0001_0044);
    assert_eq!(read_entry(&mut dev, 2) >> 56, 0x03);
}
