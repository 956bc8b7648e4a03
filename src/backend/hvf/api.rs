//! The Hypervisor.framework calls the VMM loop makes, as one small safe
//! trait: implemented over the real framework on Intel Macs
//! (`framework.rs`) and by a test double on every host (`double.rs`).
//! Semantics follow Apple's header comments (`hypervisor-framework-sys`).

use std::fmt;

/// A failed call: which one, and its `hv_return_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvError {
    pub call: &'static str,
    pub code: i32,
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed with {:#x}", self.call, self.code as u32)
    }
}

impl std::error::Error for HvError {}

pub type HvResult<T> = Result<T, HvError>;

/// How `run_until` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// A VM exit for the VMM (see `exit_info`).
    Exit,
    /// The deadline passed (a halted vCPU blocks in the kernel until then).
    Deadline,
}

pub trait Hv {
    /// `hv_vm_create(HV_VM_ACCEL_APIC)` and the guest RAM mapped at 0
    /// (`hv_vm_map`, read/write/execute). The RAM outlives the VM.
    fn create_vm(&mut self, ram: *mut u8, size: usize) -> HvResult<()>;
    /// `hv_vcpu_create` on the calling thread.
    fn create_vcpu(&mut self) -> HvResult<u32>;
    /// Restores the in-kernel APIC and IOAPIC to the states they had when
    /// the vCPU was created (`hv_vcpu_apic_put_state`,
    /// `hv_vm_ioapic_put_state`) and the APIC window to 0xFEE00000: the
    /// start of every scenario.
    fn reset_irqchip(&mut self, vcpu: u32) -> HvResult<()>;
    /// `hv_vmx_vcpu_set_apic_address`.
    fn set_apic_address(&mut self, vcpu: u32, gpa: u64) -> HvResult<()>;
    /// `hv_vcpu_apic_ctrl`.
    fn apic_ctrl(&mut self, vcpu: u32, ctrl: u64) -> HvResult<()>;
    fn read_register(&mut self, vcpu: u32, reg: u32) -> HvResult<u64>;
    fn write_register(&mut self, vcpu: u32, reg: u32, value: u64) -> HvResult<()>;
    fn read_vmcs(&mut self, vcpu: u32, field: u32) -> HvResult<u64>;
    fn write_vmcs(&mut self, vcpu: u32, field: u32, value: u64) -> HvResult<()>;
    fn write_msr(&mut self, vcpu: u32, msr: u32, value: u64) -> HvResult<()>;
    /// `hv_vcpu_run_until` with a deadline `timeout` from now.
    fn run_until(&mut self, vcpu: u32, timeout: std::time::Duration) -> HvResult<RunEnd>;
    /// `hv_vcpu_exit_info`.
    fn exit_info(&mut self, vcpu: u32) -> HvResult<u32>;
    /// `hv_vcpu_exit_ioapic_eoi`.
    fn exit_ioapic_eoi(&mut self, vcpu: u32) -> HvResult<u8>;
    /// `hv_vcpu_exit_inject_excp`: the exception the in-kernel APIC wants
    /// delivered to the guest after an exit with
    /// `HV_VM_EXITINFO_INJECT_EXCP` ("the guest vcpu may have performed an
    /// illegal operation on its APIC, so the exception should usually be
    /// directed back into the guest", hv.h).
    fn exit_inject_excp(&mut self, vcpu: u32) -> HvResult<ApicException>;
    /// `hv_vcpu_exit_apic_access_read`.
    fn exit_apic_access_read(&mut self, vcpu: u32) -> HvResult<u32>;
    /// `hv_vcpu_apic_read`.
    fn apic_read(&mut self, vcpu: u32, offset: u32) -> HvResult<u32>;
    /// `hv_vcpu_apic_write`; returns `no_side_effect`.
    fn apic_write(&mut self, vcpu: u32, offset: u32, value: u32) -> HvResult<bool>;
    /// `hv_vm_lapic_msi` (full address).
    fn lapic_msi(&mut self, address: u64, data: u64) -> HvResult<()>;
    /// `hv_vm_send_ioapic_intr` (a redirection-entry value).
    fn send_ioapic_intr(&mut self, entry: u64) -> HvResult<()>;
    /// `hv_vm_ioapic_read` (full guest-physical address).
    fn ioapic_read(&mut self, gpa: u64) -> HvResult<u32>;
    /// `hv_vm_ioapic_write` (full guest-physical address).
    fn ioapic_write(&mut self, gpa: u64, value: u32) -> HvResult<()>;
    fn ioapic_assert_irq(&mut self, pin: i32) -> HvResult<()>;
    fn ioapic_deassert_irq(&mut self, pin: i32) -> HvResult<()>;
    fn ioapic_pulse_irq(&mut self, pin: i32) -> HvResult<()>;
    /// `hv_vm_atpic_port_write`.
    fn atpic_port_write(&mut self, port: i32, value: u8) -> HvResult<()>;
}

