//! Minimal repros of the bugs irqdiff found in v86's 8259A pair
//! (native-v86-core 0.1.6, `cpu::pic`), in v86's own terms (its port
//! functions, `set_irq`/`clear_irq` and `pic_acknowledge_irq`), for its
//! maintainers (docs/byo-findings.md, "v86's 8259A pair"). Each asserts
//! what v86 does today, with what the datasheet says next to it.
#![cfg(target_os = "linux")]

use std::sync::Mutex;

use native_v86_core::cpu::pic;

/// v86's PIC is process-wide: one test at a time.
static V86: Mutex<()> = Mutex::new(());

/// v86's power-up state, then the PC initialisation (vectors 0x08/0x70,
/// cascade on IR2, 8086 mode; `icw4` for both chips).
fn init(icw4: u8) {
    let mut master = [0u8; 13];
    master[4] = 1;
    pic::restore_state(&master, &[0u8; 13]);
    icws(icw4);
}

/// The ICW1-ICW4 writes of [`init`] alone.
fn icws(icw4: u8) {
    pic::port20_write(0x11);
    pic::port21_write(0x08);
    pic::port21_write(0x04);
    pic::port21_write(icw4);
    pic::portA0_write(0x11);
    pic::portA1_write(0x70);
    pic::portA1_write(0x02);
    pic::portA1_write(icw4);
}

fn master_isr() -> u8 {
    pic::port20_write(0x0b);
    let isr = pic::port20_read() as u8;
    pic::port20_write(0x0a);
    isr
}

#[test]
fn p1_the_elcr_reserved_bits_are_writable() {
    // ICH/PIIX ELCR1 bits 2:0 and ELCR2 bits 5, 0 are reserved (0): IRQ0,
    // 1, 2, 8 and 13 cannot be made level-triggered. QEMU and KVM mask the
    // writes with 0xf8 and 0xde.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::port4D0_write(0xff);
    pic::port4D1_write(0xff);
    assert_eq!(pic::port4D0_read(), 0xff, "spec: 0xf8");
    assert_eq!(pic::port4D1_read(), 0xff, "spec: 0xde");
}

#[test]
fn p2_a_spurious_irq15_is_swallowed_and_leaves_the_masters_is2_set() {
    // 8259A "Interrupt Sequence": with no request at the INTA the slave
    // answers its default IR7 (IRQ15); the master's IS2 is set and the
    // handler EOIs the master. v86 returns no vector but sets IS2, which
    // no EOI will ever clear: IRQ3-7 and the whole slave are blocked.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::port4D1_write(0x80); // IRQ15 level-triggered (a PCI line)
    pic::set_irq(15);
    pic::clear_irq(15); // gone before the processor's INTA
    assert_eq!(pic::pic_acknowledge_irq(), None, "spec: Some(0x77)");
    assert_eq!(master_isr(), 0x04);
    pic::set_irq(3);
    assert_eq!(
        pic::pic_acknowledge_irq(),
        None,
        "IRQ3 blocked by IS2 for good"
    );
}

#[test]
fn p3_ocw2_commands_that_are_not_eois_clear_an_is_bit() {
    // 8259A OCW2: R=0 SL=0 EOI=0 (0x00) clears rotate-in-AEOI and
    // R=0 SL=1 EOI=0 (0x40) is no operation. v86 treats both as a
    // non-specific EOI ("Unknown eoi").
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    for ocw2 in [0x00u8, 0x40] {
        init(0x01);
        pic::set_irq(0);
        assert_eq!(pic::pic_acknowledge_irq(), Some(0x08));
        pic::port20_write(ocw2);
        assert_eq!(master_isr(), 0x00, "spec: 0x01 (IS0 kept) after {ocw2:#x}");
        pic::clear_irq(0);
    }
}

