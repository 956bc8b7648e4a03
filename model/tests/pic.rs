//! The 8259A pair of the model (model/src/pic.rs): exact IRR, ISR, IMR and
//! vector outcomes of each rule, with the datasheet section that decides
//! it, and a property test of invariants.

use irqdiff_model::pic::{
    EdgeRequests, Pic, PicConfig, PicError, PicRule, ELCR_MASTER, ELCR_SLAVE, MASTER_COMMAND,
    MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
};
use proptest::prelude::*;

const HELD: PicConfig = PicConfig {
    edge_requests: EdgeRequests::HeldUntilAck,
};

fn out(pic: &mut Pic, port: u16, value: u8) {
    pic.port_write(port, value).unwrap();
}

fn inb(pic: &mut Pic, port: u16) -> u8 {
    pic.port_read(port).unwrap()
}

/// The PC BIOS/Linux initialisation: edge, cascade, ICW4 with `icw4`,
/// vectors 0x20 and 0x28, everything unmasked.
fn init_with(pic: &mut Pic, master_icw4: u8, slave_icw4: u8) {
    for (port, value) in [
        (MASTER_COMMAND, 0x11),
        (MASTER_DATA, 0x20),
        (MASTER_DATA, 0x04),
        (MASTER_DATA, master_icw4),
        (SLAVE_COMMAND, 0x11),
        (SLAVE_DATA, 0x28),
        (SLAVE_DATA, 0x02),
        (SLAVE_DATA, slave_icw4),
    ] {
        out(pic, port, value);
    }
}

fn pc(config: PicConfig) -> Pic {
    let mut pic = Pic::new(config);
    init_with(&mut pic, 0x01, 0x01);
    pic
}

fn raise(pic: &mut Pic, line: u8) {
    pic.set_irq(line, true).unwrap();
}

fn lower(pic: &mut Pic, line: u8) {
    pic.set_irq(line, false).unwrap();
}

fn pulse(pic: &mut Pic, line: u8) {
    raise(pic, line);
    lower(pic, line);
}

/// (IRR, ISR, IMR) of the master and of the slave.
fn regs(pic: &Pic) -> [(u8, u8, u8); 2] {
    let m = pic.master();
    let s = pic.slave();
    [(m.irr(), m.isr(), m.imr()), (s.irr(), s.isr(), s.imr())]
}

// --- Initialisation ("Initialization Command Words") ---

#[test]
fn icw1_to_icw4_program_the_vectors_and_reset_the_state() {
    // "Initialization Command Words", General a-f, and Figure 6.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, MASTER_DATA, 0xfa);
    raise(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x20);
    raise(&mut pic, 1);
    out(&mut pic, MASTER_COMMAND, 0x0b); // read ISR
                                         // ICW1 again: IMR cleared, edge sense reset, status read IRR, ISR
                                         // cleared (the model's choice), IR7 lowest.
    out(&mut pic, MASTER_COMMAND, 0x11);
    assert!(pic.master().initialising());
    assert_eq!(pic.master().imr(), 0);
    assert_eq!(pic.master().irr(), 0, "edge sense reset: IRQ1 gone");
    assert_eq!(pic.master().isr(), 0);
    assert_eq!(pic.master().lowest_priority(), 7);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0, "status read is IRR again");
    // The data port takes ICW2, ICW3, ICW4, then OCW1.
    out(&mut pic, MASTER_DATA, 0x47); // T2-T0 ignored
    out(&mut pic, MASTER_DATA, 0x04);
    out(&mut pic, MASTER_DATA, 0x01);
    assert!(!pic.master().initialising());
    assert_eq!(pic.master().vector_base(), 0x40);
    assert_eq!(pic.master().imr(), 0, "the ICWs did not touch IMR");
    out(&mut pic, MASTER_DATA, 0x5a);
    assert_eq!(inb(&mut pic, MASTER_DATA), 0x5a, "OCW1");
    assert_eq!(
        pic.decisions().first().map(|d| d.rule),
        Some(PicRule::InitSequence)
    );
}