/// What `hv_vcpu_exit_inject_excp` answers: `(vec, valid, code, restart)`.
/// The parameters are those of bhyve's and xhyve's
/// `vm_inject_exception(vcpu, vector, errcode_valid, errcode,
/// restart_instruction)`, which the framework's in-kernel APIC (bhyve's
/// vlapic and vioapic, by its IOAPIC's identity) appears to derive from:
/// `valid` says the error code is valid, `restart` that the instruction is
/// restarted, i.e. RIP stays on it (the fault semantics of #GP, SDM vol. 3A
/// §6.5). That reading is unverified on a Mac.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicException {
    pub vector: u8,
    pub error_code: Option<u32>,
    pub restart: bool,
}

impl ApicException {
    /// #GP(0), the fault every APIC register rule raises (SDM vol. 3A
    /// §11.4.4, §11.12.1.2, §11.12.1.3, §11.12.5).
    pub const GP: ApicException = ApicException {
        vector: 13,
        error_code: Some(0),
        restart: true,
    };
}

/// The VM-entry interruption-information field (SDM vol. 3C §24.8.3,
/// Table 24-14): vector 7:0, type 10:8, deliver error code 11, valid 31.
pub mod event {
    pub const VALID: u64 = 1 << 31;
    pub const DELIVER_ERROR_CODE: u64 = 1 << 11;
    pub const TYPE_SHIFT: u32 = 8;
    /// Interruption types (bits 10:8).
    pub const EXTERNAL_INTERRUPT: u64 = 0;
    pub const NMI: u64 = 2;
    pub const HARDWARE_EXCEPTION: u64 = 3;
    pub const SOFTWARE_INTERRUPT: u64 = 4;
    pub const PRIVILEGED_SOFTWARE_EXCEPTION: u64 = 5;
    pub const SOFTWARE_EXCEPTION: u64 = 6;
    pub const OTHER_EVENT: u64 = 7;

    /// A hardware exception's field value, with or without an error code.
    pub const fn hardware_exception(vector: u8, error_code: bool) -> u64 {
        VALID
            | HARDWARE_EXCEPTION << TYPE_SHIFT
            | if error_code { DELIVER_ERROR_CODE } else { 0 }
            | vector as u64
    }

    /// The exceptions that push an error code (SDM vol. 3C §26.2.1.3: the
    /// deliver-error-code bit must be 1 exactly for these, in protected
    /// mode): #DF, #TS, #NP, #SS, #GP, #PF, #AC.
    pub const fn pushes_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17)
    }
}

/// `hv_vcpu_interrupt` for one vCPU, callable from any thread (hv.h: it is
/// the one vCPU call without "Must be called by the owning thread"): what a
/// watchdog uses to end a `run_until` that blocks in the kernel.
pub type Interrupter = std::sync::Arc<dyn Fn() -> HvResult<()> + Send + Sync>;

