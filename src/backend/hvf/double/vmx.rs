//! The processor's side of the strict double: the VMX capability MSRs of a
//! real Intel Mac CPU and the VM-entry checks of SDM vol. 3C 26.2 (controls)
//! and 26.3 (guest state) on every field the guest stub relies on.
//!
//! How a failure surfaces follows SDM 26.1 and 26.7 ("VM-entry failures
//! during or after loading guest state"; 26.8 in newer editions): a
//! control-field check fails the VMLAUNCH/VMRESUME itself (VMfailValid,
//! VM-instruction error 7, SDM 30.4 "VM instruction error numbers"), so no
//! VM exit happens; a guest-state check fails as a VM exit with basic
//! reason 33 and bit 31 set ("VM-entry failure"), exit qualification 0.

use super::super::api::vmcs::*;

/// The IA32_VMX_* capability MSRs (allowed-0 settings in bits 31:0,
/// allowed-1 in 63:32, SDM vol. 3D A.3) as `hv_vmx_read_capability` reads
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub basic: u64,
    pub pinbased: u64,
    pub procbased: u64,
    pub procbased2: u64,
    pub entry: u64,
    pub exit: u64,
    pub true_pinbased: u64,
    pub true_procbased: u64,
    pub true_entry: u64,
    pub true_exit: u64,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

impl Capabilities {
    /// A Kaby Lake Core i7 (family 6, model 0x8e, stepping 9: the mobile part
    /// of the 2017 MacBook Pro), as VirtualBox's release log prints the raw
    /// MSRs. Sources, all public VBox.log dumps in GitHub issues:
    /// - BASIC, PINBASED, PROCBASED: myspaghetti/macos-virtualbox#357 (log of
    ///   that CPU: "Matched host CPU INTEL 0x6/0x8e/0x9 Intel_Core7_KabyLake").
    /// - ENTRY, EXIT, the four TRUE_* and MISC: myspaghetti/macos-virtualbox#224
    ///   (a host with the same PINBASED and MISC-era values and Intel PT;
    ///   its CPU model is not in the part of the log that was read).
    /// - CR0_FIXED0/1, CR4_FIXED0: the same on every Intel CPU since Nehalem
    ///   (0x80000021 / 0xffffffff / 0x2000; e.g. Stichting-MINIX-Research-
    ///   Foundation/minix#17); CR4_FIXED1 0x3727ff is the Comet Lake value in
    ///   cheat-engine/cheat-engine#1491 without bit 22 (PKE, absent from
    ///   client Skylake/Kaby Lake): bits 0-10, 13, 16-18, 20, 21.
    /// - PROCBASED2 is NOT from a dump (none was found): allowed-0 = 0 (SDM
    ///   A.3.3), allowed-1 = bits 0-7 and 10-20, i.e. everything up to XSAVES
    ///   except APIC-register virtualization and virtual-interrupt delivery,
    ///   which client Skylake/Kaby Lake lack (their PINBASED shows posted
    ///   interrupts "must be cleared").
    ///
    /// What Hypervisor.framework reports may differ from the raw MSRs (it
    /// owns some controls itself): unverified without a Mac.
    pub const KABY_LAKE: Capabilities = Capabilities {
        basic: 0x00da_0400_0000_0004,
        pinbased: 0x0000_007f_0000_0016,
        procbased: 0xfff9_fffe_0401_e172,
        procbased2: 0x001f_fcff_0000_0000,
        entry: 0x0003_ffff_0000_11ff,
        exit: 0x01ff_ffff_0003_6dff,
        true_pinbased: 0x0000_007f_0000_0016,
        true_procbased: 0xfff9_fffe_0400_6172,
        true_entry: 0x0003_ffff_0000_11fb,
        true_exit: 0x01ff_ffff_0003_6dfb,
        misc: 0x7004_c1e7,
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xffff_ffff,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0x0037_27ff,
    };

    /// `hv_vmx_read_capability(field)`, `None` for a field it does not know.
    pub fn read(&self, field: u32) -> Option<u64> {
        use super::super::api::cap;
        Some(match field {
            cap::PINBASED => self.pinbased,
            cap::PROCBASED => self.procbased,
            cap::PROCBASED2 => self.procbased2,
            cap::ENTRY => self.entry,
            cap::EXIT => self.exit,
            cap::BASIC => self.basic,
            cap::TRUE_PINBASED => self.true_pinbased,
            cap::TRUE_PROCBASED => self.true_procbased,
            cap::TRUE_ENTRY => self.true_entry,
            cap::TRUE_EXIT => self.true_exit,
            cap::MISC => self.misc,
            cap::CR0_FIXED0 => self.cr0_fixed0,
            cap::CR0_FIXED1 => self.cr0_fixed1,
            cap::CR4_FIXED0 => self.cr4_fixed0,
            cap::CR4_FIXED1 => self.cr4_fixed1,
            _ => return None,
        })
    }

