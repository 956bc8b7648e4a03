//! The canonical text form of a scenario.
//!
//! `config` only with its non-default keys (omitted when all are default),
//! then the handlers sorted by vector (the plain body before `#N` bodies),
//! then the program, one op per line. Pins and `#N` in decimal; vectors,
//! TPR, SVR, register indices and values in lower-case `0x` hex; route and
//! MSI options in the order the format lists them, only the non-default ones.

use std::fmt::Write;

use super::{
    ApStart, ApicMode, Config, Deadline, DeliveryMode, DestMode, HostOp, IoapicVersion, Ipi,
    IpiDelivery, Irqchip, Msi, MsiDelivery, Op, Polarity, Route, RouteOrder, Scenario, Shorthand,
    TimerOpMode, TimerSetup, Trigger,
};

pub fn print(s: &Scenario) -> String {
    let mut out = String::new();
    let config = config_words(&s.config);
    if !config.is_empty() {
        let _ = writeln!(out, "config {}", config.join(" "));
    }
    for (key, body) in &s.handlers {
        let _ = write!(out, "handler {:#04x}", key.vector);
        if let Some(n) = key.nth {
            let _ = write!(out, "#{n}");
        }
        if let Some(cpu) = key.cpu {
            let _ = write!(out, "@{cpu}");
        }
        out.push(':');
        for (i, op) in body.iter().enumerate() {
            out.push_str(if i == 0 { " " } else { "; " });
            out.push_str(&op_text(op));
        }
        out.push('\n');
    }
    for (k, op) in s.ops.iter().enumerate() {
        match s.cpu_of(k) {
            0 => {}
            cpu => {
                let _ = write!(out, "cpu {cpu}: ");
            }
        }
        out.push_str(&op_text(op));
        out.push('\n');
    }
    out
}

fn config_words(c: &Config) -> Vec<String> {
    let mut words: Vec<String> = fixed_config_words(c)
        .into_iter()
        .map(String::from)
        .collect();
    if c.cpus > 1 {
        words.push(format!("cpus={}", c.cpus));
    }
    {
        if !c.default_apic_ids() {
            let ids: Vec<String> = c.apic_ids[..c.cpus as usize]
                .iter()
                .map(|id| id.to_string())
                .collect();
            words.push(format!("apic-ids={}", ids.join(",")));
        }
        if c.ap_start == ApStart::Sipi {
            words.push("ap-start=sipi".into());
        }
    }
    words
}

fn fixed_config_words(c: &Config) -> Vec<&'static str> {
    let mut words = Vec::new();
    if c.ioapic != IoapicVersion::default() {
        words.push(match c.ioapic {
            IoapicVersion::V20 => "ioapic=0x20",
            IoapicVersion::V11 => "ioapic=0x11",
        });
    }
    if c.apic != ApicMode::default() {
        words.push(match c.apic {
            ApicMode::Xapic => "apic=xapic",
            ApicMode::X2apic => "apic=x2apic",
        });
    }
    if c.irqchip != Irqchip::default() {
        words.push(match c.irqchip {
            Irqchip::Full => "irqchip=full",
            Irqchip::Split => "irqchip=split",
        });
    }
    if c.directed_eoi {
        words.push("directed-eoi=on");
    }
    words
}

/// One op in canonical form.
pub fn op_text(op: &Op) -> String {
    match *op {
        Op::Route { pin, route } => format!("route {pin}{}", route_options(&route)),
        Op::Mask(p) => format!("mask {p}"),
        Op::Unmask(p) => format!("unmask {p}"),
        Op::Host(HostOp::Assert(p)) => format!("assert {p}"),
        Op::Host(HostOp::Deassert(p)) => format!("deassert {p}"),
        Op::Host(HostOp::Pulse(p)) => format!("pulse {p}"),
        Op::Host(HostOp::Msi(m)) => format!("msi{}", msi_options(&m)),
        Op::Eoi => "eoi".into(),
        Op::IoapicEoi(v) => format!("ioapic-eoi {v:#04x}"),
        Op::SelfIpi(v) => format!("self-ipi {v:#04x}"),
        Op::Tpr(v) => format!("tpr {v:#04x}"),
        Op::Cr8(v) => format!("cr8 {v}"),
        Op::Svr(v) => format!("svr {v:#x}"),
        Op::Cli => "cli".into(),
        Op::Sti => "sti".into(),
        Op::Nop => "nop".into(),
        Op::Hlt => "hlt".into(),
        Op::StiHlt => "sti-hlt".into(),
        Op::Snapshot => "snapshot".into(),
        Op::IoapicRead(i) => format!("ioapic-read {i:#04x}"),
        Op::IoapicWrite { index, value } => format!("ioapic-write {index:#04x} {value:#x}"),
        Op::LapicRead(o) => format!("lapic-read {o:#05x}"),
        Op::LapicWrite { offset, value } => format!("lapic-write {offset:#05x} {value:#x}"),
        Op::LapicMmioRead(o) => format!("lapic-mmio-read {o:#05x}"),
        Op::LapicMmioWrite { offset, value } => {
            format!("lapic-mmio-write {offset:#05x} {value:#x}")
        }
        Op::ApicBase(v) => format!("apic-base {v:#x}"),
        Op::Ipi(ipi) => format!("ipi{}", ipi_options(&ipi)),
        // ---- PIC (issue 15)
        Op::PicWrite { port, value } => format!("pic-write {port} {value:#04x}"),
        Op::PicRead(port) => format!("pic-read {port}"),
        Op::Host(HostOp::IsaAssert(l)) => format!("isa-assert {l}"),
        Op::Host(HostOp::IsaDeassert(l)) => format!("isa-deassert {l}"),
        Op::Host(HostOp::IsaPulse(l)) => format!("isa-pulse {l}"),
        Op::Timer(t) => timer_text(&t),
        Op::TscDeadline(Deadline::Disarm) => "tsc-deadline 0".into(),
        Op::TscDeadline(Deadline::Now) => "tsc-deadline now".into(),
        Op::TscDeadline(Deadline::After(n)) => format!("tsc-deadline +{n}"),
        Op::TscDeadlineRead => "tsc-deadline-read".into(),
        Op::TimerWait(us) => format!("timer-wait max={us}"),
    }
}

