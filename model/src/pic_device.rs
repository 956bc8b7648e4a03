//! A PIC pair as a device under test: the interface a VMM's own 8259A
//! emulation implements so that irqdiff can compare it with the model's
//! ([`crate::pic::Pic`]), as [`crate::IoapicDevice`] does for the IOAPIC.
//!
//! The shape follows the VMMs: byte-wide port I/O on 0x20/0x21, 0xa0/0xa1
//! and 0x4d0/0x4d1 (QEMU's `pic_ioport_*`/`elcr_ioport_*`, KVM's
//! `picdev_read`/`picdev_write`), ISA input lines (`pic_set_irq`,
//! `kvm_pic_set_irq`), the INT output (`pic_get_output`, KVM's
//! `s->output`) and the INTA cycle (`pic_read_irq`, `kvm_pic_read_irq`).

use crate::pic::{EdgeRequests, Pic, PicConfig};

/// What a PIC device declares it does not do: scenarios that need it are
/// skipped (and counted), not reported as bugs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PicUnsupported {
    /// The poll command (OCW3 bit 2).
    pub poll: bool,
    /// The special fully nested mode (ICW4 bit 4 of the master).
    pub special_fully_nested: bool,
    /// Priority rotation (OCW2 with R=1: rotate on EOI, set priority,
    /// rotate in AEOI).
    pub rotation: bool,
    /// Single mode (ICW1 bit 1): ICW3 skipped.
    pub single_mode: bool,
    /// An INTA cycle that finds no request (the processor's INTA raced the
    /// request away): a device whose processor samples and acknowledges in
    /// one step cannot be asked for one.
    pub inta_without_request: bool,
    /// ICW3 other than the PC's (master 0x04: a slave on IR2 only; slave
    /// ID 2): a device that always cascades IR2 to the slave.
    pub other_cascade: bool,
}

impl PicUnsupported {
    /// Everything supported.
    pub const NONE: PicUnsupported = PicUnsupported {
        poll: false,
        special_fully_nested: false,
        rotation: false,
        single_mode: false,
        inta_without_request: false,
        other_cascade: false,
    };

    /// Why a write of `value` to `port` needs something declared
    /// unsupported, if it does. `icw` is the ICW (2, 3 or 4) a data-port
    /// write is taken as, if any (the writer tracks the sequence).
    pub fn refuses_write(&self, port: u16, value: u8, icw: Option<u8>) -> Option<&'static str> {
        let command = port == crate::pic::MASTER_COMMAND || port == crate::pic::SLAVE_COMMAND;
        let data = port == crate::pic::MASTER_DATA || port == crate::pic::SLAVE_DATA;
        if command && value & 0x10 != 0 {
            if self.single_mode && value & 2 != 0 {
                return Some("single mode (ICW1 SNGL)");
            }
        } else if command && value & 0x18 == 0x08 {
            if self.poll && value & 4 != 0 {
                return Some("the poll command");
            }
        } else if command {
            if self.rotation && value & 0x80 != 0 {
                return Some("priority rotation (OCW2 R=1)");
            }
        } else if port == crate::pic::MASTER_DATA
            && icw == Some(4)
            && self.special_fully_nested
            && value & 0x10 != 0
        {
            // The slave has no slave inputs: SFNM means nothing there.
            return Some("the special fully nested mode (ICW4 SFNM)");
        } else if data && icw == Some(3) && self.other_cascade {
            let pc = if port == crate::pic::MASTER_DATA {
                0x04
            } else {
                0x02
            };
            if value != pc {
                return Some("an ICW3 other than the PC's (0x04, 0x02)");
            }
        }
        None
    }
}

/// What a device is: how it latches edge requests, what it does not do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PicProfile {
    /// The model is run with the same choice
    /// ([`crate::pic::EdgeRequests`]): the datasheet's transparent latch
    /// or the VMMs' request held until the INTA.
    pub edge_requests: EdgeRequests,
    pub unsupported: PicUnsupported,
}

/// A PIC pair under test. Inputs are logical levels (`set_irq(line,
/// true)`: line high), as KVM's `KVM_IRQ_LINE` and QEMU's `pic_set_irq`
/// take them.
pub trait PicDevice: Send {
    /// A byte read from one of [`crate::pic::PORTS`].
    fn port_read(&mut self, port: u16) -> u8;
    /// A byte written to one of [`crate::pic::PORTS`].
    fn port_write(&mut self, port: u16, value: u8);
    /// ISA line `line` (0-15 but 2, the cascade) is driven to `level`.
    fn set_irq(&mut self, line: u8, level: bool);
    /// The master's INT output; `None` when the device cannot report it
    /// without running an INTA cycle (then it overrides
    /// [`PicDevice::take_interrupt`]).
    fn int_output(&mut self) -> Option<bool>;
    /// An INTA cycle: the vector on the bus. `None`: the device put none
    /// there (a real pair always does: the default IR7 at worst).
    fn acknowledge(&mut self) -> Option<u8>;
    /// What the processor does when it samples INTR: an INTA cycle if INT
    /// is high.
    fn take_interrupt(&mut self) -> Option<u8> {
        match self.int_output() {
            Some(true) => self.acknowledge(),
            _ => None,
        }
    }
    fn profile(&self) -> PicProfile {
        PicProfile::default()
    }
}