    /// The controls the checks use: the TRUE_* MSRs when IA32_VMX_BASIC
    /// bit 55 says they exist (SDM A.2, A.3.1).
    fn control_caps(&self) -> [(u32, &'static str, u64); 4] {
        let has_true = self.basic & (1 << 55) != 0;
        let pick = |plain: u64, true_: u64| if has_true { true_ } else { plain };
        [
            (
                VMCS_CTRL_PIN_BASED,
                "pin-based",
                pick(self.pinbased, self.true_pinbased),
            ),
            (
                VMCS_CTRL_CPU_BASED,
                "primary processor-based",
                pick(self.procbased, self.true_procbased),
            ),
            (
                VMCS_CTRL_VMEXIT_CONTROLS,
                "VM-exit",
                pick(self.exit, self.true_exit),
            ),
            (
                VMCS_CTRL_VMENTRY_CONTROLS,
                "VM-entry",
                pick(self.entry, self.true_entry),
            ),
        ]
    }
}

pub use super::super::api::cap2ctrl;

/// Why a VM entry failed, as the processor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryFailure {
    /// VMfailValid with VM-instruction error 7, "VM entry with invalid
    /// control field(s)" (SDM 26.2, 30.4): no VM exit.
    Control(String),
    /// A VM exit with reason 33 | 1 << 31, "VM-entry failure due to invalid
    /// guest state" (SDM 26.3, 26.7), qualification 0.
    GuestState(String),
}

/// VM-instruction error 7 (SDM 30.4, "VM instruction error numbers").
pub const VM_INSTRUCTION_ERROR_INVALID_CONTROLS: u64 = 7;
/// Basic exit reason 33 with bit 31 (VM-entry failure) set (SDM 26.7).
pub const EXIT_REASON_INVALID_GUEST_STATE: u64 = 33 | 1 << 31;

/// The VMCS as the entry checks see it: a field's value, or `None` if the
/// VMM never wrote it.
pub trait Fields {
    fn field(&self, encoding: u32) -> Option<u64>;
    fn rflags(&self) -> u64;
}

const IA32E_MODE_GUEST: u64 = 1 << 9;
const ACTIVATE_SECONDARY: u64 = 1 << 31;

/// Every check, controls first (26.2 precedes 26.3 in the processor's
/// order: SDM 26.1).
pub fn check_entry(caps: &Capabilities, f: &impl Fields) -> Result<(), EntryFailure> {
    check_controls(caps, f).map_err(EntryFailure::Control)?;
    check_guest_state(caps, f).map_err(EntryFailure::GuestState)
}

fn written(f: &impl Fields, encoding: u32, name: &str) -> Result<u64, String> {
    // Apple documents no initial value for any VMCS field of a new vCPU:
    // the double refuses to guess one (the issue's SS/DS/ES limits "left at
    // HVF's default").
    f.field(encoding).ok_or_else(|| {
        format!("{name} ({encoding:#x}) was never written; Hypervisor.framework documents no initial value for it")
    })
}

