//! Apple Hypervisor.framework (macOS 12+, Intel) with the in-kernel APIC,
//! IOAPIC and ATPIC (`HV_VM_ACCEL_APIC`): backends `hvf` and `hvf-split`.
//!
//! The VMM loop ([`vmm`]) is written against one small trait over the
//! framework's calls ([`api::Hv`]): the real framework on Intel Macs
//! (`framework`), and on every host a test double built on the model
//! ([`double`]), which is how the loop is tested here. See docs/hvf.md.

pub mod api;
pub mod double;
#[cfg(all(target_os = "macos", target_arch = "x86_64"))]
pub mod framework;
pub mod vmm;

use super::run::Shape;
use super::{Availability, Backend, BackendKind, OpenError, OpenResult, Result};
use crate::scenario::{IoapicVersion, Op, Scenario};
use crate::trace::Trace;
use api::Hv;
pub use vmm::Workarounds;

pub const FULL: BackendKind = kind(
    "hvf",
    "macOS Hypervisor.framework, in-kernel APIC, IOAPIC and PIC (HV_VM_ACCEL_APIC)",
    |name, workarounds| open(name, Shape::Full, workarounds),
);

pub const SPLIT: BackendKind = kind(
    "hvf-split",
    "Hypervisor.framework's APIC with the model's IOAPIC in userspace",
    |name, workarounds| open(name, Shape::Split, workarounds),
);

/// Both shapes take `:WORKAROUND,...` and run where the framework does.
const fn kind(
    name: &'static str,
    description: &'static str,
    open: fn(&str, &str) -> OpenResult,
) -> BackendKind {
    BackendKind {
        name,
        description,
        takes_options: true,
        probe: availability,
        open,
    }
}

/// Hypervisor.framework's APIC API exists on Intel Macs (macOS 12+) only.
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

/// A backend running the HVF VMM loop over `H`.
pub struct HvfBackend<H: Hv> {
    vmm: vmm::HvfVmm<H>,
    name: String,
}

impl<H: Hv> HvfBackend<H> {
    pub fn new(hv: H, name: &str, shape: Shape, workarounds: Workarounds) -> Result<HvfBackend<H>> {
        Ok(HvfBackend {
            vmm: vmm::HvfVmm::new(hv, name, shape, workarounds)?,
            name: name.to_string(),
        })
    }

    pub fn hv(&mut self) -> &mut H {
        self.vmm.hv()
    }
}

impl<H: Hv> Backend for HvfBackend<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn calls(&self) -> Vec<String> {
        self.vmm.calls.lines()
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        if scenario.config.directed_eoi {
            return Some(
                "directed EOI (EOI-broadcast suppression) is not documented for Hypervisor.framework's APIC".into(),
            );
        }
        let version_dependent = scenario
            .all_ops()
            .any(|op| matches!(op, Op::IoapicEoi(_) | Op::IoapicRead(1)));
        if Shape::for_run(self.vmm.opened(), scenario) == Shape::Full
            && scenario.config.ioapic == IoapicVersion::V11
            && version_dependent
        {
            return Some(
                "the in-kernel IOAPIC of Hypervisor.framework is taken to be the ICH kind (version 0x20, with the EOI \
                 register); this scenario depends on version 0x11: use irqchip=split"
                    .into(),
            );
        }
        None
    }

    /// A generated scenario gets what HVF offers: no directed EOI, and on
    /// the full shape the ICH IOAPIC (version 0x20).
    fn fit(&self, scenario: &mut Scenario) {
        if self.unsupported(scenario).is_some() {
            scenario.config.directed_eoi = false;
            scenario.config.ioapic = IoapicVersion::V20;
        }
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        self.vmm.run_scenario(scenario)
    }
}

/// Parses `--workaround` names (kebab case of [`Workarounds`]).
pub fn parse_workarounds(names: &str) -> std::result::Result<Workarounds, String> {
    let mut w = Workarounds::empty();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let flag = name.to_ascii_uppercase().replace('-', "_");
        w |= Workarounds::from_name(&flag).ok_or_else(|| {
            let known: Vec<String> = Workarounds::all()
                .iter_names()
                .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
                .collect();
            format!("unknown workaround `{name}`; known: {}", known.join(", "))
        })?;
    }
    Ok(w)
}
