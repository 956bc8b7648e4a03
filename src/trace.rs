//! What the guest observed, in order: the trace of docs/scenario-format.md
//! ("The trace"), serialised exactly as specified there.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// More deliveries than this in one run is a storm (docs/scenario-format.md).
/// The trace keeps the first `STORM_LIMIT` deliveries; the run stops when the
/// 65th would be delivered, which is not recorded.
pub const STORM_LIMIT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every op ran.
    Completed,
    /// The guest halted with nothing that could wake it.
    Hang,
    /// More than [`STORM_LIMIT`] deliveries.
    Storm,
    /// The backend failed; never a divergence by itself.
    Error,
}

/// A read-back of interrupt-controller state (`snapshot`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    /// LAPIC IRR, eight 32-bit words, word 0 (vectors 0-31) first.
    pub irr: [u32; 8],
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub tpr: u32,
    pub ppr: u32,
    /// Remote IRR (bit 14) of each IOAPIC redirection entry.
    pub remote_irr: [bool; 24],
    /// Delivery status (bit 12) of each IOAPIC redirection entry.
    pub delivery_status: [bool; 24],
}

/// Register space of a `read` event (our extension: `ioapic-read`, `lapic-read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    Ioapic,
    Lapic,
    /// `lapic-mmio-read` in x2APIC mode: a load from the disabled MMIO page.
    #[serde(rename = "lapic-mmio")]
    LapicMmio,
    /// `pic-read`: a byte from an 8259 or ELCR port (`reg` is the port).
    Pic,
    /// `tsc-deadline-read`: an MSR (`reg` its number), the value 0 when it
    /// read 0 and 1 otherwise (a TSC value depends on the host).
    Msr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EventKind {
    /// The guest's interrupt entry for `vector` ran.
    Deliver {
        vector: u8,
    },
    Snapshot(Box<Snapshot>),
    /// Extension: the value an `ioapic-read` or `lapic-read` op read.
    Read {
        space: Space,
        reg: u32,
        value: u32,
    },
    /// Extension: a guest op raised an exception (today only #GP, vector
    /// 13); the op had no other effect and the run went on with the next op.
    Exception {
        vector: u8,
    },
}

/// The vector of #GP (SDM vol. 3A §6.15, interrupt 13).
pub const GP_VECTOR: u8 = 13;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// 0-based index of the top-level op during or right after which the
    /// event happened; handler-body events carry the op of their delivery.
    pub op: usize,
    /// Extension: the CPU that observed the event (its index, not its APIC
    /// ID). Omitted from the JSON for CPU 0, so single-CPU traces read and
    /// print as before.
    #[serde(default, skip_serializing_if = "is_cpu0")]
    pub cpu: u8,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn is_cpu0(cpu: &u8) -> bool {
    *cpu == 0
}

impl Event {
    /// An event of CPU 0 (every event of a single-CPU run).
    pub fn new(op: usize, kind: EventKind) -> Event {
        Event { op, cpu: 0, kind }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trace {
    /// The backend's name: borrowed for a fixed name ([`Trace::named`], no
    /// allocation per run), owned otherwise.
    pub backend: Cow<'static, str>,
    pub outcome: Outcome,
    /// The op at which the guest hung (outcome `hang` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang_op: Option<usize>,
    /// What failed (outcome `error` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub events: Vec<Event>,
}

impl Trace {
    pub fn new(backend: impl Into<String>) -> Trace {
        Trace::named(Cow::Owned(backend.into()))
    }

    /// A trace of a backend whose name is fixed (the model's): no
    /// allocation.
    pub fn named(backend: impl Into<Cow<'static, str>>) -> Trace {
        Trace {
            backend: backend.into(),
            outcome: Outcome::Completed,
            hang_op: None,
            error: None,
            events: Vec::new(),
        }
    }

    /// A run that ended in a backend failure.
    pub fn error(backend: impl Into<String>, message: impl Into<String>) -> Trace {
        Trace {
            outcome: Outcome::Error,
            error: Some(message.into()),
            ..Trace::new(backend)
        }
    }

    /// The vectors delivered, in order.
    pub fn deliveries(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.events.iter().filter_map(|e| match e.kind {
            EventKind::Deliver { vector } => Some((e.op, vector)),
            _ => None,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a trace always serialises")
    }
}

impl std::fmt::Display for EventKind {
    /// One short line: `deliver 0x76`, `snapshot irr=... isr=...`, `read ioapic[0x1] = 0x170020`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::Deliver { vector } => write!(f, "deliver {vector:#04x}"),
            EventKind::Snapshot(s) => {
                let bits = |w: &[u32; 8]| {
                    let v: Vec<String> = (0..256usize)
                        .filter(|v| (w[v / 32] >> (v % 32)) & 1 == 1)
                        .map(|v| format!("{v:#04x}"))
                        .collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                let pins = |p: &[bool; 24]| {
                    let v: Vec<String> = (0..24).filter(|&i| p[i]).map(|i| i.to_string()).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                write!(
                    f,
                    "snapshot irr={} isr={} tmr={} tpr={:#x} ppr={:#x} remote_irr={} delivery_status={}",
                    bits(&s.irr),
                    bits(&s.isr),
                    bits(&s.tmr),
                    s.tpr,
                    s.ppr,
                    pins(&s.remote_irr),
                    pins(&s.delivery_status)
                )
            }
            EventKind::Read { space, reg, value } => {
                let space = match space {
                    Space::Ioapic => "ioapic",
                    Space::Lapic => "lapic",
                    Space::LapicMmio => "lapic-mmio",
                    Space::Pic => "pic",
                    Space::Msr => "msr",
                };
                write!(f, "read {space}[{reg:#x}] = {value:#x}")
            }
            EventKind::Exception { vector: GP_VECTOR } => f.write_str("exception #GP"),
            EventKind::Exception { vector } => write!(f, "exception {vector}"),
        }
    }
}