/// SDM 26.2.1 (VM-execution, VM-exit and VM-entry control fields).
fn check_controls(caps: &Capabilities, f: &impl Fields) -> Result<(), String> {
    for (field, name, cap) in caps.control_caps() {
        let value = written(f, field, &format!("the {name} controls"))?;
        // 26.2.1.1-3: bits that are 0 in allowed-1 must be 0, bits that are
        // 1 in allowed-0 must be 1.
        let must_be_1 = cap & 0xffff_ffff;
        let may_be_1 = cap >> 32;
        if value & must_be_1 != must_be_1
            || value & !may_be_1 & 0xffff_ffff != 0
            || value >> 32 != 0
        {
            return Err(format!(
                "the {name} controls {value:#x} break the capability MSR {cap:#018x} (must-be-1 {must_be_1:#x}, may-be-1 {may_be_1:#x})"
            ));
        }
    }
    let primary = f.field(VMCS_CTRL_CPU_BASED).unwrap_or(0);
    if primary & ACTIVATE_SECONDARY != 0 {
        // 26.2.1.1: checked against IA32_VMX_PROCBASED_CTLS2 only when
        // "activate secondary controls" is 1 (otherwise taken as 0).
        let value = written(
            f,
            VMCS_CTRL_CPU_BASED2,
            "the secondary processor-based controls",
        )?;
        let (must, may) = (caps.procbased2 & 0xffff_ffff, caps.procbased2 >> 32);
        if value & must != must || value & !may != 0 {
            return Err(format!(
                "the secondary processor-based controls {value:#x} break IA32_VMX_PROCBASED_CTLS2 {:#018x}",
                caps.procbased2
            ));
        }
    }
    check_cr_ownership(f)?;
    let pin = f.field(VMCS_CTRL_PIN_BASED).unwrap_or(0);
    // 26.2.1.1: "virtual NMIs" needs "NMI exiting"; "NMI-window exiting"
    // needs "virtual NMIs".
    if pin & (1 << 5) != 0 && pin & (1 << 3) == 0 {
        return Err("\"virtual NMIs\" is 1 but \"NMI exiting\" is 0".into());
    }
    if primary & (1 << 22) != 0 && pin & (1 << 5) == 0 {
        return Err("\"NMI-window exiting\" is 1 but \"virtual NMIs\" is 0".into());
    }
    check_injection(caps, f)
}

/// SDM vol. 3C §26.2.1.3, the VM-entry interruption-information field
/// (checked only when its valid bit 31 is 1, except the reserved bits):
/// reserved bits 30:12 are 0; the type (10:8) is not 1 (reserved), and 7
/// (other event) only with the monitor trap flag; the vector fits the type
/// (NMI: 2; hardware exception: at most 31; other event: 0); the
/// deliver-error-code bit (11) is 1 exactly when the type is hardware
/// exception, the vector one that pushes an error code (8, 10-14, 17) and
/// the guest is in protected mode (CR0.PE, or "unrestricted guest" off);
/// with it set, bits 31:16 of the VM-entry exception error code are 0 (bit
/// 56 of IA32_VMX_BASIC, clear on Kaby Lake, drops the vector condition);
/// for the software types (4, 5, 6) the VM-entry instruction length is 1-15
/// (0 too when IA32_VMX_MISC bit 30 is 1).
///
/// Beyond the processor, the double's limit: it delivers hardware
/// exceptions only (the guest stub's #GP handler is what it plays), so a
/// valid injection of another type, or of an exception other than #GP, is
/// refused as not modelled.
fn check_injection(caps: &Capabilities, f: &impl Fields) -> Result<(), String> {
    use super::super::api::event;
    let info = f.field(VMCS_CTRL_VMENTRY_IRQ_INFO).unwrap_or(0);
    if info & 0x7fff_f000 != 0 {
        return Err(format!(
            "the VM-entry interruption information {info:#x} has reserved bits 30:12 set"
        ));
    }
    if info & event::VALID == 0 {
        return Ok(());
    }
    let vector = info as u8;
    let kind = (info >> event::TYPE_SHIFT) & 7;
    let primary = f.field(VMCS_CTRL_CPU_BASED).unwrap_or(0);
    let monitor_trap_flag = (caps.procbased >> 32) & (1 << 27) != 0;
    match kind {
        1 => {
            return Err(format!(
                "the VM-entry interruption information {info:#x} has the reserved type 1"
            ))
        }
        event::OTHER_EVENT if !monitor_trap_flag || vector != 0 => {
            return Err(format!(
                "the VM-entry interruption information {info:#x}: type 7 (other event) needs the monitor trap flag and vector 0"
            ))
        }
        event::NMI if vector != 2 => {
            return Err(format!(
                "the VM-entry interruption information {info:#x}: an NMI must have vector 2"
            ))
        }
        event::HARDWARE_EXCEPTION if vector > 31 => {
            return Err(format!(
                "the VM-entry interruption information {info:#x}: a hardware exception's vector is at most 31"
            ))
        }
        _ => {}
    }
    let secondary = if primary & ACTIVATE_SECONDARY != 0 {
        f.field(VMCS_CTRL_CPU_BASED2).unwrap_or(0)
    } else {
        0
    };
    let unrestricted = secondary & (1 << 7) != 0;
    let protected = !unrestricted || f.field(VMCS_GUEST_CR0).unwrap_or(0) & 1 != 0;
    let vector_rule_lifted = caps.basic & (1 << 56) != 0;
    let wants_code = protected
        && kind == event::HARDWARE_EXCEPTION
        && (event::pushes_error_code(vector) || vector_rule_lifted);
    let delivers_code = info & event::DELIVER_ERROR_CODE != 0;
    if delivers_code != wants_code {
        return Err(format!(
            "the VM-entry interruption information {info:#x}: deliver-error-code is {} but type {kind} vector {vector} {}",
            u8::from(delivers_code),
            if wants_code {
                "pushes an error code"
            } else {
                "pushes no error code"
            }
        ));
    }
    if delivers_code {
        let code = written(
            f,
            VMCS_CTRL_VMENTRY_EXC_ERROR,
            "the VM-entry exception error code",
        )?;
        if code & 0xffff_0000 != 0 {
            return Err(format!(
                "the VM-entry exception error code {code:#x} has bits 31:16 set"
            ));
        }
    }
    if matches!(
        kind,
        event::SOFTWARE_INTERRUPT
            | event::PRIVILEGED_SOFTWARE_EXCEPTION
            | event::SOFTWARE_EXCEPTION
    ) {
        let len = written(
            f,
            VMCS_CTRL_VMENTRY_INSTR_LEN,
            "the VM-entry instruction length",
        )?;
        let zero_ok = caps.misc & (1 << 30) != 0;
        if len > 15 || (len == 0 && !zero_ok) {
            return Err(format!(
                "the VM-entry instruction length {len} is outside 1-15 for type {kind}"
            ));
        }
    }
    if kind != event::HARDWARE_EXCEPTION || vector != 13 {
        return Err(format!(
            "a pending event injection ({info:#x}) at VM entry: the double delivers #GP only (left over from an earlier scenario?)"
        ));
    }
    Ok(())
}

