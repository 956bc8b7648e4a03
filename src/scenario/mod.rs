//! The scenario: one typed program of interrupt operations.
//!
//! Following syzkaller's split, this module holds only the types; parsing
//! (`parse`), printing (`print`) and generation from fuzzer bytes
//! (`generate`) are separate pieces. The text form is specified in
//! `docs/scenario-format.md`.

pub mod generate;
pub mod parse;
pub mod print;

use std::collections::BTreeMap;
use std::fmt;

pub use parse::{parse, ParseError};

/// Number of IOAPIC redirection entries (82093AA §3.2.2: maximum redirection
/// entry 0x17, i.e. 24 pins).
pub const PINS: u8 = 24;

/// An IOAPIC input pin, always below [`PINS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pin(u8);

impl Pin {
    pub fn new(pin: u8) -> Option<Pin> {
        (pin < PINS).then_some(Pin(pin))
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'a> arbitrary::Arbitrary<'a> for Pin {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Pin(u.int_in_range(0..=PINS - 1)?))
    }
    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(1))
    }
}

/// `config ioapic=`: the IOAPIC's version register value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum IoapicVersion {
    /// ICH-family IOAPIC with the EOI register at offset 0x40.
    #[default]
    V20,
    /// The original 82093AA.
    V11,
}

/// `config apic=`: the local APIC's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum ApicMode {
    #[default]
    Xapic,
    X2apic,
}

/// `config irqchip=`: where the IOAPIC lives on backends that can do both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum Irqchip {
    #[default]
    Full,
    Split,
}

/// The most CPUs a scenario may have (`config cpus=N`).
pub const MAX_CPUS: usize = 8;

/// `config ap-start=`: how the application processors (CPUs 1 and up)
/// start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum ApStart {
    /// The host starts them: at the first op every CPU is in the start
    /// state, idle in the stub.
    #[default]
    Host,
    /// They wait for a startup IPI (SDM vol. 3A §9.4, the state after
    /// RESET): the program brings them up with `ipi init` / `ipi startup`.
    Sipi,
}

/// The `config` statement. `Default` is the start machine of
/// docs/scenario-format.md: one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub ioapic: IoapicVersion,
    pub apic: ApicMode,
    pub irqchip: Irqchip,
    /// EOI-broadcast suppression advertised in the LAPIC version register.
    pub directed_eoi: bool,
    /// Extension: `cpus=N`, 1 to [`MAX_CPUS`].
    pub cpus: u8,
    /// Extension: `apic-ids=A,B,...`: the local APIC ID of each CPU (the
    /// CPU index by default); only the first `cpus` entries mean anything,
    /// the others are their index.
    pub apic_ids: [u8; MAX_CPUS],
    /// Extension: `ap-start=host|sipi`.
    pub ap_start: ApStart,
}

/// The default APIC IDs: each CPU's index.
pub const INDEX_APIC_IDS: [u8; MAX_CPUS] = [0, 1, 2, 3, 4, 5, 6, 7];

impl Default for Config {
    fn default() -> Config {
        Config {
            ioapic: IoapicVersion::default(),
            apic: ApicMode::default(),
            irqchip: Irqchip::default(),
            directed_eoi: false,
            cpus: 1,
            apic_ids: INDEX_APIC_IDS,
            ap_start: ApStart::default(),
        }
    }
}

impl<'a> arbitrary::Arbitrary<'a> for Config {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut c = Config {
            ioapic: u.arbitrary()?,
            apic: u.arbitrary()?,
            irqchip: u.arbitrary()?,
            directed_eoi: u.arbitrary()?,
            ..Config::default()
        };
        // Mostly one CPU: the single-CPU corpus stays the bulk of it.
        if u.ratio(1, 4)? {
            c.cpus = u.int_in_range(2..=4)?;
            if u.ratio(1, 4)? {
                // Another cluster, or a spread over two (cluster matching
                // and the x2APIC LDR derivation).
                let base: u8 = *u.choose(&[0x10u8, 0x0e, 0x20])?;
                for (i, id) in c.apic_ids[..c.cpus as usize].iter_mut().enumerate() {
                    *id = base + i as u8;
                }
            }
        }
        Ok(c)
    }
}

impl Config {
    /// The APIC ID of CPU `cpu`.
    pub fn apic_id(&self, cpu: usize) -> u8 {
        self.apic_ids[cpu]
    }

