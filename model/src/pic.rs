//! The 8259A programmable interrupt controller pair of a PC: a master at
//! ports 0x20/0x21 and a slave at 0xa0/0xa1 whose INT output drives the
//! master's IR2, with the edge/level control registers (ELCR) of the
//! PIIX/ICH chipsets at 0x4d0/0x4d1.
//!
//! Sources: the Intel 8259A Programmable Interrupt Controller datasheet
//! (order number 231468), cited by its section titles ("Interrupt
//! Sequence", "Initialization Command Words", "Fully Nested Mode", "End of
//! Interrupt", "Automatic Rotation", "Specific Rotation", "Special Mask
//! Mode", "Poll Command", "Reading the 8259A Status", "Edge and Level
//! Triggered Modes", "Special Fully Nested Mode", "Cascade Mode"), and the
//! Intel ICH/PIIX datasheets for the ELCR registers (ELCR1 at 4D0h: bits
//! 7:3 select edge or level for IRQ7-3, bits 2:0 reserved; ELCR2 at 4D1h:
//! bits 7:6 and 4:1 for IRQ15-14 and 12-9, bits 5 and 0 reserved) and for
//! ICW1's LTIM bit, which these chipsets ignore in favour of the ELCR.
//!
//! Checked against QEMU (`hw/intc/i8259.c`, `i8259_common.c`) and Linux
//! KVM (`arch/x86/kvm/i8259.c`), which share an ancestor. Where they
//! differ from the datasheet the difference is named next to the rule
//! (and collected in docs/pic.md):
//!
//! - **The request latch** ("Edge and Level Triggered Modes"): the IRR bit
//!   of an edge-triggered input is the transparent latch of the input
//!   gated by the edge-sense latch, so "the IR inputs must remain high
//!   until after the falling edge of the first INTA. If the IR input goes
//!   low before this time a DEFAULT IR7 will occur". QEMU, KVM and v86
//!   hold an edge request in IRR until it is acknowledged, whatever the
//!   line does afterwards (their devices pulse lines). Both are modelled:
//!   [`EdgeRequests::Transparent`] (the datasheet, the default) and
//!   [`EdgeRequests::HeldUntilAck`] (those VMMs).
//! - **Special mask mode**: the IS bits of masked levels are invisible to
//!   the priority resolver, for blocking and for the non-specific EOI, as
//!   QEMU does; KVM stores the mode and ignores it.
//! - **Special fully nested mode**: an IS bit of a slave input does not
//!   block a new request from that slave but still blocks lower levels;
//!   QEMU and KVM drop the slave's IS bit from the priority computation
//!   altogether, so lower master levels get through too.
//! - **Poll**: the read returns 0x80 | level and sets the IS bit (0x00 when
//!   there is no request); the IRR is frozen from the poll command to the
//!   read. KVM returns the bare level (0x07 for none) and never sets the
//!   IS bit; neither QEMU nor KVM freezes.
//! - **ICW3**: the master's ICW3 decides whether IR2 is cascaded; QEMU,
//!   KVM and v86 always cascade it.
//!
//! Choices where the datasheet is silent (docs/pic.md lists them):
//!
//! - ICW1 clears the ISR and cancels a pending poll, and clears the
//!   rotate-in-AEOI mode, as QEMU does (KVM keeps the ISR, except the bits
//!   of pending edge requests, and the rotate mode).
//! - The power-up state is QEMU's and KVM's reset (everything 0, ICW4 0):
//!   an INTA before the first initialisation is in MCS-80/85 mode, which
//!   is not modelled ([`Pic::unmodelled`]); nor is an INTA or a poll while
//!   the chip that answers waits for ICW2-ICW4 (Figure 6 ends in "ready
//!   to accept interrupt requests"; QEMU, KVM and v86 all differ there).
//! - An AEOI is applied to the INTA of a poll read too (QEMU), since the
//!   poll "treats the next RD pulse ... as an interrupt acknowledge".
//! - OCW2 and OCW3 written in the middle of the initialisation sequence
//!   act as usual, and a poll command stays pending until the next read
//!   (or ICW1), as QEMU and KVM do.
//! - Line 2 of [`Pic::set_irq`] is the cascade input, driven by the
//!   slave's INT only (on a PC the ISA bus's IRQ2 pin is wired to IRQ9):
//!   setting it is an error.

use std::fmt;