/// `timer MODE vector=V [masked] [divide=D] [count=C]`: the divisor only
/// when not 1, counts in decimal.
fn timer_text(t: &TimerSetup) -> String {
    let mode = match t.mode {
        TimerOpMode::OneShot => "oneshot",
        TimerOpMode::Periodic => "periodic",
        TimerOpMode::TscDeadline => "tsc-deadline",
    };
    let mut s = format!("timer {mode} vector={:#04x}", t.vector);
    if t.masked {
        s.push_str(" masked");
    }
    if t.divide != 1 {
        let _ = write!(s, " divide={}", t.divide);
    }
    if t.mode != TimerOpMode::TscDeadline {
        let _ = write!(s, " count={}", t.count);
    }
    s
}

fn ipi_options(i: &Ipi) -> String {
    let mut s = String::new();
    if matches!(i.delivery, IpiDelivery::Fixed | IpiDelivery::Lowest) {
        let _ = write!(s, " vector={:#04x}", i.vector);
    }
    if i.dest != 0 {
        let _ = write!(s, " dest={:#x}", i.dest);
    }
    if i.dest_mode == DestMode::Logical {
        s += " logical";
    }
    s += match i.delivery {
        IpiDelivery::Fixed => "",
        IpiDelivery::Lowest => " lowest",
        IpiDelivery::Nmi => " nmi",
        IpiDelivery::Init => " init",
        IpiDelivery::InitDeassert => " init-deassert",
        IpiDelivery::Startup => " startup",
    };
    s += match i.shorthand {
        Shorthand::None => "",
        Shorthand::SelfOnly => " self",
        Shorthand::All => " all",
        Shorthand::AllButSelf => " all-but-self",
    };
    if i.trigger == Trigger::Level && matches!(i.delivery, IpiDelivery::Fixed | IpiDelivery::Lowest)
    {
        s += " level";
    }
    s
}

fn route_options(r: &Route) -> String {
    let mut s = format!(" vector={:#04x}", r.vector);
    if r.trigger == Trigger::Level {
        s += " level";
    }
    if r.polarity == Polarity::Low {
        s += " low";
    }
    if r.dest_mode == DestMode::Logical {
        s += " logical";
    }
    if r.dest != 0 {
        let _ = write!(s, " dest={}", r.dest);
    }
    if r.masked {
        s += " masked";
    }
    s += match r.delivery {
        DeliveryMode::Fixed => "",
        DeliveryMode::Lowest => " lowest",
        DeliveryMode::Smi => " smi",
        DeliveryMode::Nmi => " nmi",
        DeliveryMode::Init => " init",
        DeliveryMode::ExtInt => " extint",
    };
    if r.order == RouteOrder::LowFirst {
        s += " order=low-first";
    }
    s
}

fn msi_options(m: &Msi) -> String {
    let mut s = format!(" vector={:#04x}", m.vector);
    if m.dest != 0 {
        let _ = write!(s, " dest={}", m.dest);
    }
    if m.dest_mode == DestMode::Logical {
        s += " logical";
    }
    if m.trigger == Trigger::Level {
        s += " level";
    }
    s += match m.delivery {
        MsiDelivery::Fixed => "",
        MsiDelivery::Lowest => " lowest",
        MsiDelivery::Nmi => " nmi",
    };
    s
}