    /// Whether the APIC IDs are the CPU indexes (for the first `cpus`).
    pub fn default_apic_ids(&self) -> bool {
        self.apic_ids[..self.cpus as usize] == INDEX_APIC_IDS[..self.cpus as usize]
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum Trigger {
    #[default]
    Edge,
    Level,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum Polarity {
    #[default]
    High,
    Low,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum DestMode {
    #[default]
    Physical,
    Logical,
}

/// Delivery mode of a redirection entry (82093AA §3.2.4 bits 10:8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum DeliveryMode {
    #[default]
    Fixed,
    Lowest,
    Smi,
    Nmi,
    Init,
    ExtInt,
}

/// Delivery mode of an `msi` op (the subset the format allows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum MsiDelivery {
    #[default]
    Fixed,
    Lowest,
    Nmi,
}

/// `route ... order=`: which dword of the entry `route` writes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum RouteOrder {
    /// The high dword (destination), then the low dword: the default, so
    /// that scenarios written before the option keep their traces.
    #[default]
    HighFirst,
    /// The low dword, then the high dword: what kvm-unit-tests'
    /// `ioapic_write_redir` does.
    LowFirst,
}

/// A whole redirection entry, as written by `route`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Route {
    pub vector: u8,
    pub trigger: Trigger,
    pub polarity: Polarity,
    pub dest_mode: DestMode,
    pub dest: u8,
    pub masked: bool,
    pub delivery: DeliveryMode,
    pub order: RouteOrder,
}

impl Route {
    /// The redirection entry's low dword (82093AA §3.2.4): vector 7:0,
    /// delivery mode 10:8, destination mode 11, polarity 13, trigger 15,
    /// mask 16.
    pub fn low_dword(&self) -> u32 {
        let delivery: u32 = match self.delivery {
            DeliveryMode::Fixed => 0,
            DeliveryMode::Lowest => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::ExtInt => 7,
        };
        self.vector as u32
            | delivery << 8
            | u32::from(self.dest_mode == DestMode::Logical) << 11
            | u32::from(self.polarity == Polarity::Low) << 13
            | u32::from(self.trigger == Trigger::Level) << 15
            | u32::from(self.masked) << 16
    }

    /// The high dword: the destination in bits 63:56.
    pub fn high_dword(&self) -> u32 {
        (self.dest as u32) << 24
    }

    /// The two IOAPIC register writes of `route` on `pin`, as (index,
    /// value) in the order the route asks for (82093AA §3.2.4: the entry of
    /// pin P is registers 0x10 + 2P, low, and 0x11 + 2P, high).
    pub fn dword_writes(&self, pin: Pin) -> [(u8, u32); 2] {
        let low = (0x10 + 2 * pin.get(), self.low_dword());
        let high = (0x11 + 2 * pin.get(), self.high_dword());
        match self.order {
            RouteOrder::HighFirst => [high, low],
            RouteOrder::LowFirst => [low, high],
        }
    }
}

/// One MSI, as injected by `msi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Msi {
    pub vector: u8,
    pub dest: u8,
    pub dest_mode: DestMode,
    pub trigger: Trigger,
    pub delivery: MsiDelivery,
}

impl Msi {
    /// The interrupt message this MSI carries (SDM §11.11).
    pub fn message(&self) -> irqdiff_model::InterruptMessage {
        use irqdiff_model::ioapic::DeliveryMode as Mode;
        irqdiff_model::InterruptMessage {
            vector: self.vector,
            delivery: match self.delivery {
                MsiDelivery::Fixed => Mode::Fixed,
                MsiDelivery::Lowest => Mode::Lowest,
                MsiDelivery::Nmi => Mode::Nmi,
            },
            logical: self.dest_mode == DestMode::Logical,
            dest: self.dest as u32,
            level: self.trigger == Trigger::Level,
            rule: irqdiff_model::Rule::MsiDelivers,
        }
    }

    /// The MSI address and data words (SDM §11.11.1, §11.11.2).
    pub fn address_data(&self) -> (u64, u32) {
        let m = self.message();
        (
            irqdiff_model::msi::address(self.dest, m.logical),
            irqdiff_model::msi::data(m.vector, m.delivery, m.level),
        )
    }
}

