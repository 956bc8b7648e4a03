//! Which QEMU runs, and how: the binary (`--qemu PATH`, `IRQDIFF_QEMU`) and
//! the `qemu:accel=...,irqchip=...,machine=...` options.

use std::fmt;
use std::path::PathBuf;

/// The environment variable that names the QEMU binary (`--qemu PATH` sets
/// it, so that campaign worker processes inherit it).
pub const QEMU_ENV: &str = "IRQDIFF_QEMU";
/// The QEMU run when [`QEMU_ENV`] is not set: the one on PATH.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The QEMU binary every invocation (probe, runs, batches) uses.
pub fn binary() -> PathBuf {
    std::env::var_os(QEMU_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_QEMU), PathBuf::from)
}

/// QEMU's accelerator (`-accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
    /// macOS' Hypervisor.framework (QEMU's `target/i386/hvf`).
    Hvf,
}

/// KVM's `kernel-irqchip`: where the local APIC and the IOAPIC live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelIrqchip {
    /// Both in the kernel (`hw/i386/kvm/apic.c`, `ioapic.c` front ends).
    On,
    /// The local APIC in the kernel, the IOAPIC in QEMU (`hw/intc/ioapic.c`).
    Split,
    /// Both in QEMU (removed for KVM in QEMU 8.0, commit eaaaf8abdc9a).
    Off,
}

/// The machine type (`-machine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// i440FX + PIIX.
    Pc,
    /// Q35 + ICH9.
    Q35,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
        }
    }
}

impl KernelIrqchip {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelIrqchip::On => "on",
            KernelIrqchip::Split => "split",
            KernelIrqchip::Off => "off",
        }
    }
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// A `qemu` backend's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub accel: Accel,
    /// `None`: the accelerator's default (KVM: `on`, QEMU's default; TCG
    /// and mainline HVF: QEMU's own APIC and IOAPIC).
    pub irqchip: Option<KernelIrqchip>,
    pub machine: Machine,
}

impl Options {
    /// `qemu-tcg`.
    pub const TCG: Options = Options {
        accel: Accel::Tcg,
        irqchip: None,
        machine: Machine::Pc,
    };
    /// `qemu-kvm-userspace`.
    pub const KVM_USERSPACE: Options = Options {
        accel: Accel::Kvm,
        irqchip: Some(KernelIrqchip::Off),
        machine: Machine::Pc,
    };

