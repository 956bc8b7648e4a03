//! The spec rules that decide what the model does, each with its citation.
//!
//! The model records which rule decided each delivery and each suppression
//! (see [`crate::machine::DecisionLog`]), so that a report can name the rule a
//! hypervisor broke at the point where it diverges.

/// One rule of the Intel SDM vol. 3A (chapter "Advanced Programmable
/// Interrupt Controller (APIC)", numbered 11 in current editions, and chapter
/// 6 "Interrupt and Exception Handling") or of the 82093AA datasheet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A rising edge on an unmasked edge-triggered pin sends one message.
    EdgeDelivers,
    /// An edge on a masked pin is ignored, not held pending.
    EdgeMaskedLost,
    /// A level that stays asserted is not a new edge.
    EdgeNoNewEdge,
    /// An asserted, unmasked level pin with remote IRR clear sends a message.
    LevelDelivers,
    /// A level pin is not sent again while remote IRR is set (coalescing).
    LevelRemoteIrrBlocks,
    /// A masked level pin sends nothing (the level is sampled on unmask).
    LevelMaskedHeld,
    /// Unmasking a level pin whose input is asserted sends it.
    LevelUnmaskDelivers,
    /// An EOI for the entry's vector clears remote IRR.
    EoiClearsRemoteIrr,
    /// After the EOI, a still-asserted unmasked level input is sent again.
    EoiRedelivers,
    /// The version-0x20 IOAPIC's EOI register acts like an EOI message.
    IoapicEoiRegister,
    /// Remote IRR of an entry made edge-triggered is cleared.
    EdgeRetypeClearsRemoteIrr,
    /// A fixed interrupt accepted into the IRR; TMR records its trigger mode.
    AcceptedIntoIrr,
    /// Vectors 0-15 are illegal: ESR bit set, nothing delivered.
    IllegalVector,
    /// A software-disabled local APIC does not accept fixed interrupts.
    ApicSoftwareDisabled,
    /// A message whose destination matches no local APIC is not delivered.
    NoDestinationMatch,
    /// The highest IRR vector whose class exceeds the PPR class is dispatched.
    DispatchAbovePpr,
    /// An IRR vector at or below the processor-priority class is held.
    HeldByPpr,
    /// The processor dispatches maskable interrupts only with RFLAGS.IF = 1.
    HeldByIf,
    /// STI inhibits interrupts until the end of the next instruction.
    StiShadow,
    /// HLT resumes on an interrupt that is delivered.
    HltWakes,
    /// Nothing can wake a HLT: no deliverable interrupt.
    HltNoWake,
    /// EOI of a level-triggered vector (TMR set) is broadcast to the IOAPIC.
    EoiBroadcast,
    /// EOI-broadcast suppression (SVR bit 12) keeps a level EOI local.
    EoiBroadcastSuppressed,
    /// EOI with an empty ISR does nothing.
    EoiNothingInService,
    /// EOI of an edge-triggered vector (TMR clear) stays in the local APIC.
    EoiEdgeNotBroadcast,
    /// A self IPI is accepted by the sending APIC.
    SelfIpi,
    /// An MSI is decoded and sent as an interrupt message.
    MsiDelivers,
    /// An NMI is taken regardless of IF and blocks further NMIs until IRET.
    NmiDelivers,
    /// A second NMI while NMIs are blocked is held until IRET.
    NmiBlocked,
    /// IA32_APIC_BASE: a valid mode transition, or #GP for an invalid one.
    ApicBaseTransition,
    /// A local APIC error (ESR) raises the interrupt of an unmasked LVT Error.
    ApicErrorInterrupt,
    /// The x2APIC MSR interface raises #GP for a reserved, read-only or
    /// write-only register, or reserved bits set.
    X2apicMsrGp,
    /// Every redirection entry comes out of reset masked.
    IoapicResetMasked,
    /// Delivery status (bit 12) and remote IRR (bit 14) of a redirection
    /// entry are read-only: a guest write does not change them.
    IoapicReadOnlyBits,
    /// An IPI reaches every local APIC its destination or shorthand names.
    IpiDelivers,
    /// A logical destination in the flat model matches an LDR bit.
    LogicalFlatMatch,
    /// A logical destination in the cluster model matches cluster and bit.
    LogicalClusterMatch,
    /// An x2APIC logical destination matches the LDR derived from the ID.
    X2apicClusterMatch,
    /// Lowest-priority delivery goes to one of the matched APICs.
    LowestPriority,
    /// INIT resets the target to its power-up state, waiting for SIPI.
    InitResets,
    /// A STARTUP IPI starts a CPU that waits for SIPI.
    StartupStarts,
    /// A CPU waiting for SIPI takes no interrupt or NMI; a STARTUP IPI to a
    /// running CPU and an INIT level de-assert do nothing.
    WaitForSipiIgnores,
    // ---- PIC and LINT (issue 15)
    /// LVT LINT0 in ExtINT mode, unmasked (or the APIC hardware-disabled):
    /// the 8259's INT is the processor's INTR, and taking it is an INTA.
    ExtintLint0,
    /// An ExtINT message (IOAPIC delivery mode 111): the processor runs an
    /// INTA cycle to the 8259 for the vector.
    ExtintIoapic,
    /// A masked LVT LINT entry passes nothing from its pin.
    LintMasked,
    /// LVT LINT in fixed mode, edge: a rising edge on the pin requests the
    /// entry's vector.
    LintFixed,
    /// LVT LINT in NMI mode: a rising edge on the pin is an NMI.
    LintNmi,
    /// The INTA cycle takes the vector from the 8259 pair (its own rules
    /// decide which, docs/pic.md).
    PicVector,
    /// An INTA with no request pending: the default IR7 (a spurious IRQ 7
    /// or 15), with no IS bit set.
    PicSpurious,
    /// LAPIC timer, one-shot: the count reaches 0, raises the LVT timer
    /// interrupt once and stays at 0.
    TimerOneShot,
    /// LAPIC timer, periodic: each time the count reaches 0 it raises the
    /// interrupt and reloads the initial count.
    TimerPeriodic,
    /// LAPIC timer, TSC-deadline mode: the interrupt comes when the TSC
    /// reaches IA32_TSC_DEADLINE, which is then cleared; the MSR works only
    /// in that mode, and the initial count is ignored in it.
    TimerTscDeadline,
    /// A write of the initial count restarts the timer; a write of 0 stops it.
    TimerInitialCountRestarts,
    /// One-shot to periodic (or back) keeps a count going; a transition to
    /// or from TSC-deadline mode disarms the timer.
    TimerModeSwitch,
    /// A masked LVT timer's expiry raises no interrupt (the timer counts).
    TimerMasked,
    /// A deviation switched on by a `sim:` quirk.
    Quirk,
}