#[test]
fn a_line_high_across_icw1_must_fall_and_rise_again() {
    // General item a: after initialisation an IR input must make a
    // low-to-high transition to generate an interrupt.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, MASTER_DATA, 0xff);
    raise(&mut pic, 3);
    init_with(&mut pic, 0x01, 0x01);
    assert_eq!(pic.master().irr(), 0);
    raise(&mut pic, 3); // still high: no transition
    assert!(!pic.int_output());
    lower(&mut pic, 3);
    raise(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23);
    // The VMMs forget the level at ICW1: the next assert is an edge.
    let mut pic = pc(HELD);
    raise(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23);
    init_with(&mut pic, 0x01, 0x01);
    assert_eq!(pic.master().irr(), 0);
    raise(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23);
}

#[test]
fn single_mode_skips_icw3_and_no_ic4_skips_icw4() {
    // ICW1 SNGL: no ICW3; IC4=0: no ICW4 and its functions zeroed (f).
    let mut pic = Pic::default();
    out(&mut pic, MASTER_COMMAND, 0x13); // SNGL, IC4
    out(&mut pic, MASTER_DATA, 0x30);
    assert!(pic.master().initialising(), "waits for ICW4, not ICW3");
    out(&mut pic, MASTER_DATA, 0x03); // ICW4: 8086, AEOI
    assert!(!pic.master().initialising());
    // Single: IR2 is a plain input, no slave asked.
    out(&mut pic, SLAVE_COMMAND, 0x11);
    out(&mut pic, SLAVE_DATA, 0x38);
    out(&mut pic, SLAVE_DATA, 0x02);
    out(&mut pic, SLAVE_DATA, 0x01);
    raise(&mut pic, 9);
    assert_eq!(pic.acknowledge(), 0x32, "the master's own IR2 vector");
    assert_eq!(pic.master().isr(), 0, "AEOI");
    assert_eq!(pic.slave().isr(), 0, "the slave was not asked");
    assert_eq!(pic.unmodelled(), None);
    // ICW1 without IC4: ready after ICW3, ICW4 functions zeroed: MCS-80/85
    // mode, not modelled.
    out(&mut pic, MASTER_COMMAND, 0x10);
    out(&mut pic, MASTER_DATA, 0x20);
    out(&mut pic, MASTER_DATA, 0x04);
    assert!(!pic.master().initialising());
    out(&mut pic, MASTER_DATA, 0xfe);
    assert_eq!(pic.master().imr(), 0xfe, "that write was OCW1");
    raise(&mut pic, 0);
    pic.acknowledge();
    assert!(pic.unmodelled().unwrap().contains("MCS-80/85"));
}

#[test]
fn an_inta_in_the_middle_of_the_initialisation_is_not_modelled() {
    // Figure 6: ready to accept interrupt requests after the last ICW.
    let mut pic = pc(HELD);
    out(&mut pic, SLAVE_COMMAND, 0x11);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23, "the master is initialised");
    assert_eq!(pic.unmodelled(), None);
    pulse(&mut pic, 9);
    out(&mut pic, MASTER_COMMAND, 0x20);
    pic.acknowledge();
    assert!(
        pic.unmodelled().unwrap().contains("Figure 6"),
        "the slave is not"
    );
}

#[test]
fn an_inta_before_any_initialisation_is_not_modelled() {
    // The datasheet defines no state before ICW1; the power-up state has
    // ICW4 = 0 (MCS-80/85 mode).
    let mut pic = Pic::default();
    raise(&mut pic, 1);
    assert!(pic.int_output(), "IMR 0 at power-up, as QEMU and KVM");
    pic.acknowledge();
    assert!(pic.unmodelled().is_some());
}

// --- Edge sense and the request latch ("Edge and Level Triggered Modes") ---

#[test]
fn an_edge_requests_once_and_not_again_while_the_line_stays_high() {
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 4);
    assert_eq!(pic.master().irr(), 0x10);
    assert!(pic.int_output());
    assert_eq!(pic.acknowledge(), 0x24);
    assert_eq!(regs(&pic)[0], (0x00, 0x10, 0x00), "IS4 set, IRR4 reset");
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().irr(), 0, "still high: no new request");
    assert!(!pic.int_output());
    lower(&mut pic, 4);
    raise(&mut pic, 4);
    assert_eq!(pic.master().irr(), 0x10, "a new low-to-high transition");
    assert_eq!(
        pic.decisions().last().map(|d| d.rule),
        Some(PicRule::EdgeSense)
    );
}