#[test]
fn p4_with_the_slave_in_aeoi_its_next_request_does_not_reach_the_master() {
    // 8259A "Interrupt Sequence" steps 4-6 with AEOI: the slave's IS bit is
    // set between the INTA pulses and reset at the end, so its INT falls
    // and rises and the master sees IR2 again. v86 does not re-evaluate
    // the slave after the INTA (check_irqs_slave), so IRQ9 waits until
    // some slave port write or line change.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x03);
    pic::set_irq(8);
    pic::set_irq(9);
    assert_eq!(pic::pic_acknowledge_irq(), Some(0x70));
    assert_eq!(pic::pic_acknowledge_irq(), None, "spec: Some(0x71)");
    pic::portA1_write(0x00); // any OCW1 to the slave lets it through
    assert_eq!(pic::pic_acknowledge_irq(), Some(0x71));
}

#[test]
fn p5_icw1_drops_the_request_of_a_level_input_that_stays_high() {
    // 8259A "Initialization Command Words" item a resets the edge sense;
    // a level-triggered input (ELCR) requests while it is high. QEMU and
    // KVM keep level requests across ICW1 (irr &= elcr). v86 clears IRR
    // and the line levels, so a device holding its line high is never
    // heard again (it does not raise a line that is already raised).
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::port4D1_write(0x08); // IRQ11 level
    pic::set_irq(11);
    pic::portA1_write(0xff);
    icws(0x01); // IMR cleared, IRQ11 still high
    assert_eq!(pic::pic_acknowledge_irq(), None, "spec: Some(0x73)");
    pic::set_irq(11); // no transition for the device: it stays high
    assert_eq!(
        pic::pic_acknowledge_irq(),
        Some(0x73),
        "heard only if raised again"
    );
}

#[test]
fn p6_icw1_leaves_the_isr_selected_for_status_reads() {
    // 8259A "Initialization Command Words" item e: ICW1 sets the status
    // read to IRR. v86 keeps an earlier OCW3 RIS.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::port20_write(0x0b); // read ISR
    pic::port20_write(0x11);
    pic::port21_write(0x08);
    pic::port21_write(0x04);
    pic::port21_write(0x01);
    pic::set_irq(5);
    assert_eq!(pic::port20_read(), 0x00, "spec: 0x20 (IRR)");
}

#[test]
fn p7_special_mask_mode_blocks_every_request_when_the_level_in_service_is_masked() {
    // 8259A "Special Mask Mode": masking the level in service and setting
    // SMM enables every other unmasked level. v86's get_irq compares the
    // masked IS bit (0) with the request and blocks all of them, even a
    // request of higher priority, which fully nested mode alone passes.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::set_irq(7);
    assert_eq!(pic::pic_acknowledge_irq(), Some(0x0f));
    pic::port21_write(0x80); // mask IR7, in service
    pic::port20_write(0x68); // set special mask mode
    pic::set_irq(0);
    assert_eq!(pic::pic_acknowledge_irq(), None, "spec: Some(0x08)");
    pic::port20_write(0x48); // reset special mask mode
    assert_eq!(
        pic::pic_acknowledge_irq(),
        Some(0x08),
        "fully nested passes IR0"
    );
}

#[test]
fn p8_icw1_without_ic4_leaves_auto_eoi_on() {
    // 8259A "Initialization Command Words" item f: with IC4 = 0 all ICW4
    // functions are zero (no AEOI). v86's ICW1 turns AEOI on until an ICW4
    // comes.
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::port20_write(0x10);
    pic::port21_write(0x08);
    pic::port21_write(0x04);
    pic::set_irq(1);
    assert_eq!(pic::pic_acknowledge_irq(), Some(0x09));
    assert_eq!(master_isr(), 0x00, "spec: 0x02 (no AEOI)");
}

#[test]
fn p9_a_non_specific_eoi_in_special_mask_mode_clears_a_masked_is_bit() {
    // 8259A "End of Interrupt (EOI)": an IS bit masked by an IMR bit is
    // not cleared by a non-specific EOI in special mask mode. v86 clears
    // the lowest IS bit regardless (QEMU and KVM do the same).
    let _v86 = V86.lock().unwrap_or_else(|e| e.into_inner());
    init(0x01);
    pic::set_irq(3);
    assert_eq!(pic::pic_acknowledge_irq(), Some(0x0b));
    pic::port21_write(0x08); // mask IR3, in service
    pic::port20_write(0x68); // set special mask mode
    pic::port20_write(0x20); // non-specific EOI
    assert_eq!(master_isr(), 0x00, "spec: 0x08 (IS3 kept)");
}
