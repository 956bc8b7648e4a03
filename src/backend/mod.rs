//! Engines that run a scenario and return what the guest observed.
//!
//! Like wasmtime's differential engines: one small trait, one module per
//! irqchip. The registry below is the only place that knows them all.

use crate::scenario::Scenario;
use crate::trace::Trace;

/// Why a backend could not run a scenario at all (as opposed to a run that
/// ended badly, which is a [`Trace`] with outcome `error`). Each variant
/// carries the error it came from; the message repeats it because a
/// failed run's trace keeps only the message.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the backend cannot offer what the scenario asks for: {0}")]
    Unsupported(String),
    #[cfg(target_os = "linux")]
    #[error("{call}: {source}")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Hv(#[from] hvf::api::HvError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("assembling the {what}: {source}")]
    Assemble {
        what: &'static str,
        #[source]
        source: iced_x86::IcedError,
    },
    #[error("{0}")]
    Log(#[from] crate::guest::log::CorruptLog),
    #[error("the guest's event log is full")]
    LogFull,
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
}

impl BackendError {
    /// An I/O failure while doing `what` (`what` names the file or program).
    pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackendError {
        move |source| BackendError::Io {
            what: what.to_string(),
            source,
        }
    }

    /// A KVM ioctl `call` that failed.
    #[cfg(target_os = "linux")]
    pub fn kvm(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BackendError {
        move |source| BackendError::Kvm { call, source }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Why a backend that runs at most `max_cpus` CPUs cannot run `scenario`:
/// more CPUs, or the multi-CPU extension (per-CPU ops and handlers, APIC
/// IDs, APs waiting for SIPI) on a backend of one CPU.
pub fn multi_cpu_unsupported(max_cpus: usize, scenario: &Scenario) -> Option<String> {
    if scenario.cpus() > max_cpus {
        return Some(format!(
            "this backend runs {max_cpus} CPU(s) and the scenario asks for config cpus={}",
            scenario.cpus()
        ));
    }
    if max_cpus == 1 && scenario.uses_smp() {
        return Some(
            "this backend runs one CPU and the scenario uses the multi-CPU extension (apic-ids, ap-start, cpu K: or handler V@K)"
                .into(),
        );
    }
    None
}

/// One irqchip implementation that runs scenarios.
///
/// A backend may keep a VM between runs (`&mut self`); each run starts from
/// the format's start state whatever ran before.
pub trait Backend {
    /// The name the backend was opened with (`kvm`, `sim:level-unmask`, ...).
    fn name(&self) -> &str;

    /// Why this backend cannot run `scenario` as written, if it cannot: the
    /// one place each backend decides it. [`Backend::run`] refuses such a
    /// scenario; [`Backend::fit`] adjusts a generated one until it passes.
    fn unsupported(&self, _scenario: &Scenario) -> Option<String> {
        None
    }

    /// Runs a scenario [`Backend::unsupported`] accepted, to completion,
    /// hang, storm or error.
    fn execute(&mut self, scenario: &Scenario) -> Result<Trace>;

    /// The most CPUs this backend runs a scenario on (`config cpus=N`);
    /// one unless the backend says otherwise.
    fn max_cpus(&self) -> usize {
        1
    }

    /// Runs one scenario, or says why this backend cannot.
    fn run(&mut self, scenario: &Scenario) -> Result<Trace> {
        if let Some(why) = multi_cpu_unsupported(self.max_cpus(), scenario) {
            return Err(BackendError::Unsupported(why));
        }
        match self.unsupported(scenario) {
            Some(why) => Err(BackendError::Unsupported(why)),
            None => self.execute(scenario),
        }
    }

    /// Adjusts a *generated* scenario's config to what this backend can
    /// offer (a campaign calls it before running both sides; a scenario
    /// from a file is never adjusted: it runs as written or fails).
    fn fit(&self, _scenario: &mut Scenario) {}

    /// The hypervisor calls and exits of the last run, in order (for
    /// reports); empty for backends with no hypervisor.
    fn calls(&self) -> Vec<String> {
        Vec::new()
    }

    /// How many scenarios a campaign should hand [`Backend::run_batch`] at
    /// once: 1 unless running them together pays off.
    fn batch_size(&self) -> usize {
        1
    }

    /// Runs several scenarios; backends that can run them faster together
    /// (QEMU: one process for many) override it.
    fn run_batch(&mut self, scenarios: &[Scenario]) -> Vec<Trace> {
        scenarios.iter().map(|s| self.run_to_trace(s)).collect()
    }

    /// Run, turning a backend failure into a trace with outcome `error`.
    fn run_to_trace(&mut self, scenario: &Scenario) -> Trace {
        match self.run(scenario) {
            Ok(trace) => trace,
            Err(e) => Trace::error(self.name(), e.to_string()),
        }
    }
}

/// Whether a backend can run on this host, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable(String),
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}

/// One entry of `irqdiff backends`.
#[derive(Clone, Debug)]
pub struct BackendInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub availability: Availability,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unknown backend `{0}` (run `irqdiff backends` for the list)")]
    Unknown(String),
    #[error("backend `{name}` is unavailable here: {why}")]
    Unavailable { name: String, why: String },
    #[error("backend `{name}`: {why}")]
    Invalid { name: String, why: String },
}

pub mod byo;
pub mod hvf;
#[cfg(target_os = "linux")]
pub mod kvm;
#[cfg(target_os = "linux")]
pub mod kvm_stats;
pub mod model;
pub mod model_smp;
pub mod qemu;
pub mod run;
pub mod sim;

/// What [`BackendKind::open`] returns.
pub type OpenResult = std::result::Result<Box<dyn Backend>, OpenError>;

/// One backend irqdiff knows: how `irqdiff backends` lists it, whether it
/// can run here, and how to open it. Each backend module defines its own;
/// [`REGISTRY`] lists them all.
pub struct BackendKind {
    /// The name `--backend` takes; a family with options shows them after
    /// a colon (`sim:QUIRKS`: the name is `sim:` and the options).
    pub name: &'static str,
    pub description: &'static str,
    /// Whether `--backend NAME:OPTIONS` is accepted.
    pub takes_options: bool,
    /// Whether it can run on this host, and if not, why.
    pub probe: fn() -> Availability,
    /// Opens it: the full name it was asked for, and the options after
    /// the colon (empty without one).
    pub open: fn(name: &str, options: &str) -> OpenResult,
}

impl BackendKind {
    /// The name without its options pattern (`sim` for `sim:QUIRKS`).
    pub fn base(&self) -> &'static str {
        self.name
            .split_once(':')
            .map_or(self.name, |(base, _)| base)
    }
}