    /// Parses `accel=tcg|kvm|hvf,irqchip=on|split|off,machine=pc|q35` (each
    /// optional; `accel` defaults to `tcg`, `machine` to `pc`).
    pub fn parse(text: &str) -> Result<Options, String> {
        let mut options = Options::TCG;
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected KEY=VALUE (accel, irqchip, machine)"))?;
            let bad = |allowed: &str| format!("`{item}`: {key} is one of {allowed}");
            match key {
                "accel" => {
                    options.accel = match value {
                        "tcg" => Accel::Tcg,
                        "kvm" => Accel::Kvm,
                        "hvf" => Accel::Hvf,
                        _ => return Err(bad("tcg, kvm, hvf")),
                    }
                }
                "irqchip" => {
                    options.irqchip = Some(match value {
                        "on" => KernelIrqchip::On,
                        "split" => KernelIrqchip::Split,
                        "off" => KernelIrqchip::Off,
                        _ => return Err(bad("on, split, off")),
                    })
                }
                "machine" => {
                    options.machine = match value {
                        "pc" => Machine::Pc,
                        "q35" => Machine::Q35,
                        _ => return Err(bad("pc, q35")),
                    }
                }
                _ => {
                    return Err(format!(
                        "`{item}`: unknown option `{key}` (accel, irqchip, machine)"
                    ))
                }
            }
        }
        if options.accel == Accel::Tcg && options.irqchip.is_some() {
            return Err("irqchip= applies to accel=kvm (and accel=hvf), not to TCG".into());
        }
        Ok(options)
    }

    /// The options of a backend name: `qemu-tcg`, `qemu-kvm-userspace` or
    /// `qemu:OPTIONS`; `None` for any other name.
    pub fn from_name(name: &str) -> Option<Options> {
        match name {
            "qemu-tcg" => Some(Options::TCG),
            "qemu-kvm-userspace" => Some(Options::KVM_USERSPACE),
            _ => Options::parse(name.strip_prefix("qemu:")?).ok(),
        }
    }

    /// The options a run of `scenario` uses: as `kvm` does for
    /// `irqchip=split` (docs/scenario-format.md), a split-shape scenario on
    /// `accel=kvm,irqchip=on` runs with `kernel-irqchip=split`; everything
    /// else as given.
    pub fn for_scenario(&self, scenario: &crate::scenario::Scenario) -> Options {
        if self.accel == Accel::Kvm
            && self.irqchip() == KernelIrqchip::On
            && scenario.config.irqchip == crate::scenario::Irqchip::Split
        {
            Options {
                irqchip: Some(KernelIrqchip::Split),
                ..*self
            }
        } else {
            *self
        }
    }

    /// Where the local APIC and IOAPIC live, the accelerator's default
    /// filled in.
    pub fn irqchip(&self) -> KernelIrqchip {
        match (self.accel, self.irqchip) {
            (_, Some(chip)) => chip,
            (Accel::Kvm, None) => KernelIrqchip::On,
            (Accel::Tcg | Accel::Hvf, None) => KernelIrqchip::Off,
        }
    }

    /// Whether the local APIC is QEMU's `hw/intc/apic.c`.
    pub fn qemu_lapic(&self) -> bool {
        self.irqchip() == KernelIrqchip::Off
    }

    /// Whether the IOAPIC is QEMU's `hw/intc/ioapic.c`.
    pub fn qemu_ioapic(&self) -> bool {
        self.irqchip() != KernelIrqchip::On
    }

    /// `-accel`'s argument.
    pub fn accel_arg(&self) -> String {
        // TCG has no kernel-irqchip; mainline HVF has no such property
        // either: pass it only when asked for (a branch with HVF's in-kernel
        // APIC may take it).
        if self.accel == Accel::Tcg || (self.accel == Accel::Hvf && self.irqchip.is_none()) {
            return self.accel.as_str().into();
        }
        format!(
            "{},kernel-irqchip={}",
            self.accel.as_str(),
            self.irqchip().as_str()
        )
    }

    /// `-machine`'s argument. pit=off: the PIT comes out of reset counting
    /// on ISA IRQ 0, which QEMU routes to IOAPIC pin 2 (an edge every 55 ms
    /// a scenario did not ask for); hpet=off: no other timer on the IOAPIC.
    pub fn machine_arg(&self) -> &'static str {
        match self.machine {
            Machine::Pc => "pc,pit=off,hpet=off",
            Machine::Q35 => "q35,pit=off,hpet=off",
        }
    }
}

impl fmt::Display for Options {
    /// The canonical `qemu:` form, every option spelled out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "qemu:accel={}", self.accel.as_str())?;
        if self.accel != Accel::Tcg {
            write!(f, ",irqchip={}", self.irqchip().as_str())?;
        }
        write!(f, ",machine={}", self.machine.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_defaults_and_aliases() {
        assert_eq!(Options::parse(""), Ok(Options::TCG));
        assert_eq!(Options::from_name("qemu:accel=tcg"), Some(Options::TCG));
        assert_eq!(
            Options::from_name("qemu:accel=kvm,irqchip=off"),
            Some(Options::KVM_USERSPACE)
        );
        let split = Options::parse("accel=kvm,irqchip=split,machine=q35").unwrap();
        assert_eq!(split.irqchip(), KernelIrqchip::Split);
        assert!(split.qemu_ioapic() && !split.qemu_lapic());
        assert_eq!(split.accel_arg(), "kvm,kernel-irqchip=split");
        assert_eq!(split.machine_arg(), "q35,pit=off,hpet=off");
        assert_eq!(
            split.to_string(),
            "qemu:accel=kvm,irqchip=split,machine=q35"
        );
        // KVM's default is QEMU's: both irqchips in the kernel.
        let kvm = Options::parse("accel=kvm").unwrap();
        assert_eq!(kvm.irqchip(), KernelIrqchip::On);
        assert!(!kvm.qemu_ioapic() && !kvm.qemu_lapic());
        assert_eq!(Options::parse("accel=hvf").unwrap().accel_arg(), "hvf");
        assert_eq!(Options::from_name("kvm"), None);
    }

    #[test]
    fn bad_options_name_what_is_wrong() {
        assert_eq!(
            Options::parse("accel=xen"),
            Err("`accel=xen`: accel is one of tcg, kvm, hvf".into())
        );
        assert_eq!(
            Options::parse("accel=tcg,irqchip=split"),
            Err("irqchip= applies to accel=kvm (and accel=hvf), not to TCG".into())
        );
        assert!(Options::parse("smp=2")
            .unwrap_err()
            .contains("unknown option `smp`"));
        assert!(Options::parse("kvm")
            .unwrap_err()
            .contains("expected KEY=VALUE"));
    }
}