/// `ipi ...` delivery mode: ICR bits 10:8 (SDM §11.6.1), with bits 15:14
/// for the two INIT forms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum IpiDelivery {
    #[default]
    Fixed,
    Lowest,
    Nmi,
    /// INIT, assert (bit 14 set, trigger edge: as kvm-unit-tests'
    /// `smp_init` sends it).
    Init,
    /// INIT level de-assert (bits 15:14 = 10).
    InitDeassert,
    /// STARTUP (SIPI): starts a CPU in the wait-for-SIPI state at the
    /// stub's AP entry; its vector is [`SIPI_VECTOR`].
    Startup,
}

/// The vector of a STARTUP IPI: the 4 KiB page of the stub's AP entry
/// (0x8000). A scenario does not choose it.
pub const SIPI_VECTOR: u8 = 0x08;

/// `ipi ...` destination shorthand: ICR bits 19:18 (SDM §11.6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum Shorthand {
    /// No shorthand: the destination field names the targets.
    #[default]
    None,
    /// `self`.
    SelfOnly,
    /// `all`: all including self.
    All,
    /// `all-but-self`: all excluding self.
    AllButSelf,
}

/// One IPI, as sent by `ipi`: an ICR write (xAPIC: ICR high, then ICR low;
/// x2APIC: one WRMSR of MSR 0x830). Only a fixed or lowest-priority IPI has
/// a vector and a trigger (the parser leaves the others 0 and edge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipi {
    pub vector: u8,
    /// The destination: 8 bits in xAPIC mode (ICR bits 63:56), 32 in
    /// x2APIC mode (bits 63:32).
    pub dest: u32,
    pub dest_mode: DestMode,
    pub delivery: IpiDelivery,
    pub shorthand: Shorthand,
    /// Level (bit 15) for a fixed IPI: the TMR effect is left open (the
    /// model accepts IPIs as edge, model/src/lib.rs).
    pub trigger: Trigger,
}

impl<'a> arbitrary::Arbitrary<'a> for Ipi {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ipi = Ipi {
            vector: u.arbitrary()?,
            // A destination valid in both modes: an ID, a logical bitmap,
            // or the broadcast 0xff.
            dest: if u.ratio(1, 8)? {
                0xff
            } else {
                u.int_in_range(0..=0x0fu32)?
            },
            dest_mode: u.arbitrary()?,
            delivery: u.arbitrary()?,
            shorthand: u.arbitrary()?,
            trigger: u.arbitrary()?,
        };
        if !matches!(ipi.delivery, IpiDelivery::Fixed | IpiDelivery::Lowest) {
            ipi.vector = 0;
            ipi.trigger = Trigger::Edge;
        }
        Ok(ipi)
    }
}

impl Ipi {
    /// The ICR's low dword (SDM §11.6.1): vector 7:0, delivery mode 10:8,
    /// destination mode 11, level 14, trigger mode 15, shorthand 19:18.
    pub fn icr_low(&self) -> u32 {
        let (mode, vector, level_bits): (u32, u8, u32) = match self.delivery {
            IpiDelivery::Fixed => (0, self.vector, 1 << 14),
            IpiDelivery::Lowest => (1, self.vector, 1 << 14),
            IpiDelivery::Nmi => (4, 0, 1 << 14),
            IpiDelivery::Init => (5, 0, 1 << 14),
            IpiDelivery::InitDeassert => (5, 0, 1 << 15),
            IpiDelivery::Startup => (6, SIPI_VECTOR, 1 << 14),
        };
        let trigger = match (self.delivery, self.trigger) {
            (IpiDelivery::Fixed | IpiDelivery::Lowest, Trigger::Level) => 1 << 15,
            _ => 0,
        };
        let shorthand: u32 = match self.shorthand {
            Shorthand::None => 0,
            Shorthand::SelfOnly => 1,
            Shorthand::All => 2,
            Shorthand::AllButSelf => 3,
        };
        vector as u32
            | mode << 8
            | u32::from(self.dest_mode == DestMode::Logical) << 11
            | level_bits
            | trigger
            | shorthand << 18
    }

    /// Whether the IPI names its targets through a destination the other
    /// side chooses among (lowest priority, SDM §11.6.2.4).
    pub fn lowest(&self) -> bool {
        self.delivery == IpiDelivery::Lowest
    }
}

