//! Generating scenarios: from fuzzer bytes (`arbitrary`), or from a seed.
//!
//! `Scenario` derives `arbitrary::Arbitrary` for raw programs (any op in any
//! order, every value). [`generate`] builds programs that mean something
//! most of the time (pins routed before they are asserted, level handlers
//! that deassert before their EOI, vectors spread over priority classes)
//! and, with small probability per op, anything at all, so that a campaign
//! can still reach every state.

use arbitrary::{Arbitrary, Result, Unstructured};

use super::{
    ApicMode, Config, DeliveryMode, DestMode, HandlerKey, HostOp, IoapicVersion, Irqchip, Msi,
    MsiDelivery, Op, Pin, Route, Scenario, Trigger,
};

/// Knobs of the structured generator.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// At most this many top-level ops.
    pub max_ops: usize,
    /// Percent chance that an op is drawn with no structure at all.
    pub wild_percent: u8,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            max_ops: 24,
            wild_percent: 3,
        }
    }
}

/// One pin the program drives.
#[derive(Clone, Copy)]
struct Line {
    pin: Pin,
    vector: u8,
    level: bool,
}

/// Registers that `lapic-read` may read in either mode without a fault.
const READABLE: &[u16] = &[
    0x020, 0x030, 0x080, 0x0a0, 0x0d0, 0x0f0, 0x100, 0x170, 0x180, 0x1f0, 0x200, 0x270, 0x280,
];

fn percent(u: &mut Unstructured<'_>, p: u8) -> Result<bool> {
    Ok(u.int_in_range(0..=99u8)? < p)
}

/// A vector at or above 0x20, its class chosen first so that classes spread.
fn vector(u: &mut Unstructured<'_>) -> Result<u8> {
    let class = u.int_in_range(2..=15u8)?;
    Ok(class << 4 | u.int_in_range(0..=15u8)?)
}

/// Builds a scenario that is meaningful most of the time.
pub fn generate(u: &mut Unstructured<'_>, cfg: &GenConfig) -> Result<Scenario> {
    let config = Config {
        ioapic: if percent(u, 10)? {
            IoapicVersion::V11
        } else {
            IoapicVersion::V20
        },
        apic: if percent(u, 20)? {
            ApicMode::X2apic
        } else {
            ApicMode::Xapic
        },
        irqchip: if percent(u, 10)? {
            Irqchip::Split
        } else {
            Irqchip::Full
        },
        directed_eoi: percent(u, 5)?,
        ..Config::default()
    };
    let mut lines: Vec<Line> = Vec::new();
    for _ in 0..u.int_in_range(1..=3u8)? {
        let pin = Pin::new(if percent(u, 60)? {
            u.int_in_range(0..=3u8)?
        } else {
            u.int_in_range(0..=23u8)?
        })
        .expect("in range");
        if lines.iter().any(|l| l.pin == pin) {
            continue;
        }
        lines.push(Line {
            pin,
            vector: vector(u)?,
            level: u.arbitrary()?,
        });
    }
    let mut s = Scenario {
        config,
        ..Scenario::default()
    };
    for line in &lines {
        let body = if line.level {
            match u.int_in_range(0..=9u8)? {
                0..=6 => vec![Op::Host(HostOp::Deassert(line.pin)), Op::Eoi],
                7 => vec![Op::Eoi],
                8 => vec![Op::Mask(line.pin), Op::Eoi],
                _ => vec![Op::Snapshot, Op::Host(HostOp::Deassert(line.pin)), Op::Eoi],
            }
        } else if percent(u, 15)? {
            vec![Op::Snapshot, Op::Eoi]
        } else {
            continue;
        };
        s.handlers.insert(HandlerKey::plain(line.vector), body);
        if percent(u, 10)? {
            let nth = u.int_in_range(1..=3u32)?;
            let body = if line.level { vec![Op::Eoi] } else { vec![] };
            s.handlers.insert(HandlerKey::nth(line.vector, nth), body);
        }
    }
    for line in &lines {
        let route = Route {
            vector: line.vector,
            trigger: if line.level {
                Trigger::Level
            } else {
                Trigger::Edge
            },
            masked: percent(u, 20)?,
            ..Route::default()
        };
        s.ops.push(Op::Route {
            pin: line.pin,
            route,
        });
    }
    let budget = u.int_in_range(1..=cfg.max_ops.max(lines.len() + 1) - lines.len())?;
    for _ in 0..budget {
        if u.is_empty() {
            break;
        }
        let op = if percent(u, cfg.wild_percent)? {
            Op::arbitrary(u)?
        } else {
            structured_op(u, &lines)?
        };
        s.ops.push(op);
    }
    Ok(s)
}

