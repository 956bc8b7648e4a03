//! Documented divergences of real backends (docs/known-divergences.md).
//!
//! A divergence is labelled, never dropped: the campaign still reports it,
//! with the label, so that a maintainer sees it is a known behaviour of this
//! host. Labels apply only where the behaviour was measured on this host:
//! [`host_behaviours`] probes the KVM once per process with two small
//! scenarios, so on a healthy KVM nothing is labelled and every divergence
//! counts.

use std::sync::OnceLock;

use crate::model::{Deviation, Mode, Rule};
use crate::oracle::{Class, Signature};

/// A documented behaviour of a real backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub id: &'static str,
    pub title: &'static str,
    /// The section of docs/known-divergences.md.
    pub doc: &'static str,
    /// The deviations of the model that reproduce it: a cause explained by
    /// exactly these is this documented behaviour ([`documented`]). Empty
    /// where the model has no hook for it yet.
    pub deviations: &'static [Deviation],
}

/// KVM (this host's kvm_pvm): the local APIC never sets the ISR bit on
/// delivery and leaves the vector in the IRR, so PPR stays low, a
/// level-triggered EOI finds nothing in service (no EOI broadcast, remote IRR
/// stuck) and the stale IRR vector is injected again at later VM entries.
pub const KVM_ISR_NOT_SET: Known = Known {
    id: "kvm-isr-not-set",
    title: "KVM: ISR never set on delivery; the vector stays in IRR",
    doc: "docs/known-divergences.md#kvm-isr-not-set",
    deviations: &[Deviation::new(Rule::AcceptedIntoIrr, Mode::Inverted)],
};

/// KVM (this host's kvm_pvm): an interrupt made pending by something the
/// kernel handles itself (a LAPIC or in-kernel IOAPIC access, an EOI, a TPR
/// write, STI) is injected only at the next entry after an exit to
/// userspace, not at the next instruction boundary.
pub const KVM_DEFERRED_INJECTION: Known = Known {
    id: "kvm-deferred-injection",
    title: "KVM: injection waits for the next exit to userspace",
    doc: "docs/known-divergences.md#kvm-deferred-injection",
    deviations: &[Deviation::new(Rule::DispatchAbovePpr, Mode::Late)],
};

/// QEMU: every assert of an unmasked edge pin delivers, even when the line
/// is already asserted (`ioapic_set_irq`, hw/intc/ioapic.c).
pub const QEMU_EDGE_EVERY_ASSERT: Known = Known {
    id: "qemu-edge-every-assert",
    title: "QEMU: a repeated assert of an edge pin delivers again",
    doc: "docs/known-divergences.md#qemu-edge-every-assert",
    deviations: &[Deviation::new(Rule::EdgeNoNewEdge, Mode::Skipped)],
};

/// QEMU's IOAPIC keeps a latched request per pin instead of the line
/// level (`ioapic_set_irq`, `ioapic_service`, `ioapic_mem_write`).
pub const QEMU_IOAPIC_LATCH: Known = Known {
    id: "qemu-ioapic-latch",
    title: "QEMU: the IOAPIC latches requests instead of following the line level",
    doc: "docs/known-divergences.md#qemu-ioapic-latch",
    deviations: &[],
};

/// QEMU's local APIC checks no vector and takes interrupts while
/// software-disabled (`apic_set_irq`, `apic_irq_pending`).
pub const QEMU_LAPIC_ACCEPTS: Known = Known {
    id: "qemu-lapic-accepts",
    title: "QEMU: the local APIC accepts vectors 0-15 and takes interrupts while disabled",
    doc: "docs/known-divergences.md#qemu-lapic-accepts",
    deviations: &[],
};

/// Both of QEMU's irqchips' behaviours in one scenario.
pub const QEMU_IRQCHIP: Known = Known {
    id: "qemu-irqchip",
    title: "QEMU: its IOAPIC latch and local APIC acceptance together",
    doc: "docs/known-divergences.md#qemu-ioapic-latch",
    deviations: &[],
};

/// QEMU's documented behaviours, each as the model quirks that reproduce
/// it, narrowest first (`QEMU_IOAPIC` includes `EDGE_EVERY_ASSERT`).
const QEMU_BEHAVIOURS: [(irqdiff_model::Quirks, Known); 4] = {
    use irqdiff_model::Quirks as Q;
    [
        (Q::EDGE_EVERY_ASSERT, QEMU_EDGE_EVERY_ASSERT),
        (Q::QEMU_IOAPIC, QEMU_IOAPIC_LATCH),
        (Q::QEMU_LAPIC, QEMU_LAPIC_ACCEPTS),
        (Q::QEMU_IOAPIC.union(Q::QEMU_LAPIC), QEMU_IRQCHIP),
    ]
};

