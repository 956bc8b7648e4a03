//! The Hypervisor.framework VMM loop, following the seed report's steps:
//! create the VM with the APIC accelerated, run with `hv_vcpu_run_until`,
//! check `hv_vcpu_exit_info` after every exit, forward APIC MMIO to
//! `hv_vcpu_apic_read`/`write` (with the `no_side_effect` follow-up), forward
//! IOAPIC MMIO to `hv_vm_ioapic_read`/`write`, drive lines with
//! assert/deassert/pulse and MSIs with `hv_vm_lapic_msi`. In the split shape
//! the model's IOAPIC lives here, learns EOIs from
//! `HV_VM_EXITINFO_IOAPIC_EOI`, and sends with `hv_vm_send_ioapic_intr`.
//! MMIO instructions are decoded with iced-x86.

use std::time::Duration;

use hypervisor_framework_sys as hv;
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};

use super::api::{Hv, HvError, RunEnd};
use crate::backend::run::{self, CallLog, End, MessagePort, Shape, UserspaceIoapic};
use crate::backend::{BackendError, Result};
use crate::guest::layout::{
    self, EndCode, END_PORT, HYPERCALL_PORT, IOAPIC_BASE, LAPIC_BASE, PING_PORT, RAM_SIZE,
};
use crate::guest::{table, Image};
use crate::model::ioapic::{bits, InterruptMessage, IOREGSEL, IOWIN, PINS, REG_REDTBL};
use crate::model::lapic::{reg, LVT_MASKED, SVR_ENABLE};
use crate::scenario::{ApicMode, HostOp, Op, Scenario};
use crate::trace::Trace;

bitflags::bitflags! {
    /// VMM-side workarounds for known HVF bugs, so a user can see in one run
    /// whether one restores spec behaviour on their macOS version.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Workarounds: u32 {
        /// On a guest unmask of a level entry whose line the VMM holds
        /// asserted: deassert, then assert again (the seed author's shadow
        /// state for FB14425412 issue 1).
        const REASSERT_ON_UNMASK = 1 << 0;
        /// After every local APIC EOI write: deassert and re-assert each
        /// level line the VMM holds asserted (FB14425412 issue 2).
        const REASSERT_AFTER_EOI = 1 << 1;
        /// Split shape: after an xAPIC EOI write, ask
        /// `hv_vcpu_exit_ioapic_eoi` for the vector even when no exit info
        /// says so (the seed's fallback for FB14425590; no help in x2APIC mode).
        const XAPIC_EOI_DETECT = 1 << 2;
    }
}

/// A redirection entry with only the mask bit set (82093AA §3.2.4).
const MASKED_ENTRY: u32 = bits::MASKED as u32;
/// A redirection entry's trigger-mode bit: level (82093AA §3.2.4).
const LEVEL_ENTRY: u32 = bits::LEVEL as u32;

/// A run longer than this is a livelocked guest.
const RUN_LIMIT: Duration = Duration::from_secs(5);
/// How long one `run_until` may block before the VMM looks for a hang.
const KICK: Duration = Duration::from_millis(3);

/// The `hvf` / `hvf-split` backend over any [`Hv`].
pub struct HvfVmm<H: Hv> {
    hv: H,
    name: String,
    /// The shape the backend was opened with (`hvf-split`: always split).
    opened: Shape,
    workarounds: Workarounds,
    image: Image,
    ram: PageAligned,
    vcpu: u32,
    // Per run.
    shape: Shape,
    ioapic: UserspaceIoapic,
    /// The VMM's view of the IOAPIC (full shape): IOREGSEL and each entry's
    /// low dword, as the guest wrote them (for the workarounds).
    select: u32,
    entry_low: [u32; PINS],
    asserted: u32,
    /// Where the APIC's MMIO window is now.
    apic_window: u64,
    /// The calls made, in order (for reports).
    pub calls: CallLog,
}