#[test]
fn a_pulse_before_the_inta_leaves_nothing_in_the_transparent_latch() {
    // "the IR inputs must remain high until after the falling edge of the
    // first INTA": the request follows the line.
    let mut pic = pc(PicConfig::default());
    pulse(&mut pic, 5);
    assert_eq!(pic.master().irr(), 0);
    assert!(!pic.int_output());
    assert_eq!(
        pic.decisions().last().map(|d| (d.rule, d.irq)),
        Some((PicRule::RequestFollowsLine, 5))
    );
}

#[test]
fn a_pulse_is_held_until_the_inta_by_the_vmms_latch() {
    // EdgeRequests::HeldUntilAck: QEMU's pic_set_irq, KVM's pic_set_irq1.
    let mut pic = pc(HELD);
    pulse(&mut pic, 5);
    assert_eq!(pic.master().irr(), 0x20);
    assert_eq!(pic.acknowledge(), 0x25);
    assert_eq!(regs(&pic)[0], (0x00, 0x20, 0x00));
}

// --- Masks ("Interrupt Mask Register", OCW1) ---

#[test]
fn a_masked_request_raises_no_int_but_shows_in_irr_and_is_taken_on_unmask() {
    let mut pic = pc(PicConfig::default());
    out(&mut pic, MASTER_DATA, 0x08);
    raise(&mut pic, 3);
    assert!(!pic.int_output());
    out(&mut pic, MASTER_COMMAND, 0x0a);
    assert_eq!(
        inb(&mut pic, MASTER_COMMAND),
        0x08,
        "IRR not affected by IMR"
    );
    assert_eq!(inb(&mut pic, MASTER_DATA), 0x08, "IMR on A0=1");
    out(&mut pic, MASTER_DATA, 0x00);
    assert!(pic.int_output());
    assert_eq!(pic.acknowledge(), 0x23);
}

#[test]
fn a_masked_slave_input_holds_the_whole_slave() {
    // OCW1 on the master's IR2 inhibits every slave level.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, MASTER_DATA, 0x04);
    raise(&mut pic, 12);
    assert_eq!(pic.master().irr(), 0x04, "the slave's INT reaches IR2");
    assert!(!pic.int_output());
}

// --- Priority ("Fully Nested Mode", EOI, rotation) ---

#[test]
fn an_is_bit_blocks_the_same_and_lower_levels_and_a_higher_one_nests() {
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23);
    raise(&mut pic, 5);
    assert!(!pic.int_output(), "IR5 is below IS3");
    raise(&mut pic, 1);
    assert!(pic.int_output(), "IR1 is above IS3");
    assert_eq!(pic.acknowledge(), 0x21);
    assert_eq!(regs(&pic)[0], (0x20, 0x0a, 0x00));
    // Non-specific EOI: the highest IS bit (1), then 3.
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().isr(), 0x08);
    assert!(!pic.int_output());
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().isr(), 0x00);
    assert_eq!(pic.acknowledge(), 0x25);
}

#[test]
fn a_specific_eoi_resets_the_named_is_bit() {
    // "End of Interrupt (EOI)": SL=1, L2-L0.
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 6);
    pic.acknowledge();
    raise(&mut pic, 1);
    pic.acknowledge();
    out(&mut pic, MASTER_COMMAND, 0x66);
    assert_eq!(pic.master().isr(), 0x02, "IS6 reset, IS1 kept");
    out(&mut pic, MASTER_COMMAND, 0x65);
    assert_eq!(pic.master().isr(), 0x02, "IS5 was clear: nothing");
    assert_eq!(
        pic.decisions().last().map(|d| (d.rule, d.irq)),
        Some((PicRule::SpecificEoi, 5))
    );
}

#[test]
fn a_request_at_the_level_in_service_waits_for_its_eoi() {
    let mut pic = pc(HELD);
    pulse(&mut pic, 4);
    pic.acknowledge();
    pulse(&mut pic, 4);
    assert_eq!(regs(&pic)[0], (0x10, 0x10, 0x00));
    assert!(!pic.int_output(), "the same level is inhibited");
    out(&mut pic, MASTER_COMMAND, 0x64);
    assert_eq!(pic.acknowledge(), 0x24);
}

