//! The hang judgement's shortcut: a halted vCPU that nothing can wake is a
//! hang at once, without the second kick.
//!
//! While the one vCPU of a VM is halted and the run loop is waiting for it,
//! neither the guest nor the host does anything: every host op and every
//! userspace IOAPIC access happens at an exit, and there is no other vCPU.
//! So only an event already pending inside KVM could end the `hlt`, and
//! what ends one is an NMI, an SMI, INIT, a pending exception or, with
//! IF = 1, a maskable interrupt the local APIC delivers (SDM vol. 2A, HLT;
//! vol. 3A §6.8.1). A vCPU for which none of these is pending stays halted
//! for good; anything this module cannot rule out (an armed LAPIC timer, an
//! unmasked LINT0, a globally disabled APIC) leaves the judgement to the
//! two kicks, as before.

use kvm_bindings::{kvm_lapic_state, kvm_vcpu_events};

use crate::model::lapic::{reg, LVT_MASKED};

/// RFLAGS.IF (SDM vol. 1 §3.4.3.3).
pub(super) const RFLAGS_IF: u64 = 1 << 9;

/// The LVT timer's mode field (bits 18:17), and its TSC-deadline value
/// (SDM §11.5.1, §11.5.4.1).
const TIMER_MODE_MASK: u32 = 0b11 << 17;
const TIMER_MODE_TSC_DEADLINE: u32 = 0b10 << 17;

/// Whether KVM holds no event that ends `hlt` whatever IF is: no NMI
/// pending or being injected, no SMI, no latched INIT, no exception, no
/// interrupt already being injected (`KVM_GET_VCPU_EVENTS`).
pub(super) fn no_pending_event(events: &kvm_vcpu_events) -> bool {
    events.nmi.pending == 0
        && events.nmi.injected == 0
        && events.smi.pending == 0
        && events.smi.latched_init == 0
        && events.exception.pending == 0
        && events.exception.injected == 0
        && events.interrupt.injected == 0
        && events.triple_fault.pending == 0
}

fn register(lapic: &kvm_lapic_state, offset: u16) -> u32 {
    let at = offset as usize;
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[at + i] as u8);
    u32::from_le_bytes(bytes)
}

/// The highest vector set in a 256-bit register (IRR, ISR), if any: eight
/// 32-bit registers 16 bytes apart (SDM §11.8.4).
fn highest(lapic: &kvm_lapic_state, base: u16) -> Option<u8> {
    (0..8u16).rev().find_map(|i| {
        let bits = register(lapic, base + 0x10 * i);
        (bits != 0).then(|| (i * 32 + 31 - bits.leading_zeros() as u16) as u8)
    })
}

