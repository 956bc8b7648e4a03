//! Model throughput: guest ops per second on random op streams, on one core.
//!
//! Drives [`Machine`] directly (no scenario parsing, no trace), the way the
//! model backend does: each op, then every deliverable interrupt taken back
//! to back with the default handler body (`eoi`) and IRET. Handler EOIs count
//! as ops, as they do in a scenario. A level line held asserted would storm;
//! as in a run, at most 64 deliveries follow one op.
//!
//! `cargo bench -p irqdiff-model` prints one JSON object. The figure is a
//! rate from one run, never an assertion.

use std::hint::black_box;
use std::time::{Duration, Instant};

use irqdiff_model::ioapic::{IOEOI, IOREGSEL, IOWIN};
use irqdiff_model::lapic::reg;
use irqdiff_model::{Machine, MachineConfig};

/// A deterministic xorshift64* stream: no dependency, same ops every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Ops per precomputed program; programs are generated before timing so the
/// generator's cost is not measured.
const PROGRAM_OPS: usize = 32;
const PROGRAMS: usize = 512;
const STORM_LIMIT: u32 = 64;

#[derive(Clone, Copy)]
enum Op {
    Route { pin: u8, low: u32 },
    Mask(u8, bool),
    Line(u8, bool),
    Pulse(u8),
    Msi { vector: u8, level: bool },
    Eoi,
    IoapicEoi(u8),
    SelfIpi(u8),
    Tpr(u8),
    Cli,
    Sti,
    Nop,
}

fn random_op(rng: &mut Rng) -> Op {
    let r = rng.next();
    // Few pins and vectors, so ops interact (as the fuzzer's generator does).
    let pin = (r >> 8) as u8 % 4;
    let vector = 0x20 + ((r >> 16) as u8 % 8) * 0x10 + (r >> 24) as u8 % 2;
    match r % 13 {
        0 | 1 => Op::Route {
            pin,
            low: vector as u32 | if r & (1 << 40) != 0 { 1 << 15 } else { 0 },
        },
        2 => Op::Mask(pin, r & (1 << 41) != 0),
        3 | 4 => Op::Line(pin, r & (1 << 42) != 0),
        5 => Op::Pulse(pin),
        6 => Op::Msi {
            vector,
            level: r & (1 << 43) != 0,
        },
        7 => Op::Eoi,
        8 => Op::IoapicEoi(vector),
        9 => Op::SelfIpi(vector),
        10 => Op::Tpr(((r >> 32) as u8 % 4) << 5),
        11 => {
            if r & (1 << 44) != 0 {
                Op::Cli
            } else {
                Op::Sti
            }
        }
        _ => Op::Nop,
    }
}

fn write_register(m: &mut Machine, index: u32, value: u32) {
    m.ioapic_mmio_write(IOREGSEL, index);
    m.ioapic_mmio_write(IOWIN, value);
}

/// Runs one program from the start state; returns the ops executed.
fn run(program: &[Op]) -> u64 {
    let mut m = Machine::new(MachineConfig::default());
    let mut ops = 0u64;
    for op in program {
        ops += 1;
        match *op {
            Op::Route { pin, low } => {
                write_register(&mut m, 0x11 + 2 * pin as u32, 0);
                write_register(&mut m, 0x10 + 2 * pin as u32, low);
            }
            Op::Mask(pin, masked) => {
                let index = 0x10 + 2 * pin as u32;
                m.ioapic_mmio_write(IOREGSEL, index);
                let low = m.ioapic_mmio_read(IOWIN);
                let low = if masked {
                    low | 1 << 16
                } else {
                    low & !(1 << 16)
                };
                m.ioapic_mmio_write(IOWIN, low);
            }
            Op::Line(pin, level) => m.set_irq(pin as usize, level),
            Op::Pulse(pin) => {
                m.set_irq(pin as usize, true);
                m.set_irq(pin as usize, false);
            }
            Op::Msi { vector, level } => {
                let data = irqdiff_model::msi::data(
                    vector,
                    irqdiff_model::ioapic::DeliveryMode::Fixed,
                    level,
                );
                if let Ok(msg) =
                    irqdiff_model::msi::decode(irqdiff_model::msi::address(0, false), data)
                {
                    m.message(&msg);
                }
            }
            Op::Eoi => {
                let _ = m.lapic_write(reg::EOI, 0);
            }
            Op::IoapicEoi(v) => m.ioapic_mmio_write(IOEOI, v as u32),
            Op::SelfIpi(v) => {
                let _ = m.lapic_write(reg::ICR_HIGH, 0);
                let _ = m.lapic_write(reg::ICR_LOW, 1 << 18 | v as u32);
            }
            Op::Tpr(v) => {
                let _ = m.lapic_write(reg::TPR, v as u32);
            }
            Op::Cli => m.cpu.cli(),
            Op::Sti => {
                m.cpu.sti();
                m.cpu.end_of_instruction();
            }
            Op::Nop => {}
        }
        m.clear_decisions();
        let mut deliveries = 0;
        while let Some(interrupt) = m.pending() {
            if deliveries == STORM_LIMIT {
                return ops;
            }
            deliveries += 1;
            let (_, saved_if) = m.take(interrupt);
            // The default handler body: `eoi`, then IRET.
            let _ = m.lapic_write(reg::EOI, 0);
            ops += 1;
            m.iret(saved_if);
            m.clear_decisions();
        }
    }
    ops
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let programs: Vec<Vec<Op>> = (0..PROGRAMS)
        .map(|_| (0..PROGRAM_OPS).map(|_| random_op(&mut rng)).collect())
        .collect();
    let duration = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3));
    // Warm up caches and the branch predictor.
    for p in &programs {
        black_box(run(black_box(p)));
    }
    let (mut ops, mut runs) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        for p in &programs {
            ops += black_box(run(black_box(p)));
            runs += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"benchmark\":\"model-machine-throughput\",\"programs\":{runs},\"guest_ops\":{ops},\"seconds\":{secs:.3},\"guest_ops_per_second\":{:.0},\"ns_per_op\":{:.2}}}",
        ops as f64 / secs,
        secs * 1e9 / ops as f64
    );
}