impl Rule {
    /// Every rule, in declaration order.
    pub const ALL: &'static [Rule] = &[
        Rule::EdgeDelivers,
        Rule::EdgeMaskedLost,
        Rule::EdgeNoNewEdge,
        Rule::LevelDelivers,
        Rule::LevelRemoteIrrBlocks,
        Rule::LevelMaskedHeld,
        Rule::LevelUnmaskDelivers,
        Rule::EoiClearsRemoteIrr,
        Rule::EoiRedelivers,
        Rule::IoapicEoiRegister,
        Rule::EdgeRetypeClearsRemoteIrr,
        Rule::AcceptedIntoIrr,
        Rule::IllegalVector,
        Rule::ApicSoftwareDisabled,
        Rule::NoDestinationMatch,
        Rule::DispatchAbovePpr,
        Rule::HeldByPpr,
        Rule::HeldByIf,
        Rule::StiShadow,
        Rule::HltWakes,
        Rule::HltNoWake,
        Rule::EoiBroadcast,
        Rule::EoiBroadcastSuppressed,
        Rule::EoiNothingInService,
        Rule::EoiEdgeNotBroadcast,
        Rule::SelfIpi,
        Rule::MsiDelivers,
        Rule::NmiDelivers,
        Rule::NmiBlocked,
        Rule::ApicBaseTransition,
        Rule::ApicErrorInterrupt,
        Rule::X2apicMsrGp,
        Rule::IoapicResetMasked,
        Rule::IoapicReadOnlyBits,
        Rule::IpiDelivers,
        Rule::LogicalFlatMatch,
        Rule::LogicalClusterMatch,
        Rule::X2apicClusterMatch,
        Rule::LowestPriority,
        Rule::InitResets,
        Rule::StartupStarts,
        Rule::WaitForSipiIgnores,
        Rule::ExtintLint0,
        Rule::ExtintIoapic,
        Rule::LintMasked,
        Rule::LintFixed,
        Rule::LintNmi,
        Rule::PicVector,
        Rule::PicSpurious,
        Rule::TimerOneShot,
        Rule::TimerPeriodic,
        Rule::TimerTscDeadline,
        Rule::TimerInitialCountRestarts,
        Rule::TimerModeSwitch,
        Rule::TimerMasked,
        Rule::Quirk,
    ];

    /// Short kebab-case name, used in signatures and reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::EdgeDelivers => "edge-delivers",
            Rule::EdgeMaskedLost => "edge-masked-lost",
            Rule::EdgeNoNewEdge => "edge-no-new-edge",
            Rule::LevelDelivers => "level-delivers",
            Rule::LevelRemoteIrrBlocks => "level-remote-irr-blocks",
            Rule::LevelMaskedHeld => "level-masked-held",
            Rule::LevelUnmaskDelivers => "level-unmask-delivers",
            Rule::EoiClearsRemoteIrr => "eoi-clears-remote-irr",
            Rule::EoiRedelivers => "eoi-redelivers",
            Rule::IoapicEoiRegister => "ioapic-eoi-register",
            Rule::EdgeRetypeClearsRemoteIrr => "edge-retype-clears-remote-irr",
            Rule::AcceptedIntoIrr => "accepted-into-irr",
            Rule::IllegalVector => "illegal-vector",
            Rule::ApicSoftwareDisabled => "apic-software-disabled",
            Rule::NoDestinationMatch => "no-destination-match",
            Rule::DispatchAbovePpr => "dispatch-above-ppr",
            Rule::HeldByPpr => "held-by-ppr",
            Rule::HeldByIf => "held-by-if",
            Rule::StiShadow => "sti-shadow",
            Rule::HltWakes => "hlt-wakes",
            Rule::HltNoWake => "hlt-no-wake",
            Rule::EoiBroadcast => "eoi-broadcast",
            Rule::EoiBroadcastSuppressed => "eoi-broadcast-suppressed",
            Rule::EoiNothingInService => "eoi-nothing-in-service",
            Rule::EoiEdgeNotBroadcast => "eoi-edge-not-broadcast",
            Rule::SelfIpi => "self-ipi",
            Rule::MsiDelivers => "msi-delivers",
            Rule::NmiDelivers => "nmi-delivers",
            Rule::NmiBlocked => "nmi-blocked",
            Rule::ApicBaseTransition => "apic-base-transition",
            Rule::X2apicMsrGp => "x2apic-msr-gp",
            Rule::ApicErrorInterrupt => "apic-error-interrupt",
            Rule::IoapicResetMasked => "ioapic-reset-masked",
            Rule::IoapicReadOnlyBits => "ioapic-read-only-bits",
            Rule::IpiDelivers => "ipi-delivers",
            Rule::LogicalFlatMatch => "logical-flat-match",
            Rule::LogicalClusterMatch => "logical-cluster-match",
            Rule::X2apicClusterMatch => "x2apic-cluster-match",
            Rule::LowestPriority => "lowest-priority",
            Rule::InitResets => "init-resets",
            Rule::StartupStarts => "startup-starts",
            Rule::WaitForSipiIgnores => "wait-for-sipi-ignores",
            Rule::ExtintLint0 => "extint-lint0",
            Rule::ExtintIoapic => "extint-ioapic",
            Rule::LintMasked => "lint-masked",
            Rule::LintFixed => "lint-fixed",
            Rule::LintNmi => "lint-nmi",
            Rule::PicVector => "pic-vector",
            Rule::PicSpurious => "pic-spurious",
            Rule::TimerOneShot => "timer-one-shot",
            Rule::TimerPeriodic => "timer-periodic",
            Rule::TimerTscDeadline => "timer-tsc-deadline",
            Rule::TimerInitialCountRestarts => "timer-initial-count-restarts",
            Rule::TimerModeSwitch => "timer-mode-switch",
            Rule::TimerMasked => "timer-masked",
            Rule::Quirk => "quirk",
        }
    }

    /// The section of the spec the rule follows.
    pub fn citation(self) -> &'static str {
        match self {
            Rule::EdgeDelivers => "82093AA §3.2.4, IOREDTBL bit 15 (Trigger Mode: edge) and bit 16 (Interrupt Mask)",
            Rule::EdgeMaskedLost => "82093AA §3.2.4, IOREDTBL bit 16: \"Edge-sensitive interrupts signaled on a masked interrupt pin are ignored (i.e., not delivered or held pending)\"",
            Rule::EdgeNoNewEdge => "82093AA §3.2.4, IOREDTBL bit 15: edge-sensitive inputs deliver on the edge, not on the level",
            Rule::LevelDelivers => "82093AA §3.2.4, IOREDTBL bit 15 (Trigger Mode: level) and bit 16 (Interrupt Mask)",
            Rule::LevelRemoteIrrBlocks => "82093AA §3.2.4, IOREDTBL bit 14 (Remote IRR): set when the local APIC accepts the level interrupt, reset on EOI; no new message while set",
            Rule::LevelMaskedHeld => "82093AA §3.2.4, IOREDTBL bit 16: a masked interrupt is not delivered",
            Rule::LevelUnmaskDelivers => "82093AA §3.2.4, IOREDTBL bit 16: level-asserted interrupts on an unmasked pin are delivered; the level is still asserted at unmask",
            Rule::EoiClearsRemoteIrr => "82093AA §3.2.4, IOREDTBL bit 14: Remote IRR is reset when an EOI message with a matching interrupt vector is received",
            Rule::EoiRedelivers => "ICH IOxAPIC EOI register: \"if its input remained active when the Remote_IRR bit is cleared, the interrupt will be reissued\"; SDM vol. 3A §11.8.5 Signaling Interrupt Servicing Completion",
            Rule::IoapicEoiRegister => "ICH-family IOAPIC (version 0x20) EOI register at offset 0x40: clears Remote IRR of entries with the written vector",
            Rule::EdgeRetypeClearsRemoteIrr => "82093AA §3.2.4 bit 14: Remote IRR is undefined for edge-triggered interrupts; the model clears it as KVM and QEMU do",
            Rule::AcceptedIntoIrr => "SDM vol. 3A §11.8.4 Interrupt Acceptance for Fixed Interrupts: accepted into the IRR; TMR cleared for edge, set for level",
            Rule::IllegalVector => "SDM vol. 3A §11.5.3 Error Handling: vectors 0-15 are illegal; the ESR illegal-vector bit is set and the interrupt is not delivered",
            Rule::ApicSoftwareDisabled => "SDM vol. 3A §11.4.7.2 Local APIC State After It Has Been Software Disabled",
            Rule::NoDestinationMatch => "SDM vol. 3A §11.6.2 Determining IPI Destination (physical §11.6.2.1, logical §11.6.2.2); §11.11.1 Message Address Register Format",
            Rule::DispatchAbovePpr => "SDM vol. 3A §11.8.3 Interrupt, Task, and Processor Priority: the highest-priority IRR vector whose class is above the PPR class is dispatched",
            Rule::HeldByPpr => "SDM vol. 3A §11.8.3.1 Task and Processor Priorities: PPR from TPR and the highest ISR vector holds lower classes",
            Rule::HeldByIf => "SDM vol. 3A §6.8.1 Masking Maskable Hardware Interrupts (RFLAGS.IF)",
            Rule::StiShadow => "SDM vol. 3A §6.8.3 and the STI instruction reference: interrupts are inhibited until the end of the instruction after STI",
            Rule::HltWakes => "HLT instruction reference (SDM vol. 2A): an enabled interrupt resumes execution after HLT",
            Rule::HltNoWake => "HLT instruction reference (SDM vol. 2A): only an interrupt (or NMI, SMI, INIT, reset) resumes a halted processor",
            Rule::EoiBroadcast => "SDM vol. 3A §11.8.5 Signaling Interrupt Servicing Completion: the EOI of a level-triggered interrupt (TMR set) is broadcast to the IOAPICs",
            Rule::EoiBroadcastSuppressed => "SDM vol. 3A §11.8.5 and §11.9 (SVR bit 12, Suppress EOI Broadcasts, when the version register's bit 24 advertises it)",
            Rule::EoiNothingInService => "SDM vol. 3A §11.8.5: the EOI clears the highest ISR bit; with none set there is nothing to clear",
            Rule::EoiEdgeNotBroadcast => "SDM vol. 3A §11.8.5 Signaling Interrupt Servicing Completion: only the EOI of a level-triggered vector (TMR set) is broadcast; an edge vector's EOI just clears its ISR bit",
            Rule::SelfIpi => "SDM vol. 3A §11.6.1 Interrupt Command Register (self shorthand) and §11.12.11 SELF IPI Register",
            Rule::MsiDelivers => "SDM vol. 3A §11.11 Message Signalled Interrupts (§11.11.1 address, §11.11.2 data)",
            Rule::NmiDelivers => "SDM vol. 3A §6.7.1 Handling Multiple NMIs; §11.6.1 delivery mode NMI",
            Rule::NmiBlocked => "SDM vol. 3A §6.7.1 Handling Multiple NMIs: NMIs are blocked until the next IRET",
            Rule::X2apicMsrGp => "SDM vol. 3A §11.12.1.2 x2APIC Register Address Space (Table 11-6), §11.12.1.3 Reserved Bit Checking",
            Rule::ApicBaseTransition => "SDM vol. 3A §11.4.4 Local APIC Status and Location (IA32_APIC_BASE), §11.4.3 Enabling or Disabling the Local APIC, §11.12.5 x2APIC State Transitions",
            Rule::ApicErrorInterrupt => "SDM vol. 3A §11.5.3 Error Handling: a detected error sets its ESR bit and generates an interrupt through the LVT Error register (§11.5.1, Figure 11-8)",
            Rule::IoapicResetMasked => "82093AA §3.2.4, IOREDTBL bit 16 (Interrupt Mask): the entries come out of reset masked (the scenario format's start state; KVM's kvm_ioapic_reset and QEMU's ioapic_reset_common set the mask bit)",
            Rule::IoapicReadOnlyBits => "82093AA §3.2.4, IOREDTBL bit 12 (Delivery Status, RO) and bit 14 (Remote IRR, RO): read-only bits a write does not change",
            Rule::IpiDelivers => "SDM vol. 3A §11.6.1 Interrupt Command Register (destination shorthands 00-11), §11.6.2.1 Physical Destination Mode (0xFF broadcast), §11.12.9 ICR Operation in x2APIC Mode (0xFFFFFFFF broadcast)",
            Rule::LogicalFlatMatch => "SDM vol. 3A §11.6.2.2 Logical Destination Mode, flat model (DFR 1111b): the 8-bit MDA and LDR bits 31:24 share a set bit",
            Rule::LogicalClusterMatch => "SDM vol. 3A §11.6.2.2 Logical Destination Mode, cluster model (DFR 0000b): MDA bits 7:4 equal LDR bits 31:28, and bits 3:0 share a set bit",
            Rule::X2apicClusterMatch => "SDM vol. 3A §11.12.10.1 Logical Destination Mode in x2APIC Mode and §11.12.10.2 Deriving Logical x2APIC ID from the Local x2APIC ID: cluster ID[19:4] in bits 31:16, 1 << ID[3:0] in bits 15:0",
            Rule::LowestPriority => "SDM vol. 3A §11.6.2.4 Lowest Priority Delivery Mode: one processor of the destination set, chosen in a model-specific way (the model: lowest TPR, then lowest CPU index; the choice is an allowed difference)",
            Rule::InitResets => "SDM vol. 3A §11.6.1 delivery mode 101 (INIT), §11.4.7.3 Local APIC State After an INIT Reset (\"Wait-for-SIPI\" State), §9.4 Multiple-Processor (MP) Initialization",
            Rule::StartupStarts => "SDM vol. 3A §11.6.1 delivery mode 110 (Start-Up), §9.4.4 MP Initialization Example: a SIPI starts a processor in the wait-for-SIPI state",
            Rule::WaitForSipiIgnores => "SDM vol. 3A §11.4.7.3 (a processor waiting for SIPI runs nothing until a SIPI), §11.6.1 (INIT level de-assert is not supported on Pentium 4 and Xeon processors; a SIPI is not retried or latched)",
            Rule::ExtintLint0 => "SDM vol. 3A §11.5.1 Local Vector Table, delivery mode 111 (ExtINT): the processor responds as if the interrupt came from an externally connected 8259A-compatible controller, with the INTA cycle; the trigger mode is always level-sensitive; §11.4.3: with IA32_APIC_BASE[11] clear the processor has no APIC and LINT0 is INTR",
            Rule::ExtintIoapic => "82093AA §3.2.4 IOREDTBL delivery mode 111 (ExtINT): deliver the signal to the INTR signal of the destination processor as an interrupt that originated in an externally connected (8259A-compatible) interrupt controller; the INTA cycle goes to that controller",
            Rule::LintMasked => "SDM vol. 3A §11.5.1 Local Vector Table, mask bit 16: (1) inhibits reception of the interrupt",
            Rule::LintFixed => "SDM vol. 3A §11.5.1 Local Vector Table, delivery mode 000 (Fixed): delivers the interrupt specified in the vector field; trigger mode 0 is edge-sensitive",
            Rule::LintNmi => "SDM vol. 3A §11.5.1 Local Vector Table, delivery mode 100 (NMI): delivers an NMI; the vector is ignored and the trigger mode is always edge-sensitive",
            Rule::PicVector => "8259A datasheet (231468), Interrupt Sequence (8086 mode): the second INTA pulse puts the vector (ICW2 bits 7:3 and the level) on the bus; Cascade Mode: a slave's level comes from the slave",
            Rule::PicSpurious => "8259A datasheet (231468), Interrupt Sequence step 4 and Edge and Level Triggered Modes: with no request at the INTA the 8259A issues IR7 (the slave's IR7 for IRQ15) and sets no IS bit",
            Rule::TimerOneShot => "SDM vol. 3A §11.5.4 APIC Timer: in one-shot mode the count reaches zero, the timer generates an interrupt and the count stays at 0 until reprogrammed",
            Rule::TimerPeriodic => "SDM vol. 3A §11.5.4 APIC Timer: in periodic mode the current-count register is reloaded from the initial-count register at zero, and the count-down repeats",
            Rule::TimerTscDeadline => "SDM vol. 3A §11.5.4.1 TSC-Deadline Mode: the interrupt is generated when the TSC reaches IA32_TSC_DEADLINE, which the timer then clears; outside that mode the MSR reads 0 and writes are ignored; in it the initial count is ignored and the current count reads 0",
            Rule::TimerInitialCountRestarts => "SDM vol. 3A §11.5.4 APIC Timer: a write to the initial-count register starts the timer (restarts it while it counts); a write of 0 stops it, in one-shot and periodic mode",
            Rule::TimerModeSwitch => "SDM vol. 3A §11.5.4: changing the mode between one-shot and periodic does not start the timer (a count goes on); §11.5.4.1: transitioning between TSC-deadline mode and the other modes disarms the timer",
            Rule::TimerMasked => "SDM vol. 3A §11.5.1 Local Vector Table, mask bit 16: a masked LVT entry inhibits the interrupt; the timer still counts (§11.5.4)",
            Rule::Quirk => "a deviation from the spec switched on by a sim: quirk (see irqdiff_model::quirks)",
        }
    }
}