/// Whether no maskable interrupt can reach a halted vCPU with IF = 1, in
/// the local APIC state `KVM_GET_LAPIC` gave (it folds posted interrupts
/// into the IRR and computes the timer's current count), the APIC being
/// globally enabled:
/// - nothing in the IRR above the processor priority: the APIC delivers
///   the highest IRR vector only when its class (bits 7:4) is above PPR's,
///   PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] (SDM §11.8.3.1);
/// - the timer cannot fire: its LVT masked, or a count of 0 in one-shot or
///   periodic mode (SDM §11.5.4; a TSC deadline is not in these registers);
/// - LINT0 masked, so the 8259 cannot reach it (KVM takes the PIC's
///   output only through an unmasked LINT0 or a disabled APIC,
///   `kvm_apic_accept_pic_intr`).
///
/// The other LVTs have no source while the guest is halted: KVM raises
/// LINT1 nowhere, the error LVT fires on the guest's own APIC accesses,
/// and the guest programs no thermal sensor, performance counter or CMCI.
pub(super) fn no_deliverable_interrupt(lapic: &kvm_lapic_state) -> bool {
    let timer = register(lapic, reg::LVT_TIMER);
    let timer_quiet = timer & LVT_MASKED != 0
        || (timer & TIMER_MODE_MASK != TIMER_MODE_TSC_DEADLINE
            && register(lapic, reg::TIMER_CURRENT) == 0);
    if !timer_quiet || register(lapic, reg::LVT_LINT0) & LVT_MASKED == 0 {
        return false;
    }
    let Some(irrv) = highest(lapic, reg::IRR) else {
        return true;
    };
    let tpr = register(lapic, reg::TPR) & 0xff;
    let isrv = highest(lapic, reg::ISR).map_or(0, u32::from);
    let ppr_class = (tpr >> 4).max(isrv >> 4);
    u32::from(irrv >> 4) <= ppr_class
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lapic(registers: &[(u16, u32)]) -> kvm_lapic_state {
        let mut state = kvm_lapic_state::default();
        let mut set = |offset: u16, value: u32| {
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                state.regs[offset as usize + i] = *b as _;
            }
        };
        for lvt in [reg::LVT_TIMER, reg::LVT_LINT0, reg::LVT_LINT1] {
            set(lvt, LVT_MASKED);
        }
        for &(offset, value) in registers {
            set(offset, value);
        }
        state
    }

    /// IRR bit of `vector`, as (register, value).
    fn bit(base: u16, vector: u8) -> (u16, u32) {
        (base + 0x10 * u16::from(vector / 32), 1 << (vector % 32))
    }

    #[test]
    fn an_empty_irr_with_a_quiet_timer_and_lint0_delivers_nothing() {
        assert!(no_deliverable_interrupt(&lapic(&[])));
    }

    #[test]
    fn an_irr_vector_above_the_priority_is_delivered_and_one_at_or_below_is_not() {
        // SDM §11.8.3.1: 0x50 is above PPR 0 and above TPR 0x4f's class 4.
        assert!(!no_deliverable_interrupt(&lapic(&[bit(reg::IRR, 0x50)])));
        assert!(!no_deliverable_interrupt(&lapic(&[
            bit(reg::IRR, 0x50),
            (reg::TPR, 0x4f)
        ])));
        // TPR class 5 holds back class 5.
        assert!(no_deliverable_interrupt(&lapic(&[
            bit(reg::IRR, 0x5f),
            (reg::TPR, 0x50)
        ])));
        // An in-service 0x58 holds back 0x51 (same class), not 0x61.
        assert!(no_deliverable_interrupt(&lapic(&[
            bit(reg::IRR, 0x51),
            bit(reg::ISR, 0x58)
        ])));
        assert!(!no_deliverable_interrupt(&lapic(&[
            bit(reg::IRR, 0x61),
            bit(reg::ISR, 0x58)
        ])));
        // The highest IRR vector decides: 0xe0 in the last register.
        assert!(!no_deliverable_interrupt(&lapic(&[
            bit(reg::IRR, 0xe0),
            (reg::TPR, 0x30)
        ])));
    }

    #[test]
    fn an_armed_timer_or_an_unmasked_lint0_may_still_deliver() {
        // One-shot, unmasked, counting.
        assert!(!no_deliverable_interrupt(&lapic(&[
            (reg::LVT_TIMER, 0x40),
            (reg::TIMER_CURRENT, 1000)
        ])));
        // Unmasked but stopped (count 0): quiet.
        assert!(no_deliverable_interrupt(&lapic(&[(reg::LVT_TIMER, 0x40)])));
        // TSC deadline: the deadline is not in the page, so not quiet.
        assert!(!no_deliverable_interrupt(&lapic(&[(
            reg::LVT_TIMER,
            TIMER_MODE_TSC_DEADLINE | 0x40
        )])));
        // LINT0 unmasked as ExtINT (0x700).
        assert!(!no_deliverable_interrupt(&lapic(&[(
            reg::LVT_LINT0,
            0x700
        )])));
    }

    #[test]
    fn a_pending_nmi_smi_init_exception_or_injection_ends_hlt() {
        let quiet = kvm_vcpu_events::default();
        assert!(no_pending_event(&quiet));
        let mut nmi = quiet;
        nmi.nmi.pending = 1;
        let mut smi = quiet;
        smi.smi.pending = 1;
        let mut init = quiet;
        init.smi.latched_init = 1;
        let mut exception = quiet;
        exception.exception.pending = 1;
        let mut injecting = quiet;
        injecting.interrupt.injected = 1;
        for (what, events) in [
            ("NMI", nmi),
            ("SMI", smi),
            ("INIT", init),
            ("exception", exception),
            ("injection", injecting),
        ] {
            assert!(!no_pending_event(&events), "{what}");
        }
        // NMIs blocked (inside the NMI handler) with none pending: quiet.
        let mut blocked = quiet;
        blocked.nmi.masked = 1;
        assert!(no_pending_event(&blocked));
    }
}