/// The master's command port (ICW1, OCW2, OCW3; IRR/ISR/poll reads).
pub const MASTER_COMMAND: u16 = 0x20;
/// The master's data port (ICW2-ICW4, OCW1; IMR reads).
pub const MASTER_DATA: u16 = 0x21;
/// The slave's command port.
pub const SLAVE_COMMAND: u16 = 0xa0;
/// The slave's data port.
pub const SLAVE_DATA: u16 = 0xa1;
/// ELCR1: edge/level for IRQ0-7 (PIIX/ICH).
pub const ELCR_MASTER: u16 = 0x4d0;
/// ELCR2: edge/level for IRQ8-15 (PIIX/ICH).
pub const ELCR_SLAVE: u16 = 0x4d1;
/// Every port of the pair.
pub const PORTS: [u16; 6] = [
    MASTER_COMMAND,
    MASTER_DATA,
    SLAVE_COMMAND,
    SLAVE_DATA,
    ELCR_MASTER,
    ELCR_SLAVE,
];

/// ELCR1 bits 2:0 are reserved: IRQ0 (timer), IRQ1 (keyboard) and IRQ2
/// (cascade) are edge-triggered (ICH/PIIX ELCR1).
pub const ELCR_MASTER_WRITABLE: u8 = 0xf8;
/// ELCR2 bits 0 (IRQ8, RTC) and 5 (IRQ13, FPU) are reserved (ELCR2).
pub const ELCR_SLAVE_WRITABLE: u8 = 0xde;

/// The master input the slave's INT output drives (the PC's wiring).
pub const CASCADE_LINE: u8 = 2;

/// What becomes of an edge request whose line falls before the INTA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EdgeRequests {
    /// The datasheet's priority cell: the request latch is transparent, so
    /// the request disappears with the line ("Edge and Level Triggered
    /// Modes": a default IR7 occurs if the input goes low before the first
    /// INTA).
    #[default]
    Transparent,
    /// The request is held in IRR until its INTA or ICW1, as QEMU
    /// (`pic_set_irq`), KVM (`pic_set_irq1`) and v86 (`Pic::set_irq`) do:
    /// their devices pulse a line (KVM_IRQ_LINE 1 then 0) and expect the
    /// interrupt. This is their one IRR bit throughout: a level input's
    /// line sets and clears it and its INTA leaves it; an ELCR write
    /// changes nothing until the line next moves; ICW1 keeps the level
    /// inputs' bits (`irr &= elcr`) and forgets the input levels
    /// (`last_irr`, v86's `irq_value`), so that a line still high counts
    /// as a new edge at its next assert; and the slave's INT drives the
    /// master's IR2 only when something evaluates the slave (its lines,
    /// ICW1, OCW1, an OCW2 that changes ISR or priority, a poll or an INTA
    /// it answers), as QEMU's `int_out` does.
    HeldUntilAck,
}

/// How the pair is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PicConfig {
    pub edge_requests: EdgeRequests,
}

/// The rules of the datasheets that decide an outcome; each decision the
/// pair takes is logged with its rule ([`Pic::decisions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PicRule {
    /// ICW1 starts the initialisation: edge sense reset, IMR cleared, IR7
    /// lowest, special mask off, status read IRR, ICW4 functions zeroed
    /// without IC4; ICW2-ICW4 follow on the data port.
    InitSequence,
    /// An edge-triggered input requests on a low-to-high transition and
    /// not again while it stays high.
    EdgeSense,
    /// An edge request that goes away before the INTA leaves nothing.
    RequestFollowsLine,
    /// A level-triggered input (ELCR bit set) requests while it is high,
    /// again after the EOI if it is still high.
    LevelTriggered,
    /// OCW1: a masked level raises no INT; IRR is not affected by IMR.
    MaskRegister,
    /// Fully nested: an IS bit inhibits requests of the same and lower
    /// priority.
    FullyNested,
    /// INTA: the highest-priority request's IS bit set, its IRR bit reset,
    /// the vector T7-T3 of ICW2 with the level in bits 2-0.
    Acknowledge,
    /// No request at the INTA: the vector of IR7, no IS bit set.
    DefaultIr7,
    /// A master level with a slave (ICW3) takes its vector from the slave.
    Cascade,
    /// Non-specific EOI: the highest-priority IS bit is reset.
    NonSpecificEoi,
    /// Specific EOI: the named IS bit is reset.
    SpecificEoi,
    /// AEOI: a non-specific EOI at the end of the INTA sequence.
    AutoEoi,
    /// Rotation: the level serviced (or named) becomes the lowest priority.
    Rotation,
    /// Special mask mode: masked IS bits neither inhibit nor take a
    /// non-specific EOI.
    SpecialMask,
    /// Special fully nested mode: a slave in service still passes its
    /// higher-priority requests.
    SpecialFullyNested,
    /// Poll: the next read is an INTA returning 0x80 | level.
    Poll,
    /// OCW3 selects IRR or ISR for command-port reads; the data port reads
    /// IMR.
    StatusRead,
    /// The ELCR registers and their reserved bits.
    Elcr,
}

