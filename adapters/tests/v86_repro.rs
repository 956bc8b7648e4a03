//! Minimal repros of the two bugs irqdiff found in v86's IOAPIC
//! (native-v86-core 0.1.6, `cpu::ioapic`), in v86's own terms (its
//! `set_irq`, `write32` and the IRR of its APIC), for its maintainers
//! (docs/byo-findings.md). Both come from one latch, `Ioapic::irr`, that
//! stands for the line level. Each asserts what v86 does today, with what
//! the 82093AA datasheet says next to it.
#![cfg(target_os = "linux")]

use std::sync::Mutex;

use native_v86_core::cpu::{apic, global_pointers, ioapic};

/// v86's IOAPIC and APIC are process-wide: one test at a time.
static V86: Mutex<()> = Mutex::new(());

fn reset() {
    // SAFETY: set before any v86 call of this test binary and never freed;
    // the tests run one at a time (V86).
    unsafe {
        if global_pointers::acpi_enabled.is_null() {
            global_pointers::acpi_enabled = Box::leak(Box::new(true));
        }
    }
    let mut state = [0u32; 52];
    state[..24].fill(1 << 16);
    let bytes: Vec<u8> = state.iter().flat_map(|w| w.to_le_bytes()).collect();
    ioapic::restore_state_bytes(&bytes).unwrap();
    apic::restore_state_bytes(&[0; 184]).unwrap();
}

fn write_entry(pin: u32, low: u32) {
    ioapic::write32(0x00, 0x11 + 2 * pin);
    ioapic::write32(0x10, 0);
    ioapic::write32(0x00, 0x10 + 2 * pin);
    ioapic::write32(0x10, low);
}

/// Whether `vector` is in v86's APIC IRR.
fn requested(vector: u8) -> bool {
    apic::read32(0x200 + 0x10 * (vector as u32 / 32)) & 1 << (vector % 32) != 0
}

#[test]
fn a_line_asserted_while_masked_edge_is_lost_when_the_entry_becomes_level() {
    // 82093AA §3.2.4 (bit 15 level, bit 16 mask): a level-triggered entry
    // delivers while its line is asserted, whenever it is unmasked. v86's
    // set_irq returns before latching `irr` when the entry is edge and
    // masked (the reset state), so the later level entry sees no request.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    ioapic::set_irq(1);
    write_entry(1, 1 << 15 | 0x30);
    assert!(!requested(0x30), "spec: 0x30 requested");
}

#[test]
fn a_level_request_is_sent_again_when_the_entry_becomes_edge() {
    // 82093AA §3.2.4 bit 15: an edge-triggered entry delivers on a rising
    // edge of its line. v86 keeps the level request latched in `irr` when
    // remote IRR holds it, and check_irq sends it as an edge interrupt
    // when the entry is rewritten edge, with no edge on the line.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    write_entry(2, 1 << 15 | 0x40);
    ioapic::set_irq(2);
    assert!(requested(0x40), "level entry, line asserted: sent");
    write_entry(2, 0x30);
    assert!(requested(0x30), "spec: 0x30 not requested (no edge)");
}
