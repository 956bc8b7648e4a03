//! Engines that run a scenario and return what the guest observed.
//!
//! Like wasmtime's differential engines: one small trait, one module per
//! irqchip. The registry below is the only place that knows them all.

use crate::scenario::Scenario;
use crate::trace::Trace;

/// Why a backend could not run a scenario at all (as opposed to a run that
/// ended badly, which is a [`Trace`] with outcome `error`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Failed(String),
    #[error("the backend cannot offer what the scenario asks for: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// One irqchip implementation that runs scenarios.
///
/// A backend may keep a VM between runs (`&mut self`); each run starts from
/// the format's start state whatever ran before.
pub trait Backend {
    /// The name the backend was opened with (`kvm`, `sim:level-unmask`, ...).
    fn name(&self) -> &str;
    /// Run one scenario to completion, hang, storm or error.
    fn run(&mut self, scenario: &Scenario) -> Result<Trace>;

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

pub mod hvf;
#[cfg(target_os = "linux")]
pub mod kvm;
pub mod model;
pub mod qemu;
pub mod sim;

/// Every backend irqdiff knows, with its availability on this host.
pub fn catalogue() -> Vec<BackendInfo> {
    vec![
        BackendInfo {
            name: "model",
            description: "the reference model (pure Rust, no VM)",
            availability: Availability::Available,
        },
        BackendInfo {
            name: "kvm",
            description:
                "Linux KVM, in-kernel irqchip (split when the scenario says irqchip=split)",
            availability: kvm_probe(false),
        },
        BackendInfo {
            name: "kvm-split",
            description: "Linux KVM's local APIC with the model's IOAPIC in userspace",
            availability: kvm_probe(true),
        },
        BackendInfo {
            name: "hvf",
            description:
                "macOS Hypervisor.framework, in-kernel APIC, IOAPIC and PIC (HV_VM_ACCEL_APIC)",
            availability: hvf_availability(),
        },
        BackendInfo {
            name: "hvf-split",
            description: "Hypervisor.framework's APIC with the model's IOAPIC in userspace",
            availability: hvf_availability(),
        },
        BackendInfo {
            name: "qemu-tcg",
            description:
                "QEMU's emulated APIC and IOAPIC under TCG (a second, independent implementation)",
            availability: qemu::probe(),
        },
        BackendInfo {
            name: "qemu-kvm-userspace",
            description: "QEMU's APIC and IOAPIC on KVM's CPU (kernel-irqchip=off)",
            availability: match (qemu::probe(), kvm_probe(false)) {
                (Availability::Available, Availability::Available) => Availability::Available,
                (Availability::Unavailable(why), _) | (_, Availability::Unavailable(why)) => {
                    Availability::Unavailable(why)
                }
            },
        },
        BackendInfo {
            name: "sim:QUIRKS",
            description:
                "the model with named bugs switched on (sim:hvf-known, sim:none, sim:QUIRK,QUIRK)",
            availability: Availability::Available,
        },
    ]
}

/// Open a backend by name.
pub fn open(name: &str) -> std::result::Result<Box<dyn Backend>, OpenError> {
    if let Some(spec) = name.strip_prefix("sim:") {
        return Ok(Box::new(sim::SimBackend::open(spec)?));
    }
    // `hvf` and `hvf-split`, optionally with `:WORKAROUND,...`.
    let (base, workarounds) = name.split_once(':').unwrap_or((name, ""));
    if base == "hvf" || base == "hvf-split" {
        let workarounds =
            hvf::parse_workarounds(workarounds).map_err(|why| OpenError::Invalid {
                name: name.into(),
                why,
            })?;
        return open_hvf(name, base == "hvf-split", workarounds);
    }
    match name {
        "model" => Ok(Box::new(model::ModelBackend::new())),
        "qemu-tcg" => Ok(Box::new(qemu::QemuBackend::open(false)?)),
        "qemu-kvm-userspace" => Ok(Box::new(qemu::QemuBackend::open(true)?)),
        #[cfg(target_os = "linux")]
        "kvm" => Ok(Box::new(kvm::KvmBackend::open(false)?)),
        #[cfg(target_os = "linux")]
        "kvm-split" => Ok(Box::new(kvm::KvmBackend::open(true)?)),
        #[cfg(not(target_os = "linux"))]
        "kvm" | "kvm-split" => Err(OpenError::Unavailable {
            name: name.into(),
            why: "needs Linux".into(),
        }),
        other => Err(OpenError::Unknown(other.to_string())),
    }
}

/// Hypervisor.framework's APIC API exists on Intel Macs (macOS 12+) only.
fn hvf_availability() -> Availability {
    if cfg!(all(target_os = "macos", target_arch = "x86_64")) {
        Availability::Available
    } else {
        Availability::Unavailable(
            "needs macOS on Intel (Hypervisor.framework with HV_VM_ACCEL_APIC)".into(),
        )
    }
}

fn open_hvf(
    name: &str,
    split: bool,
    workarounds: hvf::Workarounds,
) -> std::result::Result<Box<dyn Backend>, OpenError> {
    #[cfg(all(target_os = "macos", target_arch = "x86_64"))]
    {
        let backend = hvf::HvfBackend::new(
            hvf::framework::Framework::default(),
            name,
            split,
            workarounds,
        )
        .map_err(|e| OpenError::Unavailable {
            name: name.into(),
            why: e.to_string(),
        })?;
        Ok(Box::new(backend))
    }
    #[cfg(not(all(target_os = "macos", target_arch = "x86_64")))]
    {
        let _ = (split, workarounds);
        let Availability::Unavailable(why) = hvf_availability() else {
            unreachable!("HVF is unavailable here")
        };
        Err(OpenError::Unavailable {
            name: name.into(),
            why,
        })
    }
}

fn kvm_probe(split: bool) -> Availability {
    #[cfg(target_os = "linux")]
    return kvm::probe(split);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = split;
        Availability::Unavailable("needs Linux".into())
    }
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