/// How a deviation breaks its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// The rule's action is not taken.
    Skipped,
    /// The rule's condition is read the other way.
    Inverted,
    /// The rule's action happens later than the rule says.
    Late,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Skipped, Mode::Inverted, Mode::Late];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Skipped => "skipped",
            Mode::Inverted => "inverted",
            Mode::Late => "late",
        }
    }
}

/// One candidate hypervisor bug: a rule of the model broken in one mode.
/// The model consults [`Deviations::breaks`] where that rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deviation {
    pub rule: Rule,
    pub mode: Mode,
}

impl Deviation {
    pub const fn new(rule: Rule, mode: Mode) -> Deviation {
        Deviation { rule, mode }
    }

    /// `rule-name/mode`, e.g. `eoi-redelivers/skipped`.
    pub fn name(self) -> String {
        format!("{}/{}", self.rule.name(), self.mode.name())
    }

    /// Parses [`Deviation::name`]'s form.
    pub fn parse(text: &str) -> Option<Deviation> {
        let (rule, mode) = text.split_once('/')?;
        let rule = *Rule::ALL.iter().find(|r| r.name() == rule)?;
        let mode = *Mode::ALL.iter().find(|m| m.name() == mode)?;
        Some(Deviation { rule, mode })
    }

    /// What the model does under this deviation, if it has a hook for it.
    pub fn description(self) -> Option<&'static str> {
        Some(match (self.rule, self.mode) {
            (Rule::LevelUnmaskDelivers, Mode::Skipped) => {
                "unmask does not re-evaluate a held level line"
            }
            (Rule::LevelDelivers, Mode::Skipped) => {
                "an entry write does not send its asserted level line"
            }
            (Rule::EoiRedelivers, Mode::Skipped) => {
                "the EOI does not resend a level line that stays asserted"
            }
            (Rule::LevelRemoteIrrBlocks, Mode::Late) => {
                "an assert coalesced while remote IRR is set is sent after the EOI"
            }
            (Rule::EoiBroadcast, Mode::Skipped) => "the EOI does not reach the IOAPIC",
            (Rule::EoiBroadcast, Mode::Inverted) => {
                "a level vector's EOI reaches the IOAPIC when the processor takes it (with the IOAPIC in userspace: at the first exit to the VMM after), not at the handler's EOI"
            }
            (Rule::EoiClearsRemoteIrr, Mode::Skipped) => {
                "the EOI reaches the IOAPIC but leaves remote IRR set"
            }
            (Rule::EdgeNoNewEdge, Mode::Skipped) => {
                "an assert of an already asserted edge pin delivers again"
            }
            (Rule::DispatchAbovePpr, Mode::Late) => {
                "what the guest made pending is taken only after the next exit to the VMM, one interrupt per entry (with the IOAPIC in userspace each MMIO access of an IOAPIC op is an exit: its handler runs between the op's accesses)"
            }
            (Rule::DispatchAbovePpr, Mode::Skipped) => {
                "a TPR write that lowers the priority takes nothing it unblocks until the next exit to the VMM (a stale TPR threshold)"
            }
            (Rule::AcceptedIntoIrr, Mode::Skipped) => {
                "the processor takes the vector but ISR is not set"
            }
            (Rule::AcceptedIntoIrr, Mode::Inverted) => {
                "the processor takes the vector but it stays in IRR, and ISR is not set"
            }
            (Rule::IllegalVector, Mode::Skipped) => "vectors 0-15 are accepted",
            (Rule::ApicSoftwareDisabled, Mode::Skipped) => {
                "a software-disabled APIC accepts fixed interrupts"
            }
            (Rule::ApicBaseTransition, Mode::Skipped) => {
                "enabling the APIC in a write that also moves its base leaves it disabled"
            }
            (Rule::EoiEdgeNotBroadcast, Mode::Inverted) => {
                "the EOI of an edge vector is broadcast to the IOAPIC"
            }
            (Rule::EoiBroadcastSuppressed, Mode::Skipped) => {
                "SVR bit 12 does not suppress the EOI broadcast"
            }
            (Rule::X2apicClusterMatch, Mode::Skipped) => {
                "x2APIC logical destinations match nothing (the LDR is not derived from the x2APIC ID)"
            }
            (Rule::X2apicClusterMatch, Mode::Inverted) => {
                "x2APIC logical destinations match the member bits in any cluster"
            }
            (Rule::X2apicMsrGp, Mode::Skipped) => {
                "an x2APIC MSR access that must raise #GP does nothing (a read returns 0)"
            }
            (Rule::X2apicMsrGp, Mode::Inverted) => {
                "a valid x2APIC MSR write raises #GP (an ICR write, SVR with bit 9 set)"
            }
            (Rule::ApicBaseTransition, Mode::Late) => {
                "disabling the APIC through IA32_APIC_BASE keeps its state (reset only by a later INIT)"
            }
            (Rule::ApicBaseTransition, Mode::Inverted) => {
                "an invalid IA32_APIC_BASE write is taken (reserved bits set, x2APIC straight to xAPIC)"
            }
            (Rule::EoiClearsRemoteIrr, Mode::Inverted) => {
                "an EOI clears remote IRR only on the first entry with its vector"
            }
            (Rule::EdgeRetypeClearsRemoteIrr, Mode::Skipped) => {
                "an entry made edge-triggered keeps its remote IRR"
            }
            (Rule::EdgeMaskedLost, Mode::Skipped) => {
                "an edge on a masked pin is held and sent on unmask"
            }
            (Rule::AcceptedIntoIrr, Mode::Late) => {
                "TMR is cleared by the EOI instead of by the acceptance of an edge interrupt"
            }
            (Rule::HeldByPpr, Mode::Skipped) => {
                "the priority check compares whole vectors, not classes: a vector above PPR in its class is dispatched"
            }
            (Rule::HeldByPpr, Mode::Inverted) => {
                "a requested vector that a TPR raise holds is dropped from IRR"
            }
            (Rule::HeldByPpr, Mode::Late) => {
                "a TPR raise reaches the priority check only after the TPR is next lowered (stale PPR)"
            }
            (Rule::NoDestinationMatch, Mode::Inverted) => {
                "a physical destination is compared on its low 4 bits only"
            }
            (Rule::EoiBroadcastSuppressed, Mode::Inverted) => {
                "EOI-broadcast suppression is advertised (version bit 24) and honoured where the platform has none"
            }
            (Rule::SelfIpi, Mode::Skipped) => "a write of the x2APIC SELF IPI register sends nothing",
            (Rule::IoapicResetMasked, Mode::Skipped) => {
                "the redirection entries come out of reset unmasked (vector 0, fixed, edge, to APIC 0)"
            }
            (Rule::IoapicReadOnlyBits, Mode::Skipped) => {
                "a write of an entry's low dword stores delivery status (bit 12) and remote IRR (bit 14) as written"
            }
            (Rule::TimerTscDeadline, Mode::Late) => {
                "a TSC deadline already passed at the WRMSR expires only at the next exit to the VMM or wait (the MSR reads it until then)"
            }
            _ => return None,
        })
    }

    /// The library: every rule in every mode the model has a hook for.
    pub fn library() -> Vec<Deviation> {
        Rule::ALL
            .iter()
            .flat_map(|&rule| Mode::ALL.map(|mode| Deviation { rule, mode }))
            .filter(|d| d.description().is_some())
            .collect()
    }

    /// The deviation's bit in [`Deviations`]: a constant for the model's
    /// hooks, which name their rule and mode literally (no search).
    #[inline]
    const fn bit(self) -> usize {
        self.rule as usize * Mode::ALL.len() + self.mode as usize
    }
}