/// Not a processor check (any mask passes VM entry) but the double's
/// policy: the CR0/CR4 guest/host masks and read shadows must be written,
/// since Apple documents no initial value for them and every reference VMM
/// writes all four (QEMU `target/i386/hvf`; uhyve `src/macos/x86_64/vcpu.rs`:
/// CR4 mask VMXE, shadow 0, so the guest does not see VMXE; xhyve-derived
/// VMMs write them as 0). Reported as a control failure because they are
/// control fields.
fn check_cr_ownership(f: &impl Fields) -> Result<(), String> {
    for (field, name) in [
        (VMCS_CTRL_CR0_MASK, "VMCS_CTRL_CR0_MASK"),
        (VMCS_CTRL_CR0_SHADOW, "VMCS_CTRL_CR0_SHADOW"),
        (VMCS_CTRL_CR4_MASK, "VMCS_CTRL_CR4_MASK"),
        (VMCS_CTRL_CR4_SHADOW, "VMCS_CTRL_CR4_SHADOW"),
    ] {
        written(f, field, &format!("{name} (double policy)"))?;
    }
    Ok(())
}

/// SDM 26.3.1: the guest-state area.
fn check_guest_state(caps: &Capabilities, f: &impl Fields) -> Result<(), String> {
    let entry = f.field(VMCS_CTRL_VMENTRY_CONTROLS).unwrap_or(0);
    let ia32e = entry & IA32E_MODE_GUEST != 0;
    let cr0 = written(f, VMCS_GUEST_CR0, "VMCS_GUEST_CR0")?;
    let cr4 = written(f, VMCS_GUEST_CR4, "VMCS_GUEST_CR4")?;
    written(f, VMCS_GUEST_CR3, "VMCS_GUEST_CR3")?;
    let efer = written(f, VMCS_GUEST_IA32_EFER, "VMCS_GUEST_IA32_EFER")?;
    // 26.3.1.1: CR0 and CR4 against the fixed-bit MSRs (PE and PG may be 0
    // only with "unrestricted guest", which the stub does not need).
    let fixed = |name: &str, value: u64, fixed0: u64, fixed1: u64| {
        if value & fixed0 != fixed0 || value & !fixed1 & 0xffff_ffff != 0 || value >> 32 != 0 {
            Err(format!(
                "guest {name} {value:#x} breaks {name}_FIXED0 {fixed0:#x} / {name}_FIXED1 {fixed1:#x} (SDM 26.3.1.1)"
            ))
        } else {
            Ok(())
        }
    };
    fixed("CR0", cr0, caps.cr0_fixed0, caps.cr0_fixed1)?;
    fixed("CR4", cr4, caps.cr4_fixed0, caps.cr4_fixed1)?;
    let pg = cr0 & (1 << 31) != 0;
    // 26.3.1.1: "IA-32e mode guest" needs CR0.PG and CR4.PAE; without it
    // CR4.PCIDE must be 0.
    if ia32e && (!pg || cr4 & (1 << 5) == 0) {
        return Err("\"IA-32e mode guest\" is 1 but CR0.PG or CR4.PAE is 0 (SDM 26.3.1.1)".into());
    }
    if !ia32e && cr4 & (1 << 17) != 0 {
        return Err("CR4.PCIDE is 1 outside IA-32e mode (SDM 26.3.1.1)".into());
    }
    // 26.3.1.1 (with "load IA32_EFER"; the double takes the EFER field as
    // loaded either way, since it is the only guest EFER there is): reserved
    // bits 0, LMA = "IA-32e mode guest", and with CR0.PG also LME = LMA.
    let lma = efer & (1 << 10) != 0;
    let lme = efer & (1 << 8) != 0;
    if efer & !0xd01 != 0 {
        return Err(format!(
            "guest IA32_EFER {efer:#x} has reserved bits set (SDM 26.3.1.1)"
        ));
    }
    if lma != ia32e {
        return Err(format!(
            "guest IA32_EFER.LMA is {} but \"IA-32e mode guest\" is {} (SDM 26.3.1.1)",
            lma as u8, ia32e as u8
        ));
    }
    if pg && lme != lma {
        return Err("CR0.PG is 1 and IA32_EFER.LME differs from LMA (SDM 26.3.1.1)".into());
    }
    check_segments(f, ia32e)?;
    check_descriptor_tables(f)?;
    check_rflags(f, ia32e)?;
    check_activity(caps, f)
}