#[test]
fn rotate_on_non_specific_eoi_makes_the_serviced_level_the_lowest() {
    // "Automatic Rotation": R=1, SL=0, EOI=1.
    let mut pic = pc(HELD);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x20);
    out(&mut pic, MASTER_COMMAND, 0xa0);
    assert_eq!(pic.master().lowest_priority(), 0);
    pulse(&mut pic, 0);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), 0x21, "IR1 is now the highest");
    out(&mut pic, MASTER_COMMAND, 0xa0);
    assert_eq!(pic.master().lowest_priority(), 1);
    assert_eq!(pic.acknowledge(), 0x20);
    assert_eq!(
        pic.decisions()
            .iter()
            .filter(|d| d.rule == PicRule::Rotation)
            .count(),
        2
    );
}

#[test]
fn set_priority_and_rotate_on_specific_eoi_name_the_bottom_level() {
    // "Specific Rotation": R=1, SL=1 (EOI=0: set priority; EOI=1: with a
    // specific EOI). If IR5 is the bottom, IR6 is the highest.
    let mut pic = pc(HELD);
    out(&mut pic, MASTER_COMMAND, 0xc5);
    assert_eq!(pic.master().lowest_priority(), 5);
    pulse(&mut pic, 5);
    pulse(&mut pic, 7);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), 0x27, "IR6, IR7, IR0, ... IR5");
    // IS7 blocks IR0 and IR5 (lower in the rotated order).
    assert!(!pic.int_output());
    out(&mut pic, MASTER_COMMAND, 0xe7);
    assert_eq!(pic.master().isr(), 0);
    assert_eq!(pic.master().lowest_priority(), 7);
    assert_eq!(pic.acknowledge(), 0x20, "back to IR0 first");
    // Rotate on specific EOI rotates even with the IS bit clear.
    out(&mut pic, MASTER_COMMAND, 0xe3);
    assert_eq!(pic.master().lowest_priority(), 3);
    assert_eq!(pic.master().isr(), 0x01);
}

#[test]
fn rotate_in_aeoi_mode_rotates_on_every_inta() {
    // "Automatic Rotation": rotate in AEOI set by R=1, SL=0, EOI=0 and
    // cleared by R=0, SL=0, EOI=0.
    let mut pic = Pic::new(HELD);
    init_with(&mut pic, 0x03, 0x01);
    out(&mut pic, MASTER_COMMAND, 0x80);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), 0x23);
    assert_eq!(pic.master().isr(), 0);
    assert_eq!(pic.master().lowest_priority(), 3);
    out(&mut pic, MASTER_COMMAND, 0x00);
    pulse(&mut pic, 4);
    pic.acknowledge();
    assert_eq!(pic.master().lowest_priority(), 3, "rotation off");
    out(&mut pic, MASTER_COMMAND, 0x40); // 010: no operation
    assert_eq!(pic.master().lowest_priority(), 3);
}

// --- AEOI ---

#[test]
fn auto_eoi_leaves_no_is_bit_and_lets_the_next_request_through() {
    // "Automatic End of Interrupt (AEOI) Mode".
    let mut pic = Pic::new(HELD);
    init_with(&mut pic, 0x03, 0x01);
    pulse(&mut pic, 6);
    assert_eq!(pic.acknowledge(), 0x26);
    assert_eq!(pic.master().isr(), 0);
    pulse(&mut pic, 7);
    assert_eq!(pic.acknowledge(), 0x27);
    assert_eq!(pic.master().isr(), 0, "a real IR7, no IS bit left");
    assert!(pic
        .decisions()
        .iter()
        .any(|d| d.rule == PicRule::AutoEoi && d.irq == 7));
}

#[test]
fn a_slave_in_aeoi_passes_its_next_request_through_the_master_edge() {
    // AEOI on both chips (1985 and later parts): between the INTA pulses
    // the slave's IS bit is set and its INT falls; at the end of the
    // second pulse the AEOI clears it and INT rises again: a new edge on
    // the master's IR2. QEMU does not see that edge (module docs).
    let mut pic = Pic::new(HELD);
    init_with(&mut pic, 0x03, 0x03);
    pulse(&mut pic, 8);
    pulse(&mut pic, 9);
    assert_eq!(pic.acknowledge(), 0x28);
    assert_eq!(regs(&pic), [(0x04, 0, 0), (0x02, 0, 0)]);
    assert!(pic.int_output());
    assert_eq!(pic.acknowledge(), 0x29);
    assert!(!pic.int_output());
}