/// An op the VMM performs while the guest waits at that point of its
/// program: each backend's perform is a total `match` on it, so adding one
/// is a compile error in every backend until it is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum HostOp {
    Assert(Pin),
    Deassert(Pin),
    Pulse(Pin),
    Msi(Msi),
    // ---- PIC (issue 15): ISA lines through the 8259 pair. Not drawn by
    // `Arbitrary` (committed seeds decode as before); the generator adds
    // them (`generate.rs`).
    /// Extension: `isa-assert N`: ISA line N high, to PIC IR N and IOAPIC
    /// pin N ([`IsaLine`]).
    #[arbitrary(skip)]
    IsaAssert(IsaLine),
    /// Extension: `isa-deassert N`: ISA line N low.
    #[arbitrary(skip)]
    IsaDeassert(IsaLine),
    /// Extension: `isa-pulse N`: `isa-assert N` then `isa-deassert N`.
    #[arbitrary(skip)]
    IsaPulse(IsaLine),
}

impl HostOp {
    /// The IOAPIC pin the op drives (`None` for an MSI).
    pub fn pin(&self) -> Option<Pin> {
        match *self {
            HostOp::Assert(p) | HostOp::Deassert(p) | HostOp::Pulse(p) => Some(p),
            HostOp::Msi(_) => None,
            HostOp::IsaAssert(l) | HostOp::IsaDeassert(l) | HostOp::IsaPulse(l) => {
                Some(l.ioapic_pin())
            }
        }
    }

    /// The op's keyword in the text format.
    pub fn keyword(&self) -> &'static str {
        match self {
            HostOp::Assert(_) => "assert",
            HostOp::Deassert(_) => "deassert",
            HostOp::Pulse(_) => "pulse",
            HostOp::Msi(_) => "msi",
            HostOp::IsaAssert(_) => "isa-assert",
            HostOp::IsaDeassert(_) => "isa-deassert",
            HostOp::IsaPulse(_) => "isa-pulse",
        }
    }

    /// The ISA line the op drives through the PIC, if it is an `isa-` op.
    pub fn isa_line(&self) -> Option<IsaLine> {
        match *self {
            HostOp::IsaAssert(l) | HostOp::IsaDeassert(l) | HostOp::IsaPulse(l) => Some(l),
            _ => None,
        }
    }
}

