//! Apple Hypervisor.framework (macOS 12+, Intel) with the in-kernel APIC,
//! IOAPIC and ATPIC (`HV_VM_ACCEL_APIC`): backends `hvf` and `hvf-split`,
//! and `hvf-double`/`hvf-split-double`, the same VMM loop against the
//! strict test double on any host.
//!
//! The VMM loop ([`vmm`]) is written against one small trait over the
//! framework's calls ([`api::Hv`], [`api::HvExt`]): the real framework on
//! Intel Macs (`framework`), and on every host a test double built on the
//! model ([`double`]), which is how the loop is tested here. See docs/hvf.md.

pub mod api;
pub mod double;
#[cfg(all(target_os = "macos", target_arch = "x86_64"))]
pub mod framework;
pub mod vmm;

use super::run::Shape;
use super::{Availability, Backend, BackendKind, OpenError, OpenResult, Result};
use crate::model::Quirks;
use crate::scenario::Scenario;
use crate::trace::Trace;
use api::{Hv, HvExt};
pub use vmm::Workarounds;

pub const FULL: BackendKind = kind(
    "hvf",
    "macOS Hypervisor.framework, in-kernel APIC, IOAPIC and PIC (HV_VM_ACCEL_APIC)",
    availability,
    |name, workarounds| open(name, Shape::Full, workarounds),
);

pub const SPLIT: BackendKind = kind(
    "hvf-split",
    "Hypervisor.framework's APIC with the model's IOAPIC in userspace",
    availability,
    |name, workarounds| open(name, Shape::Split, workarounds),
);

pub const DOUBLE: BackendKind = kind(
    "hvf-double",
    "the hvf VMM loop against the strict Hypervisor.framework double (hvf-double:QUIRKS, e.g. hvf-double:hvf-known)",
    || Availability::Available,
    |name, options| open_double(name, Shape::Full, options),
);

pub const SPLIT_DOUBLE: BackendKind = kind(
    "hvf-split-double",
    "the hvf-split VMM loop against the strict Hypervisor.framework double (hvf-split-double:QUIRKS)",
    || Availability::Available,
    |name, options| open_double(name, Shape::Split, options),
);

/// Every shape takes `:OPTION,...` (workarounds; for the doubles also
/// `sim:` quirk names).
const fn kind(
    name: &'static str,
    description: &'static str,
    probe: fn() -> Availability,
    open: fn(&str, &str) -> OpenResult,
) -> BackendKind {
    BackendKind {
        name,
        description,
        takes_options: true,
        probe,
        open,
    }
}

/// Hypervisor.framework's APIC API exists on Intel Macs (macOS 12+) only.
/// Creates no VM: the process's one VM is the backend's (Apple: one VM per
/// process).
fn availability() -> Availability {
    if cfg!(all(target_os = "macos", target_arch = "x86_64")) {
        Availability::Available
    } else {
        Availability::Unavailable(
            "needs macOS on Intel (Hypervisor.framework with HV_VM_ACCEL_APIC)".into(),
        )
    }
}

/// Opens `hvf` or `hvf-split` with `--workaround` names `workarounds`.
fn open(name: &str, shape: Shape, workarounds: &str) -> OpenResult {
    let workarounds = parse_workarounds(workarounds).map_err(|why| OpenError::Invalid {
        name: name.into(),
        why,
    })?;
    #[cfg(all(target_os = "macos", target_arch = "x86_64"))]
    {
        let backend = HvfBackend::new(framework::Framework::default(), name, shape, workarounds)
            .map_err(|e| OpenError::Unavailable {
                name: name.into(),
                why: e.to_string(),
            })?;
        Ok(Box::new(backend))
    }
    #[cfg(not(all(target_os = "macos", target_arch = "x86_64")))]
    {
        let _ = (shape, workarounds);
        let Availability::Unavailable(why) = availability() else {
            unreachable!("HVF is unavailable here")
        };
        Err(OpenError::Unavailable {
            name: name.into(),
            why,
        })
    }
}