impl PicRule {
    pub fn name(self) -> &'static str {
        match self {
            PicRule::InitSequence => "pic-init-sequence",
            PicRule::EdgeSense => "pic-edge-sense",
            PicRule::RequestFollowsLine => "pic-request-follows-line",
            PicRule::LevelTriggered => "pic-level-triggered",
            PicRule::MaskRegister => "pic-mask-register",
            PicRule::FullyNested => "pic-fully-nested",
            PicRule::Acknowledge => "pic-acknowledge",
            PicRule::DefaultIr7 => "pic-default-ir7",
            PicRule::Cascade => "pic-cascade",
            PicRule::NonSpecificEoi => "pic-non-specific-eoi",
            PicRule::SpecificEoi => "pic-specific-eoi",
            PicRule::AutoEoi => "pic-auto-eoi",
            PicRule::Rotation => "pic-rotation",
            PicRule::SpecialMask => "pic-special-mask",
            PicRule::SpecialFullyNested => "pic-special-fully-nested",
            PicRule::Poll => "pic-poll",
            PicRule::StatusRead => "pic-status-read",
            PicRule::Elcr => "pic-elcr",
        }
    }

    pub fn citation(self) -> &'static str {
        match self {
            PicRule::InitSequence => "8259A datasheet, \"Initialization Command Words (ICWs)\", General (items a-f) and Figure 6 (initialization sequence)",
            PicRule::EdgeSense => "8259A datasheet, \"Edge and Level Triggered Modes\": LTIM=0, a request is recognized by a low to high transition; the input can remain high without generating another interrupt",
            PicRule::RequestFollowsLine => "8259A datasheet, \"Edge and Level Triggered Modes\": the IR inputs must remain high until after the falling edge of the first INTA, else a default IR7 occurs (the request latch is transparent, priority cell figure)",
            PicRule::LevelTriggered => "ICH/PIIX ELCR1/ELCR2 (a 1 selects level-triggered) and 8259A datasheet, \"Edge and Level Triggered Modes\" (LTIM=1): the request must be removed before the EOI to prevent a second interrupt",
            PicRule::MaskRegister => "8259A datasheet, \"Interrupt Mask Register (IMR)\" and OCW1; \"Reading the 8259A Status\": the IRR is not affected by IMR",
            PicRule::FullyNested => "8259A datasheet, \"Fully Nested Mode\": while the IS bit is set, all further interrupts of the same or lower priority are inhibited",
            PicRule::Acknowledge => "8259A datasheet, \"Interrupt Sequence\" (8086 steps 4-6) and \"Interrupt Sequence Outputs\": the highest-priority ISR bit is set and its IRR bit reset; the vector is T7-T3 of ICW2 and the level",
            PicRule::DefaultIr7 => "8259A datasheet, \"Interrupt Sequence\": if no interrupt request is present at step 4, the 8259A issues an interrupt level 7; \"Edge and Level Triggered Modes\": a default IR7 sets no ISR bit",
            PicRule::Cascade => "8259A datasheet, \"Cascade Mode\" and ICW3: the master enables the slave named on CAS2-0 to release the vector in the second INTA pulse",
            PicRule::NonSpecificEoi => "8259A datasheet, \"End of Interrupt (EOI)\": a non-specific EOI resets the highest IS bit of those that are set",
            PicRule::SpecificEoi => "8259A datasheet, \"End of Interrupt (EOI)\": a specific EOI (SL=1) resets the IS bit of level L2-L0",
            PicRule::AutoEoi => "8259A datasheet, \"Automatic End of Interrupt (AEOI) Mode\": a non-specific EOI at the trailing edge of the last INTA pulse (master or slave, 1985 and later parts)",
            PicRule::Rotation => "8259A datasheet, \"Automatic Rotation\" (rotate on non-specific EOI, rotate in AEOI) and \"Specific Rotation\" (set priority, rotate on specific EOI)",
            PicRule::SpecialMask => "8259A datasheet, \"Special Mask Mode\" and \"End of Interrupt (EOI)\": an IS bit masked by IMR is not cleared by a non-specific EOI in special mask mode",
            PicRule::SpecialFullyNested => "8259A datasheet, \"The Special Fully Nested Mode\": a slave in service is not locked out from the master's priority logic",
            PicRule::Poll => "8259A datasheet, \"Poll Command\": the next RD is an interrupt acknowledge that sets the IS bit and reads I (bit 7) and W2-W0; interrupts are frozen from WR to RD",
            PicRule::StatusRead => "8259A datasheet, \"Reading the 8259A Status\" and OCW3 (RR, RIS); IMR on A0=1",
            PicRule::Elcr => "ICH/PIIX ELCR1 (4D0h, bits 2:0 reserved) and ELCR2 (4D1h, bits 5 and 0 reserved); ICW1's LTIM is ignored on these chipsets",
        }
    }
}