// --- Cascade ---

#[test]
fn a_slave_request_is_acknowledged_through_ir2_with_the_slaves_vector() {
    // "Cascade Mode", ICW3; "End of Interrupt": one EOI for each chip.
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 10);
    assert_eq!(pic.master().irr(), 0x04);
    assert_eq!(pic.acknowledge(), 0x2a);
    assert_eq!(regs(&pic), [(0x00, 0x04, 0), (0x00, 0x04, 0)]);
    assert_eq!(
        pic.decisions().last().map(|d| (d.rule, d.irq)),
        Some((PicRule::Cascade, 10))
    );
    raise(&mut pic, 3);
    assert!(!pic.int_output(), "IS2 blocks IR3");
    out(&mut pic, SLAVE_COMMAND, 0x20);
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), 0x23);
}

#[test]
fn a_master_without_a_slave_on_ir2_answers_ir2_itself() {
    // ICW3 (master): a 1 for each input that has a slave.
    let mut pic = Pic::default();
    init_with(&mut pic, 0x01, 0x01);
    out(&mut pic, MASTER_COMMAND, 0x11);
    out(&mut pic, MASTER_DATA, 0x20);
    out(&mut pic, MASTER_DATA, 0x00);
    out(&mut pic, MASTER_DATA, 0x01);
    raise(&mut pic, 9);
    assert_eq!(pic.acknowledge(), 0x22);
    assert_eq!(pic.slave().isr(), 0);
    // A slave whose ID is not 2 answers nothing: not modelled.
    let mut pic = Pic::default();
    init_with(&mut pic, 0x01, 0x01);
    out(&mut pic, SLAVE_COMMAND, 0x11);
    out(&mut pic, SLAVE_DATA, 0x28);
    out(&mut pic, SLAVE_DATA, 0x03);
    out(&mut pic, SLAVE_DATA, 0x01);
    raise(&mut pic, 9);
    pic.acknowledge();
    assert!(pic.unmodelled().unwrap().contains("ICW3"));
}

#[test]
fn special_fully_nested_passes_a_higher_slave_request_but_not_a_lower_master_one() {
    // "The Special Fully Nested Mode" (ICW4 SFNM on the master).
    for (icw4, nests) in [(0x11u8, true), (0x01, false)] {
        let mut pic = Pic::new(HELD);
        init_with(&mut pic, icw4, 0x01);
        pulse(&mut pic, 11);
        assert_eq!(pic.acknowledge(), 0x2b);
        pulse(&mut pic, 3);
        assert!(!pic.int_output(), "IR3 is below IS2 (icw4 {icw4:#x})");
        pulse(&mut pic, 9);
        assert_eq!(pic.int_output(), nests, "icw4 {icw4:#x}");
        if nests {
            assert_eq!(pic.acknowledge(), 0x29);
            assert_eq!(regs(&pic), [(0x08, 0x04, 0), (0x00, 0x0a, 0)]);
        }
    }
}

// --- ELCR (PIIX/ICH) ---

#[test]
fn the_elcr_keeps_its_reserved_bits_zero_and_survives_icw1() {
    let mut pic = pc(PicConfig::default());
    out(&mut pic, ELCR_MASTER, 0xff);
    out(&mut pic, ELCR_SLAVE, 0xff);
    assert_eq!(inb(&mut pic, ELCR_MASTER), 0xf8);
    assert_eq!(inb(&mut pic, ELCR_SLAVE), 0xde);
    init_with(&mut pic, 0x01, 0x01);
    assert_eq!(inb(&mut pic, ELCR_MASTER), 0xf8, "ICW1 leaves ELCR");
    // LTIM in ICW1 is ignored: the ELCR decides.
    out(&mut pic, MASTER_COMMAND, 0x19);
    out(&mut pic, MASTER_DATA, 0x20);
    out(&mut pic, MASTER_DATA, 0x04);
    out(&mut pic, MASTER_DATA, 0x01);
    out(&mut pic, ELCR_MASTER, 0x00);
    raise(&mut pic, 4);
    pic.acknowledge();
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert!(!pic.int_output(), "edge, as the ELCR says");
}

