//! Minimal repros of the bugs irqdiff found in v86's local APIC
//! (native-v86-core 0.1.6, `cpu::apic`), in v86's own terms (`route`,
//! `acknowledge_irq`, `read32`, `write32`), for its maintainers
//! (docs/byo-findings.md V3-V5). Each asserts what v86 does today, with
//! what the SDM says next to it.
#![cfg(target_os = "linux")]

use std::sync::Mutex;

use native_v86_core::cpu::{apic, global_pointers};

/// v86's APIC is process-wide: one test at a time.
static V86: Mutex<()> = Mutex::new(());

/// v86's APIC with a software-enabling SVR (0x1FF) and nothing pending.
fn reset() -> std::sync::MutexGuard<'static, ()> {
    let guard = V86.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: set before any v86 call of this test binary and never freed;
    // the tests run one at a time (V86).
    unsafe {
        if global_pointers::acpi_enabled.is_null() {
            global_pointers::acpi_enabled = Box::leak(Box::new(true));
        }
    }
    apic::restore_state_bytes(&[0; 184]).unwrap();
    apic::write32(0xf0, 0x1ff);
    guard
}

/// A fixed, edge-triggered message to v86's APIC, as its IOAPIC sends it.
fn send(vector: u8) {
    apic::route(&mut apic::get_apic(), vector, 0, false, 0, 0);
}

fn requested(vector: u8) -> bool {
    apic::read32(0x200 + 0x10 * (vector as u32 / 32)) & 1 << (vector % 32) != 0
}

#[test]
fn a_software_disabled_apic_accepts_fixed_interrupts() {
    // SDM vol. 3A §11.4.7.2: a software-disabled local APIC (SVR bit 8
    // clear) does not accept fixed interrupts (KVM's __apic_accept_irq
    // and the model refuse them). v86's `deliver` never looks at the SVR.
    let _v86 = reset();
    apic::write32(0xf0, 0xff);
    send(0x30);
    assert!(requested(0x30), "spec: 0x30 not accepted");
}

#[test]
fn the_processor_priority_register_reads_0() {
    // SDM vol. 3A §11.8.3.1 and Table 11-1: PPR (offset 0xA0) is the
    // greater of TPR and the in-service vector's class (here 0x40). v86's
    // read32 has no arm for 0xA0 and returns 0.
    let _v86 = reset();
    send(0x41);
    assert_eq!(apic::acknowledge_irq(), Some(0x41));
    assert_eq!(apic::read32(0xa0), 0, "spec: 0x40");
}

#[test]
fn a_vector_of_the_in_service_class_interrupts_it() {
    // SDM vol. 3A §11.8.3: a requested vector is dispatched only when its
    // priority class (bits 7:4) is above PPR's, and PPR's class is the
    // in-service vector's. 0x41 has the class of 0x40 in service, so it
    // waits for the EOI. v86's acknowledge_irq compares whole vectors
    // (`highest_isr >= highest_irr`) and takes 0x41 at once.
    let _v86 = reset();
    send(0x40);
    assert_eq!(apic::acknowledge_irq(), Some(0x40));
    send(0x41);
    assert_eq!(
        apic::acknowledge_irq(),
        Some(0x41),
        "spec: None until the EOI"
    );
}
