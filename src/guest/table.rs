//! The op table: a scenario encoded for the stub's interpreter.
//!
//! Every op is four little-endian u32 words `[kind, a, b, c]`; a list ends
//! with kind 0. The program comes first, then each handler body, then the
//! default body (`eoi`). Host ops carry an index into [`Table::host_ops`],
//! which the VMM performs when the stub signals it.

use super::layout::{NTH_TABLE, NTH_TABLE_END, OPS, OPS_END};
use crate::model::ioapic::REG_REDTBL;
use crate::model::lapic::reg;
use crate::scenario::{Deadline, HandlerKey, HostOp, Op, Pin, Scenario};

/// Op kinds of the stub's interpreter.
pub mod kind {
    pub const END: u32 = 0;
    /// a = the first register index, b = its value, c = the value of the
    /// other dword of the entry (index a ^ 1).
    pub const ROUTE: u32 = 1;
    /// a = low-dword index, b = 1 to set the mask bit, 0 to clear it.
    pub const MASK: u32 = 2;
    /// a = host op number.
    pub const HOST: u32 = 3;
    /// a = LAPIC register offset, b = value.
    pub const LAPIC_WRITE: u32 = 4;
    /// a = vector.
    pub const SELF_IPI: u32 = 5;
    /// a = vector.
    pub const IOAPIC_EOI: u32 = 6;
    pub const CLI: u32 = 7;
    pub const STI: u32 = 8;
    pub const NOP: u32 = 9;
    pub const HLT: u32 = 10;
    pub const STI_HLT: u32 = 11;
    pub const SNAPSHOT: u32 = 12;
    /// a = register index.
    pub const IOAPIC_READ: u32 = 13;
    /// a = register index, b = value.
    pub const IOAPIC_WRITE: u32 = 14;
    /// a = register offset.
    pub const LAPIC_READ: u32 = 15;
    /// `out` to the ping port (benchmarks only).
    pub const PING: u32 = 16;
    /// a = IA32_APIC_BASE (low 32 bits).
    pub const APIC_BASE: u32 = 17;
    /// Host op done by the guest: a = ISA IRQ line, b = level, 2 for a
    /// pulse (pc-testdev).
    pub const LINE: u32 = 18;
    /// Host op done by the guest: a = MSI address, b = data.
    pub const MSI_WRITE: u32 = 19;
    /// a = CR8 value (MOV to CR8).
    pub const CR8: u32 = 20;
    /// a = APIC page offset: a load by MMIO whatever the mode.
    pub const LAPIC_MMIO_READ: u32 = 21;
    /// a = APIC page offset, b = value: a store by MMIO whatever the mode.
    pub const LAPIC_MMIO_WRITE: u32 = 22;
    /// a = ICR low dword, b = destination (xAPIC: ICR high bits 31:24;
    /// x2APIC: MSR 0x830 bits 63:32).
    pub const IPI: u32 = 23;
    // ---- PIC (issue 15)
    /// a = I/O port, b = byte: `out dx, al` (`pic-write`).
    pub const PORT_OUT: u32 = 24;
    /// a = I/O port: `in al, dx`, logged as a PIC_READ record (`pic-read`).
    pub const PORT_IN: u32 = 25;
    // ---- The LAPIC timer (numbered apart, from 40, so that other new
    // kinds can take 24 and up).
    /// a = LVT timer value, b = divide configuration, c = initial count
    /// (written unless a's mode is TSC-deadline).
    pub const TIMER: u32 = 40;
    /// a = 0 (write 0), 1 (the TSC just read) or 2 (the TSC + b).
    pub const TSC_DEADLINE: u32 = 41;
    /// RDMSR IA32_TSC_DEADLINE, logged as 0 or 1.
    pub const TSC_DEADLINE_READ: u32 = 42;
    /// a = the wait's bound in µs.
    pub const TIMER_WAIT: u32 = 43;
}

/// A scenario laid out for guest memory.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Bytes to copy to [`OPS`].
    pub ops: Vec<u8>,
    /// The 256 plain-body addresses, for [`BODY_DIR`].
    pub body_dir: Vec<u8>,
    /// The `V#N` entries, for [`NTH_TABLE`].
    pub nth: Vec<u8>,
    /// Host ops by number.
    pub host_ops: Vec<HostOp>,
    /// Several CPUs: CPU K's (plain-body directory, `V#N` table), for
    /// [`super::layout::PCPU_BODY_DIR`] and
    /// [`super::layout::PCPU_NTH_TABLE`] of its block, K from 1 (CPU 0's
    /// are `body_dir` and `nth`). Empty for a single-CPU scenario.
    pub ap_tables: Vec<(Vec<u8>, Vec<u8>)>,
    /// The scenario has LAPIC timer ops: a `hlt` may wait up to
    /// [`crate::scenario::HLT_TIMER_BOUND_US`] for the timer, so a VMM
    /// calls it a hang only after that long halted.
    pub uses_timer: bool,
}