#[test]
fn a_level_line_still_high_at_the_eoi_requests_again() {
    // ELCR level mode ("Edge and Level Triggered Modes", LTIM=1): the
    // request must be removed before the EOI to prevent a second one.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, ELCR_SLAVE, 0x08); // IRQ11 level
    raise(&mut pic, 11);
    assert_eq!(pic.acknowledge(), 0x2b);
    assert_eq!(
        pic.slave().irr(),
        0x08,
        "a level input's IRR follows its line"
    );
    assert!(!pic.int_output());
    out(&mut pic, SLAVE_COMMAND, 0x20);
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert!(pic.int_output(), "re-asserted");
    assert_eq!(pic.acknowledge(), 0x2b);
    lower(&mut pic, 11);
    out(&mut pic, SLAVE_COMMAND, 0x20);
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert!(!pic.int_output(), "removed before the EOI");
    assert_eq!(regs(&pic), [(0, 0, 0), (0, 0, 0)]);
}

// --- Spurious IRQ 7 and 15 ---

#[test]
fn a_request_gone_before_the_inta_gives_the_default_ir7() {
    // "Interrupt Sequence": no request at step 4 -> level 7, no IS bit.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, ELCR_MASTER, 0x20);
    raise(&mut pic, 5);
    assert!(pic.int_output());
    lower(&mut pic, 5); // the request vanishes after the CPU saw INT
    assert_eq!(pic.acknowledge(), 0x27);
    assert_eq!(pic.master().isr(), 0, "a default IR7 sets no IS bit");
    assert_eq!(
        pic.decisions().last().map(|d| (d.rule, d.irq)),
        Some((PicRule::DefaultIr7, 7))
    );
    // Masked after INT: the same.
    raise(&mut pic, 5);
    out(&mut pic, MASTER_DATA, 0x20);
    assert_eq!(pic.acknowledge(), 0x27);
    // A normal IR7 sets IS7, the default one does not.
    raise(&mut pic, 7);
    assert_eq!(pic.acknowledge(), 0x27);
    assert_eq!(pic.master().isr(), 0x80);
}

#[test]
fn a_slave_request_gone_after_the_master_latched_ir2_gives_irq15() {
    // With the VMMs' held edge the master keeps IR2 when the slave's
    // request goes away: the master acknowledges IR2 (IS2 set) and the
    // slave answers its default IR7.
    let mut pic = pc(HELD);
    raise(&mut pic, 10);
    out(&mut pic, SLAVE_DATA, 0x04);
    assert!(pic.int_output());
    assert_eq!(pic.acknowledge(), 0x2f);
    assert_eq!(regs(&pic), [(0x00, 0x04, 0), (0x04, 0x00, 0x04)]);
    assert_eq!(
        pic.decisions().last().map(|d| (d.rule, d.irq)),
        Some((PicRule::DefaultIr7, 15))
    );
    // With the datasheet's transparent latch IR2 follows the slave's INT:
    // the same steps give a master default IR7.
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 10);
    out(&mut pic, SLAVE_DATA, 0x04);
    assert!(!pic.int_output());
    assert_eq!(pic.acknowledge(), 0x27);
    assert_eq!(regs(&pic), [(0, 0, 0), (0x04, 0, 0x04)]);
}

// --- Poll ---

#[test]
fn a_poll_read_acknowledges_and_returns_the_level_with_bit_7() {
    // "Poll Command": I (bit 7) and W2-W0; the IS bit set.
    let mut pic = pc(PicConfig::default());
    raise(&mut pic, 6);
    raise(&mut pic, 3);
    out(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_DATA), 0x83, "from either port");
    assert_eq!(regs(&pic)[0], (0x40, 0x08, 0));
    assert_eq!(
        inb(&mut pic, MASTER_COMMAND),
        0x40,
        "one read only: IRR again"
    );
    out(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x00, "IR6 below IS3: none");
    assert_eq!(pic.decisions().last().map(|d| d.rule), Some(PicRule::Poll));
    // A poll of the slave through the cascade: the master polls IR2.
    raise(&mut pic, 13);
    out(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x82);
    out(&mut pic, SLAVE_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, SLAVE_COMMAND), 0x85);
    assert_eq!(regs(&pic), [(0x40, 0x0c, 0), (0, 0x20, 0)]);
}

