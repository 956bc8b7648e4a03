//! Named deviations from the spec, each reproducing a known real bug.
//!
//! Off by default. The `sim:QUIRKS` backend switches them on so that the
//! fuzzer's power to find, minimise and report a bug can be measured on bugs
//! whose answer is known. Each quirk acts at exactly the rule it breaks.

use crate::rules::Rule;

bitflags::bitflags! {
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Quirks: u32 {
        /// An asserted level pin is not delivered when it is unmasked, and
        /// further asserts do nothing until the line is deasserted and
        /// asserted again. Seed report, IOAPIC issue 1 (kvm-unit-tests
        /// `test_ioapic_level_mask`), Apple FB14425412.
        const LEVEL_UNMASK_NO_DELIVER = 1 << 0;
        /// No re-delivery after an EOI while the level line stays asserted.
        /// Seed report, IOAPIC issue 2 (`test_ioapic_level_retrigger`),
        /// FB14425412.
        const LEVEL_EOI_NO_REDELIVER = 1 << 1;
        /// A deassert/assert/deassert while remote IRR is set delivers the
        /// interrupt a second time after the EOI. Seed report, IOAPIC issue 3
        /// (`test_ioapic_level_coalesce`), FB14425412.
        const LEVEL_COALESCE_REDELIVER = 1 << 2;
        /// With the IOAPIC in userspace (`irqchip=split`), the local APIC's
        /// EOI notifications never reach it, so remote IRR stays set. Seed
        /// report, APIC section (HV_APIC_CTRL_IOAPIC_EOI), FB14425590.
        const SPLIT_EOI_LOST = 1 << 3;
        /// Every `assert` of an unmasked edge pin delivers, even when the
        /// line is already asserted (no edge detection). QEMU's
        /// `hw/intc/ioapic.c` `ioapic_set_irq` before edge tracking
        /// (kvm-unit-tests catalogue G-3).
        const EDGE_EVERY_ASSERT = 1 << 4;
        /// The local APIC never sets the ISR bit on delivery, so PPR stays
        /// low and a level EOI finds nothing in service: what was seen on
        /// this project's paravirtualised KVM host
        /// (docs/known-divergences.md, `kvm-isr-not-set`).
        const ISR_NEVER_SET = 1 << 5;
        /// A single IA32_APIC_BASE write that both moves the APIC's base and
        /// enables it leaves the APIC disabled. Seed report, step 4
        /// (Hypervisor.framework, FB14021745).
        const APIC_BASE_MOVE_AND_ENABLE_FAILS = 1 << 6;
        /// QEMU's IOAPIC (`hw/intc/ioapic.c`): one latched request bit per
        /// pin (`irr`) stands in for the line level. A level pin latches on
        /// assert and clears on deassert; an edge pin latches on an
        /// unmasked assert (every assert: this includes
        /// `EDGE_EVERY_ASSERT`) and clears when sent; the level of an edge
        /// pin is not kept. Every entry write, assert and EOI services all
        /// latched unmasked pins (`ioapic_service`): a request latched in
        /// level mode is sent when the entry is rewritten as edge, a line
        /// raised in edge mode is not sent when the entry becomes level, and
        /// remote IRR is set whether or not an APIC accepts.
        const QEMU_IOAPIC = 1 << 7;
        /// QEMU's local APIC (`hw/intc/apic.c`): no illegal-vector check
        /// (vectors 0-15 are accepted, no ESR bit), a class-0 vector is
        /// dispatched while PPR is 0 (`apic_irq_pending`), and a
        /// software-disabled APIC still accepts into IRR (`apic_set_irq`)
        /// but dispatches nothing until re-enabled; SVR keeps bits 8:0
        /// only and software disable leaves the LVTs unmasked
        /// (`apic_mem_write`); a logical destination of 0xFF is matched
        /// against the LDR, not taken as a broadcast
        /// (`apic_get_delivery_bitmask`).
        const QEMU_LAPIC = 1 << 8;
        /// An x2APIC register access that must raise #GP (SDM §11.12.1.2:
        /// a reserved or write-only MSR read, a read-only or reserved MSR
        /// write, reserved bits, §11.12.1.3) is swallowed: the write does
        /// nothing and the read returns 0. What a VMM that does not reflect
        /// the fault into the guest does, e.g. KVM with `ignore_msrs=1` on
        /// an MSR it does not handle (`kvm_msr_ignored_check`).
        const X2APIC_GP_IGNORED = 1 << 9;
        /// Several CPUs: the x2APIC logical ID is not derived from the
        /// x2APIC ID (SDM §11.12.10.2: "the LDR initialization occurs
        /// whenever the x2APIC mode is enabled"): the LDR reads 0 and no
        /// logical x2APIC destination matches. Bochs before PR #250 ("Init
        /// LDR whenever x2APIC mode is enabled"); KVM's 12806ba93738
        /// ("KVM: lapic: Fixup LDR on load in x2apic").
        const X2APIC_LDR_NOT_DERIVED = 1 << 10;
        /// Several CPUs: x2APIC logical destinations are matched on the
        /// member bitmap only, across clusters (SDM §11.12.10.1: the
        /// cluster ID in bits 31:16 must be equal): the shape of ACRN's
        /// ptdev destination bug (acrn-hypervisor PR #8436, LDRs of several
        /// clusters or'ed into one mask).
        const X2APIC_CLUSTER_IGNORED = 1 << 11;
        /// Several CPUs: an EOI is forwarded to the IOAPIC only by a CPU
        /// that the pin with that vector targets now, so the EOI of an
        /// interrupt whose pin was retargeted while it was in service is
        /// lost and remote IRR stays set: the race KVM fixed in "KVM: x86:
        /// ioapic: Fix level-triggered EOI and IOAPIC reconfigure race"
        /// (2017; EOI exits only for vectors routed to the vCPU),
        /// kvm-unit-tests `test_ioapic_self_reconfigure`.
        const EOI_STALE_ROUTE_LOST = 1 << 12;
    }
}

