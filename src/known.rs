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

/// KVM (this host's kvm_pvm): a level-triggered interrupt's EOI reaches
/// the IOAPIC at the first exit after its injection, before the handler
/// writes EOI (with the IOAPIC in userspace: `KVM_EXIT_IOAPIC_EOI` on the
/// `KVM_RUN` after the first exit to userspace). Upstream KVM sends it from
/// `apic_set_eoi` (`kvm_ioapic_send_eoi`), on the guest's EOI write.
pub const KVM_EARLY_EOI: Known = Known {
    id: "kvm-early-eoi",
    title: "KVM: a level interrupt's EOI reaches the IOAPIC at the first exit after its injection",
    doc: "docs/known-divergences.md#kvm-early-eoi",
    deviations: &[Deviation::new(Rule::EoiBroadcast, Mode::Inverted)],
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

/// KVM (upstream, `kvm_irq_delivery_to_apic`, arch/x86/kvm/irq_comm.c):
/// a lowest-priority message with the physical broadcast destination 0xFF
/// (IPI, IOAPIC route or MSI) is delivered as fixed to every CPU ("apic:
/// phys broadcast and lowest prio"), where the model (SDM §11.6.2.4: one
/// processor of those the destination names) delivers it to one CPU.
pub const KVM_LOWEST_BROADCAST_FIXED: Known = Known {
    id: "kvm-lowest-broadcast-fixed",
    title: "KVM: a lowest-priority message to the physical broadcast 0xFF reaches every CPU",
    doc: "docs/known-divergences.md#kvm-lowest-broadcast-fixed",
    deviations: &[],
};

/// KVM (upstream, `kvm_apic_map_get_dest_lapic`, arch/x86/kvm/lapic.c):
/// with vector hashing (the `kvm.vector_hashing` parameter, on by
/// default), a logical lowest-priority message that takes the optimized
/// map goes to the (vector mod N)th of the N positions its destination
/// bitmap names, whether or not an APIC holds that position; if none does,
/// the message is dropped (`kvm_apic_disabled_lapic_found`). The map always
/// has room for 256 APIC IDs (`kvm_recalculate_apic_map`, `max_id = 255`),
/// so an x2APIC cluster keeps all 16 positions of the bitmap; in xAPIC
/// flat mode a position is an LDR bit. IPIs, MSIs and IOAPIC routes alike
/// ([`lowest_hashed_to_absent`] says which messages). The model
/// (SDM vol. 3A §11.6.2.4, §11.12.10) picks among the APICs the
/// destination matches, so it always delivers to one.
pub const KVM_LOWEST_HASHED_TO_ABSENT: Known = Known {
    id: "kvm-lowest-hashed-to-absent",
    title: "KVM: a logical lowest-priority message hashed to a position no APIC holds is dropped",
    doc: "docs/known-divergences.md#kvm-lowest-hashed-to-absent",
    deviations: &[],
};

/// KVM (upstream, `__kvm_apic_set_base`, arch/x86/kvm/lapic.c): setting
/// IA32_APIC_BASE's enable bit again after clearing it resets only the
/// xAPIC ID; SVR (software enable), the LVTs and the rest keep what they
/// had, where the model gives the APIC its power-up state (SDM §11.4.3:
/// SVR 0xFF, software-disabled). The model's `apic-base-transition/late`
/// (the state kept until a later INIT) reproduces it.
pub const KVM_APIC_REENABLE_KEEPS_STATE: Known = Known {
    id: "kvm-apic-reenable-keeps-state",
    title: "KVM: re-enabling the APIC in IA32_APIC_BASE keeps SVR and the LVTs",
    doc: "docs/known-divergences.md#kvm-apic-reenable-keeps-state",
    deviations: &[Deviation::new(Rule::ApicBaseTransition, Mode::Late)],
};

/// QEMU's local APIC in x2APIC mode (TCG, QEMU 9.0+): `apic_msr_write`
/// and `apic_msr_read` (`hw/intc/apic.c`, reached from `helper_wrmsr` /
/// `helper_rdmsr` in `target/i386/tcg/system/misc_helper.c`) go through
/// `apic_register_write` / `apic_register_read`, which fault (return -1,
/// so #GP) only on the registers that x2APIC mode removes (ID and LDR
/// writes, DFR, ICR high writes) and on unknown indexes. Writes of the
/// read-only registers (version, APR, PPR, ISR/TMR/IRR, current count) do
/// nothing, SELF IPI sends `val & 0xff` whatever its reserved bits, a
/// non-zero EOI write is an EOI, and APR, EOI and ICR high read 0
/// where SDM §11.12.1.2-3 raises #GP.
pub const QEMU_X2APIC_MSR: Known = Known {
    id: "qemu-x2apic-msr",
    title: "QEMU: x2APIC MSR writes of read-only registers and reserved bits do not fault",
    doc: "docs/known-divergences.md#qemu-x2apic-msr",
    deviations: &[],
};

/// QEMU maps its local APIC's page once, at the reset base 0xFEE00000
/// (`x86_cpu_apic_realize`, `target/i386/cpu-apic.c`); `apic_set_base`
/// (`hw/intc/apic.c`, from `cpu_set_apic_base`) records a new base in
/// IA32_APIC_BASE but does not move the page, so after a move the APIC is
/// not at its base (SDM §11.4.4): writes there are lost, reads return 0.
pub const QEMU_APIC_PAGE_FIXED: Known = Known {
    id: "qemu-apic-page-fixed",
    title: "QEMU: the local APIC's page stays at 0xFEE00000 when IA32_APIC_BASE moves it",
    doc: "docs/known-divergences.md#qemu-apic-page-fixed",
    deviations: &[],
};

/// QEMU's `self` and `all-but-self` shorthands (`hw/intc/apic.c`,
/// `apic_deliver`, QEMU 9.0-10.0) set or clear bit `s->id` of the delivery
/// bitmask, which indexes the APIC array by *initial* APIC ID: after the
/// xAPIC ID register was written (how `qemu-tcg` gives a scenario IDs no
/// `-smp` topology has, `backend::qemu::smp::Plan`), `self` reaches the CPU
/// whose initial ID is the sender's current one (or none), and
/// `all-but-self` leaves that CPU out instead of the sender (SDM §11.6.1:
/// the shorthands name the issuing APIC itself).
pub const QEMU_SHORTHAND_BY_ID: Known = Known {
    id: "qemu-shorthand-by-id",
    title: "QEMU: after an xAPIC ID write, the self and all-but-self shorthands pick the CPU by ID",
    doc: "docs/known-divergences.md#qemu-shorthand-by-id",
    deviations: &[],
};

/// Every documented behaviour.
pub const ALL: [Known; 14] = [
    KVM_ISR_NOT_SET,
    KVM_DEFERRED_INJECTION,
    KVM_EARLY_EOI,
    KVM_IOAPIC_LATCH,
    KVM_LOWEST_BROADCAST_FIXED,
    KVM_LOWEST_HASHED_TO_ABSENT,
    KVM_APIC_REENABLE_KEEPS_STATE,
    QEMU_EDGE_EVERY_ASSERT,
    QEMU_IOAPIC_LATCH,
    QEMU_LAPIC_ACCEPTS,
    QEMU_IRQCHIP,
    QEMU_X2APIC_MSR,
    QEMU_APIC_PAGE_FIXED,
    QEMU_SHORTHAND_BY_ID,
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
    let mut wanted: Vec<Deviation> = deviations.iter().map(|d| same_behaviour(*d)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    ALL.into_iter().find(|k| {
        let mut set: Vec<Deviation> = k.deviations.iter().map(|d| same_behaviour(*d)).collect();
        set.sort_unstable();
        set.dedup();
        k.id.starts_with(family) && !set.is_empty() && set == wanted
    })
}

/// A deviation as a documented behaviour is matched: the same deviation,
/// except that a program where the stale IRR vector is never taken again
/// cannot tell "ISR not set, IRR kept" (`accepted-into-irr/inverted`) from
/// "ISR not set" (`accepted-into-irr/skipped`). Other modes of one rule are
/// other behaviours (an EOI that never reaches the IOAPIC is not one that
/// reaches it early).
fn same_behaviour(d: Deviation) -> Deviation {
    match (d.rule, d.mode) {
        (Rule::AcceptedIntoIrr, Mode::Skipped) => {
            Deviation::new(Rule::AcceptedIntoIrr, Mode::Inverted)
        }
        // A deadline passed at the WRMSR, expired at the next exit to
        // userspace: the kernel's own event processed at the next entry
        // after an exit, as an interrupt made pending by the kernel is
        // injected (kvm-deferred-injection).
        (Rule::TimerTscDeadline, Mode::Late) => Deviation::new(Rule::DispatchAbovePpr, Mode::Late),
        _ => d,
    }
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
    let mut sets: Vec<Vec<Deviation>> = ALL
        .into_iter()
        .filter(|k| k.id.starts_with(family) && !k.deviations.is_empty())
        .map(|k| k.deviations.to_vec())
        .collect();
    // kvm-isr-not-set in the form a program that never takes the stale
    // vector again shows ([`same_behaviour`]).
    if family == "kvm-" {
        sets.push(vec![Deviation::new(Rule::AcceptedIntoIrr, Mode::Skipped)]);
    }
    sets
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
    pub early_eoi: bool,
    pub lowest_broadcast_fixed: bool,
    pub lowest_hashed_to_absent: bool,
    pub reenable_keeps_state: bool,
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
    // A lowest-priority IPI to the physical broadcast reaches one of two
    // CPUs (SDM §11.6.2.4).
    let lowest_broadcast_fixed = run(
        &mut kvm,
        "config cpus=2\nipi vector=0xc2 dest=0xff lowest\n",
    )
    .is_some_and(|t| t.deliveries().count() == 2);
    // A logical lowest-priority IPI reaches one of the APICs its
    // destination names (SDM §11.6.2.4): here one of two CPUs, where KVM's
    // vector hashing picks position 0x4d mod 8 = 5 of the bitmap 0xFF,
    // which no APIC holds.
    let lowest_hashed_to_absent =
        run(&mut kvm, LOWEST_HASHED_TO_ABSENT_PROBE).is_some_and(|t| t.deliveries().count() == 0);
    // Disabling and re-enabling the APIC gives it its power-up SVR, 0xFF
    // (SDM §11.4.3).
    let reenable_keeps_state = run(
        &mut kvm,
        "apic-base 0xfee00000\napic-base 0xfee00800\nlapic-read 0x0f0\n",
    )
    .is_some_and(|t| {
        t.events.iter().any(|e| {
            matches!(e.kind, crate::trace::EventKind::Read { reg: 0xf0, value, .. } if value & 0x100 != 0)
        })
    });
    HostBehaviours {
        isr_not_set,
        deferred_injection,
        ioapic_latch,
        early_eoi: run(&mut kvm, EARLY_EOI_PROBE).is_some_and(|t| early_eoi_seen(&t)),
        lowest_broadcast_fixed,
        lowest_hashed_to_absent,
        reenable_keeps_state,
    }
}

/// [`KVM_LOWEST_HASHED_TO_ABSENT`]'s probe: two x2APIC CPUs (IDs 0 and 1),
/// a logical lowest-priority IPI to cluster 0, bitmap 0xFF.
pub const LOWEST_HASHED_TO_ABSENT_PROBE: &str =
    "config apic=x2apic cpus=2\nipi vector=0x4d dest=0xff logical lowest\n";

/// Whether KVM's vector hashing sends a message of `scenario` to a
/// position of its logical destination that no CPU holds (and so drops
/// it): a lowest-priority message in logical mode that is not KVM's
/// broadcast (0xFFFFFFFF for an x2APIC IPI, 0xFF otherwise: those take the
/// slow path), where KVM picks the (vector mod the bitmap's weight)th set
/// bit of the bitmap (`kvm_vector_to_index`):
/// - CPUs that start in x2APIC mode: cluster `dest >> 16`, bitmap
///   `dest & 0xFFFF`; position `cluster * 16 + bit` is the CPU whose
///   x2APIC ID (the vCPU id) it is.
/// - xAPIC, flat model (no DFR write): bitmap `dest & 0xFF`; a position is
///   held by the CPU whose LDR (as the top-level ops left it when the
///   message is sent) has that one bit. KVM's map needs every non-zero LDR
///   to be one bit, no two the same (else it takes the slow path: no drop).
pub fn lowest_hashed_to_absent(scenario: &crate::scenario::Scenario) -> bool {
    use crate::model::lapic::reg;
    use crate::scenario::{
        ApicMode, DeliveryMode, DestMode, HostOp, IpiDelivery, MsiDelivery, Op, Shorthand,
    };
    let x2apic = scenario.config.apic == ApicMode::X2apic;
    if !x2apic
        && scenario
            .all_ops()
            .any(|op| matches!(*op, Op::LapicWrite { offset, .. } | Op::LapicMmioWrite { offset, .. } if offset == reg::DFR)
                || matches!(*op, Op::ApicBase(_)))
    {
        return false;
    }
    let ids: Vec<u32> = (0..scenario.cpus())
        .map(|cpu| u32::from(scenario.config.apic_id(cpu)))
        .collect();
    // The logical IDs (LDR bits 31:24) the top-level ops have written.
    let mut ldr = vec![0u32; scenario.cpus()];
    let dropped = |ldr: &[u32], vector: u8, dest: u32| {
        let bitmap = if x2apic { dest & 0xffff } else { dest & 0xff };
        if bitmap == 0 {
            return false;
        }
        let pick = (u32::from(vector) % bitmap.count_ones()) as usize;
        let bit = (0..16)
            .filter(|b| bitmap & 1 << b != 0)
            .nth(pick)
            .expect("pick < weight");
        if x2apic {
            return !ids.contains(&((dest >> 16) * 16 + bit));
        }
        let held: Vec<u32> = ldr.iter().copied().filter(|&l| l != 0).collect();
        let optimized = held
            .iter()
            .enumerate()
            .all(|(i, l)| l.is_power_of_two() && !held[..i].contains(l));
        optimized && !held.is_empty() && !held.contains(&(1 << bit))
    };
    let message = |ldr: &[u32], op: &Op| match *op {
        Op::Ipi(ipi) => {
            ipi.delivery == IpiDelivery::Lowest
                && ipi.shorthand == Shorthand::None
                && ipi.dest_mode == DestMode::Logical
                && ipi.dest != if x2apic { 0xffff_ffff } else { 0xff }
                && dropped(ldr, ipi.vector, ipi.dest)
        }
        Op::Route { route, .. } => {
            route.delivery == DeliveryMode::Lowest
                && route.dest_mode == DestMode::Logical
                && route.dest != 0xff
                && dropped(ldr, route.vector, u32::from(route.dest))
        }
        Op::Host(HostOp::Msi(m)) => {
            m.delivery == MsiDelivery::Lowest
                && m.dest_mode == DestMode::Logical
                && m.dest != 0xff
                && dropped(ldr, m.vector, u32::from(m.dest))
        }
        _ => false,
    };
    for (k, op) in scenario.ops.iter().enumerate() {
        if let Op::LapicWrite { offset, value } | Op::LapicMmioWrite { offset, value } = *op {
            if offset == reg::LDR {
                let cpu = scenario.cpu_of(k) as usize % ldr.len();
                ldr[cpu] = value >> 24;
            }
        }
        if message(&ldr, op) {
            return true;
        }
    }
    scenario
        .handlers
        .values()
        .any(|body| body.iter().any(|op| message(&ldr, op)))
}

/// [`KVM_EARLY_EOI`]'s probe, with the IOAPIC in userspace: the handler
/// deasserts the line (an exit), then reads the entry before its EOI,
/// whose remote IRR (bit 14) must still be set (82093AA §3.2.4: reset by
/// the EOI message). (With the in-kernel IOAPIC the early EOI comes before
/// the handler's first op, the line still high: the IOAPIC sends the pin
/// again and sets remote IRR, which hides it from this read.)
pub const EARLY_EOI_PROBE: &str = "config irqchip=split\n\
                                   handler 0x20: deassert 0; ioapic-read 0x10; eoi\n\
                                   route 0 vector=0x20 level\nassert 0\n";

/// Whether a trace of [`EARLY_EOI_PROBE`] shows remote IRR clear before
/// the handler's EOI.
pub fn early_eoi_seen(trace: &crate::trace::Trace) -> bool {
    trace.events.iter().any(|e| {
        matches!(e.kind, crate::trace::EventKind::Read {
            space: crate::trace::Space::Ioapic,
            reg: 0x10,
            value,
        } if value & (1 << 14) == 0)
    })
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
    kvm_scenario_label(scenario).or_else(|| kvm_label(backend == "kvm", sig))
}

/// KVM behaviours that only a kind of op can show, whatever the
/// divergence it leads to: named when the scenario has that op and the
/// probe found the behaviour on this host.
fn kvm_scenario_label(scenario: &crate::scenario::Scenario) -> Option<Known> {
    use crate::scenario::{
        DeliveryMode, DestMode, HostOp, IpiDelivery, MsiDelivery, Op, Shorthand,
    };
    let host = host_behaviours();
    let lowest_broadcast = scenario.is_multi_cpu()
        && scenario.all_ops().any(|op| match *op {
            Op::Ipi(ipi) => {
                ipi.delivery == IpiDelivery::Lowest
                    && ipi.shorthand == Shorthand::None
                    && ipi.dest_mode == DestMode::Physical
                    && (ipi.dest == 0xff || ipi.dest == 0xffff_ffff)
            }
            Op::Route { route, .. } => {
                route.delivery == DeliveryMode::Lowest
                    && route.dest_mode == DestMode::Physical
                    && route.dest == 0xff
            }
            Op::Host(HostOp::Msi(m)) => {
                m.delivery == MsiDelivery::Lowest
                    && m.dest_mode == DestMode::Physical
                    && m.dest == 0xff
            }
            _ => false,
        });
    if host.lowest_broadcast_fixed && lowest_broadcast {
        return Some(KVM_LOWEST_BROADCAST_FIXED);
    }
    if host.lowest_hashed_to_absent && lowest_hashed_to_absent(scenario) {
        return Some(KVM_LOWEST_HASHED_TO_ABSENT);
    }
    let disables_apic = scenario
        .all_ops()
        .any(|op| matches!(*op, Op::ApicBase(v) if v & 1 << 11 == 0));
    if host.reenable_keeps_state && disables_apic {
        return Some(KVM_APIC_REENABLE_KEEPS_STATE);
    }
    None
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
    // The shape the scenario ran on (a split scenario on irqchip=on runs
    // with kernel-irqchip=split).
    let qemu = qemu.for_scenario(scenario);
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
    if own.is_some() {
        return own;
    }
    if qemu.qemu_lapic() {
        return [
            (QEMU_X2APIC_MSR, qemu_x2apic_msr(scenario)),
            (QEMU_APIC_PAGE_FIXED, qemu_apic_page_fixed(scenario)),
            (QEMU_SHORTHAND_BY_ID, qemu_shorthand_by_id(scenario)),
        ]
        .into_iter()
        .find_map(|(known, rewrite)| {
            rewrite
                .is_some_and(|r| r.explains(observed))
                .then_some(known)
        });
    }
    if qemu.accel != crate::backend::qemu::Accel::Kvm {
        return None;
    }
    kvm_label(!qemu.qemu_ioapic(), sig)
}

/// A scenario rewritten to what QEMU's local APIC does with it, for a
/// behaviour the model has no quirk for: ops QEMU performs differently are
/// replaced by the op QEMU performs (a `nop` for one that does nothing),
/// and the reads QEMU answers where the model does not are left out of the
/// replay and expected in QEMU's trace with the value QEMU's code gives.
struct Rewrite {
    scenario: crate::scenario::Scenario,
    /// (top-level op, LAPIC offset, value): reads QEMU answers.
    reads: Vec<(usize, u16, u32)>,
}

impl Rewrite {
    /// Whether QEMU's `observed` trace is the rewritten scenario's on the
    /// model with QEMU's other behaviours (`sim:qemu`), plus the reads.
    fn explains(&self, observed: &crate::trace::Trace) -> bool {
        use crate::trace::{EventKind, Space};
        let mut rest = observed.clone();
        for &(op, offset, value) in &self.reads {
            let wanted = EventKind::Read {
                space: Space::Lapic,
                reg: u32::from(offset),
                value,
            };
            match rest
                .events
                .iter()
                .position(|e| e.op == op && e.kind == wanted)
            {
                Some(i) => {
                    rest.events.remove(i);
                }
                None => return false,
            }
        }
        let mut replay = crate::backend::model::ModelBackend::with_quirks(
            irqdiff_model::Quirks::QEMU_IOAPIC.union(irqdiff_model::Quirks::QEMU_LAPIC),
        );
        let trace = crate::backend::Backend::run_to_trace(&mut replay, &self.scenario);
        crate::oracle::compare(&trace, &rest) == crate::oracle::Verdict::Agree
    }
}

/// [`QEMU_X2APIC_MSR`]: what `apic_register_write` / `apic_register_read`
/// (`hw/intc/apic.c`, QEMU 10.0) do with each x2APIC MSR access that SDM
/// §11.12.1.2-3 faults. Only for scenarios that stay in x2APIC mode (no
/// `apic-base`), whose handlers read none of those registers.
fn qemu_x2apic_msr(scenario: &crate::scenario::Scenario) -> Option<Rewrite> {
    use crate::scenario::{ApicMode, Op};
    if scenario.config.apic != ApicMode::X2apic
        || scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_)))
    {
        return None;
    }
    // Register index = offset >> 4. Writes that `apic_register_write`
    // takes as no-ops: version 0x03, APR 0x09, PPR 0x0a, ISR/TMR/IRR
    // 0x10-0x27, current count 0x39. Reads `apic_register_read` answers:
    // APR 0x09 (`apic_get_arb_pri`: 0), EOI 0x0b (0), ICR high 0x31
    // (`icr[1]`, 0 unless an xAPIC-mode write set it: not rewritten then).
    let silent_write = |i: u16| matches!(i, 0x03 | 0x09 | 0x0a | 0x10..=0x27 | 0x39);
    let answered_read = |i: u16| matches!(i, 0x09 | 0x0b | 0x31);
    let rewrite = |op: &mut Op| match *op {
        Op::LapicWrite { offset, .. } if silent_write(offset >> 4) => *op = Op::Nop,
        // `case 0x3f`: SELF IPI with `val & 0xff`, reserved bits unchecked.
        // Vector 0 is set in IRR and never dispatched (`apic_irq_pending`
        // reads a highest IRR vector of 0 as "none"): nothing to see unless
        // IRR is read (then not rewritten, below).
        Op::LapicWrite {
            offset: 0x3f0,
            value,
        } if value & 0xff == 0 => *op = Op::Nop,
        Op::LapicWrite {
            offset: 0x3f0,
            value,
        } => *op = Op::SelfIpi(value as u8),
        // `case 0x0b`: `apic_eoi` whatever the value.
        Op::LapicWrite { offset: 0x0b0, .. } => *op = Op::Eoi,
        _ => {}
    };
    let mut s = scenario.clone();
    // IRR read after a vector-0 SELF IPI may have been sent.
    let vector_0 =
        |op: &Op| matches!(op, Op::LapicWrite { offset: 0x3f0, value } if value & 0xff == 0);
    let reads_irr = |op: &Op| matches!(op, Op::Snapshot | Op::LapicRead(0x200));
    let first_vector_0 = if scenario.handlers.values().flatten().any(vector_0) {
        Some(0)
    } else {
        scenario.ops.iter().position(vector_0)
    };
    let irr_seen = first_vector_0.is_some_and(|k| {
        scenario.ops[k..].iter().any(reads_irr)
            || scenario.handlers.values().flatten().any(reads_irr)
    });
    if irr_seen
        || s.handlers
            .values()
            .flatten()
            .any(|op| matches!(op, Op::LapicRead(o) if answered_read(o >> 4)))
    {
        return None;
    }
    s.handlers.values_mut().flatten().for_each(rewrite);
    let mut reads = Vec::new();
    for (i, op) in s.ops.iter_mut().enumerate() {
        rewrite(op);
        if let Op::LapicRead(offset) = *op {
            if answered_read(offset >> 4) {
                reads.push((i, offset, 0));
                *op = Op::Nop;
            }
        }
    }
    (s != *scenario).then_some(Rewrite { scenario: s, reads })
}