#[test]
fn requests_are_frozen_from_the_poll_command_to_the_read() {
    // "Poll Command": interrupt is frozen from WR to RD.
    let mut pic = pc(PicConfig::default());
    out(&mut pic, MASTER_COMMAND, 0x0c);
    raise(&mut pic, 1);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x00);
    assert_eq!(pic.master().irr(), 0x02, "seen after the read");
    // Polling overrides status read when P=1 and RR=1.
    out(&mut pic, MASTER_COMMAND, 0x0f);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x81);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02, "RR=1 RIS=1 took: ISR");
}

#[test]
fn a_poll_in_aeoi_mode_leaves_no_is_bit() {
    let mut pic = Pic::new(HELD);
    init_with(&mut pic, 0x03, 0x01);
    pulse(&mut pic, 5);
    out(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x85);
    assert_eq!(pic.master().isr(), 0);
}

// --- Status read (OCW3) ---

#[test]
fn ocw3_selects_irr_or_isr_and_the_choice_is_remembered() {
    // "Reading the 8259A Status".
    let mut pic = pc(HELD);
    pulse(&mut pic, 1);
    pic.acknowledge();
    pulse(&mut pic, 4);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x10, "IRR after init");
    out(&mut pic, MASTER_COMMAND, 0x0b);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02, "remembered");
    out(&mut pic, MASTER_COMMAND, 0x09); // RR=0: no change
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02);
    out(&mut pic, MASTER_COMMAND, 0x0a);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x10);
    assert_eq!(inb(&mut pic, SLAVE_COMMAND), 0x00, "each chip its own");
}

// --- Special mask mode ---

#[test]
fn special_mask_mode_lets_lower_levels_in_and_keeps_the_masked_is_bit() {
    // "Special Mask Mode"; "End of Interrupt": a masked IS bit takes no
    // non-specific EOI in that mode.
    let mut pic = pc(HELD);
    pulse(&mut pic, 3);
    pic.acknowledge();
    pulse(&mut pic, 5);
    assert!(!pic.int_output());
    out(&mut pic, MASTER_DATA, 0x08);
    out(&mut pic, MASTER_COMMAND, 0x68); // ESMM, SMM
    assert!(pic.int_output());
    assert_eq!(pic.acknowledge(), 0x25);
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().isr(), 0x08, "IS5 reset, masked IS3 kept");
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().isr(), 0x08);
    out(&mut pic, MASTER_COMMAND, 0x48); // ESMM, reset SMM
    out(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.master().isr(), 0);
}

// --- Bad input ---

#[test]
fn bad_ports_and_lines_are_errors() {
    let mut pic = pc(PicConfig::default());
    assert_eq!(pic.port_write(0x22, 0), Err(PicError::NoSuchPort(0x22)));
    assert_eq!(pic.port_read(0x4d2), Err(PicError::NoSuchPort(0x4d2)));
    assert_eq!(pic.set_irq(16, true), Err(PicError::NoSuchLine(16)));
    assert_eq!(pic.set_irq(2, true), Err(PicError::CascadeLine));
    assert!(PicError::CascadeLine.to_string().contains("cascade"));
    assert_eq!(regs(&pic), [(0, 0, 0), (0, 0, 0)]);
}

#[test]
fn every_rule_has_a_name_and_a_citation() {
    use PicRule::*;
    let all = [
        InitSequence,
        EdgeSense,
        RequestFollowsLine,
        LevelTriggered,
        MaskRegister,
        FullyNested,
        Acknowledge,
        DefaultIr7,
        Cascade,
        NonSpecificEoi,
        SpecificEoi,
        AutoEoi,
        Rotation,
        SpecialMask,
        SpecialFullyNested,
        Poll,
        StatusRead,
        Elcr,
    ];
    let names: std::collections::BTreeSet<_> = all.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), all.len());
    for r in all {
        assert!(r.name().starts_with("pic-"));
        assert!(
            r.citation().contains("8259A") || r.citation().contains("ELCR"),
            "{r:?}"
        );
    }
}

// --- Invariants ---

#[derive(Clone, Debug)]
enum Step {
    Out(u16, u8),
    In(u16),
    Line(u8, bool),
    Inta,
}