/// This host's in-kernel KVM IOAPIC: an edge entry rewritten as level while
/// its line is high sends nothing, even after later exits. Upstream KVM
/// (`arch/x86/kvm/ioapic.c`) keeps the line level of edge pins too
/// (`ioapic_set_irq`) and its `ioapic_write_indirect` sends such a pin, as
/// the model does: this is what this host was seen to do, not upstream's
/// design.
pub const KVM_IOAPIC_LATCH: Known = Known {
    id: "kvm-ioapic-latch",
    title: "KVM (this host): the in-kernel IOAPIC sends nothing when an asserted edge pin becomes level",
    doc: "docs/known-divergences.md#kvm-ioapic-latch",
    deviations: &[Deviation::new(Rule::LevelDelivers, Mode::Skipped)],
};

/// Every documented behaviour.
pub const ALL: [Known; 7] = [
    KVM_ISR_NOT_SET,
    KVM_DEFERRED_INJECTION,
    KVM_IOAPIC_LATCH,
    QEMU_EDGE_EVERY_ASSERT,
    QEMU_IOAPIC_LATCH,
    QEMU_LAPIC_ACCEPTS,
    QEMU_IRQCHIP,
];

/// The documented behaviour of `backend` that a cause explained by exactly
/// `deviations` is: the name attached to that cause.
pub fn documented(backend: &str, deviations: &[Deviation]) -> Option<Known> {
    let family = if backend.starts_with("kvm") {
        "kvm-"
    } else if backend.starts_with("qemu") {
        "qemu-"
    } else {
        return None;
    };
    // The same rules broken (in whatever mode the evidence showed): a
    // program where the stale IRR vector is never taken again cannot tell
    // "ISR not set, IRR kept" from "ISR not set".
    let rules = |set: &[Deviation]| {
        let mut rules: Vec<Rule> = set.iter().map(|d| d.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        rules
    };
    let wanted = rules(deviations);
    ALL.into_iter().find(|k| {
        k.id.starts_with(family) && !k.deviations.is_empty() && rules(k.deviations) == wanted
    })
}

/// The deviation sets of `backend`'s documented behaviours (its family's):
/// hints for diagnosis, tried with one or two more deviations around them.
pub fn hints(backend: &str) -> Vec<Vec<Deviation>> {
    let family = if backend.starts_with("kvm") {
        "kvm-"
    } else if backend.starts_with("qemu") {
        "qemu-"
    } else {
        return Vec::new();
    };
    ALL.into_iter()
        .filter(|k| k.id.starts_with(family) && !k.deviations.is_empty())
        .map(|k| k.deviations.to_vec())
        .collect()
}

/// The documented behaviour with this id.
pub fn by_id(id: &str) -> Option<Known> {
    ALL.into_iter().find(|k| k.id == id)
}

/// What the probes found on this host's KVM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBehaviours {
    pub isr_not_set: bool,
    pub deferred_injection: bool,
    pub ioapic_latch: bool,
}

/// Probes this host's KVM once (both behaviours are properties of the
/// kernel, the same for `kvm` and `kvm-split`).
pub fn host_behaviours() -> HostBehaviours {
    static PROBED: OnceLock<HostBehaviours> = OnceLock::new();
    *PROBED.get_or_init(probe)
}

fn probe() -> HostBehaviours {
    let Ok(mut kvm) = crate::backend::open("kvm") else {
        return HostBehaviours::default();
    };
    let run = |kvm: &mut Box<dyn crate::backend::Backend>, text: &str| {
        kvm.run(&crate::scenario::parse(text).expect("probe parses"))
            .ok()
    };
    // An MSI is injected at its own exit; inside the handler the ISR bit of
    // its vector must be set (SDM §11.8.4).
    let isr_not_set =
        run(&mut kvm, "handler 0x41: snapshot; eoi\nmsi vector=0x41\n").is_some_and(|t| {
            t.events.iter().any(|e| match &e.kind {
                crate::trace::EventKind::Snapshot(s) => s.isr[2] & (1 << 1) == 0,
                _ => false,
            })
        });
    // A self IPI (handled in the kernel) must be delivered during its op.
    let deferred_injection = run(&mut kvm, "self-ipi 0xf1\nnop\nnop\n")
        .is_some_and(|t| t.deliveries().next() != Some((0, 0xf1)));
    // An asserted edge pin rewritten as level must be sent (82093AA
    // §3.2.4); the MSI's exit gives a deferred injection its chance.
    let ioapic_latch = run(
        &mut kvm,
        "handler 0x22: deassert 1; eoi\nroute 1 vector=0x21\nassert 1\n\
         route 1 vector=0x22 level\nnop\nmsi vector=0x30\nnop\n",
    )
    .is_some_and(|t| !t.deliveries().any(|(_, v)| v == 0x22));
    HostBehaviours {
        isr_not_set,
        deferred_injection,
        ioapic_latch,
    }
}

