//! v86's 8259A pair (`native_v86_core::cpu::pic`, native-v86-core 0.1.6,
//! BSD-2-Clause OR MIT) behind [`PicDevice`].
//!
//! Like its IOAPIC, v86's PIC is a process-wide singleton: the adapter
//! takes it for its lifetime (one v86 PIC per process at a time; a second
//! `new` waits) and resets it to v86's power-up state through
//! `restore_state`. v86's processor samples and acknowledges in one call
//! (`handle_irqs` calls `pic_acknowledge_irq`, which returns `None` when
//! nothing is requested), so the adapter reports no INT output, takes
//! interrupts through that call, and declares an INTA without a request
//! unsupported. It also declares what v86's own code marks unimplemented
//! (`dbg_assert!`: polling, the special fully nested mode, single mode)
//! and priority rotation (OCW2 with R=1: "Unknown eoi" or a log line),
//! and ICW3 values other than the PC's (v86 ignores ICW3 and always
//! cascades IR2).
//! v86 holds an edge request until its INTA
//! ([`EdgeRequests::HeldUntilAck`]).

use irqdiff_model::pic::{
    ELCR_MASTER, ELCR_SLAVE, MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
};
use irqdiff_model::{EdgeRequests, PicDevice, PicProfile, PicUnsupported};
use native_v86_core::cpu::pic;

/// v86's power-up state of one chip, in `restore_state`'s layout: IMR
/// stored inverted (0: all masked), vector base, ISR, IRR, master flag,
/// pad, expect ICW4, ICW state, read ISR, AEOI, ELCR, line levels,
/// special mask.
fn power_up(master: bool) -> [u8; 13] {
    let mut s = [0u8; 13];
    s[4] = master as u8;
    s
}

/// v86's PIC pair, for as long as this value lives.
pub struct V86Pic {
    _private: (),
}

impl V86Pic {
    /// Takes v86's singleton (waiting for another holder to drop it) and
    /// resets it to v86's power-up state.
    pub fn new() -> V86Pic {
        // One holder of all of v86's singletons at a time: its APIC and
        // IOAPIC code may reach the PIC's globals too.
        crate::v86::hold_v86();
        pic::restore_state(&power_up(true), &power_up(false));
        V86Pic { _private: () }
    }
}

impl Default for V86Pic {
    fn default() -> Self {
        V86Pic::new()
    }
}

impl Drop for V86Pic {
    fn drop(&mut self) {
        crate::v86::release_v86();
    }
}

impl PicDevice for V86Pic {
    fn port_read(&mut self, port: u16) -> u8 {
        (match port {
            MASTER_COMMAND => pic::port20_read(),
            MASTER_DATA => pic::port21_read(),
            SLAVE_COMMAND => pic::portA0_read(),
            SLAVE_DATA => pic::portA1_read(),
            ELCR_MASTER => pic::port4D0_read(),
            ELCR_SLAVE => pic::port4D1_read(),
            _ => 0xff,
        }) as u8
    }

    fn port_write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_COMMAND => pic::port20_write(value),
            MASTER_DATA => pic::port21_write(value),
            SLAVE_COMMAND => pic::portA0_write(value),
            SLAVE_DATA => pic::portA1_write(value),
            ELCR_MASTER => pic::port4D0_write(value),
            ELCR_SLAVE => pic::port4D1_write(value),
            _ => {}
        }
    }

    fn set_irq(&mut self, line: u8, level: bool) {
        if line >= 16 || line == 2 {
            return;
        }
        if level {
            pic::set_irq(line)
        } else {
            pic::clear_irq(line)
        }
    }

    fn int_output(&mut self) -> Option<bool> {
        None
    }

    fn acknowledge(&mut self) -> Option<u8> {
        pic::pic_acknowledge_irq()
    }

    fn take_interrupt(&mut self) -> Option<u8> {
        // v86's handle_irqs: the INTA is the sampling.
        pic::pic_acknowledge_irq()
    }

    fn profile(&self) -> PicProfile {
        PicProfile {
            edge_requests: EdgeRequests::HeldUntilAck,
            unsupported: PicUnsupported {
                poll: true,
                special_fully_nested: true,
                rotation: true,
                single_mode: true,
                inta_without_request: true,
                other_cascade: true,
            },
        }
    }
}