impl<D: PicDevice + ?Sized> PicDevice for Box<D> {
    fn port_read(&mut self, port: u16) -> u8 {
        (**self).port_read(port)
    }
    fn port_write(&mut self, port: u16, value: u8) {
        (**self).port_write(port, value)
    }
    fn set_irq(&mut self, line: u8, level: bool) {
        (**self).set_irq(line, level)
    }
    fn int_output(&mut self) -> Option<bool> {
        (**self).int_output()
    }
    fn acknowledge(&mut self) -> Option<u8> {
        (**self).acknowledge()
    }
    fn take_interrupt(&mut self) -> Option<u8> {
        (**self).take_interrupt()
    }
    fn profile(&self) -> PicProfile {
        (**self).profile()
    }
}

/// The model's pair behind [`PicDevice`]. Bad input (a port that is not
/// the PIC's, line 2 or above 15) is ignored and reads 0xff, as an open
/// bus; [`ModelPic::pic`] has the errors' source in [`Pic`]'s own API.
#[derive(Clone, Debug, Default)]
pub struct ModelPic {
    pic: Pic,
    profile: PicProfile,
}

impl ModelPic {
    pub fn new(config: PicConfig) -> ModelPic {
        ModelPic {
            pic: Pic::new(config),
            profile: PicProfile {
                edge_requests: config.edge_requests,
                unsupported: PicUnsupported::NONE,
            },
        }
    }

    pub fn pic(&self) -> &Pic {
        &self.pic
    }

    pub fn pic_mut(&mut self) -> &mut Pic {
        &mut self.pic
    }
}

impl PicDevice for ModelPic {
    fn port_read(&mut self, port: u16) -> u8 {
        self.pic.port_read(port).unwrap_or(0xff)
    }
    fn port_write(&mut self, port: u16, value: u8) {
        let _ = self.pic.port_write(port, value);
    }
    fn set_irq(&mut self, line: u8, level: bool) {
        let _ = self.pic.set_irq(line, level);
    }
    fn int_output(&mut self) -> Option<bool> {
        Some(self.pic.int_output())
    }
    fn acknowledge(&mut self) -> Option<u8> {
        Some(self.pic.acknowledge())
    }
    fn profile(&self) -> PicProfile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pic::{MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA};

    #[test]
    fn the_model_behind_the_trait_takes_an_interrupt() {
        // 8259A "Interrupt Sequence": INT high, INTA gives base | level.
        let mut dev = ModelPic::default();
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
        assert_eq!(dev.int_output(), Some(false));
        dev.set_irq(4, true);
        assert_eq!(dev.int_output(), Some(true));
        assert_eq!(dev.take_interrupt(), Some(0x24));
        assert_eq!(dev.take_interrupt(), None, "IS4 blocks, IRR4 reset");
        assert_eq!(dev.port_read(0x1234), 0xff, "not a PIC port");
        dev.set_irq(2, true);
        assert_eq!(dev.pic().master().irr(), 0, "line 2 is the cascade");
    }

    #[test]
    fn unsupported_names_what_a_write_needs() {
        let all = PicUnsupported {
            poll: true,
            special_fully_nested: true,
            rotation: true,
            single_mode: true,
            inta_without_request: true,
            other_cascade: true,
        };
        assert_eq!(
            all.refuses_write(MASTER_COMMAND, 0x13, None),
            Some("single mode (ICW1 SNGL)")
        );
        assert_eq!(
            all.refuses_write(SLAVE_COMMAND, 0x0c, None),
            Some("the poll command")
        );
        assert_eq!(
            all.refuses_write(MASTER_COMMAND, 0xa0, None),
            Some("priority rotation (OCW2 R=1)")
        );
        assert_eq!(
            all.refuses_write(MASTER_DATA, 0x11, Some(4)),
            Some("the special fully nested mode (ICW4 SFNM)")
        );
        assert_eq!(
            all.refuses_write(SLAVE_DATA, 0x04, Some(3)),
            Some("an ICW3 other than the PC's (0x04, 0x02)")
        );
        assert_eq!(all.refuses_write(SLAVE_DATA, 0x02, Some(3)), None);
        assert_eq!(all.refuses_write(MASTER_DATA, 0x11, None), None, "OCW1");
        assert_eq!(all.refuses_write(MASTER_COMMAND, 0x20, None), None);
        assert_eq!(
            PicUnsupported::NONE.refuses_write(MASTER_COMMAND, 0x0c, None),
            None
        );
    }
}

#[cfg(test)]
#[path = "rule_tests/pic_device.rs"]
mod rule_tests;