/// One operation. Guest ops are executed by the guest stub, host ops by the
/// VMM while the guest waits at that point of its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum Op {
    Route {
        pin: Pin,
        route: Route,
    },
    Mask(Pin),
    Unmask(Pin),
    /// An op the VMM performs (the guest only signals it).
    Host(HostOp),
    Eoi,
    IoapicEoi(u8),
    SelfIpi(u8),
    Tpr(u8),
    /// Extension: `cr8 V` (V 0-15): MOV to CR8, which sets TPR = V << 4
    /// (SDM vol. 3A §10.8.6.1 in 64-bit mode, §11.8.6).
    Cr8(#[arbitrary(with = cr8_value)] u8),
    Svr(u32),
    Cli,
    Sti,
    Nop,
    Hlt,
    StiHlt,
    Snapshot,
    /// Extension: `ioapic-read INDEX` (IOREGSEL = INDEX, read IOWIN); the
    /// value read is recorded as a `read` event.
    IoapicRead(u8),
    /// Extension: `ioapic-write INDEX VALUE` (IOREGSEL = INDEX, write IOWIN).
    IoapicWrite {
        index: u8,
        value: u32,
    },
    /// Extension: `lapic-read OFFSET`: read a local APIC register by its
    /// xAPIC MMIO offset (the MSR 0x800 + OFFSET/16 in x2APIC mode); the
    /// value read is recorded as a `read` event.
    LapicRead(#[arbitrary(with = lapic_offset)] u16),
    /// Extension: `lapic-write OFFSET VALUE`.
    LapicWrite {
        #[arbitrary(with = lapic_offset)]
        offset: u16,
        value: u32,
    },
    /// Extension: `lapic-mmio-read OFFSET`: a load from the APIC page at
    /// OFFSET whatever the mode: `lapic-read` in xAPIC mode; in x2APIC mode
    /// the MMIO interface is disabled (SDM §11.12.1.2), and the value is
    /// recorded as a `read` in space `lapic-mmio`.
    LapicMmioRead(#[arbitrary(with = lapic_offset)] u16),
    /// Extension: `lapic-mmio-write OFFSET VALUE`: the store, likewise.
    LapicMmioWrite {
        #[arbitrary(with = lapic_offset)]
        offset: u16,
        value: u32,
    },
    /// Extension: `apic-base VALUE`: the guest writes IA32_APIC_BASE (MSR
    /// 0x1B; VALUE is its low 32 bits: base 31:12, EN 11, EXTD 10) and then
    /// reaches the local APIC at the new base.
    ApicBase(#[arbitrary(with = apic_base_value)] u32),
    /// Extension: `ipi ...`: an IPI by the ICR, to any CPU. Not drawn by
    /// `Arbitrary` (so the generator's single-CPU programs, and the
    /// programs of committed seeds, are what they were); the generator
    /// adds it for multi-CPU programs.
    #[arbitrary(skip)]
    Ipi(Ipi),
    // ---- The LAPIC timer (issue 15). Not drawn by `Arbitrary` (the
    // programs of committed seeds stay what they were); the generator adds
    // them (`generate::timer_ops`).
    /// Extension: `timer MODE vector=V [masked] [divide=D] [count=C]`:
    /// programs the LAPIC timer (divide configuration, LVT timer, then the
    /// initial count, which starts a one-shot or periodic count).
    #[arbitrary(skip)]
    Timer(TimerSetup),
    /// Extension: `tsc-deadline 0|now|+N`: WRMSR IA32_TSC_DEADLINE.
    #[arbitrary(skip)]
    TscDeadline(Deadline),
    /// Extension: `tsc-deadline-read`: RDMSR IA32_TSC_DEADLINE, recorded
    /// as zero or non-zero.
    #[arbitrary(skip)]
    TscDeadlineRead,
    /// Extension: `timer-wait max=N`: wait until an interrupt is taken or
    /// N µs pass; the one place (with a `hlt` nothing else wakes) where the
    /// model lets the timer expire.
    #[arbitrary(skip)]
    TimerWait(u32),
    // ---- PIC (issue 15). Not drawn by `Arbitrary`; the generator adds them.
    /// Extension: `pic-write PORT VALUE`: `out` of the byte VALUE to an 8259
    /// or ELCR port ([`PicPort`]).
    #[arbitrary(skip)]
    PicWrite {
        port: PicPort,
        value: u8,
    },
    /// Extension: `pic-read PORT`: `in` of a byte from an 8259 or ELCR port;
    /// records a `read` event in space `pic`.
    #[arbitrary(skip)]
    PicRead(PicPort),
}

/// An I/O port of the PC's 8259A pair or its edge/level control registers
/// (docs/pic.md): 0x20/0x21 master, 0xa0/0xa1 slave, 0x4d0/0x4d1 ELCR1/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PicPort(u16);

impl PicPort {
    /// Every port, in the order the canonical form names them.
    pub const ALL: [u16; 6] = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
    pub const MASTER_COMMAND: PicPort = PicPort(0x20);
    pub const MASTER_DATA: PicPort = PicPort(0x21);
    pub const SLAVE_COMMAND: PicPort = PicPort(0xa0);
    pub const SLAVE_DATA: PicPort = PicPort(0xa1);
    pub const ELCR1: PicPort = PicPort(0x4d0);
    pub const ELCR2: PicPort = PicPort(0x4d1);

    pub fn new(port: u16) -> Option<PicPort> {
        PicPort::ALL.contains(&port).then_some(PicPort(port))
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for PicPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An ISA interrupt line, 0-15 but 2: line N reaches PIC IR N (the master's
/// for 0-7, the slave's IR N-8 for 8-15) and IOAPIC pin N, as KVM's default
/// GSI routing wires `KVM_IRQ_LINE` (docs/scenario-format.md). Line 2 is
/// the cascade (the master's IR2 is the slave's INT; a PC wires the bus's
/// IRQ2 pin to IRQ9), so it is no line of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsaLine(u8);

impl IsaLine {
    pub fn new(line: u8) -> Option<IsaLine> {
        (line < 16 && line != 2).then_some(IsaLine(line))
    }
    pub fn get(self) -> u8 {
        self.0
    }
    /// The IOAPIC pin the line also reaches (the same number).
    pub fn ioapic_pin(self) -> Pin {
        Pin(self.0)
    }
}

impl fmt::Display for IsaLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `timer` modes: the LVT timer's bits 18:17 (SDM Figure 11-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimerOpMode {
    #[default]
    OneShot,
    Periodic,
    TscDeadline,
}

/// What `timer ...` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TimerSetup {
    pub mode: TimerOpMode,
    pub vector: u8,
    pub masked: bool,
    /// The divisor: 1, 2, 4, ... 128 (SDM Figure 11-10).
    pub divide: u8,
    /// The initial count (one-shot and periodic only; 0 stops the timer).
    pub count: u32,
}

impl TimerSetup {
    /// The LVT timer value: vector, mask (bit 16), mode (bits 18:17).
    pub fn lvt(&self) -> u32 {
        let mode: u32 = match self.mode {
            TimerOpMode::OneShot => 0,
            TimerOpMode::Periodic => 1,
            TimerOpMode::TscDeadline => 2,
        };
        self.vector as u32 | u32::from(self.masked) << 16 | mode << 17
    }

    /// The divide configuration register value of the divisor.
    pub fn divide_register(&self) -> u32 {
        irqdiff_model::lapic_timer::divide_register(self.divide as u32)
            .expect("the parser keeps the divisor a power of two up to 128")
    }
}

/// `tsc-deadline` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// `0`: disarm.
    Disarm,
    /// `now`: the TSC just read, so the deadline has passed by the write.
    Now,
    /// `+N`: N TSC cycles after the TSC just read.
    After(u32),
}

/// The most a `timer-wait` waits, in µs (1 s).
pub const TIMER_WAIT_MAX_US: u32 = 1_000_000;

/// How long a `hlt` (or `sti-hlt`) that nothing else wakes waits for the
/// LAPIC timer, in µs: a timer whose period fits expires there and wakes
/// it; otherwise the `hlt` hangs (docs/scenario-format.md "The LAPIC
/// timer"). Every backend's hang detection waits at least this long for a
/// scenario with timer ops.
pub const HLT_TIMER_BOUND_US: u32 = 10_000;

/// IA32_APIC_BASE values a generator tries: the usual base or a moved one,
/// with each combination of EN and EXTD.
fn apic_base_value(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<u32> {
    let base: u32 = *u.choose(&[0xfee0_0000u32, 0xfed0_0000])?;
    Ok(base | u.int_in_range(0..=3u32)? << 10)
}

/// The highest `lapic-read`/`lapic-write` offset: the last dword of the
/// 4 KiB APIC page (in x2APIC mode MSR 0x8FF).
pub const LAPIC_OFFSET_MAX: u16 = 0xffc;

/// A local APIC offset the generator tries: mostly a register of SDM
/// Table 11-1 (16-byte aligned, below 0x400), sometimes any dword of the
/// 4 KiB page (reserved offsets, the unused dwords of a register's 16-byte
/// slot, and in x2APIC mode the whole MSR range 0x800-0x8FF).
fn lapic_offset(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<u16> {
    if u.ratio(1, 4)? {
        Ok(u.int_in_range(0..=LAPIC_OFFSET_MAX / 4)? * 4)
    } else {
        Ok(u.int_in_range(0..=0x3fu16)? << 4)
    }
}

/// A `cr8` value: CR8 holds 4 bits (SDM §10.8.6.1; bits 63:4 are reserved).
pub const CR8_MAX: u8 = 15;

fn cr8_value(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<u8> {
    u.int_in_range(0..=CR8_MAX)
}

impl Op {
    /// An op of the TSC-deadline timer (`timer tsc-deadline`,
    /// `tsc-deadline`, `tsc-deadline-read`).
    pub fn uses_tsc_deadline(&self) -> bool {
        matches!(
            self,
            Op::TscDeadline(_)
                | Op::TscDeadlineRead
                | Op::Timer(TimerSetup {
                    mode: TimerOpMode::TscDeadline,
                    ..
                })
        )
    }

    /// A LAPIC timer op (`timer`, `tsc-deadline`, `tsc-deadline-read`,
    /// `timer-wait`).
    pub fn is_timer_op(&self) -> bool {
        matches!(
            self,
            Op::Timer(_) | Op::TscDeadline(_) | Op::TscDeadlineRead | Op::TimerWait(_)
        )
    }

    /// The op's keyword in the text format; used in signatures and reports.
    pub fn keyword(&self) -> &'static str {
        match self {
            Op::Route { .. } => "route",
            Op::Mask(_) => "mask",
            Op::Unmask(_) => "unmask",
            Op::Host(h) => h.keyword(),
            Op::Eoi => "eoi",
            Op::IoapicEoi(_) => "ioapic-eoi",
            Op::SelfIpi(_) => "self-ipi",
            Op::Tpr(_) => "tpr",
            Op::Cr8(_) => "cr8",
            Op::Svr(_) => "svr",
            Op::Cli => "cli",
            Op::Sti => "sti",
            Op::Nop => "nop",
            Op::Hlt => "hlt",
            Op::StiHlt => "sti-hlt",
            Op::Snapshot => "snapshot",
            Op::IoapicRead(_) => "ioapic-read",
            Op::IoapicWrite { .. } => "ioapic-write",
            Op::LapicRead(_) => "lapic-read",
            Op::LapicWrite { .. } => "lapic-write",
            Op::LapicMmioRead(_) => "lapic-mmio-read",
            Op::LapicMmioWrite { .. } => "lapic-mmio-write",
            Op::ApicBase(_) => "apic-base",
            Op::Ipi(_) => "ipi",
            Op::Timer(_) => "timer",
            Op::TscDeadline(_) => "tsc-deadline",
            Op::TscDeadlineRead => "tsc-deadline-read",
            Op::TimerWait(_) => "timer-wait",
            Op::PicWrite { .. } => "pic-write",
            Op::PicRead(_) => "pic-read",
        }
    }

    /// Whether the op reaches the 8259 pair: a port access or an ISA line.
    pub fn uses_pic(&self) -> bool {
        match self {
            Op::PicWrite { .. } | Op::PicRead(_) => true,
            Op::Host(h) => h.isa_line().is_some(),
            _ => false,
        }
    }
}

/// Which handler body a `handler` statement defines: `V` (every delivery)
/// or `V#N` (the N-th delivery of V on its CPU, N from 1), each optionally
/// for one CPU only (`V@K`, `V#N@K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerKey {
    pub vector: u8,
    /// Extension: the CPU whose deliveries the body is for (`@K`); `None`
    /// is every CPU.
    pub cpu: Option<u8>,
    pub nth: Option<u32>,
}

impl HandlerKey {
    /// The body for every delivery of `vector` on every CPU.
    pub fn plain(vector: u8) -> HandlerKey {
        HandlerKey {
            vector,
            cpu: None,
            nth: None,
        }
    }

    /// The body for the `nth` delivery of `vector` (on every CPU).
    pub fn nth(vector: u8, nth: u32) -> HandlerKey {
        HandlerKey {
            vector,
            cpu: None,
            nth: Some(nth),
        }
    }
}

impl<'a> arbitrary::Arbitrary<'a> for HandlerKey {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let vector = u.arbitrary()?;
        let nth = if u.arbitrary()? {
            Some(u.int_in_range(1..=8)?)
        } else {
            None
        };
        Ok(HandlerKey {
            vector,
            cpu: None,
            nth,
        })
    }
}

/// A whole scenario: config, handler bodies and the program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Scenario {
    pub config: Config,
    pub handlers: BTreeMap<HandlerKey, Vec<Op>>,
    pub ops: Vec<Op>,
    /// Extension: the CPU that runs each op (`cpu K: OP`), by op index.
    /// Empty when every op runs on CPU 0 (the canonical form of a
    /// single-CPU program); otherwise as long as `ops`. An op past its end
    /// runs on CPU 0 ([`Scenario::cpu_of`]).
    #[arbitrary(default)]
    pub op_cpus: Vec<u8>,
}

/// The body a vector with no `handler` line gets.
pub const DEFAULT_HANDLER: &[Op] = &[Op::Eoi];

impl Scenario {
    /// Whether the trace depends on the IOAPIC's version: an op uses the
    /// EOI register (version 0x20 only) or reads the version register
    /// (82093AA 3.2.2, which also holds the pin count).
    pub fn depends_on_ioapic_version(&self) -> bool {
        self.all_ops()
            .any(|op| matches!(op, Op::IoapicEoi(_) | Op::IoapicRead(1)))
    }

    /// Whether an op drives the LAPIC timer through the timer ops (`timer`,
    /// `tsc-deadline`, `tsc-deadline-read`, `timer-wait`).
    pub fn uses_timer_ops(&self) -> bool {
        self.all_ops().any(Op::is_timer_op)
    }

    /// Drops every op (of the program and the handler bodies) `keep`
    /// refuses, keeping `op_cpus` in step: what a backend's `fit` does
    /// with ops it cannot run.
    pub fn retain_ops(&mut self, keep: impl Fn(&Op) -> bool) {
        if !self.op_cpus.is_empty() {
            let cpus = std::mem::take(&mut self.op_cpus);
            let (ops, cpus): (Vec<Op>, Vec<u8>) = std::mem::take(&mut self.ops)
                .into_iter()
                .zip(cpus.into_iter().chain(std::iter::repeat(0)))
                .filter(|(op, _)| keep(op))
                .unzip();
            self.ops = ops;
            self.op_cpus = cpus;
            self.normalize_op_cpus();
        } else {
            self.ops.retain(&keep);
        }
        for body in self.handlers.values_mut() {
            body.retain(&keep);
        }
    }

    /// Whether an op uses the TSC-deadline timer (CPUID.01H:ECX[24]).
    pub fn uses_tsc_deadline(&self) -> bool {
        self.all_ops().any(Op::uses_tsc_deadline)
    }

    /// The body the guest runs for the `nth` (from 1) delivery of `vector`:
    /// the `V#N` body if there is one, else the `V` body, else `eoi`.
    pub fn handler_body(&self, vector: u8, nth: u32) -> &[Op] {
        self.handlers
            .get(&HandlerKey::nth(vector, nth))
            .or_else(|| self.handlers.get(&HandlerKey::plain(vector)))
            .map(Vec::as_slice)
            .unwrap_or(DEFAULT_HANDLER)
    }

    /// The body CPU `cpu` runs for its `nth` (from 1) delivery of `vector`:
    /// the most specific of `V#N@K`, `V@K`, `V#N`, `V`, else `eoi`. On CPU
    /// 0 of a single-CPU scenario this is [`Scenario::handler_body`].
    pub fn handler_body_on(&self, cpu: u8, vector: u8, nth: u32) -> &[Op] {
        let key = |cpu, nth| HandlerKey { vector, cpu, nth };
        [
            key(Some(cpu), Some(nth)),
            key(Some(cpu), None),
            key(None, Some(nth)),
            key(None, None),
        ]
        .iter()
        .find_map(|k| self.handlers.get(k))
        .map(Vec::as_slice)
        .unwrap_or(DEFAULT_HANDLER)
    }

    /// The CPU that runs top-level op `k`.
    pub fn cpu_of(&self, k: usize) -> u8 {
        self.op_cpus.get(k).copied().unwrap_or(0)
    }

    /// How many CPUs the scenario has (`config cpus=`, at least 1).
    pub fn cpus(&self) -> usize {
        self.config.cpus.max(1) as usize
    }

    /// Whether the scenario needs more than one CPU: `cpus=N` above 1.
    pub fn is_multi_cpu(&self) -> bool {
        self.cpus() > 1
    }

    /// Whether the scenario uses anything of the multi-CPU extension: more
    /// than one CPU, an APIC ID other than the index, APs waiting for a
    /// SIPI, per-CPU handler bodies or ops on another CPU.
    pub fn uses_smp(&self) -> bool {
        self.uses_smp_outside_handlers() || self.handlers.keys().any(|k| k.cpu.is_some())
    }

    /// [`Scenario::uses_smp`] but for per-CPU handler bodies (`V@K`), the
    /// one part that walks the handlers: for a caller that walks them
    /// anyway (the model's interpreter, once per run).
    #[inline]
    pub fn uses_smp_outside_handlers(&self) -> bool {
        self.is_multi_cpu()
            || !self.config.default_apic_ids()
            || self.config.ap_start != ApStart::Host
            || !self.op_cpus.is_empty()
    }

    /// Drops `op_cpus` when every op runs on CPU 0, and pads it otherwise,
    /// so that equal programs compare equal.
    pub fn normalize_op_cpus(&mut self) {
        if self.op_cpus.iter().all(|&c| c == 0) {
            self.op_cpus.clear();
        } else {
            self.op_cpus.resize(self.ops.len(), 0);
        }
    }

    /// Whether any op reaches the 8259 pair (issue 15): backends without a
    /// PIC refuse such a scenario.
    pub fn uses_pic(&self) -> bool {
        self.all_ops().any(Op::uses_pic)
    }

    /// Every op of the scenario, the program's and the handlers'.
    pub fn all_ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().chain(self.handlers.values().flatten())
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print::print(self))
    }
}
