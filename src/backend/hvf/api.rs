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