/// A decision of the pair: the rule and the IRQ (0-15) it concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PicDecision {
    pub rule: PicRule,
    pub irq: u8,
}

/// Bad input to the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicError {
    /// A port that is not one of [`PORTS`].
    NoSuchPort(u16),
    /// An input line above 15.
    NoSuchLine(u8),
    /// Line 2, the master's cascade input, is driven by the slave's INT.
    CascadeLine,
}

impl fmt::Display for PicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PicError::NoSuchPort(p) => write!(
                f,
                "port {p:#x} is not a PIC port (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1)"
            ),
            PicError::NoSuchLine(l) => write!(f, "IRQ line {l} does not exist (0-15)"),
            PicError::CascadeLine => write!(
                f,
                "IRQ line 2 is the master's cascade input, driven by the slave's INT (use 9)"
            ),
        }
    }
}

impl std::error::Error for PicError {}

/// Where a chip is in its initialisation sequence (datasheet Figure 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    /// Initialised: the data port takes OCW1.
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// Which chip: wired by the board (SP/EN), not by software.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Master,
    Slave,
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chip {
    role: Role,
    edge_requests: EdgeRequests,
    /// The IR input levels.
    lines: u8,
    /// The edge-sense latches: set by a rising edge, reset by the INTA of
    /// the level and by ICW1.
    edge_sense: u8,
    /// The levels a rising edge is told from: the lines, except that with
    /// [`EdgeRequests::HeldUntilAck`] ICW1 forgets them.
    edge_memory: u8,
    /// The IRR frozen by a poll command until the read (None: live).
    frozen_irr: Option<u8>,
    imr: u8,
    isr: u8,
    elcr: u8,
    elcr_writable: u8,
    step: InitStep,
    /// ICW1 IC4: an ICW4 follows.
    ic4: bool,
    /// ICW1 SNGL: no ICW3, no cascade.
    single: bool,
    /// ICW2 bits 7:3.
    vector_base: u8,
    /// ICW3: the master's slave inputs, or the slave's ID in bits 2:0.
    icw3: u8,
    /// ICW4 uPM: 8086 mode (else MCS-80/85, not modelled).
    mode_8086: bool,
    auto_eoi: bool,
    special_fully_nested: bool,
    /// OCW3 RIS: command-port reads give ISR (else IRR).
    read_isr: bool,
    special_mask: bool,
    /// OCW3 P: the next read is a poll.
    poll: bool,
    /// The level with the lowest priority (7 after ICW1).
    lowest: u8,
    /// OCW2 rotate in AEOI mode.
    rotate_on_auto_eoi: bool,
}

impl Chip {
    fn new(role: Role, edge_requests: EdgeRequests) -> Chip {
        // Power-up: undefined by the datasheet; QEMU's and KVM's reset
        // (pic_reset_common, kvm_pic_reset): everything 0.
        Chip {
            role,
            edge_requests,
            lines: 0,
            edge_sense: 0,
            edge_memory: 0,
            frozen_irr: None,
            imr: 0,
            isr: 0,
            elcr: 0,
            elcr_writable: match role {
                Role::Master => ELCR_MASTER_WRITABLE,
                Role::Slave => ELCR_SLAVE_WRITABLE,
            },
            step: InitStep::Ready,
            ic4: false,
            single: false,
            vector_base: 0,
            icw3: 0,
            mode_8086: false,
            auto_eoi: false,
            special_fully_nested: false,
            read_isr: false,
            special_mask: false,
            poll: false,
            lowest: 7,
            rotate_on_auto_eoi: false,
        }
    }

    /// The Interrupt Request Register.
    pub fn irr(&self) -> u8 {
        self.frozen_irr.unwrap_or_else(|| self.live_irr())
    }

    fn live_irr(&self) -> u8 {
        match self.edge_requests {
            // The request latch is transparent to the input, gated by the
            // edge sense unless level-triggered ("Edge and Level Triggered
            // Modes", priority cell).
            EdgeRequests::Transparent => self.lines & (self.elcr | self.edge_sense),
            // The VMMs' one IRR bit (module docs).
            EdgeRequests::HeldUntilAck => self.edge_sense,
        }
    }

