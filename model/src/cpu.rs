//! What the processor does with interrupts: RFLAGS.IF, the STI shadow, HLT,
//! interrupt-gate entry and IRET, NMI blocking (Intel SDM vol. 3A chapter 6).

/// The processor's interrupt-relevant state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// Blocking by STI: set by an STI that found IF = 0 (SDM §6.8.3).
    pub sti_shadow: bool,
    /// NMIs blocked until the next IRET (SDM §6.7.1).
    pub nmi_blocked: bool,
    /// One NMI held while blocked (further ones collapse into it).
    pub nmi_pending: bool,
}

impl Cpu {
    /// The scenario's start state: IF = 1.
    pub fn new() -> Cpu {
        Cpu {
            interrupts_enabled: true,
            ..Cpu::default()
        }
    }

    #[inline]
    pub fn cli(&mut self) {
        self.interrupts_enabled = false;
        self.sti_shadow = false;
    }

    /// STI instruction reference: "If IF = 0 ... interrupts are inhibited
    /// until the end of the next instruction"; with IF already 1 there is no
    /// shadow.
    #[inline]
    pub fn sti(&mut self) {
        if !self.interrupts_enabled {
            self.sti_shadow = true;
        }
        self.interrupts_enabled = true;
    }

    /// The instruction after STI has executed.
    #[inline]
    pub fn end_of_instruction(&mut self) {
        self.sti_shadow = false;
    }

    /// SDM §6.8.1: maskable interrupts need IF = 1 and no STI shadow.
    #[inline]
    pub fn accepts_maskable(&self) -> bool {
        self.interrupts_enabled && !self.sti_shadow
    }

    /// SDM §6.12.1.3: entry through an interrupt gate clears IF; returns the
    /// RFLAGS.IF that IRET will restore.
    #[inline]
    pub fn enter_interrupt_gate(&mut self) -> bool {
        let saved = self.interrupts_enabled;
        self.interrupts_enabled = false;
        self.sti_shadow = false;
        saved
    }

    /// SDM §6.7.1: an NMI handler runs with NMIs blocked.
    #[inline]
    pub fn enter_nmi(&mut self) -> bool {
        self.nmi_blocked = true;
        self.nmi_pending = false;
        self.enter_interrupt_gate()
    }

    /// IRET restores IF (no STI shadow) and unblocks NMIs (SDM §6.7.1).
    #[inline]
    pub fn iret(&mut self, saved_if: bool) {
        self.interrupts_enabled = saved_if;
        self.sti_shadow = false;
        self.nmi_blocked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sti_shadow_only_when_if_was_clear() {
        // STI instruction reference / SDM §6.8.3.
        let mut c = Cpu::new();
        c.sti();
        assert!(c.accepts_maskable(), "no shadow when IF was already 1");
        c.cli();
        c.sti();
        assert!(!c.accepts_maskable(), "shadow for one instruction");
        c.end_of_instruction();
        assert!(c.accepts_maskable());
    }

    #[test]
    fn interrupt_gate_clears_if_and_iret_restores_it() {
        // SDM §6.12.1.3.
        let mut c = Cpu::new();
        let saved = c.enter_interrupt_gate();
        assert!(!c.accepts_maskable());
        c.iret(saved);
        assert!(c.accepts_maskable());
    }

    #[test]
    fn nmi_blocks_nmis_until_iret() {
        // SDM §6.7.1.
        let mut c = Cpu::new();
        let saved = c.enter_nmi();
        assert!(c.nmi_blocked);
        c.iret(saved);
        assert!(!c.nmi_blocked);
    }
}
