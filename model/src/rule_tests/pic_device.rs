//! Rules of the [`PicDevice`] interface and [`PicUnsupported`] that the
//! tests next to them leave open.

use super::*;
use crate::pic::{MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA};

fn all() -> PicUnsupported {
    PicUnsupported {
        poll: true,
        special_fully_nested: true,
        rotation: true,
        single_mode: true,
        inta_without_request: true,
        other_cascade: true,
    }
}

#[test]
fn a_write_is_refused_only_for_the_bit_it_declares() {
    // 8259A ICW1 bit 1 (SNGL), OCW3 bit 2 (poll), OCW2 bit 7 (R), ICW4
    // bit 4 (SFNM): the same write without that bit needs nothing.
    let all = all();
    assert_eq!(all.refuses_write(MASTER_COMMAND, 0x11, None), None, "ICW1");
    assert_eq!(all.refuses_write(MASTER_COMMAND, 0x0a, None), None, "OCW3");
    assert_eq!(all.refuses_write(MASTER_DATA, 0x01, Some(4)), None, "ICW4");
    // The slave has no slave inputs: SFNM in its ICW4 needs nothing.
    assert_eq!(all.refuses_write(SLAVE_DATA, 0x11, Some(4)), None);
}

#[test]
fn the_masters_icw3_is_checked_against_the_pcs() {
    // 8259A ICW3: the master's is the bit mask of its slave inputs, the
    // PC's 0x04 (IR2); anything else is another cascade.
    let all = all();
    assert_eq!(all.refuses_write(MASTER_DATA, 0x04, Some(3)), None);
    assert_eq!(
        all.refuses_write(MASTER_DATA, 0x02, Some(3)),
        Some("an ICW3 other than the PC's (0x04, 0x02)")
    );
}

#[test]
fn nothing_declared_refuses_nothing() {
    let none = PicUnsupported::NONE;
    for (port, value, icw) in [
        (MASTER_COMMAND, 0x13, None),
        (SLAVE_COMMAND, 0x0c, None),
        (MASTER_COMMAND, 0xa0, None),
        (MASTER_DATA, 0x11, Some(4)),
        (SLAVE_DATA, 0x04, Some(3)),
    ] {
        assert_eq!(
            none.refuses_write(port, value, icw),
            None,
            "{port:#x} {value:#x}"
        );
    }
}

/// The model's pair, declaring a profile of its own.
struct Declared(ModelPic);

impl PicDevice for Declared {
    fn port_read(&mut self, port: u16) -> u8 {
        self.0.port_read(port)
    }
    fn port_write(&mut self, port: u16, value: u8) {
        self.0.port_write(port, value)
    }
    fn set_irq(&mut self, line: u8, level: bool) {
        self.0.set_irq(line, level)
    }
    fn int_output(&mut self) -> Option<bool> {
        self.0.int_output()
    }
    fn acknowledge(&mut self) -> Option<u8> {
        self.0.acknowledge()
    }
    fn take_interrupt(&mut self) -> Option<u8> {
        // A device that samples and acknowledges in one step.
        self.0.acknowledge().filter(|&v| v != 0x27)
    }
    fn profile(&self) -> PicProfile {
        PicProfile {
            edge_requests: EdgeRequests::HeldUntilAck,
            unsupported: PicUnsupported {
                poll: true,
                ..PicUnsupported::NONE
            },
        }
    }
}

/// ICW1-ICW4 of the PC's pair: master at 0x20, slave at 0x28, 8086 mode.
fn initialise(dev: &mut dyn PicDevice) {
    for (port, value) in [
        (MASTER_COMMAND, 0x11),
        (MASTER_DATA, 0x20),
        (MASTER_DATA, 0x04),
        (MASTER_DATA, 0x01),
        (SLAVE_COMMAND, 0x11),
        (SLAVE_DATA, 0x28),
        (SLAVE_DATA, 0x02),
        (SLAVE_DATA, 0x01),
    ] {
        dev.port_write(port, value);
    }
}

#[test]
fn a_boxed_device_is_the_device() {
    // Every call through a Box reaches the device: its ports, lines, INT
    // output, INTA cycle (8259A "Interrupt Sequence"), its own
    // take_interrupt and its profile.
    let mut dev: Box<dyn PicDevice> = Box::new(Declared(ModelPic::default()));
    assert!(dev.profile().unsupported.poll);
    assert_eq!(dev.profile().edge_requests, EdgeRequests::HeldUntilAck);
    initialise(&mut dev);
    assert_eq!(dev.port_read(MASTER_DATA), 0, "IMR cleared by ICW1");
    dev.port_write(MASTER_DATA, 0xfe);
    assert_eq!(dev.port_read(MASTER_DATA), 0xfe);
    dev.port_write(MASTER_DATA, 0);
    assert_eq!(dev.int_output(), Some(false));
    dev.set_irq(5, true);
    assert_eq!(dev.int_output(), Some(true));
    assert_eq!(dev.acknowledge(), Some(0x25));
    dev.port_write(MASTER_COMMAND, 0x20);
    dev.set_irq(6, true);
    assert_eq!(dev.take_interrupt(), Some(0x26));
    dev.port_write(MASTER_COMMAND, 0x20);
    assert_eq!(dev.take_interrupt(), None, "the spurious IR7 filtered");
}

#[test]
fn model_pic_exposes_its_pair_and_its_profile() {
    // The pair behind the device is the one the ports program; the
    // profile carries the edge-request choice the model was built with.
    let mut dev = ModelPic::new(PicConfig {
        edge_requests: EdgeRequests::HeldUntilAck,
    });
    assert_eq!(dev.profile().edge_requests, EdgeRequests::HeldUntilAck);
    assert_eq!(dev.profile().unsupported, PicUnsupported::NONE);
    initialise(&mut dev);
    assert_eq!(dev.pic().master().vector_base(), 0x20);
    assert_eq!(dev.pic().slave().vector_base(), 0x28);
    dev.pic_mut().set_irq(3, true).unwrap();
    assert_eq!(dev.pic().master().irr(), 1 << 3);
    // The trait's default profile is the datasheet's.
    struct Plain(ModelPic);
    impl PicDevice for Plain {
        fn port_read(&mut self, port: u16) -> u8 {
            self.0.port_read(port)
        }
        fn port_write(&mut self, port: u16, value: u8) {
            self.0.port_write(port, value)
        }
        fn set_irq(&mut self, line: u8, level: bool) {
            self.0.set_irq(line, level)
        }
        fn int_output(&mut self) -> Option<bool> {
            self.0.int_output()
        }
        fn acknowledge(&mut self) -> Option<u8> {
            self.0.acknowledge()
        }
    }
    let plain = Plain(ModelPic::default());
    assert_eq!(plain.profile(), PicProfile::default());
}