/// Every backend irqdiff knows, in the order `irqdiff backends` lists them.
pub const REGISTRY: &[BackendKind] = &[
    model::KIND,
    kvm_kinds::FULL,
    kvm_kinds::SPLIT,
    hvf::FULL,
    hvf::SPLIT,
    hvf::DOUBLE,
    hvf::SPLIT_DOUBLE,
    qemu::TCG,
    qemu::KVM_USERSPACE,
    qemu::KIND,
    sim::KIND,
    byo::ALIOTH,
    byo::V86,
    byo::KVM_SPLIT,
];

/// KVM's entries live here rather than in `kvm.rs`, which only builds on
/// Linux: elsewhere they say why not.
pub(crate) mod kvm_kinds {
    use super::{Availability, BackendKind, OpenResult};

    pub const FULL: BackendKind = kind::<false>(
        "kvm",
        "Linux KVM, in-kernel irqchip (split when the scenario says irqchip=split)",
    );

    pub const SPLIT: BackendKind = kind::<true>(
        "kvm-split",
        "Linux KVM's local APIC with the model's IOAPIC in userspace",
    );

    const fn kind<const SPLIT: bool>(name: &'static str, description: &'static str) -> BackendKind {
        BackendKind {
            name,
            description,
            takes_options: false,
            probe: probe::<SPLIT>,
            open: open::<SPLIT>,
        }
    }