fn step() -> impl Strategy<Value = Step> {
    let port = prop::sample::select(vec![
        MASTER_COMMAND,
        MASTER_DATA,
        SLAVE_COMMAND,
        SLAVE_DATA,
        ELCR_MASTER,
        ELCR_SLAVE,
    ]);
    let line = prop::sample::select(vec![0u8, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    prop_oneof![
        (port.clone(), any::<u8>()).prop_map(|(p, v)| Step::Out(p, v)),
        port.prop_map(Step::In),
        (line, any::<bool>()).prop_map(|(l, b)| Step::Line(l, b)),
        Just(Step::Inta),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_on_any_program(
        held in any::<bool>(),
        steps in prop::collection::vec(step(), 0..60),
    ) {
        let config = PicConfig {
            edge_requests: if held { EdgeRequests::HeldUntilAck } else { EdgeRequests::Transparent },
        };
        let mut pic = pc(config);
        let mut lines = 0u16;
        for s in steps {
            match s {
                Step::Out(p, v) => out(&mut pic, p, v),
                Step::In(p) => { inb(&mut pic, p); }
                Step::Line(l, b) => {
                    pic.set_irq(l, b).unwrap();
                    if b { lines |= 1 << l } else { lines &= !(1 << l) }
                }
                Step::Inta => {
                    let int = pic.int_output();
                    let frozen = pic.master().polling();
                    pic.clear_decisions();
                    pic.acknowledge();
                    let spurious = pic.decisions().iter().any(|d| d.rule == PicRule::DefaultIr7);
                    // INT high <=> the INTA finds a request (at least on
                    // the master).
                    prop_assert_eq!(
                        int,
                        !pic.decisions().iter().any(|d| d.rule == PicRule::DefaultIr7 && d.irq == 7),
                    );
                    // The transparent latch never yields IRQ15: IR2
                    // follows the slave's INT (unless a poll froze it).
                    if !held && !frozen && spurious {
                        prop_assert!(pic.decisions().iter().all(|d| d.irq != 15));
                    }
                }
            }
            let (m, s) = (pic.master(), pic.slave());
            // ELCR reserved bits (ICH/PIIX) stay zero.
            prop_assert_eq!(m.elcr() & !0xf8, 0);
            prop_assert_eq!(s.elcr() & !0xde, 0);
            if !held {
                // A level input's IRR is its line (unless a poll froze
                // it; the VMMs' bit moves only with the line).
                if !m.polling() {
                    prop_assert_eq!(m.irr() & m.elcr(), (lines as u8) & m.elcr());
                }
                if !s.polling() {
                    prop_assert_eq!(s.irr() & s.elcr(), (lines >> 8) as u8 & s.elcr());
                }
                // The transparent latch: no request without its line high,
                // and the master's IR2 is the slave's INT.
                if !s.polling() {
                    prop_assert_eq!(s.irr() & !(lines >> 8) as u8, 0);
                }
                if !m.polling() {
                    prop_assert_eq!(m.irr() & !(lines as u8) & !0x04, 0);
                    if m.irr() & 0x04 != 0 {
                        prop_assert!(s.int_output());
                    }
                }
            }
        }
    }
}

#[test]
fn ocw2_without_eoi_and_icw1_keep_what_they_do_not_name() {
    // OCW2 R=0 SL=0 EOI=0 and R=0 SL=1 EOI=0 are no EOIs; ICW1 resets the
    // edge sense only, so a level input that stays high still requests
    // (General item a; the VMMs' `irr &= elcr`) and the status read is
    // IRR (item e). v86 breaks each (docs/byo-findings.md, P3, P5, P6).
    for config in [PicConfig::default(), HELD] {
        let mut pic = pc(config);
        raise(&mut pic, 0);
        pic.acknowledge();
        out(&mut pic, MASTER_COMMAND, 0x00);
        out(&mut pic, MASTER_COMMAND, 0x40);
        assert_eq!(pic.master().isr(), 0x01);
        out(&mut pic, ELCR_SLAVE, 0x08);
        out(&mut pic, SLAVE_DATA, 0xff);
        raise(&mut pic, 11);
        out(&mut pic, MASTER_COMMAND, 0x0b);
        init_with(&mut pic, 0x01, 0x01);
        assert_eq!(pic.slave().irr(), 0x08, "{config:?}");
        assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x04, "IRR (IR2), not ISR");
        assert_eq!(pic.acknowledge(), 0x2b);
    }
}
