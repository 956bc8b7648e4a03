//! Decoding the stub's event log (guest memory) back into trace events.

use super::stub::{record, SNAPSHOT_WORDS};
use crate::model::ioapic::bits;
use crate::trace::{Event, EventKind, Snapshot, Space};

/// Why a log could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("corrupt guest event log at byte {offset}: {what}")]
pub struct CorruptLog {
    pub offset: usize,
    pub what: String,
}

fn word(log: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(log[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

/// Several CPUs: decodes each CPU's log (index = CPU), tags its events
/// with the CPU and merges them by op, stably: within an op, CPU 0's
/// events first, each CPU's in the order it observed them (the oracle
/// compares per op and per CPU, docs/scenario-format.md "Several CPUs").
pub fn decode_cpus<'l>(logs: impl IntoIterator<Item = &'l [u8]>) -> Result<Vec<Event>, CorruptLog> {
    let mut events = Vec::new();
    for (cpu, log) in logs.into_iter().enumerate() {
        let start = events.len();
        events.extend(decode(log)?);
        for e in &mut events[start..] {
            e.cpu = cpu as u8;
        }
    }
    events.sort_by_key(|e| e.op);
    Ok(events)
}

/// Decodes `log` (the bytes from the log start to the log pointer).
pub fn decode(log: &[u8]) -> Result<Vec<Event>, CorruptLog> {
    let mut events = Vec::new();
    let words = log.len() / 4;
    let mut i = 0;
    while i < words {
        let corrupt = |what: &str| CorruptLog {
            offset: i * 4,
            what: what.to_string(),
        };
        let (kind, op) = (word(log, i), word(log, i + 1) as usize);
        let kind = match kind {
            record::DELIVER => {
                let vector = word(log, i + 2) as u8;
                i += 4;
                EventKind::Deliver { vector }
            }
            record::IOAPIC_READ
            | record::LAPIC_READ
            | record::LAPIC_MMIO_READ
            | record::PIC_READ => {
                let space = match kind {
                    record::IOAPIC_READ => Space::Ioapic,
                    record::LAPIC_READ => Space::Lapic,
                    record::PIC_READ => Space::Pic,
                    _ => Space::LapicMmio,
                };
                let (reg, value) = (word(log, i + 2), word(log, i + 3));
                i += 4;
                EventKind::Read { space, reg, value }
            }
            record::MSR_READ => {
                let (reg, value) = (word(log, i + 2), word(log, i + 3));
                i += 4;
                EventKind::Read {
                    space: Space::Msr,
                    reg,
                    value,
                }
            }
            record::EXCEPTION => {
                let vector = word(log, i + 2) as u8;
                i += 4;
                EventKind::Exception { vector }
            }
            record::SNAPSHOT => {
                if i + SNAPSHOT_WORDS > words {
                    return Err(corrupt("truncated snapshot"));
                }
                let w = |j: usize| word(log, i + 2 + j);
                let mut s = Snapshot::default();
                for k in 0..8 {
                    s.irr[k] = w(k);
                    s.isr[k] = w(8 + k);
                    s.tmr[k] = w(16 + k);
                }
                s.tpr = w(24) & 0xff;
                s.ppr = w(25) & 0xff;
                for pin in 0..24 {
                    let low = w(26 + pin);
                    let low = low as u64;
                    s.delivery_status[pin] = low & bits::DELIVERY_STATUS != 0;
                    s.remote_irr[pin] = low & bits::REMOTE_IRR != 0;
                }
                i += SNAPSHOT_WORDS;
                EventKind::Snapshot(Box::new(s))
            }
            other => return Err(corrupt(&format!("unknown record kind {other}"))),
        };
        events.push(Event::new(op, kind));
    }
    Ok(events)
}