fn structured_op(u: &mut Unstructured<'_>, lines: &[Line]) -> Result<Op> {
    let line = *u.choose(lines)?;
    let pin = line.pin;
    Ok(match u.int_in_range(0..=99u8)? {
        0..=17 => Op::Host(HostOp::Assert(pin)),
        18..=29 => Op::Host(HostOp::Deassert(pin)),
        30..=39 => Op::Host(HostOp::Pulse(pin)),
        40..=45 => Op::Mask(pin),
        46..=52 => Op::Unmask(pin),
        53..=56 => Op::Eoi,
        57..=60 => Op::Nop,
        61..=64 => Op::Cli,
        65..=68 => Op::Sti,
        69..=70 => Op::StiHlt,
        71 => Op::Hlt,
        72..=75 => Op::SelfIpi(if percent(u, 50)? {
            line.vector
        } else {
            vector(u)?
        }),
        76..=79 => Op::Host(HostOp::Msi(Msi {
            vector: if percent(u, 50)? {
                line.vector
            } else {
                vector(u)?
            },
            dest: if percent(u, 90)? { 0 } else { u.arbitrary()? },
            dest_mode: if percent(u, 90)? {
                DestMode::Physical
            } else {
                DestMode::Logical
            },
            trigger: if percent(u, 80)? {
                Trigger::Edge
            } else {
                Trigger::Level
            },
            delivery: if percent(u, 95)? {
                MsiDelivery::Fixed
            } else {
                MsiDelivery::Lowest
            },
        })),
        80..=81 => Op::Tpr(if percent(u, 50)? {
            0
        } else {
            u.int_in_range(0..=15u8)? << 4
        }),
        // The same priorities by MOV to CR8, the hypervisors' other path.
        82 => Op::Cr8(u.int_in_range(0..=crate::scenario::CR8_MAX)?),
        83..=88 => Op::Snapshot,
        89..=90 => Op::IoapicEoi(line.vector),
        91..=93 => Op::Route {
            pin,
            route: Route {
                vector: if percent(u, 70)? {
                    line.vector
                } else {
                    vector(u)?
                },
                trigger: if u.arbitrary()? {
                    Trigger::Level
                } else {
                    Trigger::Edge
                },
                masked: percent(u, 30)?,
                delivery: if percent(u, 97)? {
                    DeliveryMode::Fixed
                } else {
                    DeliveryMode::Lowest
                },
                ..Route::default()
            },
        },
        94 => Op::IoapicRead(u.int_in_range(0..=2u8)?),
        95..=96 => Op::LapicRead(if percent(u, 80)? {
            *u.choose(READABLE)?
        } else {
            // Any dword of the page: reserved offsets, write-only registers
            // (#GP in x2APIC mode) and the rest of the x2APIC MSR range.
            u.int_in_range(0..=crate::scenario::LAPIC_OFFSET_MAX / 4)? * 4
        }),
        97 => Op::Svr(if percent(u, 80)? {
            0x1ff
        } else {
            *u.choose(&[0x0ff, 0x11ff, 0x1ff])?
        }),
        _ => Op::Host(HostOp::Deassert(pin)),
    })
}

/// The seed of case `index` of a campaign with seed `seed` (splitmix64):
/// case i is generated from `(seed, i)` alone, whatever runs it.
pub fn case_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic scenario for `seed`: bytes from splitmix64 fed to
/// [`generate`]. Used by `irqdiff fuzz` and the benchmarks.
pub fn random(seed: u64, cfg: &GenConfig) -> Scenario {
    let mut state = seed;
    let mut bytes = vec![0u8; 64 + 24 * cfg.max_ops];
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    generate(&mut Unstructured::new(&bytes), cfg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_deterministic_and_routes_before_driving() {
        let cfg = GenConfig::default();
        assert_eq!(random(7, &cfg), random(7, &cfg));
        let mut varied = 0;
        for seed in 0..200 {
            let s = random(seed, &cfg);
            assert!(s.ops.len() <= cfg.max_ops + 3);
            assert!(matches!(s.ops[0], Op::Route { .. }), "seed {seed}: {s}");
            varied += usize::from(s.ops.len() > 4);
        }
        assert!(varied > 150, "most programs have more than a few ops");
    }

    #[test]
    fn every_op_kind_appears_over_many_seeds() {
        let cfg = GenConfig::default();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..3000 {
            for op in random(seed, &cfg).all_ops() {
                seen.insert(op.keyword());
            }
        }
        for kw in crate::scenario::parse::OP_KEYWORDS {
            assert!(seen.contains(kw), "`{kw}` never generated");
        }
    }
}