    /// The In-Service Register.
    pub fn isr(&self) -> u8 {
        self.isr
    }

    /// The Interrupt Mask Register.
    pub fn imr(&self) -> u8 {
        self.imr
    }

    /// The edge/level control register (1: level).
    pub fn elcr(&self) -> u8 {
        self.elcr
    }

    /// The vector base of ICW2 (bits 7:3).
    pub fn vector_base(&self) -> u8 {
        self.vector_base
    }

    /// The level with the lowest priority.
    pub fn lowest_priority(&self) -> u8 {
        self.lowest
    }

    /// Whether a poll command waits for its read (the IRR is frozen).
    pub fn polling(&self) -> bool {
        self.poll
    }

    /// Whether the chip waits for ICW2, ICW3 or ICW4.
    pub fn initialising(&self) -> bool {
        self.step != InitStep::Ready
    }

    /// 0 is the highest priority; IR(lowest+1) has it ("Specific
    /// Rotation": if IR5 is the bottom, IR6 is the highest).
    fn priority(&self, level: u8) -> u8 {
        (level + 7 - self.lowest) & 7
    }

    fn highest(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|p| (self.lowest + 1 + p) & 7)
            .find(|&l| mask & 1 << l != 0)
    }

    /// The IS bits the priority resolver sees: in special mask mode the
    /// masked ones are invisible ("Special Mask Mode"; "End of Interrupt":
    /// a masked IS bit takes no non-specific EOI in that mode).
    fn visible_isr(&self) -> u8 {
        if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        }
    }

    /// Whether input `level` of a master has a slave (ICW3; SNGL has none).
    fn has_slave(&self, level: u8) -> bool {
        self.role == Role::Master && !self.single && self.icw3 & 1 << level != 0
    }

    /// The level the chip would acknowledge now, if any: the
    /// highest-priority unmasked request above every visible IS bit
    /// ("Fully Nested Mode"), where in special fully nested mode a slave
    /// input's own IS bit does not count against it.
    fn request(&self) -> Option<u8> {
        let r = self.highest(self.irr() & !self.imr)?;
        let mut blockers = self.visible_isr();
        if self.special_fully_nested && self.has_slave(r) {
            blockers &= !(1 << r);
        }
        match self.highest(blockers) {
            Some(h) if self.priority(h) <= self.priority(r) => None,
            _ => Some(r),
        }
    }

    /// The INT output ("INT": high whenever a valid request is asserted).
    pub fn int_output(&self) -> bool {
        self.request().is_some()
    }

    fn set_line(&mut self, level: u8, high: bool) {
        let bit = 1 << level;
        let level = self.elcr & bit != 0;
        match self.edge_requests {
            // The edge sense sees every rising edge (LTIM and the ELCR
            // only bypass it).
            EdgeRequests::Transparent => {
                if high && self.edge_memory & bit == 0 {
                    self.edge_sense |= bit;
                }
            }
            // The VMMs' IRR bit: a level input's line sets and clears it,
            // an edge input's rising edge sets it (QEMU's pic_set_irq).
            EdgeRequests::HeldUntilAck => {
                if high && (level || self.edge_memory & bit == 0) {
                    self.edge_sense |= bit;
                } else if !high && level {
                    self.edge_sense &= !bit;
                }
            }
        }
        if high {
            self.lines |= bit;
            self.edge_memory |= bit;
        } else {
            self.lines &= !bit;
            self.edge_memory &= !bit;
        }
    }

    /// The first INTA pulse for `level`: IS bit set, IRR bit reset (the
    /// edge sense; a level input's IRR follows its line).
    fn ack(&mut self, level: u8) {
        self.isr |= 1 << level;
        if self.edge_requests == EdgeRequests::Transparent || self.elcr & 1 << level == 0 {
            self.edge_sense &= !(1 << level);
        }
    }

    /// Resets the highest visible IS bit; returns its level.
    fn non_specific_eoi(&mut self, rotate: bool) -> Option<u8> {
        let h = self.highest(self.visible_isr())?;
        self.isr &= !(1 << h);
        if rotate {
            self.lowest = h;
        }
        Some(h)
    }

    /// The end of an INTA sequence in AEOI mode.
    fn end_of_inta(&mut self) -> Option<u8> {
        if self.auto_eoi {
            self.non_specific_eoi(self.rotate_on_auto_eoi)
        } else {
            None
        }
    }

    fn icw1(&mut self, value: u8) {
        // "Initialization Command Words", General, items a-f.
        // a. edge sense circuit reset (the VMMs: `irr &= elcr`, and the
        // input levels forgotten).
        match self.edge_requests {
            EdgeRequests::Transparent => self.edge_sense = 0,
            EdgeRequests::HeldUntilAck => {
                self.edge_sense &= self.elcr;
                self.edge_memory = 0;
            }
        }
        self.imr = 0; // b. IMR cleared
        self.lowest = 7; // c. IR7 assigned priority 7
        self.special_mask = false; // e. special mask mode cleared...
        self.read_isr = false; // ...and status read set to IRR
        if value & 1 == 0 {
            // f. IC4 = 0: all functions of ICW4 set to zero.
            self.mode_8086 = false;
            self.auto_eoi = false;
            self.special_fully_nested = false;
        }
        // Not in the list; chosen as QEMU (module docs).
        self.isr = 0;
        self.poll = false;
        self.frozen_irr = None;
        self.rotate_on_auto_eoi = false;
        self.ic4 = value & 1 != 0;
        self.single = value & 2 != 0;
        // LTIM (bit 3) is ignored: the ELCR selects the trigger mode.
        self.step = InitStep::Icw2;
    }

    fn data_write(&mut self, value: u8) {
        match self.step {
            InitStep::Ready => self.imr = value, // OCW1
            InitStep::Icw2 => {
                // 8086 mode: T7-T3; T2-T0 are the level.
                self.vector_base = value & 0xf8;
                self.step = match (self.single, self.ic4) {
                    (false, _) => InitStep::Icw3,
                    (true, true) => InitStep::Icw4,
                    (true, false) => InitStep::Ready,
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                self.step = if self.ic4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                // uPM (bit 0), AEOI (bit 1), M/S and BUF (bits 2-3: the
                // board wires master and slave here), SFNM (bit 4).
                self.mode_8086 = value & 1 != 0;
                self.auto_eoi = value & 2 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.step = InitStep::Ready;
            }
        }
    }

    fn status_read(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr()
        }
    }
}

