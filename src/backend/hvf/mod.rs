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

use super::{Backend, BackendError, Result};
use crate::scenario::Scenario;
use crate::trace::Trace;
use api::Hv;
pub use vmm::Workarounds;

/// A backend running the HVF VMM loop over `H`.
pub struct HvfBackend<H: Hv> {
    vmm: vmm::HvfVmm<H>,
    name: String,
}

impl<H: Hv> HvfBackend<H> {
    pub fn new(hv: H, name: &str, split: bool, workarounds: Workarounds) -> Result<HvfBackend<H>> {
        Ok(HvfBackend {
            vmm: vmm::HvfVmm::new(hv, name, split, workarounds)?,
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
        self.vmm.calls.clone()
    }

    fn run(&mut self, scenario: &Scenario) -> Result<Trace> {
        if scenario.config.directed_eoi {
            return Err(BackendError::Unsupported(
                "directed EOI (EOI-broadcast suppression) is not documented for Hypervisor.framework's APIC".into(),
            ));
        }
        let split = self.name.ends_with("split")
            || scenario.config.irqchip == crate::scenario::Irqchip::Split;
        let version_dependent = scenario.all_ops().any(|op| {
            matches!(
                op,
                crate::scenario::Op::IoapicEoi(_) | crate::scenario::Op::IoapicRead(1)
            )
        });
        if !split
            && scenario.config.ioapic == crate::scenario::IoapicVersion::V11
            && version_dependent
        {
            return Err(BackendError::Unsupported(
                "the in-kernel IOAPIC of Hypervisor.framework is taken to be the ICH kind (version 0x20, with the EOI \
                 register); this scenario depends on version 0x11: use irqchip=split"
                    .into(),
            ));
        }
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