    fn probe<const SPLIT: bool>() -> Availability {
        #[cfg(target_os = "linux")]
        return super::kvm::probe(SPLIT);
        #[cfg(not(target_os = "linux"))]
        Availability::Unavailable("needs Linux".into())
    }

    fn open<const SPLIT: bool>(name: &str, _: &str) -> OpenResult {
        #[cfg(target_os = "linux")]
        {
            let _ = name;
            Ok(Box::new(super::kvm::KvmBackend::open(SPLIT)?))
        }
        #[cfg(not(target_os = "linux"))]
        Err(super::OpenError::Unavailable {
            name: name.into(),
            why: "needs Linux".into(),
        })
    }
}

/// Every backend irqdiff knows, with its availability on this host.
pub fn catalogue() -> Vec<BackendInfo> {
    REGISTRY
        .iter()
        .map(|kind| BackendInfo {
            name: kind.name,
            description: kind.description,
            availability: (kind.probe)(),
        })
        .collect()
}

/// The registry entry `name` opens, and the options it gives.
pub fn lookup(name: &str) -> Option<(&'static BackendKind, &str)> {
    let (base, options) = match name.split_once(':') {
        Some((base, options)) => (base, Some(options)),
        None => (name, None),
    };
    let kind = REGISTRY.iter().find(|k| k.base() == base)?;
    match options {
        Some(_) if !kind.takes_options => None,
        None if kind.name.contains(':') => None,
        _ => Some((kind, options.unwrap_or(""))),
    }
}

/// Open a backend by name.
pub fn open(name: &str) -> OpenResult {
    let (kind, options) = lookup(name).ok_or_else(|| OpenError::Unknown(name.to_string()))?;
    (kind.open)(name, options)
}

/// The preferred real backends, best first; `model` is the fallback.
const PREFERENCE: &[&str] = &["hvf", "kvm"];

/// The best backend available here, and a message saying why it is not a
/// real hypervisor when it falls back to the model.
pub fn best_available() -> (&'static str, Option<String>) {
    let all = catalogue();
    for want in PREFERENCE {
        if let Some(info) = all.iter().find(|i| i.name == *want) {
            if info.availability.is_available() {
                return (info.name, None);
            }
        }
    }
    let why: Vec<String> = all
        .iter()
        .filter(|i| PREFERENCE.contains(&i.name))
        .filter_map(|i| match &i.availability {
            Availability::Unavailable(why) => Some(format!("{}: {}", i.name, why)),
            Availability::Available => None,
        })
        .collect();
    let why = if why.is_empty() {
        "no hypervisor backend is built into this irqdiff".to_string()
    } else {
        why.join("; ")
    };
    (
        "model",
        Some(format!(
            "no hypervisor is available ({why}); falling back to the model backend"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn errors_carry_their_sources() {
        let hv = BackendError::from(hvf::api::HvError {
            call: "hv_vm_create",
            code: 0xfae9_4001_u32 as i32,
        });
        let source = hv.source().expect("an HvError source");
        assert_eq!(source.to_string(), "hv_vm_create failed with 0xfae94001");
        assert_eq!(hv.to_string(), source.to_string());
        let io = BackendError::io("ram-1")(std::io::Error::from(std::io::ErrorKind::NotFound));
        let source = io.source().expect("an io::Error source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
        assert_eq!(io.to_string(), format!("ram-1: {source}"));
        let log = BackendError::from(crate::guest::log::decode(&[0xff; 8]).unwrap_err());
        assert!(log
            .source()
            .is_some_and(|s| s.to_string().contains("at byte 0")));
    }
}