/// The framework calls a correct loop needs beyond [`Hv`]: the capability
/// MSRs, the `HV_DEADLINE_FOREVER` run, a watchdog's `hv_vcpu_interrupt`,
/// `hv_vcpu_read_msr` and the destroy order. Implemented by the real
/// framework (`framework.rs`) and the double; the loop needs both traits.
pub trait HvExt: Hv {
    /// Why the framework's in-kernel local APIC cannot run the LAPIC timer
    /// ops (`None`: it runs them, as Hypervisor.framework's APIC, which
    /// has the timer, does).
    fn lapic_timer_unsupported(&self) -> Option<&'static str> {
        None
    }
    /// `hv_vmx_read_capability` (hv_vmx.h): a [`cap`] field.
    fn read_capability(&mut self, field: u32) -> HvResult<u64>;
    /// `hv_vcpu_read_msr` (hv.h).
    fn read_msr(&mut self, vcpu: u32, msr: u32) -> HvResult<u64>;
    /// `hv_vcpu_run_until(vcpu, HV_DEADLINE_FOREVER)` (hv.h, macOS 11).
    fn run_forever(&mut self, vcpu: u32) -> HvResult<RunEnd>;
    /// A handle on `hv_vcpu_interrupt(&vcpu, 1)` for another thread.
    fn interrupter(&mut self, vcpu: u32) -> HvResult<Interrupter>;
    /// `hv_vcpu_apic_put_state` with the state the vCPU was created with,
    /// and the window back at 0xFEE00000: the local APIC at power-up, which
    /// is what SDM §11.4.3 makes of an APIC disabled through
    /// IA32_APIC_BASE (the IOAPIC stays as it is).
    fn reset_apic(&mut self, vcpu: u32) -> HvResult<()>;
    /// `hv_vcpu_exit_init_ap(vcpu, is_actv, count)` (hv.h, macOS 12; owning
    /// thread): after an `HV_VM_EXITINFO_INIT_AP` exit of the *sending*
    /// vCPU, the INIT IPI's targets, `is_actv[i]` for vCPU ID i, `count`
    /// of them (docs/hvf.md, "Several vCPUs").
    fn exit_init_ap(&mut self, vcpu: u32, count: u32) -> HvResult<Vec<bool>>;
    /// `hv_vcpu_exit_startup_ap(vcpu, is_actv, count, &ap_rip)` (hv.h,
    /// macOS 12; owning thread): after an `HV_VM_EXITINFO_STARTUP_AP` exit
    /// of the sender, the STARTUP IPI's targets and their start address
    /// (the SIPI vector << 12).
    fn exit_startup_ap(&mut self, vcpu: u32, count: u32) -> HvResult<(Vec<bool>, u64)>;
    /// `hv_vcpu_destroy` (hv.h: "Must be called by the owning thread").
    fn destroy_vcpu(&mut self, vcpu: u32) -> HvResult<()>;
    /// `hv_vm_destroy` (hv.h: "Destroys the VM instance associated with the
    /// current task").
    fn destroy_vm(&mut self) -> HvResult<()>;
}

/// The allowed-0/allowed-1 rule the three reference VMMs use to pick a
/// control value (QEMU `target/i386/hvf` and uhyve `cap2ctrl`, OrbStack
/// likewise; SDM vol. 3D A.3): the bits that must be 1, plus the wanted
/// ones that may be.
pub fn cap2ctrl(cap: u64, wanted: u64) -> u64 {
    (wanted | (cap & 0xffff_ffff)) & (cap >> 32)
}

/// `hv_vmx_capability_t` (hv_vmx.h): what `hv_vmx_read_capability` reads.
/// Each names the IA32_VMX_* MSR it mirrors (SDM vol. 3D appendix A).
pub mod cap {
    pub const PINBASED: u32 = 0; // IA32_VMX_PINBASED_CTLS (0x481)
    pub const PROCBASED: u32 = 1; // IA32_VMX_PROCBASED_CTLS (0x482)
    pub const PROCBASED2: u32 = 2; // IA32_VMX_PROCBASED_CTLS2 (0x48b)
    pub const ENTRY: u32 = 3; // IA32_VMX_ENTRY_CTLS (0x484)
    pub const EXIT: u32 = 4; // IA32_VMX_EXIT_CTLS (0x483)
    pub const BASIC: u32 = 5; // IA32_VMX_BASIC (0x480)
    pub const TRUE_PINBASED: u32 = 6; // 0x48d
    pub const TRUE_PROCBASED: u32 = 7; // 0x48e
    pub const TRUE_ENTRY: u32 = 8; // 0x490
    pub const TRUE_EXIT: u32 = 9; // 0x48f
    pub const MISC: u32 = 10; // IA32_VMX_MISC (0x485)
    pub const CR0_FIXED0: u32 = 11; // 0x486
    pub const CR0_FIXED1: u32 = 12; // 0x487
    pub const CR4_FIXED0: u32 = 13; // 0x488
    pub const CR4_FIXED1: u32 = 14; // 0x489
}

