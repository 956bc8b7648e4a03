//! alioth's IOAPIC (`alioth::device::ioapic::IoApic`, alioth 0.12,
//! Apache-2.0) behind [`IoapicDevice`].
//!
//! alioth's IoApic has no input lines and no EOI: the VMM calls
//! `service_pin(pin)` to send a pin's message, and its level-triggered and
//! logical-destination entries are refused with a warning (`service_pin`).
//! The adapter keeps the line levels and calls `service_pin` on a rising
//! edge, which is how alioth's board uses it for its edge-triggered
//! devices; it declares level-triggered entries and logical destinations
//! unsupported.

use std::fmt;

use alioth::device::ioapic::IoApic;
use alioth::hv::{IrqFd, MsiSender};
use alioth::mem::emulated::Mmio;
use irqdiff_model::{IoapicDevice, MsiSink, Unsupported};

/// alioth's `MsiSender` over an irqdiff sink.
pub struct Sender<S: MsiSink>(S);

impl<S: MsiSink> fmt::Debug for Sender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("irqdiff Sender")
    }
}

/// alioth's `MsiSender` needs an irqfd type; the IOAPIC never asks for one.
#[derive(Debug)]
pub struct NoIrqFd(std::fs::File);

impl std::os::fd::AsFd for NoIrqFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl IrqFd for NoIrqFd {
    fn set_addr_lo(&self, _: u32) -> alioth::hv::Result<()> {
        Ok(())
    }
    fn get_addr_lo(&self) -> u32 {
        0
    }
    fn set_addr_hi(&self, _: u32) -> alioth::hv::Result<()> {
        Ok(())
    }
    fn get_addr_hi(&self) -> u32 {
        0
    }
    fn set_data(&self, _: u32) -> alioth::hv::Result<()> {
        Ok(())
    }
    fn get_data(&self) -> u32 {
        0
    }
    fn set_masked(&self, _: bool) -> alioth::hv::Result<bool> {
        Ok(false)
    }
    fn get_masked(&self) -> bool {
        true
    }
}

impl<S: MsiSink> MsiSender for Sender<S> {
    type IrqFd = NoIrqFd;

    fn send(&self, addr: u64, data: u32) -> alioth::hv::Result<()> {
        self.0.send(addr, data);
        Ok(())
    }

    fn create_irqfd(&self) -> alioth::hv::Result<NoIrqFd> {
        // alioth's IoApic only sends; irqfds are for its PCI devices.
        panic!("alioth's IoApic does not create irqfds")
    }
}

/// alioth's IoApic with the input levels it does not keep itself.
pub struct AliothIoapic<S: MsiSink> {
    ioapic: IoApic<Sender<S>>,
    levels: u32,
}

impl<S: MsiSink> AliothIoapic<S> {
    pub fn new(sink: S) -> AliothIoapic<S> {
        AliothIoapic {
            ioapic: IoApic::new(Sender(sink)),
            levels: 0,
        }
    }
}

impl<S: MsiSink> IoapicDevice for AliothIoapic<S> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        Mmio::read(&self.ioapic, offset, 4).map_or(0, |v| v as u32)
    }

    fn mmio_write(&mut self, offset: u64, value: u32) {
        let _ = Mmio::write(&self.ioapic, offset, 4, value as u64);
    }

    fn set_irq(&mut self, pin: usize, level: bool) {
        let bit = 1u32 << (pin % 32);
        let rising = level && self.levels & bit == 0;
        if level {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
        if rising {
            let _ = self.ioapic.service_pin(pin as u8);
        }
    }

    fn end_of_interrupt(&mut self, _vector: u8) {
        // alioth's IoApic has no remote IRR: nothing to do.
    }

    fn unsupported(&self) -> Unsupported {
        Unsupported {
            level_triggered: true,
            logical_destination: true,
            ..Unsupported::NONE
        }
    }
}