/// A segment's VMCS fields and their names.
struct Segment {
    name: &'static str,
    selector: u64,
    limit: u64,
    ar: u64,
    base: u64,
}

impl Segment {
    fn read(f: &impl Fields, index: u32) -> Result<Segment, String> {
        let name = SEGMENTS[index as usize];
        let (sel, limit, ar, base) = segment(index);
        Ok(Segment {
            name,
            selector: written(f, sel, &format!("the {name} selector"))?,
            limit: written(f, limit, &format!("the {name} limit"))?,
            ar: written(f, ar, &format!("the {name} access rights"))?,
            base: written(f, base, &format!("the {name} base"))?,
        })
    }
    fn usable(&self) -> bool {
        self.ar & (1 << 16) == 0
    }
    fn kind(&self) -> u64 {
        self.ar & 0xf
    }
    fn s(&self) -> bool {
        self.ar & (1 << 4) != 0
    }
    fn dpl(&self) -> u64 {
        (self.ar >> 5) & 3
    }
    fn present(&self) -> bool {
        self.ar & (1 << 7) != 0
    }
    fn rpl(&self) -> u64 {
        self.selector & 3
    }
    fn fail(&self, what: &str) -> String {
        format!(
            "guest {} (selector {:#x}, limit {:#x}, access rights {:#x}, base {:#x}): {what} (SDM 26.3.1.2)",
            self.name, self.selector, self.limit, self.ar, self.base
        )
    }
    /// The rules every usable segment shares: P = 1, reserved access-right
    /// bits 11:8 and 31:17 zero, and the limit/G rule.
    fn common(&self) -> Result<(), String> {
        if !self.present() {
            return Err(self.fail("P must be 1"));
        }
        if self.ar & 0xf00 != 0 || self.ar >> 17 != 0 {
            return Err(self.fail("reserved access-right bits 11:8 or 31:17 are set"));
        }
        let g = self.ar & (1 << 15) != 0;
        if self.limit & 0xfff != 0xfff && g {
            return Err(self.fail("G must be 0 when any bit of limit[11:0] is 0"));
        }
        if self.limit & 0xfff0_0000 != 0 && !g {
            return Err(self.fail("G must be 1 when any bit of limit[31:20] is 1"));
        }
        Ok(())
    }
}

fn canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

