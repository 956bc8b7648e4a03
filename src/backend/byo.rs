//! Bring your own IOAPIC: a device under test ([`IoapicDevice`]) as a
//! backend, in process (`alioth-ioapic`, `v86-ioapic`: the model's CPU and
//! local APIC with the device's IOAPIC) and in the split shape on KVM
//! (`kvm-split-ioapic:DEVICE`: KVM's local APIC with the device as the
//! userspace IOAPIC). docs/byo-irqchip.md.
//!
//! The devices are the adapters of the `irqdiff-adapters` crate, built
//! with the `adapters` feature (`cargo build --features adapters`); without
//! it these backends say they are unavailable.

use super::{Availability, BackendKind, OpenError, OpenResult};
use crate::model::device::{IoapicDevice, MessageQueue, Unsupported};
use crate::model::ioapic::{IoapicVersion as ModelVersion, IOREGSEL, IOWIN};
use crate::scenario::{DeliveryMode, DestMode, IoapicVersion, Op, Scenario, Trigger};

/// A device under test.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub name: &'static str,
    pub make: fn(MessageQueue) -> Box<dyn IoapicDevice>,
    pub unsupported: Unsupported,
    /// Its version register's version (bits 7:0).
    pub version: ModelVersion,
}

impl Device {
    /// A device from its maker (probes one instance for its version and
    /// what it declares unsupported).
    pub fn new(name: &'static str, make: fn(MessageQueue) -> Box<dyn IoapicDevice>) -> Device {
        let mut probe = make(MessageQueue::new());
        probe.mmio_write(IOREGSEL, 1);
        let version = if probe.mmio_read(IOWIN) & 0xff == 0x11 {
            ModelVersion::V11
        } else {
            ModelVersion::V20
        };
        Device {
            name,
            make,
            unsupported: probe.unsupported(),
            version,
        }
    }

    /// Why `scenario` needs what the device does not do, if it does.
    pub fn refuses(&self, scenario: &Scenario) -> Option<String> {
        if self.version == ModelVersion::V11
            && scenario.config.ioapic == IoapicVersion::V20
            && (scenario.depends_on_ioapic_version() || scenario.config.directed_eoi)
        {
            return Some(format!(
                "{} is an IOAPIC of version 0x11 (no EOI register); this scenario depends on version 0x20",
                self.name
            ));
        }
        for op in scenario.all_ops() {
            let entry = match *op {
                Op::Route { route, .. } => route.low_dword() as u64 | (route.dest as u64) << 56,
                Op::IoapicWrite { index, value } if is_low(index) => value as u64,
                Op::IoapicWrite { index, value } if is_high(index) => (value as u64) << 32,
                _ => continue,
            };
            if let Some(why) = self.unsupported.refuses_entry(entry & !(1 << 16)) {
                return Some(format!("{} does not support {why}", self.name));
            }
        }
        if let Some(why) = refusable_level(scenario) {
            return Some(format!(
                "a level message the local APIC may refuse ({why}): a device behind an MSI sink \
                 cannot learn whether it was accepted, so its remote IRR is not comparable \
                 (82093AA §3.2.4 bit 14)"
            ));
        }
        None
    }

    /// Rewrites a generated scenario into one the device can run: version
    /// 0x11 config for a 0x11 device, and entries without what it declares
    /// unsupported.
    pub fn fit(&self, scenario: &mut Scenario) {
        if self.version == ModelVersion::V11 {
            scenario.config.ioapic = IoapicVersion::V11;
            scenario.config.directed_eoi = false;
        }
        let u = self.unsupported;
        let level_routes = scenario
            .all_ops()
            .any(|op| matches!(op, Op::Route { route, .. } if route.trigger == Trigger::Level));
        let ops = scenario
            .ops
            .iter_mut()
            .chain(scenario.handlers.values_mut().flatten());
        for op in ops {
            match op {
                Op::Route { route, .. } => {
                    if u.level_triggered {
                        route.trigger = Trigger::Edge;
                    }
                    if u.logical_destination {
                        route.dest_mode = DestMode::Physical;
                    }
                    if u.other_destinations {
                        route.dest = 0;
                    }
                    if u.special_delivery
                        || !matches!(
                            route.delivery,
                            DeliveryMode::Fixed | DeliveryMode::Lowest | DeliveryMode::Nmi
                        )
                    {
                        route.delivery = DeliveryMode::Fixed;
                    }
                    if route.trigger == Trigger::Level {
                        // A level message always accepted (refusable_level).
                        route.dest_mode = DestMode::Physical;
                        route.dest = 0;
                        route.vector |= 0x10;
                        route.delivery = DeliveryMode::Fixed;
                    }
                }
                Op::IoapicWrite { index, value } if is_low(*index) => {
                    if u.level_triggered || *value & 1 << 15 != 0 {
                        *value &= !(1 << 15);
                    }
                    *value &= !(1 << 11 | 7 << 8);
                }
                Op::IoapicWrite { index, value } if is_high(*index) => *value &= 0x00ff_ffff,
                Op::Svr(value) if level_routes => *value |= 1 << 8,
                _ => {}
            }
        }
    }
}