/// The documented behaviour that explains a divergence of `backend` with
/// this signature, if any. Coarse by design: on this host the two KVM
/// behaviours shadow every interrupt that is delivered or acknowledged, so
/// the label names the root cause, and the campaign's signature still tells
/// the findings apart.
///
/// QEMU's behaviours are deterministic and the model has each as a quirk,
/// so a QEMU divergence is labelled only when the model with that quirk
/// reproduces QEMU's trace of `scenario` exactly; whatever it leaves
/// unexplained is a finding.
pub fn label(
    backend: &str,
    sig: &Signature,
    scenario: &crate::scenario::Scenario,
    observed: &crate::trace::Trace,
) -> Option<Known> {
    if let Some(qemu) = crate::backend::qemu::Options::from_name(backend) {
        return qemu_label(qemu, sig, scenario, observed);
    }
    if backend != "kvm" && backend != "kvm-split" {
        return None;
    }
    kvm_label(backend == "kvm", sig)
}

/// A QEMU divergence: QEMU's own irqchip's behaviours where the options
/// put QEMU's APIC or IOAPIC in the path; under `accel=kvm` with KVM's
/// local APIC (`irqchip=on|split`) this host's KVM behaviours too, as on
/// `kvm` (irqchip=on: KVM's IOAPIC as well) and `kvm-split`.
fn qemu_label(
    qemu: crate::backend::qemu::Options,
    sig: &Signature,
    scenario: &crate::scenario::Scenario,
    observed: &crate::trace::Trace,
) -> Option<Known> {
    let own = QEMU_BEHAVIOURS
        .iter()
        .filter(|(quirks, _)| {
            qemu.qemu_lapic()
                || (qemu.qemu_ioapic() && !quirks.contains(irqdiff_model::Quirks::QEMU_LAPIC))
        })
        .find_map(|&(quirks, known)| {
            let mut replay = crate::backend::model::ModelBackend::with_quirks(quirks);
            let trace = crate::backend::Backend::run_to_trace(&mut replay, scenario);
            (crate::oracle::compare(&trace, observed) == crate::oracle::Verdict::Agree)
                .then_some(known)
        });
    if own.is_some() || qemu.qemu_lapic() || qemu.accel != crate::backend::qemu::Accel::Kvm {
        return own;
    }
    kvm_label(!qemu.qemu_ioapic(), sig)
}

/// A divergence of this host's KVM local APIC, with its IOAPIC too when
/// `in_kernel_ioapic` (`kvm`), or the VMM's (`kvm-split`).
fn kvm_label(in_kernel_ioapic: bool, sig: &Signature) -> Option<Known> {
    let host = host_behaviours();
    let rule = sig.rule.as_str();
    if host.ioapic_latch
        && in_kernel_ioapic
        && !sig.split
        && sig.class == Class::MissedDelivery
        && sig.op_kind == "route"
        && rule == "level-delivers"
    {
        return Some(KVM_IOAPIC_LATCH);
    }
    match sig.class {
        // A stale IRR vector re-injected, or in-service state that is never set.
        Class::ExtraDelivery | Class::EarlyDelivery | Class::Storm if host.isr_not_set => {
            Some(KVM_ISR_NOT_SET)
        }
        // An IOAPIC register read counts too: it shows the remote IRR that
        // the EOI which never reached the IOAPIC left set (bit 14).
        Class::StateMismatch
            if host.isr_not_set
                && matches!(
                    rule,
                    "isr" | "irr" | "ppr" | "tmr" | "lapic" | "remote-irr" | "ioapic"
                ) =>
        {
            Some(KVM_ISR_NOT_SET)
        }
        // No ISR bit, so the EOI is not broadcast and nothing is re-sent.
        Class::MissedDelivery if host.isr_not_set && rule == "eoi-redelivers" => {
            Some(KVM_ISR_NOT_SET)
        }
        Class::MissedDelivery
        | Class::LateDelivery
        | Class::Order
        | Class::WrongVector
        | Class::Hang
            if host.deferred_injection =>
        {
            Some(KVM_DEFERRED_INJECTION)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_documented_only_by_its_exact_deviations_on_its_backend() {
        let isr = [Deviation::new(Rule::AcceptedIntoIrr, Mode::Skipped)];
        assert_eq!(documented("kvm", &isr), Some(KVM_ISR_NOT_SET));
        assert_eq!(documented("kvm-split", &isr), Some(KVM_ISR_NOT_SET));
        assert_eq!(documented("sim:isr-never-set", &isr), None);
        assert_eq!(documented("qemu-tcg", &isr), None);
        let more = [isr[0], Deviation::new(Rule::EoiBroadcast, Mode::Skipped)];
        assert_eq!(documented("kvm", &more), None);
        assert_eq!(documented("kvm", &[]), None);
    }
}
