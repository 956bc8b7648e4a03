//! v86's IOAPIC (`native_v86_core::cpu::ioapic`, native-v86-core 0.1.6,
//! BSD-2-Clause OR MIT) behind [`IoapicDevice`].
//!
//! v86's IOAPIC is a process-wide singleton that delivers straight into
//! v86's own local APIC (`apic::route`, which ignores the destination and
//! the destination mode: v86 has one CPU). The adapter takes the singleton
//! for its lifetime (one v86 device per process at a time; a second `new`
//! waits), resets it to its power-up state, and turns what v86's APIC
//! accepted during each call into messages: before the call v86's APIC is
//! emptied, after it every IRR bit is one message with TMR as its trigger
//! mode, to APIC ID 0. NMI and INIT deliveries are dropped by v86's APIC
//! (`deliver`: "TODO"), so the adapter declares delivery modes other than
//! fixed and lowest priority unsupported, as it does destinations other
//! than APIC ID 0 and logical destinations (v86 ignores both).
//!
//! v86 logs every register access with `println!` (its `dbg_log!`); the
//! adapter leaves it to the caller to keep stdout clear (irqdiff's worker
//! does, src/campaign/worker.rs).

use std::sync::{Condvar, Mutex, Once};

use irqdiff_model::{msi, IoapicDevice, MsiSink, Unsupported};
use native_v86_core::cpu::{apic, global_pointers, ioapic};

/// v86's `Ioapic` struct: 24 config words, 24 destination words, IOREGSEL,
/// ID, IRR, line levels (the layout `restore_state_bytes` takes).
const IOAPIC_STATE_WORDS: usize = 52;
/// v86's `Apic` struct (APIC_STRUCT_SIZE).
pub(crate) const APIC_STATE_BYTES: usize = 4 * 46;
/// v86's reset value of a redirection entry's low dword: masked.
const MASKED: u32 = 1 << 16;

/// Whether a [`V86Ioapic`] holds v86's singleton.
static HELD: Mutex<bool> = Mutex::new(false);
static RELEASED: Condvar = Condvar::new();
static POINTERS: Once = Once::new();

/// v86's IOAPIC, for as long as this value lives.
pub struct V86Ioapic<S: MsiSink> {
    sink: S,
}

impl<S: MsiSink> V86Ioapic<S> {
    /// Takes v86's singleton (waiting for another holder to drop it) and
    /// resets it to v86's power-up state.
    pub fn new(sink: S) -> V86Ioapic<S> {
        hold_v86();
        reset_ioapic();
        clear_apic();
        V86Ioapic { sink }
    }

    /// Runs `call` on v86 and sends what v86's APIC accepted meanwhile.
    fn with_messages<T>(&mut self, call: impl FnOnce() -> T) -> T {
        let result = call();
        let mut irr = [0u32; 8];
        for (i, word) in irr.iter_mut().enumerate() {
            *word = apic::read32(0x200 + 0x10 * i as u32);
        }
        if irr.iter().any(|&w| w != 0) {
            for (i, &word) in irr.iter().enumerate() {
                if word == 0 {
                    continue;
                }
                let tmr = apic::read32(0x180 + 0x10 * i as u32);
                for bit in 0..32 {
                    if word & 1 << bit != 0 {
                        let vector = (i * 32 + bit) as u8;
                        let level = tmr & 1 << bit != 0;
                        self.sink.send(
                            msi::address(0, false),
                            msi::data(vector, irqdiff_model::ioapic::DeliveryMode::Fixed, level),
                        );
                    }
                }
            }
            clear_apic();
        }
        result
    }
}

/// Takes v86's singletons (its IOAPIC, APIC and PIC) for the caller, waiting
/// for another holder to release them ([`release_v86`]).
pub(crate) fn hold_v86() {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    while *held {
        held = RELEASED.wait(held).unwrap_or_else(|e| e.into_inner());
    }
    *held = true;
    drop(held);
    POINTERS.call_once(|| {
        // v86 reads `*acpi_enabled` on every register access; native
        // builds point it into the runtime's heap, which this adapter
        // does not start. One leaked `true` for the process.
        // SAFETY: written once, before any v86 call of this process
        // reads it (Once), and never freed.
        unsafe {
            if global_pointers::acpi_enabled.is_null() {
                global_pointers::acpi_enabled = Box::leak(Box::new(true));
            }
        }
    });
}

/// Gives v86's singletons back ([`hold_v86`]).
pub(crate) fn release_v86() {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    *held = false;
    RELEASED.notify_one();
}

/// v86's IOAPIC in its power-up state: every entry masked, no request.
pub(crate) fn reset_ioapic() {
    let mut words = [0u32; IOAPIC_STATE_WORDS];
    words[..24].fill(MASKED);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    ioapic::restore_state_bytes(&bytes).expect("v86's IOAPIC state layout");
}

/// Empties v86's APIC (IRR, ISR, TMR).
fn clear_apic() {
    apic::restore_state_bytes(&[0u8; APIC_STATE_BYTES]).expect("v86's APIC state layout");
}

impl<S: MsiSink> Drop for V86Ioapic<S> {
    fn drop(&mut self) {
        release_v86();
    }
}

impl<S: MsiSink> IoapicDevice for V86Ioapic<S> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        // v86's read32 sends nothing.
        ioapic::read32(offset as u32)
    }

    fn mmio_write(&mut self, offset: u64, value: u32) {
        if offset == 0 {
            // IOREGSEL: sends nothing (write32_internal).
            return ioapic::write32(0, value);
        }
        self.with_messages(|| ioapic::write32(offset as u32, value))
    }

    fn set_irq(&mut self, pin: usize, level: bool) {
        self.with_messages(|| {
            if level {
                ioapic::set_irq(pin as u8)
            } else {
                ioapic::clear_irq(pin as u8)
            }
        })
    }

    fn end_of_interrupt(&mut self, vector: u8) {
        // v86's APIC calls this on the EOI of a vector with TMR set.
        self.with_messages(|| ioapic::remote_eoi(&mut apic::get_apic(), vector))
    }

    fn unsupported(&self) -> Unsupported {
        Unsupported {
            logical_destination: true,
            special_delivery: true,
            other_destinations: true,
            ..Unsupported::NONE
        }
    }
}
