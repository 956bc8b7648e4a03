//! v86's local APIC (`native_v86_core::cpu::apic`, native-v86-core 0.1.6,
//! BSD-2-Clause OR MIT) behind [`LapicDevice`].
//!
//! v86's APIC is a process-wide singleton, like its IOAPIC: the adapter
//! holds both for its lifetime (one v86 device of either kind per process
//! at a time; another `new` waits). Its interface reaches everything the
//! trait needs: `read32` and `write32` for the register page, `route` for
//! a message (v86's IOAPIC calls it; it ignores the destination, v86 has
//! one CPU), and `acknowledge_irq` for the processor taking an interrupt.
//! v86 calls its IOAPIC's `remote_eoi` itself on the EOI of a vector with
//! TMR set; the adapter reports that EOI as the broadcast (it reads ISR
//! and TMR before the write, which is what v86's `write32` tests), and
//! keeps v86's IOAPIC masked so that the call changes nothing there.

use irqdiff_model::lapic::reg;
use irqdiff_model::{ApicBusMessage, InterruptMessage, LapicDevice, LapicUnsupported};
use native_v86_core::cpu::apic;

use crate::v86::{hold_v86, release_v86, reset_ioapic, APIC_STATE_BYTES};

/// Byte offsets in v86's `Apic` struct (its layout asserts, apic.rs).
const TIMER_DIVIDER_SHIFT: usize = 8;
const LVT_TIMER: usize = 32;
const LVT_ERROR: usize = 48;
const SPURIOUS_VECTOR: usize = 160;
const DESTINATION_FORMAT: usize = 164;
const LVT_THERMAL: usize = 180;

/// v86's APIC, for as long as this value lives.
pub struct V86Lapic {
    _held: Held,
}

/// Releases v86's singletons when dropped.
struct Held;

impl Drop for Held {
    fn drop(&mut self) {
        release_v86();
    }
}

impl V86Lapic {
    /// Takes v86's singletons and puts its APIC in the start state of an
    /// irqdiff scenario: v86's power-up values (LVTs masked, DFR flat,
    /// timer divider shift 1), software-enabled with spurious vector 0xFF
    /// (SVR 0x1FF, as the guest stub leaves it; v86 powers up with 0xFE).
    pub fn new() -> V86Lapic {
        hold_v86();
        let held = Held;
        reset_ioapic();
        let mut state = [0u8; APIC_STATE_BYTES];
        let mut put = |offset: usize, value: u32| {
            state[offset..offset + 4].copy_from_slice(&value.to_le_bytes())
        };
        put(TIMER_DIVIDER_SHIFT, 1);
        for lvt in (LVT_TIMER..=LVT_ERROR).step_by(4).chain([LVT_THERMAL]) {
            put(lvt, 1 << 16);
        }
        put(SPURIOUS_VECTOR, 0x1ff);
        put(DESTINATION_FORMAT, !0);
        apic::restore_state_bytes(&state).expect("v86's APIC state layout");
        V86Lapic { _held: held }
    }
}

impl Default for V86Lapic {
    fn default() -> V86Lapic {
        V86Lapic::new()
    }
}

/// The highest bit of a 256-bit register read by its eight words.
fn highest(base: u16) -> Option<u8> {
    (0..8u16).rev().find_map(|i| {
        let word = apic::read32((base + 0x10 * i) as u32);
        (word != 0).then(|| (i * 32 + 31 - word.leading_zeros() as u16) as u8)
    })
}

fn test(base: u16, vector: u8) -> bool {
    apic::read32((base + 0x10 * (vector as u16 / 32)) as u32) & 1 << (vector % 32) != 0
}

impl LapicDevice for V86Lapic {
    fn mmio_read(&mut self, offset: u16) -> u32 {
        apic::read32(offset as u32)
    }

    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage> {
        // v86's write32 at EOI: ISR's highest bit cleared, and remote_eoi
        // when its TMR bit is set.
        let broadcast = if offset == reg::EOI {
            highest(reg::ISR).filter(|&v| test(reg::TMR, v))
        } else {
            None
        };
        // Self IPIs go straight into v86's own IRR (write32 at 0x300).
        apic::write32(offset as u32, value);
        broadcast.map(ApicBusMessage::Eoi)
    }

    fn accept_interrupt(&mut self, message: &InterruptMessage) {
        apic::route(
            &mut apic::get_apic(),
            message.vector,
            message.delivery.bits(),
            message.level,
            message.dest as u8,
            message.logical as u8,
        );
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        apic::acknowledge_irq()
    }

    fn unsupported(&self) -> LapicUnsupported {
        // v86's `deliver` drops NMI and INIT and takes vectors 0-15 into
        // IRR without an error (each a "TODO" there).
        LapicUnsupported {
            special_delivery: true,
            illegal_vectors: true,
            ..LapicUnsupported::NONE
        }
    }
}