/// Opens `hvf-double` or `hvf-split-double`: `options` mixes workaround
/// names and `sim:` quirk names (the double's in-kernel bugs).
fn open_double(name: &str, shape: Shape, options: &str) -> OpenResult {
    let invalid = |why| OpenError::Invalid {
        name: name.into(),
        why,
    };
    let (workarounds, quirks) = parse_double_options(options).map_err(invalid)?;
    let config = double::StrictConfig::new(&double::Process::new());
    let hv = double::Double::strict(config, quirks);
    let backend = HvfBackend::new(hv, name, shape, workarounds)
        .map_err(|e| invalid(format!("the VMM loop failed to start on the double: {e}")))?;
    Ok(Box::new(backend))
}

/// Splits `hvf-double` options into workarounds and quirks.
pub fn parse_double_options(options: &str) -> std::result::Result<(Workarounds, Quirks), String> {
    let mut workarounds = Workarounds::empty();
    let mut quirks = Vec::new();
    for part in options.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match parse_workarounds(part) {
            Ok(w) => workarounds |= w,
            Err(_) => quirks.push(part),
        }
    }
    let quirks = if quirks.is_empty() {
        Quirks::empty()
    } else {
        super::sim::parse_quirks(&quirks.join(","))
            .map_err(|why| format!("{why}; or a workaround: {}", workaround_names().join(", ")))?
    };
    Ok((workarounds, quirks))
}

/// A backend running the HVF VMM loop over `H`.
pub struct HvfBackend<H: Hv + HvExt + Send> {
    vmm: vmm::HvfVmm<H>,
    name: String,
}

impl<H: Hv + HvExt + Send> HvfBackend<H> {
    pub fn new(hv: H, name: &str, shape: Shape, workarounds: Workarounds) -> Result<HvfBackend<H>> {
        Ok(HvfBackend {
            vmm: vmm::HvfVmm::new(hv, name, shape, workarounds)?,
            name: name.to_string(),
        })
    }

    pub fn hv(&mut self) -> &mut H {
        self.vmm.hv()
    }

    pub fn vmm(&self) -> &vmm::HvfVmm<H> {
        &self.vmm
    }
}

impl<H: Hv + HvExt + Send> Backend for HvfBackend<H> {
    fn name(&self) -> &str {
        &self.name
    }

    /// One vCPU per thread, up to the format's 8 (docs/hvf.md, "Several
    /// vCPUs").
    fn max_cpus(&self) -> usize {
        vmm::MAX_CPUS
    }

    fn calls(&self) -> Vec<String> {
        self.vmm.calls.lines()
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        if scenario.uses_timer_ops() {
            if let Some(why) = self.vmm.lapic_timer_unsupported() {
                return Some(why.into());
            }
        }
        if scenario.config.directed_eoi {
            return Some(
                "directed EOI (EOI-broadcast suppression) is not documented for Hypervisor.framework's APIC".into(),
            );
        }
        self.vmm.unsupported(scenario)
    }

    /// A generated scenario gets what HVF offers: no directed EOI, the
    /// in-kernel IOAPIC's version on the full shape, xAPIC while x2APIC is
    /// unavailable.
    fn fit(&self, scenario: &mut Scenario) {
        scenario.config.directed_eoi = false;
        if self.vmm.lapic_timer_unsupported().is_some() {
            scenario.retain_ops(|op| !op.is_timer_op());
        }
        self.vmm.fit(scenario);
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        self.vmm.run_scenario(scenario)
    }
}

fn workaround_names() -> Vec<String> {
    Workarounds::all()
        .iter_names()
        .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
        .collect()
}

/// Parses `--workaround` names (kebab case of [`Workarounds`]).
pub fn parse_workarounds(names: &str) -> std::result::Result<Workarounds, String> {
    let mut w = Workarounds::empty();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let flag = name.to_ascii_uppercase().replace('-', "_");
        w |= Workarounds::from_name(&flag).ok_or_else(|| {
            format!(
                "unknown workaround `{name}`; known: {}",
                workaround_names().join(", ")
            )
        })?;
    }
    Ok(w)
}