impl<H: Hv> HvfVmm<H> {
    pub fn new(
        mut hv: H,
        name: &str,
        opened: Shape,
        workarounds: Workarounds,
    ) -> Result<HvfVmm<H>> {
        let image = Image::build();
        let mut ram = PageAligned::zeroed(RAM_SIZE);
        image.install(&mut ram);
        let size = ram.len();
        hv.create_vm(ram.as_mut_ptr(), size)?;
        let vcpu = hv.create_vcpu()?;
        hv.set_apic_address(vcpu, LAPIC_BASE)?;
        long_mode(&mut hv, vcpu)?;
        Ok(HvfVmm {
            hv,
            name: name.to_string(),
            opened,
            workarounds,
            image,
            ram,
            vcpu,
            shape: opened,
            ioapic: UserspaceIoapic::default(),
            select: 0,
            entry_low: [MASKED_ENTRY; PINS],
            asserted: 0,
            apic_window: LAPIC_BASE,
            calls: CallLog::default(),
        })
    }

    pub fn hv(&mut self) -> &mut H {
        &mut self.hv
    }

    /// The shape the backend was opened with.
    pub fn opened(&self) -> Shape {
        self.opened
    }

    fn split(&self) -> bool {
        self.shape.is_split()
    }

    fn reset(
        &mut self,
        scenario: &Scenario,
        table: &table::Table,
    ) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.shape = Shape::for_run(self.opened, scenario);
        self.ioapic.reset(scenario.config.ioapic);
        // The in-kernel APIC and IOAPIC as they were at creation, the APIC
        // window back at 0xFEE00000.
        self.hv.reset_irqchip(v)?;
        self.apic_window = LAPIC_BASE;
        self.hv.apic_ctrl(
            v,
            if self.split() {
                hv::HV_APIC_CTRL_IOAPIC_EOI
            } else {
                hv::HV_APIC_CTRL_DEFAULT
            },
        )?;
        // Lines low, every in-kernel IOAPIC entry masked with vector 0.
        for pin in 0..PINS {
            if self.asserted & (1 << pin) != 0 {
                self.hv.ioapic_deassert_irq(pin as i32)?;
            }
            self.hv
                .ioapic_write(IOAPIC_BASE + IOREGSEL, REG_REDTBL as u32 + 2 * pin as u32)?;
            self.hv.ioapic_write(IOAPIC_BASE + IOWIN, MASKED_ENTRY)?;
        }
        (self.select, self.entry_low, self.asserted) = (0, [MASKED_ENTRY; PINS], 0);
        // The local APIC's start state: software-enabled with spurious
        // vector 0xFF, TPR 0, LVTs masked (SDM §11.5.1: bit 16 masks).
        self.hv.apic_write(v, reg::SVR as u32, SVR_ENABLE | 0xff)?;
        self.hv.apic_write(v, reg::TPR as u32, 0)?;
        for lvt in run::LVTS {
            self.hv.apic_write(v, lvt as u32, LVT_MASKED)?;
        }
        self.hv
            .write_register(v, hv::HV_X86_RIP, self.image.stub.entry)?;
        self.hv
            .write_register(v, hv::HV_X86_RSP, layout::STACK_TOP)?;
        self.hv.write_register(v, hv::HV_X86_RFLAGS, 0x202)?;
        self.image.load(
            &mut self.ram,
            table,
            scenario.config.apic == ApicMode::X2apic,
        );
        self.calls.clear();
        Ok(())
    }

    /// Runs one scenario.
    pub fn run_scenario(&mut self, scenario: &Scenario) -> Result<Trace> {
        let table =
            table::encode(scenario).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        self.reset(scenario, &table)?;
        let end = match self.run_loop(&table) {
            Ok(end) => end,
            Err(e) => End::Error(e.to_string()),
        };
        run::finish(&self.name, end, &self.image, &self.ram)
    }

    fn run_loop(&mut self, table: &table::Table) -> std::result::Result<End, HvError> {
        let v = self.vcpu;
        let started = std::time::Instant::now();
        let mut halted = 0;
        loop {
            if started.elapsed() > RUN_LIMIT {
                return Ok(End::Error(format!(
                    "the guest did not finish within {RUN_LIMIT:?}"
                )));
            }
            if self.hv.run_until(v, KICK)? == RunEnd::Deadline {
                // With HV_VM_ACCEL_APIC an idle HLT blocks in the kernel.
                let activity = self.hv.read_vmcs(v, hv::VMCS_GUEST_ACTIVITY_STATE)?;
                halted = if activity == 1 { halted + 1 } else { 0 };
                if halted >= 2 {
                    return Ok(End::Hang);
                }
                continue;
            }
            halted = 0;
            // Seed step 2: the exit info first, after every exit.
            let info = self.hv.exit_info(v)?;
            self.calls
                .note(|| format!("hv_vcpu_run_until -> hv_vcpu_exit_info = {info}"));
            match info {
                hv::HV_VM_EXITINFO_VMX => {
                    if let Some(end) = self.vmx_exit(table)? {
                        return Ok(end);
                    }
                }
                hv::HV_VM_EXITINFO_APIC_ACCESS_READ => {
                    let rip = self.hv.read_register(v, hv::HV_X86_RIP)?;
                    let Some(access) = self.decode(rip) else {
                        return Ok(End::Error(format!(
                            "cannot decode the APIC read at {rip:#x}"
                        )));
                    };
                    let value = self.hv.exit_apic_access_read(v)?;
                    self.complete_read(&access, value, rip)?;
                }
                hv::HV_VM_EXITINFO_IOAPIC_EOI => {
                    let vector = self.hv.exit_ioapic_eoi(v)?;
                    self.userspace_eoi(vector)?;
                }
                other => return Ok(End::Error(format!("unexpected exit info {other}"))),
            }
        }
    }

    /// A `HV_VM_EXITINFO_VMX` exit: the exit reason says what it was.
    fn vmx_exit(&mut self, table: &table::Table) -> std::result::Result<Option<End>, HvError> {
        let v = self.vcpu;
        let reason = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_REASON)? as u32 & 0xffff;
        let rip = self.hv.read_register(v, hv::HV_X86_RIP)?;
        self.calls
            .note(|| format!("  VMCS_RO_EXIT_REASON = {reason}, RIP {rip:#x}"));
        match reason {
            hv::VMX_REASON_IO => {
                let qual = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_QUALIFIC)?;
                let port = (qual >> 16) as u16;
                let value = self.hv.read_register(v, hv::HV_X86_RAX)? as u32;
                let len = self.hv.read_vmcs(v, hv::VMCS_RO_VMEXIT_INSTR_LEN)?;
                self.hv.write_register(v, hv::HV_X86_RIP, rip + len)?;
                match port {
                    HYPERCALL_PORT => {
                        let Some(op) = table.host_ops.get(value as usize).copied() else {
                            return Ok(Some(End::Error(format!(
                                "the guest asked for host op {value}, which does not exist"
                            ))));
                        };
                        self.host_op(&op)?;
                    }
                    END_PORT => {
                        return Ok(Some(EndCode::from_u32(value).map_or_else(
                            || End::Error(format!("bad end code {value}")),
                            End::Stub,
                        )))
                    }
                    // Seed step 7: the 8259's ports go to the in-kernel ATPIC.
                    0x20 | 0x21 | 0xa0 | 0xa1 => {
                        self.hv.atpic_port_write(port as i32, value as u8)?
                    }
                    PING_PORT => {}
                    other => {
                        return Ok(Some(End::Error(format!(
                            "unexpected out to port {other:#x}"
                        ))))
                    }
                }
            }
            hv::VMX_REASON_EPT_VIOLATION => {
                let gpa = self.hv.read_vmcs(v, hv::VMCS_GUEST_PHYSICAL_ADDRESS)?;
                if !run::in_ioapic_window(gpa) {
                    return Ok(Some(End::Error(format!(
                        "unexpected EPT violation at {gpa:#x}"
                    ))));
                }
                let Some(access) = self.decode(rip) else {
                    return Ok(Some(End::Error(format!(
                        "cannot decode the IOAPIC access at {rip:#x}"
                    ))));
                };
                if let Some(value) = self.write_value(&access)? {
                    self.ioapic_write(gpa, value)?;
                    self.hv
                        .write_register(v, hv::HV_X86_RIP, rip + access.len)?;
                } else {
                    let value = if self.split() {
                        self.ioapic.mmio_read(gpa - IOAPIC_BASE)
                    } else {
                        self.hv.ioapic_read(gpa)?
                    };
                    self.complete_read(&access, value, rip)?;
                }
            }
            hv::VMX_REASON_APIC_ACCESS => {
                // Qualification bits 11:0 the offset, 15:12 the access type
                // (1 = linear write); reads come as APIC_ACCESS_READ instead.
                let qual = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_QUALIFIC)?;
                let offset = (qual & 0xfff) as u32;
                let Some(access) = self.decode(rip) else {
                    return Ok(Some(End::Error(format!(
                        "cannot decode the APIC access at {rip:#x}"
                    ))));
                };
                let Some(value) = self.write_value(&access)? else {
                    return Ok(Some(End::Error(format!(
                        "APIC read at {rip:#x} reported as a write"
                    ))));
                };
                let no_side_effect = self.hv.apic_write(v, offset, value)?;
                self.calls.note(|| format!("  hv_vcpu_apic_write({offset:#x}, {value:#x}) -> no_side_effect {no_side_effect}"));
                self.hv
                    .write_register(v, hv::HV_X86_RIP, rip + access.len)?;
                // Seed step 3: a write with side effects: the exit info says which.
                if !no_side_effect && self.hv.exit_info(v)? == hv::HV_VM_EXITINFO_IOAPIC_EOI {
                    let vector = self.hv.exit_ioapic_eoi(v)?;
                    self.userspace_eoi(vector)?;
                } else if offset == reg::EOI as u32 {
                    if self.split() && self.workarounds.contains(Workarounds::XAPIC_EOI_DETECT) {
                        if let Ok(vector) = self.hv.exit_ioapic_eoi(v) {
                            self.userspace_eoi(vector)?;
                        }
                    }
                    if self.workarounds.contains(Workarounds::REASSERT_AFTER_EOI) {
                        self.reassert_level_lines(None)?;
                    }
                }
            }
            hv::VMX_REASON_WRMSR => {
                let msr = self.hv.read_register(v, hv::HV_X86_RCX)? as u32;
                let value = self.hv.read_register(v, hv::HV_X86_RDX)? << 32
                    | (self.hv.read_register(v, hv::HV_X86_RAX)? & 0xffff_ffff);
                if msr == 0x1b && value & 0xf_ffff_f000 != self.apic_window {
                    // FB14021745: moving the APIC window and enabling it in
                    // one write fails, so move it first, then write the MSR.
                    self.apic_window = value & 0xf_ffff_f000;
                    self.hv.set_apic_address(v, self.apic_window)?;
                    self.calls.note(|| {
                        format!(
                            "  hv_vmx_vcpu_set_apic_address({:#x}) before the MSR write",
                            self.apic_window
                        )
                    });
                }
                self.hv.write_msr(v, msr, value)?;
                let len = self.hv.read_vmcs(v, hv::VMCS_RO_VMEXIT_INSTR_LEN)?;
                self.hv.write_register(v, hv::HV_X86_RIP, rip + len)?;
            }
            hv::VMX_REASON_HLT => return Ok(Some(End::Hang)),
            hv::VMX_REASON_TRIPLE_FAULT => {
                return Ok(Some(End::Error("the guest triple-faulted".into())))
            }
            other => {
                return Ok(Some(End::Error(format!(
                    "unexpected VMX exit reason {other}"
                ))))
            }
        }
        Ok(None)
    }

    /// Decodes the instruction at `rip` (guest RAM, identity-mapped).
    fn decode(&self, rip: u64) -> Option<Access> {
        let at = rip as usize;
        let bytes = self.ram.get(at..(at + 15).min(self.ram.len()))?;
        let instr = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
        Access::of(&instr)
    }

    fn write_value(&mut self, access: &Access) -> std::result::Result<Option<u32>, HvError> {
        Ok(match access.kind {
            AccessKind::WriteImm(v) => Some(v),
            AccessKind::WriteReg(reg) => Some(self.hv.read_register(self.vcpu, reg)? as u32),
            AccessKind::Read(_) => None,
        })
    }

    fn complete_read(
        &mut self,
        access: &Access,
        value: u32,
        rip: u64,
    ) -> std::result::Result<(), HvError> {
        if let AccessKind::Read(reg) = access.kind {
            // A 32-bit register write zero-extends to 64 bits.
            self.hv.write_register(self.vcpu, reg, value as u64)?;
        }
        self.hv
            .write_register(self.vcpu, hv::HV_X86_RIP, rip + access.len)
    }

    /// Seed step 8: IOAPIC MMIO goes to the in-kernel IOAPIC (full) or to
    /// the userspace one (split).
    fn ioapic_write(&mut self, gpa: u64, value: u32) -> std::result::Result<(), HvError> {
        if self.split() {
            let mut sink = HvPort(&mut self.hv);
            return self
                .ioapic
                .mmio_write(gpa - IOAPIC_BASE, value, &mut sink, &mut self.calls);
        }
        self.calls
            .note(|| format!("  hv_vm_ioapic_write({gpa:#x}, {value:#x})"));
        self.hv.ioapic_write(gpa, value)?;
        match gpa - IOAPIC_BASE {
            IOREGSEL => self.select = value & 0xff,
            IOWIN if self.select_is_redirection_low() => {
                let pin = ((self.select - REG_REDTBL as u32) / 2) as usize;
                let was_masked = self.entry_low[pin] & MASKED_ENTRY != 0;
                self.entry_low[pin] = value;
                let unmasked_level =
                    was_masked && value & MASKED_ENTRY == 0 && value & LEVEL_ENTRY != 0;
                if unmasked_level && self.workarounds.contains(Workarounds::REASSERT_ON_UNMASK) {
                    self.reassert_level_lines(Some(pin))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether IOREGSEL selects a redirection entry's low dword
    /// (82093AA §3.2.4: registers 0x10-0x3F, low dwords even).
    fn select_is_redirection_low(&self) -> bool {
        let first = REG_REDTBL as u32;
        (first..first + 2 * PINS as u32).contains(&self.select) && self.select % 2 == 0
    }

    /// Deasserts and re-asserts held level lines (`only`: one pin).
    fn reassert_level_lines(&mut self, only: Option<usize>) -> std::result::Result<(), HvError> {
        if self.split() {
            return Ok(());
        }
        for pin in 0..PINS {
            let level = self.entry_low[pin] & LEVEL_ENTRY != 0;
            if self.asserted & (1 << pin) != 0 && level && only.is_none_or(|p| p == pin) {
                self.hv.ioapic_deassert_irq(pin as i32)?;
                self.hv.ioapic_assert_irq(pin as i32)?;
            }
        }
        Ok(())
    }

    /// An EOI the local APIC turned into an exit (split shape).
    fn userspace_eoi(&mut self, vector: u8) -> std::result::Result<(), HvError> {
        self.calls
            .note(|| format!("  hv_vcpu_exit_ioapic_eoi -> {vector:#04x}"));
        if self.split() {
            let mut sink = HvPort(&mut self.hv);
            return self.ioapic.eoi(vector, &mut sink, &mut self.calls);
        }
        Ok(())
    }

    fn host_op(&mut self, op: &HostOp) -> std::result::Result<(), HvError> {
        let how = if self.split() {
            "userspace IOAPIC, hv_vm_send_ioapic_intr"
        } else {
            "hv_vm_ioapic_*"
        };
        match op {
            HostOp::Msi(m) => {
                let (a, d) = m.address_data();
                self.calls
                    .note(|| format!("  hv_vm_lapic_msi({a:#x}, {d:#x})"));
            }
            other => self.calls.note(|| {
                format!(
                    "  {} ({how})",
                    crate::scenario::print::op_text(&Op::Host(*other))
                )
            }),
        }
        let drive =
            |vmm: &mut Self, pin: u8, requested: bool| -> std::result::Result<(), HvError> {
                if requested {
                    vmm.asserted |= 1 << pin;
                } else {
                    vmm.asserted &= !(1 << pin);
                }
                if vmm.split() {
                    let mut sink = HvPort(&mut vmm.hv);
                    return vmm
                        .ioapic
                        .set_irq(pin as usize, requested, &mut sink, &mut vmm.calls);
                }
                if requested {
                    vmm.hv.ioapic_assert_irq(pin as i32)
                } else {
                    vmm.hv.ioapic_deassert_irq(pin as i32)
                }
            };
        match *op {
            HostOp::Assert(p) => drive(self, p.get(), true),
            HostOp::Deassert(p) => drive(self, p.get(), false),
            HostOp::Pulse(p) if !self.split() => self.hv.ioapic_pulse_irq(p.get() as i32),
            HostOp::Pulse(p) => {
                drive(self, p.get(), true)?;
                drive(self, p.get(), false)
            }
            // Seed step 6: MSIs with hv_vm_lapic_msi (the full address).
            HostOp::Msi(m) => {
                let (address, data) = m.address_data();
                self.hv.lapic_msi(address, data as u64)
            }
        }
    }
}

/// The split IOAPIC's messages: `hv_vm_send_ioapic_intr` takes a value in
/// the format of a redirection-table register.
struct HvPort<'a, H: Hv>(&'a mut H);

impl<H: Hv> MessagePort for HvPort<'_, H> {
    type Error = HvError;
    type Call = String;

    fn send(
        &mut self,
        msg: &InterruptMessage,
        _log: &mut CallLog,
    ) -> std::result::Result<bool, HvError> {
        let entry = msg.vector as u64
            | (msg.delivery.bits() as u64) << bits::DELIVERY_MODE_SHIFT
            | if msg.logical { bits::DEST_LOGICAL } else { 0 }
            | if msg.level { bits::LEVEL } else { 0 }
            | (msg.dest as u64 & 0xff) << bits::DEST_SHIFT;
        // HVF reports no acceptance: a sent message counts as accepted.
        self.0.send_ioapic_intr(entry).map(|()| true)
    }
}

/// Guest RAM: `hv_vm_map` wants page-aligned host memory.
struct PageAligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl PageAligned {
    fn zeroed(size: usize) -> PageAligned {
        let layout = std::alloc::Layout::from_size_align(size, 4096).expect("a valid layout");
        // SAFETY: the layout has a non-zero size; the result is checked.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        PageAligned { ptr, layout }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl std::ops::Deref for PageAligned {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/layout describe a live allocation owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl std::ops::DerefMut for PageAligned {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for PageAligned {
    fn drop(&mut self) {
        // SAFETY: freeing the allocation made in `zeroed` with its layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// What a 32-bit MOV to or from MMIO does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// `mov [mem], imm32`.
    WriteImm(u32),
    /// `mov [mem], r32`: the register (`hv_x86_reg_t`).
    WriteReg(u32),
    /// `mov r32, [mem]`: the destination register.
    Read(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    /// The instruction's length: how far RIP advances.
    pub len: u64,
}

impl Access {
    /// The MMIO access of a decoded MOV, if it is one.
    pub fn of(instr: &Instruction) -> Option<Access> {
        if instr.is_invalid() || instr.mnemonic() != iced_x86::Mnemonic::Mov {
            return None;
        }
        let len = instr.len() as u64;
        let kind = match (instr.op0_kind(), instr.op1_kind()) {
            (OpKind::Memory, OpKind::Register) => {
                AccessKind::WriteReg(hv_register(instr.op1_register())?)
            }
            (OpKind::Memory, OpKind::Immediate32) => AccessKind::WriteImm(instr.immediate32()),
            (OpKind::Register, OpKind::Memory) => {
                AccessKind::Read(hv_register(instr.op0_register())?)
            }
            _ => return None,
        };
        Some(Access { kind, len })
    }
}

/// iced's register to Hypervisor.framework's `hv_x86_reg_t` (hv_arch_x86.h).
fn hv_register(reg: Register) -> Option<u32> {
    Some(match reg.full_register() {
        Register::RAX => hv::HV_X86_RAX,
        Register::RCX => hv::HV_X86_RCX,
        Register::RDX => hv::HV_X86_RDX,
        Register::RBX => hv::HV_X86_RBX,
        Register::RSI => hv::HV_X86_RSI,
        Register::RDI => hv::HV_X86_RDI,
        Register::RSP => hv::HV_X86_RSP,
        Register::RBP => hv::HV_X86_RBP,
        r if (Register::R8 as u32..=Register::R15 as u32).contains(&(r as u32)) => {
            hv::HV_X86_R8 + (r as u32 - Register::R8 as u32)
        }
        _ => return None,
    })
}

/// 64-bit long mode, entered directly: control registers and segments in the
/// VMCS (CR0/CR3/CR4 through the VMCS, as OrbStack does, since HVF gives
/// CR0/CR3 special handling in `hv_vcpu_write_register`).
fn long_mode<H: Hv>(hv: &mut H, v: u32) -> std::result::Result<(), HvError> {
    // Guest-state field encodings (Intel SDM vol. 3D, appendix B).
    const CS_SELECTOR: u32 = 0x802;
    const SS_SELECTOR: u32 = 0x804;
    const DS_SELECTOR: u32 = 0x806;
    const ES_SELECTOR: u32 = 0x800;
    const CS_LIMIT: u32 = 0x4802;
    const CS_AR: u32 = 0x4816;
    const SS_AR: u32 = 0x4818;
    const DS_AR: u32 = 0x481a;
    const ES_AR: u32 = 0x4814;
    const GDTR_BASE: u32 = 0x6816;
    const GDTR_LIMIT: u32 = 0x4810;
    const IDTR_BASE: u32 = 0x6818;
    const IDTR_LIMIT: u32 = 0x4812;
    const TR_AR: u32 = 0x4822;
    hv.write_vmcs(v, hv::VMCS_GUEST_CR0, 0x8005_0033)?;
    hv.write_vmcs(v, hv::VMCS_GUEST_CR3, layout::PML4)?;
    hv.write_vmcs(v, hv::VMCS_GUEST_CR4, 0x2020)?; // PAE | VMXE
    hv.write_vmcs(v, hv::VMCS_GUEST_IA32_EFER, 0x500)?;
    // VM-entry controls: IA-32e mode guest (bit 9).
    let entry = hv.read_vmcs(v, hv::VMCS_CTRL_VMENTRY_CONTROLS)?;
    hv.write_vmcs(v, hv::VMCS_CTRL_VMENTRY_CONTROLS, entry | 1 << 9)?;
    hv.write_vmcs(v, CS_SELECTOR, layout::CODE_SELECTOR as u64)?;
    hv.write_vmcs(v, CS_LIMIT, 0xffff_ffff)?;
    hv.write_vmcs(v, CS_AR, 0xa09b)?; // present, code, L, G
    for (sel, ar) in [
        (SS_SELECTOR, SS_AR),
        (DS_SELECTOR, DS_AR),
        (ES_SELECTOR, ES_AR),
    ] {
        hv.write_vmcs(v, sel, layout::DATA_SELECTOR as u64)?;
        hv.write_vmcs(v, ar, 0xc093)?;
    }
    hv.write_vmcs(v, TR_AR, 0x8b)?;
    hv.write_vmcs(v, GDTR_BASE, layout::GDT)?;
    hv.write_vmcs(v, GDTR_LIMIT, 23)?;
    hv.write_vmcs(v, IDTR_BASE, layout::IDT)?;
    hv.write_vmcs(v, IDTR_LIMIT, 256 * 16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn decode(
        build: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
    ) -> Option<Access> {
        let mut a = CodeAssembler::new(64).unwrap();
        build(&mut a).unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        Access::of(&Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE).decode())
    }

    /// A scripted framework: a WRMSR exit moving the APIC base, then the end.
    #[derive(Default)]
    struct Scripted {
        step: u32,
        calls: Vec<String>,
    }

    impl Hv for Scripted {
        fn create_vm(&mut self, _: *mut u8, _: usize) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn create_vcpu(&mut self) -> std::result::Result<u32, HvError> {
            Ok(0)
        }
        fn set_apic_address(&mut self, _: u32, gpa: u64) -> std::result::Result<(), HvError> {
            self.calls.push(format!("set_apic_address {gpa:#x}"));
            Ok(())
        }
        fn reset_irqchip(&mut self, _: u32) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn apic_ctrl(&mut self, _: u32, _: u64) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn read_register(&mut self, _: u32, reg: u32) -> std::result::Result<u64, HvError> {
            Ok(match (self.step, reg) {
                (1, hv::HV_X86_RCX) => 0x1b,
                (1, hv::HV_X86_RAX) => 0xfed0_0900,
                (2, hv::HV_X86_RAX) => EndCode::Completed as u64,
                _ => 0,
            })
        }
        fn write_register(&mut self, _: u32, _: u32, _: u64) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn read_vmcs(&mut self, _: u32, field: u32) -> std::result::Result<u64, HvError> {
            Ok(match (self.step, field) {
                (1, hv::VMCS_RO_EXIT_REASON) => hv::VMX_REASON_WRMSR as u64,
                (2, hv::VMCS_RO_EXIT_REASON) => hv::VMX_REASON_IO as u64,
                (2, hv::VMCS_RO_EXIT_QUALIFIC) => (END_PORT as u64) << 16 | 3,
                (_, hv::VMCS_RO_VMEXIT_INSTR_LEN) => 2,
                _ => 0,
            })
        }
        fn write_vmcs(&mut self, _: u32, _: u32, _: u64) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn write_msr(&mut self, _: u32, msr: u32, value: u64) -> std::result::Result<(), HvError> {
            self.calls.push(format!("write_msr {msr:#x} {value:#x}"));
            Ok(())
        }
        fn run_until(&mut self, _: u32, _: Duration) -> std::result::Result<RunEnd, HvError> {
            self.step += 1;
            self.calls.clear_if(self.step == 1);
            Ok(RunEnd::Exit)
        }
        fn exit_info(&mut self, _: u32) -> std::result::Result<u32, HvError> {
            Ok(hv::HV_VM_EXITINFO_VMX)
        }
        fn exit_ioapic_eoi(&mut self, _: u32) -> std::result::Result<u8, HvError> {
            Ok(0)
        }
        fn exit_apic_access_read(&mut self, _: u32) -> std::result::Result<u32, HvError> {
            Ok(0)
        }
        fn apic_read(&mut self, _: u32, _: u32) -> std::result::Result<u32, HvError> {
            Ok(0)
        }
        fn apic_write(&mut self, _: u32, _: u32, _: u32) -> std::result::Result<bool, HvError> {
            Ok(true)
        }
        fn lapic_msi(&mut self, _: u64, _: u64) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn send_ioapic_intr(&mut self, _: u64) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn ioapic_read(&mut self, _: u64) -> std::result::Result<u32, HvError> {
            Ok(0)
        }
        fn ioapic_write(&mut self, _: u64, _: u32) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn ioapic_assert_irq(&mut self, _: i32) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn ioapic_deassert_irq(&mut self, _: i32) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn ioapic_pulse_irq(&mut self, _: i32) -> std::result::Result<(), HvError> {
            Ok(())
        }
        fn atpic_port_write(&mut self, _: i32, _: u8) -> std::result::Result<(), HvError> {
            Ok(())
        }
    }

    trait ClearIf {
        fn clear_if(&mut self, yes: bool);
    }
    impl ClearIf for Vec<String> {
        fn clear_if(&mut self, yes: bool) {
            if yes {
                self.clear();
            }
        }
    }

    #[test]
    fn apic_base_move_moves_the_window_before_the_msr_write() {
        // FB14021745: moving the APIC window and enabling it in one write
        // fails on HVF, so the loop moves it first, then writes the MSR.
        let mut vmm = HvfVmm::new(
            Scripted::default(),
            "hvf",
            Shape::Full,
            Workarounds::empty(),
        )
        .unwrap();
        let trace = vmm
            .run_scenario(&crate::scenario::parse("nop\n").unwrap())
            .unwrap();
        assert_eq!(trace.outcome, crate::trace::Outcome::Completed);
        assert_eq!(
            vmm.hv().calls,
            ["set_apic_address 0xfed00000", "write_msr 0x1b 0xfed00900"]
        );
    }

    #[test]
    fn decodes_the_stubs_mmio_moves() {
        assert_eq!(
            decode(|a| a.mov(dword_ptr(r14 + rcx), eax)),
            Some(Access {
                kind: AccessKind::WriteReg(hv::HV_X86_RAX),
                len: 4
            })
        );
        assert_eq!(
            decode(|a| a.mov(dword_ptr(r12), 0x12i32)),
            Some(Access {
                kind: AccessKind::WriteImm(0x12),
                len: 8
            })
        );
        assert_eq!(
            decode(|a| a.mov(r9d, dword_ptr(r12 + 0x10))),
            Some(Access {
                kind: AccessKind::Read(hv::HV_X86_R8 + 1),
                len: 5
            })
        );
        assert_eq!(decode(|a| a.add(dword_ptr(rbx), eax)), None);
    }
}