/// SDM 26.3.1.2 for ES CS SS DS FS GS LDTR TR (no virtual-8086 mode, no
/// "unrestricted guest").
fn check_segments(f: &impl Fields, ia32e: bool) -> Result<(), String> {
    let seg: Vec<Segment> = (0..8)
        .map(|i| Segment::read(f, i))
        .collect::<Result<_, _>>()?;
    let (es, cs, ss, ds, fs, gs, ldtr, tr) = (
        &seg[0], &seg[1], &seg[2], &seg[3], &seg[4], &seg[5], &seg[6], &seg[7],
    );
    // Selector fields.
    if tr.selector & 4 != 0 {
        return Err(tr.fail("the TI flag of the selector must be 0"));
    }
    if ldtr.usable() && ldtr.selector & 4 != 0 {
        return Err(ldtr.fail("the TI flag of the selector must be 0"));
    }
    if ss.rpl() != cs.rpl() {
        return Err(ss.fail("the RPL must equal CS's RPL"));
    }
    // Base fields: TR, FS, GS canonical; LDTR canonical if usable.
    for s in [tr, fs, gs] {
        if !canonical(s.base) {
            return Err(s.fail("the base must be canonical"));
        }
    }
    if ldtr.usable() && !canonical(ldtr.base) {
        return Err(ldtr.fail("the base must be canonical"));
    }
    if cs.base >> 32 != 0 {
        return Err(cs.fail("bits 63:32 of the base must be 0"));
    }
    for s in [ss, ds, es] {
        if s.usable() && s.base >> 32 != 0 {
            return Err(s.fail("bits 63:32 of the base must be 0"));
        }
    }
    // CS.
    if !cs.usable() {
        return Err(cs.fail("CS must be usable"));
    }
    if ![9, 11, 13, 15].contains(&cs.kind()) {
        return Err(cs.fail("the type must be an accessed code segment (9, 11, 13 or 15)"));
    }
    if !cs.s() {
        return Err(cs.fail("S must be 1"));
    }
    match cs.kind() {
        9 | 11 if cs.dpl() != ss.dpl() => {
            return Err(cs.fail("a non-conforming CS must have DPL = SS.DPL"))
        }
        13 | 15 if cs.dpl() > ss.dpl() => {
            return Err(cs.fail("a conforming CS must have DPL <= SS.DPL"))
        }
        _ => {}
    }
    let l = cs.ar & (1 << 13) != 0;
    let d = cs.ar & (1 << 14) != 0;
    if ia32e && l && d {
        return Err(cs.fail("with L = 1 in IA-32e mode, D/B must be 0"));
    }
    cs.common()?;
    // SS.
    if ss.usable() {
        if ![3, 7].contains(&ss.kind()) {
            return Err(ss.fail("the type must be 3 or 7 (read/write data)"));
        }
        if !ss.s() {
            return Err(ss.fail("S must be 1"));
        }
        if ss.dpl() != ss.rpl() {
            return Err(ss.fail("the DPL must equal the selector's RPL"));
        }
        ss.common()?;
    }
    // DS ES FS GS.
    for s in [ds, es, fs, gs] {
        if !s.usable() {
            continue;
        }
        if s.kind() & 1 == 0 {
            return Err(s.fail("the type must be accessed (bit 0 = 1)"));
        }
        if s.kind() & 8 != 0 && s.kind() & 2 == 0 {
            return Err(s.fail("a code segment here must be readable"));
        }
        if !s.s() {
            return Err(s.fail("S must be 1"));
        }
        if s.kind() <= 11 && s.dpl() < s.rpl() {
            return Err(s.fail("the DPL must be >= the selector's RPL"));
        }
        s.common()?;
    }
    // TR: a busy 64-bit TSS in IA-32e mode (type 11; 3 also allowed
    // outside it), S = 0, usable.
    let tr_ok = tr.kind() == 11 || (!ia32e && tr.kind() == 3);
    if !tr_ok {
        return Err(tr.fail("the type must be 11 (busy TSS)"));
    }
    if tr.s() {
        return Err(tr.fail("S must be 0"));
    }
    if !tr.usable() {
        return Err(tr.fail("TR must be usable"));
    }
    tr.common()?;
    // LDTR, if usable: type 2, S = 0.
    if ldtr.usable() {
        if ldtr.kind() != 2 {
            return Err(ldtr.fail("the type must be 2 (LDT)"));
        }
        if ldtr.s() {
            return Err(ldtr.fail("S must be 0"));
        }
        ldtr.common()?;
    }
    Ok(())
}