/// [`QEMU_SHORTHAND_BY_ID`]: with written xAPIC IDs, a top-level `self`
/// (`self-ipi`, `ipi ... self`) or `all-but-self` IPI on CPU c, whose ID
/// is w, acts as if CPU w had sent it (w names a CPU under the index
/// topology the plan runs on), or, with no CPU w, `self` reaches nobody
/// and `all-but-self` everybody. Not for scenarios with such IPIs in
/// handler bodies (the sender is known at run time only).
fn qemu_shorthand_by_id(scenario: &crate::scenario::Scenario) -> Option<Rewrite> {
    use crate::scenario::{ApicMode, Op, Shorthand};
    let plan = crate::backend::qemu::smp::Plan::of(scenario).ok()?;
    if !plan.written || scenario.config.apic != ApicMode::Xapic {
        return None;
    }
    let by_shorthand = |op: &Op| {
        matches!(op, Op::SelfIpi(_))
            || matches!(op, Op::Ipi(i) if matches!(i.shorthand, Shorthand::SelfOnly | Shorthand::AllButSelf))
    };
    if scenario.handlers.values().flatten().any(by_shorthand) {
        return None;
    }
    let n = scenario.cpus();
    let mut s = scenario.clone();
    s.op_cpus.resize(s.ops.len(), 0);
    for k in 0..s.ops.len() {
        let c = s.op_cpus[k] as usize;
        let w = plan.ids[c] as usize;
        if w == c || !by_shorthand(&s.ops[k]) {
            continue;
        }
        if w < n {
            s.op_cpus[k] = w as u8;
            continue;
        }
        s.ops[k] = match s.ops[k] {
            Op::Ipi(mut i) if i.shorthand == Shorthand::AllButSelf => {
                i.shorthand = Shorthand::All;
                Op::Ipi(i)
            }
            _ => Op::Nop,
        };
    }
    s.normalize_op_cpus();
    (s != *scenario).then_some(Rewrite {
        scenario: s,
        reads: Vec::new(),
    })
}