/// VMCS field encodings the double checks, with `hv_arch_vmcs.h`'s names
/// (the values are the SDM's, vol. 3D appendix B). The ones the FFI crate
/// already has are re-exported.
pub mod vmcs {
    pub use hypervisor_framework_sys::{
        VMCS_CTRL_VMENTRY_CONTROLS, VMCS_CTRL_VMENTRY_EXC_ERROR, VMCS_CTRL_VMENTRY_INSTR_LEN,
        VMCS_GUEST_ACTIVITY_STATE, VMCS_GUEST_CR0, VMCS_GUEST_CR3, VMCS_GUEST_CR4,
        VMCS_GUEST_CS_BASE, VMCS_GUEST_IA32_EFER, VMCS_GUEST_INTERRUPTIBILITY,
        VMCS_RO_EXIT_QUALIFIC, VMCS_RO_EXIT_REASON,
    };
    pub const VMCS_CTRL_PIN_BASED: u32 = 0x4000;
    pub const VMCS_CTRL_CPU_BASED: u32 = 0x4002;
    pub const VMCS_CTRL_VMEXIT_CONTROLS: u32 = 0x400c;
    pub const VMCS_CTRL_VMENTRY_IRQ_INFO: u32 = 0x4016;
    pub const VMCS_CTRL_CPU_BASED2: u32 = 0x401e;
    pub const VMCS_CTRL_CR0_MASK: u32 = 0x6000;
    pub const VMCS_CTRL_CR4_MASK: u32 = 0x6002;
    pub const VMCS_CTRL_CR0_SHADOW: u32 = 0x6004;
    pub const VMCS_CTRL_CR4_SHADOW: u32 = 0x6006;
    pub const VMCS_RO_INSTR_ERROR: u32 = 0x4400;
    pub const VMCS_GUEST_ES: u32 = 0x800;
    pub const VMCS_GUEST_CS: u32 = 0x802;
    pub const VMCS_GUEST_SS: u32 = 0x804;
    pub const VMCS_GUEST_DS: u32 = 0x806;
    pub const VMCS_GUEST_FS: u32 = 0x808;
    pub const VMCS_GUEST_GS: u32 = 0x80a;
    pub const VMCS_GUEST_LDTR: u32 = 0x80c;
    pub const VMCS_GUEST_TR: u32 = 0x80e;
    pub const VMCS_GUEST_ES_LIMIT: u32 = 0x4800;
    pub const VMCS_GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const VMCS_GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const VMCS_GUEST_ES_AR: u32 = 0x4814;
    pub const VMCS_GUEST_ES_BASE: u32 = 0x6806;
    pub const VMCS_GUEST_GDTR_BASE: u32 = 0x6816;
    pub const VMCS_GUEST_IDTR_BASE: u32 = 0x6818;

    /// The eight segment registers in encoding order (ES CS SS DS FS GS
    /// LDTR TR): field = first field + 2 * index, for the selector, limit,
    /// access rights and base alike.
    pub const SEGMENTS: [&str; 8] = ["ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR"];

    /// (selector, limit, access rights, base) of segment `index`.
    pub const fn segment(index: u32) -> (u32, u32, u32, u32) {
        (
            VMCS_GUEST_ES + 2 * index,
            VMCS_GUEST_ES_LIMIT + 2 * index,
            VMCS_GUEST_ES_AR + 2 * index,
            VMCS_GUEST_ES_BASE + 2 * index,
        )
    }
}

/// Exit reasons the FFI crate lacks, with `hv_arch_vmx.h`'s names (SDM
/// vol. 3D appendix C).
pub mod reason {
    /// Basic reason 5: an SMI arrived right after an I/O instruction.
    pub const VMX_REASON_IO_SMI: u32 = 5;
    /// Basic reason 6: any other SMI.
    pub const VMX_REASON_OTHER_SMI: u32 = 6;
}