impl Quirks {
    /// The quirks that only several CPUs can show.
    pub const MULTI_CPU: Quirks = Quirks::X2APIC_LDR_NOT_DERIVED
        .union(Quirks::X2APIC_CLUSTER_IGNORED)
        .union(Quirks::EOI_STALE_ROUTE_LOST);

    /// The spec rules a single quirk breaks: the ground truth that
    /// diagnosis (which knows nothing of quirks) is measured against.
    pub fn broken_rules(self) -> Vec<Rule> {
        let mut rules = Vec::new();
        for (_, quirk) in self.iter_names() {
            rules.extend_from_slice(match quirk {
                Quirks::LEVEL_UNMASK_NO_DELIVER => &[Rule::LevelUnmaskDelivers][..],
                Quirks::LEVEL_EOI_NO_REDELIVER => &[Rule::EoiRedelivers],
                Quirks::LEVEL_COALESCE_REDELIVER => &[Rule::LevelRemoteIrrBlocks],
                Quirks::SPLIT_EOI_LOST => &[Rule::EoiBroadcast],
                Quirks::EDGE_EVERY_ASSERT => &[Rule::EdgeNoNewEdge],
                Quirks::ISR_NEVER_SET => &[Rule::AcceptedIntoIrr],
                Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS => &[Rule::ApicBaseTransition],
                Quirks::X2APIC_GP_IGNORED => &[Rule::X2apicMsrGp],
                Quirks::QEMU_IOAPIC => &[Rule::EdgeNoNewEdge, Rule::LevelDelivers],
                Quirks::X2APIC_LDR_NOT_DERIVED | Quirks::X2APIC_CLUSTER_IGNORED => {
                    &[Rule::X2apicClusterMatch]
                }
                Quirks::EOI_STALE_ROUTE_LOST => &[Rule::EoiBroadcast],
                Quirks::QEMU_LAPIC => &[
                    Rule::IllegalVector,
                    Rule::ApicSoftwareDisabled,
                    Rule::NoDestinationMatch,
                    Rule::DispatchAbovePpr,
                ],
                _ => &[],
            });
        }
        rules.sort_unstable();
        rules.dedup();
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quirk_breaks_at_least_one_rule() {
        for (name, quirk) in Quirks::all().iter_names() {
            assert!(!quirk.broken_rules().is_empty(), "{name}");
        }
        assert_eq!(
            (Quirks::SPLIT_EOI_LOST | Quirks::ISR_NEVER_SET).broken_rules(),
            [Rule::AcceptedIntoIrr, Rule::EoiBroadcast]
        );
    }
}