/// [`QEMU_APIC_PAGE_FIXED`]: after an IA32_APIC_BASE write that moves the
/// base away from 0xFEE00000 in xAPIC mode (EN set, EXTD clear, no
/// reserved bit: `apic_set_base` takes it), every access the stub makes
/// through the APIC page until the base comes back misses the APIC: a
/// write does nothing and a read returns 0 (unassigned memory). Only for
/// scenarios whose handlers make no such access and that take no snapshot
/// while the base is moved.
fn qemu_apic_page_fixed(scenario: &crate::scenario::Scenario) -> Option<Rewrite> {
    use crate::scenario::{ApicMode, Op};
    const DEFAULT_BASE: u32 = 0xfee0_0000;
    if scenario.config.apic != ApicMode::Xapic {
        return None;
    }
    let through_page = |op: &Op| {
        matches!(
            op,
            Op::Eoi
                | Op::SelfIpi(_)
                | Op::Tpr(_)
                | Op::Svr(_)
                | Op::Snapshot
                | Op::LapicRead(_)
                | Op::LapicWrite { .. }
                | Op::LapicMmioRead(_)
                | Op::LapicMmioWrite { .. }
        )
    };
    if scenario.handlers.values().flatten().any(through_page) {
        return None;
    }
    let mut s = scenario.clone();
    let mut reads = Vec::new();
    let mut base = DEFAULT_BASE;
    for (i, op) in s.ops.iter_mut().enumerate() {
        match *op {
            // SDM §11.12.1: bits 7:0 and 9 reserved (#GP); EXTD: x2APIC,
            // which has no page: not rewritten.
            Op::ApicBase(v) if v & 0x2ff != 0 => {}
            Op::ApicBase(v) if v & (1 << 10) != 0 => return None,
            Op::ApicBase(v) => base = v & 0xffff_f000,
            Op::Snapshot if base != DEFAULT_BASE => return None,
            Op::LapicRead(offset) | Op::LapicMmioRead(offset) if base != DEFAULT_BASE => {
                reads.push((i, offset, 0));
                *op = Op::Nop;
            }
            _ if base != DEFAULT_BASE && through_page(op) => *op = Op::Nop,
            _ => {}
        }
    }
    (s != *scenario).then_some(Rewrite { scenario: s, reads })
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
        // A TSC deadline already passed at its write: the expiry is taken
        // only at the next exit, so IA32_TSC_DEADLINE still reads non-zero
        // (docs/known-divergences.md, "The LAPIC timer on this host").
        Class::StateMismatch if host.deferred_injection && rule == "msr" => {
            Some(KVM_DEFERRED_INJECTION)
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
    use crate::trace::{Event, EventKind, Space, Trace};

    /// A TSC deadline passed at the WRMSR and expired only at the next exit
    /// (`timer-tsc-deadline/late`; this host reads the MSR back non-zero
    /// after `tsc-deadline now`) is kvm-deferred-injection's behaviour.
    #[test]
    fn a_late_tsc_deadline_expiry_is_the_deferred_injection() {
        let late = Deviation::new(Rule::TimerTscDeadline, Mode::Late);
        assert_eq!(
            documented("kvm", &[late]).map(|k| k.id),
            Some("kvm-deferred-injection")
        );
        assert_eq!(documented("qemu-tcg", &[late]).map(|k| k.id), None);
    }

    fn read(op: usize, reg: u32, value: u32) -> Event {
        Event {
            op,
            cpu: 0,
            kind: EventKind::Read {
                space: Space::Lapic,
                reg,
                value,
            },
        }
    }

    fn gp(op: usize) -> Event {
        Event {
            op,
            cpu: 0,
            kind: EventKind::Exception {
                vector: crate::trace::GP_VECTOR,
            },
        }
    }

    fn trace(events: Vec<Event>) -> Trace {
        let mut t = Trace::new("qemu-tcg");
        t.events = events;
        t
    }

    #[test]
    fn qemu_x2apic_msr_explains_exactly_what_apic_register_write_and_read_do() {
        // Version write (read-only: SDM #GP, QEMU nothing), EOI read
        // (write-only: SDM #GP, QEMU 0), ID write (#GP on both).
        let s = crate::scenario::parse(
            "config apic=x2apic\nlapic-write 0x030 0\nlapic-read 0x0b0\nlapic-write 0x020 0\n",
        )
        .unwrap();
        let rewrite = qemu_x2apic_msr(&s).expect("rewritten");
        assert_eq!(rewrite.reads, [(1, 0xb0, 0)]);
        assert!(rewrite.explains(&trace(vec![read(1, 0xb0, 0), gp(2)])));
        // QEMU faulting the version write, or not the ID write, or reading
        // another value, is not this behaviour.
        assert!(!rewrite.explains(&trace(vec![gp(0), read(1, 0xb0, 0), gp(2)])));
        assert!(!rewrite.explains(&trace(vec![read(1, 0xb0, 0)])));
        assert!(!rewrite.explains(&trace(vec![read(1, 0xb0, 7), gp(2)])));
        // xAPIC mode, or a mode switch: not rewritten.
        let xapic = crate::scenario::parse("lapic-write 0x030 0\n").unwrap();
        assert!(qemu_x2apic_msr(&xapic).is_none());
    }

    #[test]
    fn qemu_apic_page_fixed_explains_lost_accesses_at_a_moved_base_only() {
        let s = crate::scenario::parse(
            "apic-base 0xfed00800\nsvr 0x1ff\nself-ipi 0x40\nlapic-read 0x030\nnop\n",
        )
        .unwrap();
        let rewrite = qemu_apic_page_fixed(&s).expect("rewritten");
        assert_eq!(rewrite.reads, [(3, 0x30, 0)]);
        assert!(rewrite.explains(&trace(vec![read(3, 0x30, 0)])));
        // The self IPI delivered, or the version read there: the APIC was
        // reached at the new base, so this label does not explain it.
        let delivered = Event {
            op: 2,
            cpu: 0,
            kind: EventKind::Deliver { vector: 0x40 },
        };
        assert!(!rewrite.explains(&trace(vec![delivered, read(3, 0x30, 0)])));
        assert!(!rewrite.explains(&trace(vec![read(3, 0x30, 0x50014)])));
        // No move (or a write that faults on its reserved bits): nothing.
        for text in [
            "apic-base 0xfee00800\nsvr 0x1ff\n",
            "apic-base 0xfed00801\nsvr 0x1ff\n",
        ] {
            let s = crate::scenario::parse(text).unwrap();
            assert!(qemu_apic_page_fixed(&s).is_none(), "{text}");
        }
    }

    #[test]
    fn a_cause_is_documented_only_by_its_exact_deviations_on_its_backend() {
        let isr = [Deviation::new(Rule::AcceptedIntoIrr, Mode::Skipped)];
        assert_eq!(documented("kvm", &isr), Some(KVM_ISR_NOT_SET));
        assert_eq!(documented("kvm-split", &isr), Some(KVM_ISR_NOT_SET));
        assert_eq!(documented("sim:isr-never-set", &isr), None);
        assert_eq!(documented("qemu-tcg", &isr), None);
        let early = [Deviation::new(Rule::EoiBroadcast, Mode::Inverted)];
        assert_eq!(documented("kvm-split", &early), Some(KVM_EARLY_EOI));
        assert_eq!(documented("qemu-tcg", &early), None);
        // Another mode of the same rule is another behaviour.
        let lost = [Deviation::new(Rule::EoiBroadcast, Mode::Skipped)];
        assert_eq!(documented("kvm-split", &lost), None);
        assert!(hints("kvm").contains(&isr.to_vec()));
        let more = [isr[0], Deviation::new(Rule::EoiBroadcast, Mode::Skipped)];
        assert_eq!(documented("kvm", &more), None);
        assert_eq!(documented("kvm", &[]), None);
    }

    /// KVM's vector hashing (`kvm_apic_map_get_dest_lapic`,
    /// `kvm_vector_to_index`): the (vector mod weight)th position of the
    /// bitmap, dropped where no APIC holds it; the SDM (§11.6.2.4,
    /// §11.12.10) picks among the APICs the destination matches.
    #[test]
    fn lowest_hashed_to_absent_follows_kvms_vector_hashing() {
        let drops = |text: &str| lowest_hashed_to_absent(&crate::scenario::parse(text).unwrap());
        // x2APIC, IDs 0 and 1, bitmap 0xFF: 0x4d mod 8 = 5 (absent), 0x48
        // mod 8 = 0 and 0x49 mod 8 = 1 (present).
        assert!(drops(LOWEST_HASHED_TO_ABSENT_PROBE));
        assert!(!drops(
            "config apic=x2apic cpus=2\nipi vector=0x48 dest=0xff logical lowest\n"
        ));
        assert!(!drops(
            "config apic=x2apic cpus=2\nipi vector=0x49 dest=0xff logical lowest\n"
        ));
        // Bitmap 0x3 names only present APICs.
        assert!(!drops(
            "config apic=x2apic cpus=2\nipi vector=0x4d dest=0x3 logical lowest\n"
        ));
        // The broadcasts take KVM's slow path; fixed and physical are not hashed.
        assert!(!drops(
            "config apic=x2apic cpus=2\nipi vector=0x4d dest=0xffffffff logical lowest\n"
        ));
        assert!(!drops(
            "config apic=x2apic cpus=2\nmsi vector=0x4d dest=0xff logical lowest\n"
        ));
        assert!(!drops(
            "config apic=x2apic cpus=2\nipi vector=0x4d dest=0xff logical\n"
        ));
        // An MSI and a route: 0x4e mod 4 = 2 of bitmap 0x0f, no CPU 2.
        assert!(drops(
            "config apic=x2apic cpus=2\nmsi vector=0x4e dest=0x0f logical lowest\n"
        ));
        assert!(drops(
            "config apic=x2apic cpus=2\nroute 3 vector=0x4e logical dest=0x0f lowest\n"
        ));
        assert!(!drops(
            "config apic=x2apic cpus=2\nmsi vector=0x4d dest=0x0f logical lowest\n"
        ));
        // CPU 2 exists with apic-ids.
        assert!(!drops(
            "config apic=x2apic cpus=2 apic-ids=0,2\nmsi vector=0x4e dest=0x0f logical lowest\n"
        ));
        // xAPIC flat: positions are the LDRs the program wrote before the message.
        let flat =
            "config cpus=2\nlapic-write 0xd0 0x01000000\ncpu 1: lapic-write 0xd0 0x02000000\n";
        assert!(drops(&format!(
            "{flat}ipi vector=0x4e dest=0x0f logical lowest\n"
        )));
        assert!(!drops(&format!(
            "{flat}ipi vector=0x4d dest=0x0f logical lowest\n"
        )));
        // Before any LDR write no APIC is addressed, on either side.
        assert!(!drops("config cpus=2\nipi vector=0x4e dest=0x0f logical lowest\nlapic-write 0xd0 0x01000000\n"));
        // Two CPUs with one LDR: KVM's slow path, no drop.
        assert!(!drops("config cpus=2\nlapic-write 0xd0 0x01000000\ncpu 1: lapic-write 0xd0 0x01000000\nipi vector=0x4e dest=0x0f logical lowest\n"));
        // A DFR write (cluster model) is not followed.
        assert!(!drops(&format!(
            "{flat}lapic-write 0xe0 0x0fffffff\nipi vector=0x4e dest=0x0f logical lowest\n"
        )));
    }
}
