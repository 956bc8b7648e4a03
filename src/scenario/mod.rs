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

/// The `config` statement. `Default` is the start machine of
/// docs/scenario-format.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Config {
    pub ioapic: IoapicVersion,
    pub apic: ApicMode,
    pub irqchip: Irqchip,
    /// EOI-broadcast suppression advertised in the LAPIC version register.
    pub directed_eoi: bool,
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

/// An op the VMM performs while the guest waits at that point of its
/// program: each backend's perform is a total `match` on it, so adding one
/// is a compile error in every backend until it is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum HostOp {
    Assert(Pin),
    Deassert(Pin),
    Pulse(Pin),
    Msi(Msi),
}

impl HostOp {
    /// The IOAPIC pin the op drives (`None` for an MSI).
    pub fn pin(&self) -> Option<Pin> {
        match *self {
            HostOp::Assert(p) | HostOp::Deassert(p) | HostOp::Pulse(p) => Some(p),
            HostOp::Msi(_) => None,
        }
    }

    /// The op's keyword in the text format.
    pub fn keyword(&self) -> &'static str {
        match self {
            HostOp::Assert(_) => "assert",
            HostOp::Deassert(_) => "deassert",
            HostOp::Pulse(_) => "pulse",
            HostOp::Msi(_) => "msi",
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
}

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
        }
    }
}

/// Which handler body a `handler` statement defines: `V` (every delivery)
/// or `V#N` (the N-th delivery of V in the run, N from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerKey {
    pub vector: u8,
    pub nth: Option<u32>,
}

impl<'a> arbitrary::Arbitrary<'a> for HandlerKey {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let vector = u.arbitrary()?;
        let nth = if u.arbitrary()? {
            Some(u.int_in_range(1..=8)?)
        } else {
            None
        };
        Ok(HandlerKey { vector, nth })
    }
}

/// A whole scenario: config, handler bodies and the program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Scenario {
    pub config: Config,
    pub handlers: BTreeMap<HandlerKey, Vec<Op>>,
    pub ops: Vec<Op>,
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

    /// The body the guest runs for the `nth` (from 1) delivery of `vector`:
    /// the `V#N` body if there is one, else the `V` body, else `eoi`.
    pub fn handler_body(&self, vector: u8, nth: u32) -> &[Op] {
        self.handlers
            .get(&HandlerKey {
                vector,
                nth: Some(nth),
            })
            .or_else(|| self.handlers.get(&HandlerKey { vector, nth: None }))
            .map(Vec::as_slice)
            .unwrap_or(DEFAULT_HANDLER)
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