impl Table {
    /// How many kicks `kick` apart that find the vCPU halted make a hang:
    /// two (a re-entry between them), or with timer ops enough to cover
    /// the hlt's timer bound too.
    pub fn halted_kicks_for_hang(&self, kick: std::time::Duration) -> u32 {
        if !self.uses_timer {
            return 2;
        }
        let bound = std::time::Duration::from_micros(crate::scenario::HLT_TIMER_BOUND_US as u64);
        2 + bound.as_micros().div_ceil(kick.as_micros().max(1)) as u32
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the scenario is too large for the guest's op table ({0})")]
pub struct TooLarge(&'static str);

fn word(out: &mut Vec<u8>, words: [u32; 4]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Who performs host ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOps {
    /// The VMM, when the stub signals them (KVM, HVF).
    Vmm,
    /// The guest itself, through QEMU's test devices.
    Guest,
}

fn encode_op(op: &Op, out: &mut Vec<u8>, host_ops: &mut Vec<HostOp>, mode: HostOps) {
    use kind::*;
    let w = match *op {
        Op::Route { pin, route } => {
            let [(index, first), (_, second)] = route.dword_writes(pin);
            [ROUTE, index as u32, first, second]
        }
        Op::Mask(pin) => [MASK, redirection_low(pin), 1, 0],
        Op::Unmask(pin) => [MASK, redirection_low(pin), 0, 0],
        Op::Host(host) if mode == HostOps::Vmm => {
            host_ops.push(host);
            [HOST, host_ops.len() as u32 - 1, 0, 0]
        }
        Op::Host(host) => guest_host_op(host),
        Op::Eoi => [LAPIC_WRITE, reg::EOI as u32, 0, 0],
        Op::IoapicEoi(v) => [IOAPIC_EOI, v as u32, 0, 0],
        Op::SelfIpi(v) => [SELF_IPI, v as u32, 0, 0],
        Op::Tpr(v) => [LAPIC_WRITE, reg::TPR as u32, v as u32, 0],
        Op::Cr8(v) => [CR8, v as u32, 0, 0],
        Op::Svr(v) => [LAPIC_WRITE, reg::SVR as u32, v, 0],
        Op::Cli => [CLI, 0, 0, 0],
        Op::Sti => [STI, 0, 0, 0],
        Op::Nop => [NOP, 0, 0, 0],
        Op::Hlt => [HLT, 0, 0, 0],
        Op::StiHlt => [STI_HLT, 0, 0, 0],
        Op::Snapshot => [SNAPSHOT, 0, 0, 0],
        Op::IoapicRead(i) => [IOAPIC_READ, i as u32, 0, 0],
        Op::IoapicWrite { index, value } => [IOAPIC_WRITE, index as u32, value, 0],
        Op::LapicRead(o) => [LAPIC_READ, o as u32, 0, 0],
        Op::LapicWrite { offset, value } => [LAPIC_WRITE, offset as u32, value, 0],
        Op::LapicMmioRead(o) => [LAPIC_MMIO_READ, o as u32, 0, 0],
        Op::LapicMmioWrite { offset, value } => [LAPIC_MMIO_WRITE, offset as u32, value, 0],
        Op::ApicBase(value) => [APIC_BASE, value, 0, 0],
        Op::Ipi(ipi) => [IPI, ipi.icr_low(), ipi.dest, 0],
        Op::PicWrite { port, value } => [PORT_OUT, port.get() as u32, value as u32, 0],
        Op::PicRead(port) => [PORT_IN, port.get() as u32, 0, 0],
        Op::Timer(t) => [TIMER, t.lvt(), t.divide_register(), t.count],
        Op::TscDeadline(Deadline::Disarm) => [TSC_DEADLINE, 0, 0, 0],
        Op::TscDeadline(Deadline::Now) => [TSC_DEADLINE, 1, 0, 0],
        Op::TscDeadline(Deadline::After(n)) => [TSC_DEADLINE, 2, n, 0],
        Op::TscDeadlineRead => [TSC_DEADLINE_READ, 0, 0, 0],
        Op::TimerWait(us) => [TIMER_WAIT, us, 0, 0],
    };
    word(out, w);
}

/// The index of `pin`'s redirection-table low dword (82093AA §3.2.4: the
/// entries start at register 0x10, two dwords each).
fn redirection_low(pin: Pin) -> u32 {
    REG_REDTBL as u32 + 2 * pin.get() as u32
}

/// A host op the guest performs itself, through QEMU's test devices.
fn guest_host_op(host: HostOp) -> [u32; 4] {
    use kind::*;
    match host {
        HostOp::Assert(p) => [LINE, p.get() as u32, 1, 0],
        HostOp::Deassert(p) => [LINE, p.get() as u32, 0, 0],
        HostOp::Pulse(p) => [LINE, p.get() as u32, 2, 0],
        HostOp::Msi(m) => {
            let (address, data) = m.address_data();
            [MSI_WRITE, address as u32, data, 0]
        }
        // pc-testdev's line N is ISA IRQ N, which QEMU's `gsi_handler`
        // sends to the 8259 pair and the IOAPIC: the ISA op itself.
        HostOp::IsaAssert(l) => [LINE, l.get() as u32, 1, 0],
        HostOp::IsaDeassert(l) => [LINE, l.get() as u32, 0, 0],
        HostOp::IsaPulse(l) => [LINE, l.get() as u32, 2, 0],
    }
}

/// Encodes `scenario`, host ops for the VMM.
pub fn encode(scenario: &Scenario) -> Result<Table, TooLarge> {
    encode_for(scenario, HostOps::Vmm)
}

/// Encodes `scenario`, host ops done by `mode`.
pub fn encode_for(scenario: &Scenario, mode: HostOps) -> Result<Table, TooLarge> {
    let mut t = Table {
        uses_timer: scenario.uses_timer_ops(),
        ..Table::default()
    };
    for op in &scenario.ops {
        encode_op(op, &mut t.ops, &mut t.host_ops, mode);
    }
    word(&mut t.ops, [kind::END, 0, 0, 0]);
    let mut bodies = Vec::new();
    for (key, body) in &scenario.handlers {
        let at = OPS + t.ops.len() as u64;
        for op in body {
            encode_op(op, &mut t.ops, &mut t.host_ops, mode);
        }
        word(&mut t.ops, [kind::END, 0, 0, 0]);
        bodies.push((*key, at));
    }
    let default_body = OPS + t.ops.len() as u64;
    word(&mut t.ops, [kind::LAPIC_WRITE, 0xb0, 0, 0]);
    word(&mut t.ops, [kind::END, 0, 0, 0]);
    if OPS + t.ops.len() as u64 > OPS_END {
        return Err(TooLarge("program and handler bodies"));
    }
    (t.body_dir, t.nth) = cpu_tables(&bodies, 0, default_body)?;
    if scenario.uses_smp() {
        for cpu in 1..scenario.cpus() as u8 {
            t.ap_tables.push(cpu_tables(&bodies, cpu, default_body)?);
        }
    }
    debug_assert_eq!(t.body_dir.len(), 256 * 8);
    Ok(t)
}

/// CPU `cpu`'s plain-body directory and `V#N` table: the most specific
/// body of `V#N@K`, `V@K`, `V#N`, `V`, else `eoi` (docs/scenario-format.md,
/// "Several CPUs"). The stub takes the first matching `V#N` entry, else the
/// directory's body; so a `V#N` for every CPU is left out where a `V@K`
/// body exists (V@K is more specific), and `V#N@K` entries come first.
fn cpu_tables(
    bodies: &[(HandlerKey, u64)],
    cpu: u8,
    default_body: u64,
) -> Result<(Vec<u8>, Vec<u8>), TooLarge> {
    let mut plain = [0u64; 256];
    let mut own_plain = [false; 256];
    for (key, at) in bodies {
        match (key.cpu, key.nth) {
            (Some(c), None) if c == cpu => {
                plain[key.vector as usize] = *at;
                own_plain[key.vector as usize] = true;
            }
            (None, None) if !own_plain[key.vector as usize] => plain[key.vector as usize] = *at,
            _ => {}
        }
    }
    let mut nth = Vec::new();
    for (key, at) in bodies {
        if let (Some(c), Some(n)) = (key.cpu, key.nth) {
            if c == cpu {
                nth.push((key.vector, n, *at));
            }
        }
    }
    for (key, at) in bodies {
        if let (None, Some(n)) = (key.cpu, key.nth) {
            if !own_plain[key.vector as usize] {
                nth.push((key.vector, n, *at));
            }
        }
    }
    let mut body_dir = Vec::with_capacity(256 * 8);
    for addr in plain {
        let addr = if addr == 0 { default_body } else { addr };
        body_dir.extend_from_slice(&addr.to_le_bytes());
    }
    let mut table = Vec::new();
    for (vector, n, at) in nth {
        table.extend_from_slice(&(vector as u32).to_le_bytes());
        table.extend_from_slice(&n.to_le_bytes());
        table.extend_from_slice(&at.to_le_bytes());
    }
    table.extend_from_slice(&u32::MAX.to_le_bytes());
    table.extend_from_slice(&[0; 12]);
    if NTH_TABLE + table.len() as u64 > NTH_TABLE_END {
        return Err(TooLarge("handler #N bodies"));
    }
    Ok((body_dir, table))
}

/// A table of `count` pings (the raw exit benchmark).
pub fn pings(count: usize) -> Table {
    let mut t = Table::default();
    for _ in 0..count {
        word(&mut t.ops, [kind::PING, 0, 0, 0]);
    }
    word(&mut t.ops, [kind::END, 0, 0, 0]);
    let default_body = OPS + t.ops.len() as u64;
    word(&mut t.ops, [kind::LAPIC_WRITE, 0xb0, 0, 0]);
    word(&mut t.ops, [kind::END, 0, 0, 0]);
    for _ in 0..256 {
        t.body_dir.extend_from_slice(&default_body.to_le_bytes());
    }
    t.nth.extend_from_slice(&u32::MAX.to_le_bytes());
    t.nth.extend_from_slice(&[0; 12]);
    t
}