/// Words of [`Deviations`]: room for 85 rules in three modes.
const DEVIATION_WORDS: usize = 4;

// Every rule in every mode has its own bit.
const _: () = assert!(Rule::ALL.len() * Mode::ALL.len() <= 64 * DEVIATION_WORDS);

/// A set of deviations the model applies (empty: the spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Deviations([u64; DEVIATION_WORDS]);

impl Deviations {
    pub fn of(deviations: &[Deviation]) -> Deviations {
        let mut words = [0u64; DEVIATION_WORDS];
        for d in deviations {
            words[d.bit() / 64] |= 1 << (d.bit() % 64);
        }
        Deviations(words)
    }

    /// Whether `rule` is broken in `mode`: the hook the model consults.
    #[inline]
    pub fn breaks(self, rule: Rule, mode: Mode) -> bool {
        let bit = Deviation::new(rule, mode).bit();
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == [0; DEVIATION_WORDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_and_mode_has_a_deviation_bit() {
        // Each rule takes one bit per mode.
        assert!(
            Rule::ALL.len() * Mode::ALL.len() <= 64 * DEVIATION_WORDS,
            "{}",
            Rule::ALL.len()
        );
        let last = Deviation::new(*Rule::ALL.last().unwrap(), Mode::Late);
        assert!(Deviations::of(&[last]).breaks(last.rule, Mode::Late));
    }

    #[test]
    fn every_rule_has_a_unique_name_and_a_citation() {
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len(), "names are unique");
        for rule in Rule::ALL {
            assert!(!rule.citation().is_empty(), "{rule:?}");
        }
    }

    #[test]
    fn deviations_round_trip_their_names_and_sets_hold_exactly_their_members() {
        let library = Deviation::library();
        assert!(library.len() >= 10, "{}", library.len());
        for d in &library {
            assert_eq!(Deviation::parse(&d.name()), Some(*d));
            let set = Deviations::of(&[*d]);
            assert!(set.breaks(d.rule, d.mode));
            assert_eq!(
                library
                    .iter()
                    .filter(|o| set.breaks(o.rule, o.mode))
                    .count(),
                1
            );
        }
        assert_eq!(Deviation::parse("eoi-redelivers/nope"), None);
        assert!(Deviations::default().is_empty());
    }

    #[test]
    fn every_rule_in_every_mode_has_its_own_bit() {
        // A set holds exactly the deviations put in it, for any rule; the
        // bit is the rule's discriminant, and ALL is in declaration order.
        for (index, &rule) in Rule::ALL.iter().enumerate() {
            assert_eq!(rule as usize, index, "{rule:?}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for &rule in Rule::ALL {
            for mode in Mode::ALL {
                let bit = Deviation::new(rule, mode).bit();
                assert!(bit < 64 * DEVIATION_WORDS, "{rule:?} {mode:?}");
                assert!(seen.insert(bit), "{rule:?} {mode:?} shares a bit");
                let set = Deviations::of(&[Deviation::new(rule, mode)]);
                assert_eq!(
                    set.0.iter().map(|w| w.count_ones()).sum::<u32>(),
                    1,
                    "{rule:?} {mode:?}"
                );
            }
        }
        assert_eq!(seen.len(), Rule::ALL.len() * Mode::ALL.len());
        // A deviation named twice is still in the set once.
        let d = Deviation::new(Rule::EoiBroadcast, Mode::Skipped);
        assert!(Deviations::of(&[d, d]).breaks(d.rule, d.mode));
        assert_eq!(Deviations::of(&[d, d]), Deviations::of(&[d]));
    }
}

#[cfg(test)]
#[path = "rule_tests/rules.rs"]
mod rule_tests;