fn is_low(index: u8) -> bool {
    (0x10..0x40).contains(&index) && index % 2 == 0
}

fn is_high(index: u8) -> bool {
    (0x10..0x40).contains(&index) && index % 2 == 1
}

/// A level entry whose message the local APIC may refuse: to a destination
/// other than APIC 0 or logical, an illegal vector, with a software disable
/// of the APIC somewhere in the scenario, or raw entry writes of level.
fn refusable_level(scenario: &Scenario) -> Option<&'static str> {
    let mut level = false;
    for op in scenario.all_ops() {
        match *op {
            Op::Route { route, .. } if route.trigger == Trigger::Level => {
                level = true;
                if route.dest != 0 || route.dest_mode == DestMode::Logical {
                    return Some("a destination other than APIC 0");
                }
                if route.vector < 16 {
                    return Some("an illegal vector");
                }
                if !matches!(route.delivery, DeliveryMode::Fixed | DeliveryMode::Lowest) {
                    return Some("a delivery mode other than fixed");
                }
            }
            Op::IoapicWrite { index, value } if is_low(index) && value & 1 << 15 != 0 => {
                return Some("a raw level entry");
            }
            _ => {}
        }
    }
    let disables = scenario.all_ops().any(|op| {
        matches!(*op, Op::Svr(v) if v & 1 << 8 == 0)
            || matches!(
                *op,
                Op::LapicWrite { offset: 0xf0, .. }
                    | Op::LapicMmioWrite { offset: 0xf0, .. }
                    | Op::ApicBase(_)
            )
    });
    (level && disables).then_some("a software or hardware disable of the local APIC")
}

/// The devices this build has.
pub fn devices() -> Vec<Device> {
    #[cfg(feature = "adapters")]
    {
        irqdiff_adapters::devices()
            .iter()
            .map(|&(name, _, make)| Device::new(name, make))
            .collect()
    }
    #[cfg(not(feature = "adapters"))]
    {
        Vec::new()
    }
}

/// The device `name`, or why not.
pub fn device(name: &str) -> Result<Device, OpenError> {
    devices()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| OpenError::Unavailable {
            name: name.into(),
            why: if cfg!(feature = "adapters") {
                format!("no device named {name} (have: alioth-ioapic, v86-ioapic)")
            } else {
                "the device adapters are not built (cargo build --features adapters)".into()
            },
        })
}

fn probe() -> Availability {
    if cfg!(all(feature = "adapters", target_os = "linux")) {
        Availability::Available
    } else {
        Availability::Unavailable(
            "needs the adapters feature on Linux (cargo build --features adapters)".into(),
        )
    }
}

/// alioth's IoApic in process.
pub const ALIOTH: BackendKind = BackendKind {
    name: "alioth-ioapic",
    description: "alioth 0.12's userspace IOAPIC with the model's CPU and local APIC (in process)",
    takes_options: false,
    probe,
    open: |name, _| {
        Ok(Box::new(super::model::ModelBackend::with_device(device(
            name,
        )?)))
    },
};

/// v86's IOAPIC in process.
pub const V86: BackendKind = BackendKind {
    name: "v86-ioapic",
    description: "native-v86-core 0.1.6's IOAPIC with the model's CPU and local APIC (in process)",
    takes_options: false,
    probe,
    open: |name, _| {
        Ok(Box::new(super::model::ModelBackend::with_device(device(
            name,
        )?)))
    },
};

/// A device as the userspace IOAPIC of KVM's split irqchip.
pub const KVM_SPLIT: BackendKind = BackendKind {
    name: "kvm-split-ioapic:DEVICE",
    description:
        "Linux KVM's local APIC with DEVICE (alioth-ioapic, v86-ioapic) as the userspace IOAPIC",
    takes_options: true,
    probe: || match probe() {
        Availability::Available => (super::kvm_kinds::SPLIT.probe)(),
        adapters => adapters,
    },
    open: open_split,
};

fn open_split(name: &str, options: &str) -> OpenResult {
    let device = device(options).map_err(|e| match e {
        OpenError::Unavailable { why, .. } => OpenError::Unavailable {
            name: name.into(),
            why,
        },
        other => other,
    })?;
    #[cfg(target_os = "linux")]
    {
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        Ok(Box::new(super::kvm::KvmBackend::open_with_device(
            name, device,
        )?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = device;
        Err(OpenError::Unavailable {
            name: name.into(),
            why: "needs Linux".into(),
        })
    }
}