/// The pair, with the slave's INT wired to the master's IR2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pic {
    master: Chip,
    slave: Chip,
    decisions: Vec<PicDecision>,
    unmodelled: Option<&'static str>,
}

/// An acknowledge before the last ICW: the datasheet's initialisation
/// flow (Figure 6) ends in "ready to accept interrupt requests", and what
/// a chip does before that is not specified (QEMU has reset AEOI and the
/// vector base at ICW1, KVM keeps them, v86 turns AEOI on).
const MID_INIT: &str = "an acknowledge before the initialisation sequence is complete (Figure 6)";

/// Bound of the decision log (cleared by [`Pic::clear_decisions`]).
const DECISION_LOG: usize = 256;

impl Pic {
    pub fn new(config: PicConfig) -> Pic {
        Pic {
            master: Chip::new(Role::Master, config.edge_requests),
            slave: Chip::new(Role::Slave, config.edge_requests),
            decisions: Vec::new(),
            unmodelled: None,
        }
    }

    pub fn master(&self) -> &Chip {
        &self.master
    }

    pub fn slave(&self) -> &Chip {
        &self.slave
    }

    /// The decisions taken since the last [`Pic::clear_decisions`].
    pub fn decisions(&self) -> &[PicDecision] {
        &self.decisions
    }

    pub fn clear_decisions(&mut self) {
        self.decisions.clear();
    }