/// SDM 26.3.1.3: GDTR and IDTR bases canonical, limits' bits 31:16 zero.
fn check_descriptor_tables(f: &impl Fields) -> Result<(), String> {
    for (name, base, limit) in [
        ("GDTR", VMCS_GUEST_GDTR_BASE, VMCS_GUEST_GDTR_LIMIT),
        ("IDTR", VMCS_GUEST_IDTR_BASE, VMCS_GUEST_IDTR_LIMIT),
    ] {
        let b = written(f, base, &format!("the {name} base"))?;
        let l = written(f, limit, &format!("the {name} limit"))?;
        if !canonical(b) || l >> 16 != 0 {
            return Err(format!(
                "guest {name} base {b:#x} / limit {l:#x}: the base must be canonical and limit[31:16] 0 (SDM 26.3.1.3)"
            ));
        }
    }
    Ok(())
}

/// SDM 26.3.1.4: RFLAGS reserved bits 63:22, 15, 5, 3 zero, bit 1 one, VM
/// zero in IA-32e mode.
fn check_rflags(f: &impl Fields, ia32e: bool) -> Result<(), String> {
    let rflags = f.rflags();
    if rflags >> 22 != 0 || rflags & (1 << 15 | 1 << 5 | 1 << 3) != 0 || rflags & 2 == 0 {
        return Err(format!(
            "guest RFLAGS {rflags:#x}: reserved bits 63:22, 15, 5, 3 must be 0 and bit 1 must be 1 (SDM 26.3.1.4)"
        ));
    }
    if ia32e && rflags & (1 << 17) != 0 {
        return Err("guest RFLAGS.VM must be 0 in IA-32e mode (SDM 26.3.1.4)".into());
    }
    Ok(())
}

/// SDM 26.3.1.5: the activity and interruptibility states.
fn check_activity(caps: &Capabilities, f: &impl Fields) -> Result<(), String> {
    let activity = written(f, VMCS_GUEST_ACTIVITY_STATE, "the activity state")?;
    let blocking = written(f, VMCS_GUEST_INTERRUPTIBILITY, "the interruptibility state")?;
    // Activity: 0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI; 1-3 only if
    // IA32_VMX_MISC bits 8:6 say so (SDM A.6).
    let supported = (caps.misc >> 6) & 7;
    if activity > 3 || (activity > 0 && supported & (1 << (activity - 1)) == 0) {
        return Err(format!(
            "activity state {activity} is not supported (SDM 26.3.1.5)"
        ));
    }
    let ss_ar = f.field(segment(2).2).unwrap_or(0);
    if activity == 1 && (ss_ar >> 5) & 3 != 0 {
        return Err("activity state HLT with SS.DPL != 0 (SDM 26.3.1.5)".into());
    }
    if blocking >> 5 != 0 {
        return Err(format!(
            "interruptibility state {blocking:#x} has reserved bits 31:5 set (SDM 26.3.1.5)"
        ));
    }
    let (sti, mov_ss) = (blocking & 1 != 0, blocking & 2 != 0);
    if sti && mov_ss {
        return Err("blocking by STI and by MOV SS both set (SDM 26.3.1.5)".into());
    }
    if sti && f.rflags() & (1 << 9) == 0 {
        return Err("blocking by STI with RFLAGS.IF = 0 (SDM 26.3.1.5)".into());
    }
    if (sti || mov_ss) && activity != 0 {
        return Err(format!(
            "activity state {activity} with blocking by STI or MOV SS: it must be active (SDM 26.3.1.5)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap2ctrl_keeps_must_be_1_bits_and_drops_unsupported_ones() {
        let pin = Capabilities::KABY_LAKE.pinbased;
        // Bits 1, 2, 4 must be 1; posted interrupts (bit 7) may not be.
        assert_eq!(cap2ctrl(pin, 0), 0x16);
        assert_eq!(cap2ctrl(pin, 1 << 7 | 1 << 3), 0x1e);
    }

    #[test]
    fn checks_use_the_true_msrs_when_basic_bit_55_says_they_exist() {
        let caps = Capabilities::KABY_LAKE;
        assert_ne!(caps.basic & 1 << 55, 0);
        let procbased = caps.control_caps()[1].2;
        assert_eq!(procbased, caps.true_procbased);
        // TRUE_PROCBASED lets CR3-load/store exiting (bits 15, 16) be 0.
        assert_eq!(caps.procbased & 0x1_8000, 0x1_8000);
        assert_eq!(procbased & 0x1_8000, 0);
    }
}