    /// The first thing the pair was asked to do that the model does not
    /// model (MCS-80/85 mode, an INTA that no slave answers), if any: the
    /// outcome given for it means nothing.
    pub fn unmodelled(&self) -> Option<&'static str> {
        self.unmodelled
    }

    fn decide(&mut self, rule: PicRule, irq: u8) {
        if self.decisions.len() < DECISION_LOG {
            self.decisions.push(PicDecision { rule, irq });
        }
    }

    fn not_modelled(&mut self, what: &'static str) {
        self.unmodelled.get_or_insert(what);
    }

    /// The INT output of the master: the processor's INTR, or LINT0 /
    /// IOAPIC pin 0 in ExtINT mode.
    pub fn int_output(&self) -> bool {
        self.master.int_output()
    }

    /// Drives the master's IR2 from the slave's INT ("Cascade Mode"): a
    /// wire, or with the VMMs' latch a signal sent when the slave is
    /// evaluated (`slave_touched`).
    fn cascade_after(&mut self, slave_touched: bool) {
        if slave_touched || self.master.edge_requests == EdgeRequests::Transparent {
            let int = self.slave.int_output();
            self.master.set_line(CASCADE_LINE, int);
        }
    }

    fn chip(&mut self, slave: bool) -> &mut Chip {
        if slave {
            &mut self.slave
        } else {
            &mut self.master
        }
    }

    /// ISA line `line` (0-15 but 2) is driven to `level` (true: high).
    pub fn set_irq(&mut self, line: u8, level: bool) -> Result<(), PicError> {
        match line {
            CASCADE_LINE => return Err(PicError::CascadeLine),
            16.. => return Err(PicError::NoSuchLine(line)),
            _ => {}
        }
        let chip = self.chip(line >= 8);
        let bit = 1 << (line & 7);
        let rising = level && chip.lines & bit == 0;
        let falling = !level && chip.lines & bit != 0;
        let requested = chip.irr() & bit != 0;
        chip.set_line(line & 7, level);
        let level_mode = chip.elcr & bit != 0;
        let now = chip.irr() & bit != 0;
        if rising && now {
            let rule = if level_mode {
                PicRule::LevelTriggered
            } else {
                PicRule::EdgeSense
            };
            self.decide(rule, line);
        } else if falling && requested && !now {
            let rule = if level_mode {
                PicRule::LevelTriggered
            } else {
                PicRule::RequestFollowsLine
            };
            self.decide(rule, line);
        }
        self.cascade_after(line >= 8);
        Ok(())
    }

    /// An I/O write of one byte.
    pub fn port_write(&mut self, port: u16, value: u8) -> Result<(), PicError> {
        // Whether the write evaluates the chip's output: with the VMMs'
        // latch the slave's INT reaches IR2 only then (QEMU calls
        // pic_update_irq after ICW1, OCW1 and the OCW2 commands that
        // change ISR or priority; not after OCW3, ICW2-4 or the ELCR).
        let evaluates = match port {
            MASTER_COMMAND | SLAVE_COMMAND => {
                let base = if port == SLAVE_COMMAND { 8 } else { 0 };
                self.command_write(port == SLAVE_COMMAND, base, value)
            }
            MASTER_DATA | SLAVE_DATA => {
                let chip = self.chip(port == SLAVE_DATA);
                let ocw1 = chip.step == InitStep::Ready;
                chip.data_write(value);
                let rule = if ocw1 {
                    PicRule::MaskRegister
                } else {
                    PicRule::InitSequence
                };
                self.decide(rule, if port == SLAVE_DATA { 8 } else { 0 });
                ocw1
            }
            ELCR_MASTER | ELCR_SLAVE => {
                let chip = self.chip(port == ELCR_SLAVE);
                // Reserved bits stay 0 (ELCR1 bits 2:0, ELCR2 bits 5, 0).
                chip.elcr = value & chip.elcr_writable;
                self.decide(PicRule::Elcr, if port == ELCR_SLAVE { 8 } else { 0 });
                false
            }
            _ => return Err(PicError::NoSuchPort(port)),
        };
        self.cascade_after(evaluates && matches!(port, SLAVE_COMMAND | SLAVE_DATA));
        Ok(())
    }

    /// A command-port write; returns whether it evaluates the output.
    fn command_write(&mut self, slave: bool, base: u8, value: u8) -> bool {
        let chip = self.chip(slave);
        if value & 0x10 != 0 {
            // A0=0, D4=1: ICW1.
            chip.icw1(value);
            self.decide(PicRule::InitSequence, base);
            true
        } else if value & 0x08 != 0 {
            // A0=0, D4=0, D3=1: OCW3.
            if value & 0x04 != 0 {
                // P: "Interrupt is frozen from WR to RD".
                chip.poll = true;
                chip.frozen_irr = Some(chip.live_irr());
            }
            if value & 0x02 != 0 {
                chip.read_isr = value & 1 != 0;
            }
            if value & 0x40 != 0 {
                chip.special_mask = value & 0x20 != 0;
                self.decide(PicRule::SpecialMask, base);
            }
            false
        } else {
            // A0=0, D4=0, D3=0: OCW2 (R, SL, EOI, L2-L0).
            let level = value & 7;
            match value >> 5 {
                0b001 => {
                    if let Some(l) = chip.non_specific_eoi(false) {
                        self.decide(PicRule::NonSpecificEoi, base + l);
                    }
                }
                0b101 => {
                    if let Some(l) = chip.non_specific_eoi(true) {
                        self.decide(PicRule::Rotation, base + l);
                    }
                }
                0b011 => {
                    chip.isr &= !(1 << level);
                    self.decide(PicRule::SpecificEoi, base + level);
                }
                0b111 => {
                    chip.isr &= !(1 << level);
                    chip.lowest = level;
                    self.decide(PicRule::Rotation, base + level);
                }
                0b110 => {
                    chip.lowest = level;
                    self.decide(PicRule::Rotation, base + level);
                }
                0b100 => {
                    chip.rotate_on_auto_eoi = true;
                    self.decide(PicRule::Rotation, base);
                }
                0b000 => chip.rotate_on_auto_eoi = false,
                _ => {} // 010: no operation
            }
            !matches!(value >> 5, 0b000 | 0b010 | 0b100)
        }
    }

    /// An I/O read of one byte. Reads of the command ports can change
    /// state (a poll); reads of other ports are errors.
    pub fn port_read(&mut self, port: u16) -> Result<u8, PicError> {
        let value = match port {
            MASTER_COMMAND | MASTER_DATA | SLAVE_COMMAND | SLAVE_DATA => {
                let slave = port >= SLAVE_COMMAND;
                if self.chip(slave).poll {
                    let value = self.poll_read(slave);
                    // A poll is an acknowledge: it evaluates the output.
                    self.cascade_after(slave);
                    value
                } else if port & 1 == 0 {
                    self.chip(slave).status_read()
                } else {
                    self.chip(slave).imr
                }
            }
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => return Err(PicError::NoSuchPort(port)),
        };
        self.cascade_after(false);
        Ok(value)
    }

    /// The read that follows a poll command: an interrupt acknowledge
    /// without a vector, from either port of the chip ("Poll Command").
    fn poll_read(&mut self, slave: bool) -> u8 {
        let base = if slave { 8 } else { 0 };
        if self.chip(slave).initialising() {
            self.not_modelled(MID_INIT);
        }
        let chip = self.chip(slave);
        chip.poll = false;
        let request = chip.request();
        chip.frozen_irr = None;
        let Some(level) = request else {
            self.decide(PicRule::Poll, base + 7);
            return 0;
        };
        chip.ack(level);
        let aeoi = chip.end_of_inta();
        self.decide(PicRule::Poll, base + level);
        if let Some(l) = aeoi {
            self.decide(PicRule::AutoEoi, base + l);
        }
        0x80 | level
    }

    /// The INTA sequence (two pulses, 8086 mode): the vector the pair puts
    /// on the bus. With no request, the default IR7 of the chip that was
    /// asked. This is the ExtINT path: LINT0 or IOAPIC pin 0 in ExtINT
    /// mode makes the processor run it (SDM vol. 3A §11.5.1).
    pub fn acknowledge(&mut self) -> u8 {
        if !self.master.mode_8086 {
            self.not_modelled("an INTA in MCS-80/85 mode (ICW4 bit 0 clear, or no initialisation)");
        }
        if self.master.initialising() {
            self.not_modelled(MID_INIT);
        }
        let mut slave_asked = false;
        // First INTA pulse: requests frozen and resolved, IS bit set.
        let vector = match self.master.request() {
            None => {
                // "Interrupt Sequence": no request at step 4.
                self.decide(PicRule::DefaultIr7, 7);
                self.master.vector_base | 7
            }
            Some(level) => {
                self.master.ack(level);
                if !self.master.has_slave(level) {
                    self.decide(PicRule::Acknowledge, level);
                    self.master.vector_base | level
                } else if level != CASCADE_LINE || self.slave.single || self.slave.icw3 & 7 != 2 {
                    // The master hands the second pulse to a slave that is
                    // not there (or not listening for ID 2): the bus floats.
                    self.not_modelled("an INTA handed to a slave that does not answer (ICW3)");
                    0xff
                } else {
                    slave_asked = true;
                    if !self.slave.mode_8086 {
                        self.not_modelled("an INTA of the slave in MCS-80/85 mode");
                    }
                    if self.slave.initialising() {
                        self.not_modelled(MID_INIT);
                    }
                    match self.slave.request() {
                        Some(s) => {
                            self.slave.ack(s);
                            self.decide(PicRule::Cascade, 8 + s);
                            self.slave.vector_base | s
                        }
                        None => {
                            // The slave's default IR7: IRQ15, master IS2 set.
                            self.decide(PicRule::DefaultIr7, 15);
                            self.slave.vector_base | 7
                        }
                    }
                }
            }
        };
        // Between the pulses the slave's INT reflects its new IS bit.
        self.cascade_after(slave_asked);
        // Trailing edge of the second pulse: AEOI.
        if let Some(l) = self.master.end_of_inta() {
            self.decide(PicRule::AutoEoi, l);
        }
        if slave_asked {
            if let Some(l) = self.slave.end_of_inta() {
                self.decide(PicRule::AutoEoi, 8 + l);
            }
        }
        self.cascade_after(slave_asked);
        vector
    }
}

impl Default for Pic {
    fn default() -> Self {
        Pic::new(PicConfig::default())
    }
}
