//! A test double of Hypervisor.framework with `HV_VM_ACCEL_APIC`, built on
//! the model, so the real VMM loop ([`super::vmm`]) runs on any host.
//!
//! The in-kernel APIC, IOAPIC and ATPIC are the model's (with `sim` quirks,
//! to show the seed's bugs). The vCPU cannot execute x86 here, so a thread
//! plays it at the level of the guest stub's ABI: it walks the op table in
//! guest memory as the stub does, writes the stub's event log, and for every
//! access that exits on HVF it stops with that exit: an EPT violation for
//! the IOAPIC page, `VMX_REASON_APIC_ACCESS` for an xAPIC write,
//! `HV_VM_EXITINFO_APIC_ACCESS_READ` for an xAPIC read, an I/O exit for
//! `out`, `VMX_REASON_WRMSR` for the APIC base. The faulting instruction is
//! real machine code at a scratch address (`mov [rbx], eax`, ...), so the
//! loop's iced-x86 decoding, register access and RIP advance are exercised;
//! the double checks that RIP was advanced past it.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hypervisor_framework_sys as hv;

use super::api::{Hv, HvError, HvResult, RunEnd};
use crate::guest::layout::*;
use crate::guest::stub::{record, SNAPSHOT_WORDS};
use crate::guest::table::kind;
use crate::model::ioapic::{DeliveryMode, InterruptMessage};
use crate::model::machine::Interrupt;
use crate::model::{Machine, MachineConfig, Quirks, Rule};

/// Where the double puts the instruction that faults.
const SCRATCH: u64 = 0x1_f800;
const MOV_STORE: [u8; 2] = [0x89, 0x03]; // mov dword [rbx], eax
const MOV_LOAD: [u8; 2] = [0x8b, 0x03]; // mov eax, dword [rbx]
const OUT_DX_EAX: [u8; 1] = [0xef]; // out dx, eax
const WRMSR: [u8; 2] = [0x0f, 0x30];

struct Ram(*mut u8, usize);
// SAFETY: the RAM is owned by the VMM for the VM's lifetime; the double only
// touches it while the VMM waits in run_until (the vCPU thread) or between
// runs, never both at once.
unsafe impl Send for Ram {}

/// The "kernel" state the VMM's calls see.
struct State {
    ram: Ram,
    regs: [u64; 18],
    vmcs: HashMap<u32, u64>,
    machine: Machine,
    quirks: Quirks,
    apic_ctrl: u64,
    exit_info: u32,
    eoi_vector: Option<u8>,
    apic_read_value: u32,
    halted: bool,
    /// Where the APIC's MMIO window is (`hv_vmx_vcpu_set_apic_address`).
    apic_window: u64,
}

impl State {
    fn ram(&mut self) -> &mut [u8] {
        // SAFETY: see `Ram`.
        unsafe { std::slice::from_raw_parts_mut(self.ram.0, self.ram.1) }
    }
    fn get32(&mut self, at: u64) -> u32 {
        u32::from_le_bytes(
            self.ram()[at as usize..at as usize + 4]
                .try_into()
                .expect("4 bytes"),
        )
    }
    fn put32(&mut self, at: u64, v: u32) {
        self.ram()[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn split(&self) -> bool {
        self.apic_ctrl & hv::HV_APIC_CTRL_IOAPIC_EOI != 0
    }
}

enum CpuEvent {
    Exit,
    Halted,
    Stopped,
}

struct CpuThread {
    resume: SyncSender<()>,
    events: Receiver<CpuEvent>,
    _handle: JoinHandle<()>,
}

/// The double. `quirks` switch on known HVF bugs in its in-kernel irqchip.
pub struct Double {
    state: Arc<Mutex<State>>,
    cpu: Option<CpuThread>,
    /// Every call the VMM made, by name (the tests check the seed's steps).
    pub calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Double {
    pub fn new(quirks: Quirks) -> Double {
        let state = State {
            ram: Ram(std::ptr::null_mut(), 0),
            regs: [0; 18],
            vmcs: HashMap::new(),
            machine: Machine::new(MachineConfig {
                quirks,
                ..MachineConfig::default()
            }),
            quirks,
            apic_ctrl: 0,
            exit_info: 0,
            eoi_vector: None,
            apic_read_value: 0,
            halted: false,
            apic_window: LAPIC_BASE,
        };
        Double {
            state: Arc::new(Mutex::new(state)),
            cpu: None,
            calls: Arc::default(),
        }
    }

    fn log(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }

    fn with<T>(&self, call: &'static str, f: impl FnOnce(&mut State) -> T) -> T {
        self.log(call);
        f(&mut self.state.lock().unwrap())
    }
}

fn err(call: &'static str) -> HvError {
    HvError {
        call,
        code: hv::HV_ERROR,
    }
}

impl Hv for Double {
    fn create_vm(&mut self, ram: *mut u8, size: usize) -> HvResult<()> {
        self.with("hv_vm_create", |s| s.ram = Ram(ram, size));
        self.log("hv_vm_map");
        Ok(())
    }
    fn create_vcpu(&mut self) -> HvResult<u32> {
        self.with("hv_vcpu_create", |_| Ok(0))
    }
    fn reset_irqchip(&mut self, _vcpu: u32) -> HvResult<()> {
        self.log("hv_vcpu_apic_put_state");
        self.with("hv_vm_ioapic_put_state", |s| {
            s.machine = fresh_machine(false, s.quirks);
            s.apic_window = LAPIC_BASE;
            s.eoi_vector = None;
            s.halted = false;
        });
        Ok(())
    }
    fn set_apic_address(&mut self, _vcpu: u32, gpa: u64) -> HvResult<()> {
        self.with("hv_vmx_vcpu_set_apic_address", |s| {
            s.apic_window = gpa & !0xfff
        });
        Ok(())
    }
    fn apic_ctrl(&mut self, _vcpu: u32, ctrl: u64) -> HvResult<()> {
        self.with("hv_vcpu_apic_ctrl", |s| s.apic_ctrl = ctrl);
        Ok(())
    }
    fn read_register(&mut self, _vcpu: u32, reg: u32) -> HvResult<u64> {
        self.with("hv_vcpu_read_register", |s| {
            s.regs
                .get(reg as usize)
                .copied()
                .ok_or(err("hv_vcpu_read_register"))
        })
    }
    fn write_register(&mut self, _vcpu: u32, reg: u32, value: u64) -> HvResult<()> {
        if reg == hv::HV_X86_RIP && !(SCRATCH..SCRATCH + 16).contains(&value) {
            // A new run from the entry point: the old vCPU thread ends.
            self.cpu = None;
        }
        self.with("hv_vcpu_write_register", |s| {
            match s.regs.get_mut(reg as usize) {
                Some(r) => {
                    *r = value;
                    Ok(())
                }
                None => Err(err("hv_vcpu_write_register")),
            }
        })
    }
    fn read_vmcs(&mut self, _vcpu: u32, field: u32) -> HvResult<u64> {
        self.with("hv_vmx_vcpu_read_vmcs", |s| {
            if field == hv::VMCS_GUEST_ACTIVITY_STATE {
                return Ok(u64::from(s.halted));
            }
            Ok(s.vmcs.get(&field).copied().unwrap_or(0))
        })
    }
    fn write_vmcs(&mut self, _vcpu: u32, field: u32, value: u64) -> HvResult<()> {
        self.with("hv_vmx_vcpu_write_vmcs", |s| s.vmcs.insert(field, value));
        Ok(())
    }
    fn write_msr(&mut self, _vcpu: u32, msr: u32, value: u64) -> HvResult<()> {
        self.with("hv_vcpu_write_msr", |s| {
            if msr == 0x1b {
                // The guest's IA32_APIC_BASE write (forwarded by the VMM).
                // FB14021745: moving the window and enabling the APIC in one
                // write fails unless the window was moved first.
                let enables = !s.machine.lapic.hw_enabled() && value & (1 << 11) != 0;
                let moved_first = s.apic_window == value & !0xfff;
                if s.quirks.contains(Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS)
                    && enables
                    && !moved_first
                {
                    return Ok(());
                }
                if s.machine.write_apic_base(value as u32).is_err() {
                    return Err(err("hv_vcpu_write_msr"));
                }
            }
            Ok(())
        })
    }
    fn run_until(&mut self, _vcpu: u32, _timeout: Duration) -> HvResult<RunEnd> {
        self.log("hv_vcpu_run_until");
        match &self.cpu {
            Some(cpu) => cpu.resume.send(()).map_err(|_| err("hv_vcpu_run_until"))?,
            None => self.cpu = Some(spawn(Arc::clone(&self.state))),
        }
        let cpu = self.cpu.as_ref().expect("started");
        match cpu.events.recv_timeout(Duration::from_secs(10)) {
            Ok(CpuEvent::Exit) => Ok(RunEnd::Exit),
            Ok(CpuEvent::Halted) => Ok(RunEnd::Deadline),
            Ok(CpuEvent::Stopped) | Err(_) => Err(err("hv_vcpu_run_until")),
        }
    }
    fn exit_info(&mut self, _vcpu: u32) -> HvResult<u32> {
        self.with("hv_vcpu_exit_info", |s| Ok(s.exit_info))
    }
    fn exit_ioapic_eoi(&mut self, _vcpu: u32) -> HvResult<u8> {
        self.with("hv_vcpu_exit_ioapic_eoi", |s| {
            s.eoi_vector.take().ok_or(err("hv_vcpu_exit_ioapic_eoi"))
        })
    }
    fn exit_apic_access_read(&mut self, _vcpu: u32) -> HvResult<u32> {
        self.with("hv_vcpu_exit_apic_access_read", |s| Ok(s.apic_read_value))
    }
    fn apic_read(&mut self, _vcpu: u32, offset: u32) -> HvResult<u32> {
        self.with("hv_vcpu_apic_read", |s| {
            Ok(s.machine.lapic.read(offset as u16))
        })
    }
    fn apic_write(&mut self, _vcpu: u32, offset: u32, value: u32) -> HvResult<bool> {
        self.with("hv_vcpu_apic_write", |s| {
            Ok(lapic_write(s, offset as u16, value))
        })
    }
    fn lapic_msi(&mut self, address: u64, data: u64) -> HvResult<()> {
        self.with("hv_vm_lapic_msi", |s| {
            match crate::model::msi::decode(address, data as u32) {
                Ok(msg) => {
                    s.machine.message(&msg);
                    Ok(())
                }
                Err(_) => Err(err("hv_vm_lapic_msi")),
            }
        })
    }
    fn send_ioapic_intr(&mut self, entry: u64) -> HvResult<()> {
        self.with("hv_vm_send_ioapic_intr", |s| {
            let msg = InterruptMessage {
                vector: entry as u8,
                delivery: DeliveryMode::from_bits((entry >> 8) as u8),
                logical: entry & (1 << 11) != 0,
                dest: (entry >> 56) as u32,
                level: entry & (1 << 15) != 0,
                rule: Rule::LevelDelivers,
            };
            s.machine.message(&msg);
            Ok(())
        })
    }
    fn ioapic_read(&mut self, gpa: u64) -> HvResult<u32> {
        self.with("hv_vm_ioapic_read", |s| {
            Ok(s.machine.ioapic_mmio_read(gpa - IOAPIC_BASE))
        })
    }
    fn ioapic_write(&mut self, gpa: u64, value: u32) -> HvResult<()> {
        self.with("hv_vm_ioapic_write", |s| {
            s.machine.ioapic_mmio_write(gpa - IOAPIC_BASE, value)
        });
        Ok(())
    }
    fn ioapic_assert_irq(&mut self, pin: i32) -> HvResult<()> {
        self.with("hv_vm_ioapic_assert_irq", |s| {
            s.machine.set_irq(pin as usize, true)
        });
        Ok(())
    }
    fn ioapic_deassert_irq(&mut self, pin: i32) -> HvResult<()> {
        self.with("hv_vm_ioapic_deassert_irq", |s| {
            s.machine.set_irq(pin as usize, false)
        });
        Ok(())
    }
    fn ioapic_pulse_irq(&mut self, pin: i32) -> HvResult<()> {
        self.with("hv_vm_ioapic_pulse_irq", |s| {
            s.machine.set_irq(pin as usize, true);
            s.machine.set_irq(pin as usize, false);
        });
        Ok(())
    }
    fn atpic_port_write(&mut self, _port: i32, _value: u8) -> HvResult<()> {
        self.log("hv_vm_atpic_port_write");
        Ok(())
    }
}

/// A guest write of the local APIC (MMIO forwarded by the VMM, or an x2APIC
/// WRMSR the kernel handles). Returns `no_side_effect`.
fn lapic_write(s: &mut State, offset: u16, value: u32) -> bool {
    if offset != 0xb0 {
        let _ = s.machine.lapic_write(offset, value);
        return true;
    }
    let Some(vector) = s.machine.local_eoi() else {
        return true;
    };
    if !s.split() {
        s.machine.ioapic_eoi(vector);
        return true;
    }
    // HV_APIC_CTRL_IOAPIC_EOI: the EOI becomes an exit for the VMM. With the
    // seed's FB14425590 the exit info never says so (the vector can still be
    // fetched, as the seed author did for xAPIC EOI writes).
    s.eoi_vector = Some(vector);
    if s.quirks.contains(Quirks::SPLIT_EOI_LOST) {
        return true;
    }
    s.exit_info = hv::HV_VM_EXITINFO_IOAPIC_EOI;
    false
}

/// The in-kernel APIC/IOAPIC of a fresh VM. The FB14021745 quirk is the
/// double's own (it depends on the VMM's calls), not the machine's.
fn fresh_machine(x2apic: bool, quirks: Quirks) -> Machine {
    let quirks = quirks - Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS;
    Machine::new(MachineConfig {
        x2apic,
        quirks,
        ..MachineConfig::default()
    })
}

fn spawn(state: Arc<Mutex<State>>) -> CpuThread {
    let (resume_tx, resume_rx) = mpsc::sync_channel(0);
    let (event_tx, event_rx) = mpsc::sync_channel(0);
    let handle = std::thread::spawn(move || {
        let mut cpu = Vcpu {
            lapic_at: LAPIC_BASE,
            state,
            resume: resume_rx,
            events: event_tx,
        };
        let _ = cpu.program();
        let _ = cpu.events.send(CpuEvent::Stopped);
    });
    CpuThread {
        resume: resume_tx,
        events: event_rx,
        _handle: handle,
    }
}

/// Why the vCPU thread stops.
enum Stop {
    /// The VMM ended the run (it stopped resuming).
    Gone,
}

type Step = Result<(), Stop>;

/// The vCPU thread: the guest stub's behaviour.
struct Vcpu {
    /// Where the stub reaches the APIC (its r14).
    lapic_at: u64,
    state: Arc<Mutex<State>>,
    resume: Receiver<()>,
    events: SyncSender<CpuEvent>,
}

impl Vcpu {
    fn s(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stops with an exit and waits for the VMM to resume.
    fn exit(&mut self, info: u32, reason: u32, code: &[u8], set: impl FnOnce(&mut State)) -> Step {
        {
            let mut s = self.s();
            s.ram()[SCRATCH as usize..SCRATCH as usize + code.len()].copy_from_slice(code);
            s.regs[hv::HV_X86_RIP as usize] = SCRATCH;
            s.exit_info = info;
            s.vmcs.insert(hv::VMCS_RO_EXIT_REASON, reason as u64);
            s.vmcs
                .insert(hv::VMCS_RO_VMEXIT_INSTR_LEN, code.len() as u64);
            set(&mut s);
        }
        self.events.send(CpuEvent::Exit).map_err(|_| Stop::Gone)?;
        self.resume.recv().map_err(|_| Stop::Gone)?;
        let rip = self.s().regs[hv::HV_X86_RIP as usize];
        assert_eq!(
            rip,
            SCRATCH + code.len() as u64,
            "the VMM did not advance RIP past the exiting instruction"
        );
        Ok(())
    }

    fn out(&mut self, port: u16, value: u32) -> Step {
        self.exit(
            hv::HV_VM_EXITINFO_VMX,
            hv::VMX_REASON_IO,
            &OUT_DX_EAX,
            |s| {
                // Qualification: size - 1 in bits 2:0, OUT (bit 3 clear), port in 31:16.
                s.vmcs
                    .insert(hv::VMCS_RO_EXIT_QUALIFIC, (port as u64) << 16 | 3);
                s.regs[hv::HV_X86_RAX as usize] = value as u64;
            },
        )
    }

    fn store(&mut self, gpa: u64, value: u32) -> Step {
        let (x2apic, window) = {
            let s = self.s();
            (s.machine.lapic.x2apic(), s.apic_window)
        };
        let offset = gpa.wrapping_sub(self.lapic_at);
        if offset < 0x1000 && (x2apic || gpa == window + offset) {
            if x2apic {
                // x2APIC MSRs never exit; an EOI meant for the userspace
                // IOAPIC is an exit of its own.
                let (eoi_exit, split) = {
                    let mut s = self.s();
                    let no_side_effect = lapic_write(&mut s, offset as u16, value);
                    (!no_side_effect, s.split())
                };
                if eoi_exit && split {
                    // A trap-like exit after the WRMSR: RIP stays.
                    self.exit(hv::HV_VM_EXITINFO_IOAPIC_EOI, 0, &[], |_| {})?;
                }
                return Ok(());
            }
            return self.exit(
                hv::HV_VM_EXITINFO_VMX,
                hv::VMX_REASON_APIC_ACCESS,
                &MOV_STORE,
                |s| {
                    s.vmcs.insert(hv::VMCS_RO_EXIT_QUALIFIC, offset | 1 << 12);
                    s.regs[hv::HV_X86_RBX as usize] = gpa;
                    s.regs[hv::HV_X86_RAX as usize] = value as u64;
                },
            );
        }
        self.exit(
            hv::HV_VM_EXITINFO_VMX,
            hv::VMX_REASON_EPT_VIOLATION,
            &MOV_STORE,
            |s| {
                s.vmcs.insert(hv::VMCS_GUEST_PHYSICAL_ADDRESS, gpa);
                s.regs[hv::HV_X86_RBX as usize] = gpa;
                s.regs[hv::HV_X86_RAX as usize] = value as u64;
            },
        )
    }

    fn load(&mut self, gpa: u64) -> Result<u32, Stop> {
        let window = self.s().apic_window;
        if gpa.wrapping_sub(self.lapic_at) < 0x1000 && gpa.wrapping_sub(window) < 0x1000 {
            let offset = (gpa - window) as u16;
            let (x2apic, value) = {
                let mut s = self.s();
                let v = s.machine.lapic_read(offset).unwrap_or(0);
                (s.machine.lapic.x2apic(), v)
            };
            if x2apic {
                return Ok(value);
            }
            self.exit(hv::HV_VM_EXITINFO_APIC_ACCESS_READ, 0, &MOV_LOAD, |s| {
                s.apic_read_value = value;
                s.regs[hv::HV_X86_RBX as usize] = gpa;
            })?;
        } else {
            self.exit(
                hv::HV_VM_EXITINFO_VMX,
                hv::VMX_REASON_EPT_VIOLATION,
                &MOV_LOAD,
                |s| {
                    s.vmcs.insert(hv::VMCS_GUEST_PHYSICAL_ADDRESS, gpa);
                    s.regs[hv::HV_X86_RBX as usize] = gpa;
                },
            )?;
        }
        Ok(self.s().regs[hv::HV_X86_RAX as usize] as u32)
    }

    fn ram32(&self, at: u64) -> u32 {
        self.s().get32(at)
    }

    fn program(&mut self) -> Step {
        self.out(0x21, 0xff)?;
        self.out(0xa1, 0xff)?;
        if self.ram32(X2APIC) != 0 {
            self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |s| {
                s.regs[hv::HV_X86_RCX as usize] = 0x1b;
                s.regs[hv::HV_X86_RAX as usize] = LAPIC_BASE | 0xd00;
                s.regs[hv::HV_X86_RDX as usize] = 0;
            })?;
        }
        self.store(self.lapic_at + 0x350, 1 << 16)?;
        self.store(self.lapic_at + 0x360, 1 << 16)?;
        let mut at = OPS;
        let mut k = 0u32;
        loop {
            self.s().put32(CUR_OP, k);
            if self.ram32(at) == kind::END {
                break;
            }
            match self.op(at, 0) {
                Ok(()) => {}
                Err(Halt::Stop(s)) => return Err(s),
                Err(Halt::End(code)) => return self.out(END_PORT, code as u32),
            }
            at += 16;
            k += 1;
        }
        self.out(END_PORT, EndCode::Completed as u32)
    }

    /// One op of the table at `at`, then whatever became deliverable.
    fn op(&mut self, at: u64, depth: usize) -> Result<(), Halt> {
        let w = |v: &Self, i: u64| v.ram32(at + 4 * i);
        let (k, a, b, c) = (w(self, 0), w(self, 1), w(self, 2), w(self, 3));
        match k {
            kind::ROUTE => {
                self.store(IOAPIC_BASE, a)?;
                self.store(IOAPIC_BASE + 0x10, b)?;
                self.store(IOAPIC_BASE, a - 1)?;
                self.store(IOAPIC_BASE + 0x10, c)?;
            }
            kind::MASK => {
                self.store(IOAPIC_BASE, a)?;
                let low = self.load(IOAPIC_BASE + 0x10)?;
                self.store(
                    IOAPIC_BASE + 0x10,
                    if b != 0 {
                        low | 1 << 16
                    } else {
                        low & !(1 << 16)
                    },
                )?;
            }
            kind::HOST => self.out(HYPERCALL_PORT, a)?,
            kind::LAPIC_WRITE => self.store(self.lapic_at + a as u64, b)?,
            kind::SELF_IPI => {
                if self.s().machine.lapic.x2apic() {
                    self.store(self.lapic_at + 0x3f0, a)?;
                } else {
                    self.store(self.lapic_at + 0x310, 0)?;
                    self.store(self.lapic_at + 0x300, 0x4_0000 | a)?;
                }
            }
            kind::IOAPIC_EOI => self.store(IOAPIC_BASE + 0x40, a)?,
            kind::APIC_BASE => {
                self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |s| {
                    s.regs[hv::HV_X86_RCX as usize] = 0x1b;
                    s.regs[hv::HV_X86_RAX as usize] = a as u64;
                    s.regs[hv::HV_X86_RDX as usize] = 0;
                })?;
                self.lapic_at = (a & !0xfff) as u64;
                let x2apic = u32::from(a & (1 << 10) != 0);
                self.s().put32(X2APIC, x2apic);
            }
            kind::CLI => self.s().machine.cpu.cli(),
            kind::STI => {
                let mut s = self.s();
                s.machine.cpu.sti();
                s.machine.cpu.end_of_instruction();
            }
            kind::NOP | kind::PING => {}
            kind::HLT => self.halt(depth)?,
            kind::STI_HLT => {
                {
                    let mut s = self.s();
                    s.machine.cpu.sti();
                    s.machine.cpu.end_of_instruction();
                }
                self.halt(depth)?;
            }
            kind::SNAPSHOT => {
                let mut words = vec![record::SNAPSHOT, self.ram32(CUR_OP)];
                for base in [0x200u64, 0x100, 0x180] {
                    for i in 0..8 {
                        words.push(self.load(self.lapic_at + base + 0x10 * i)?);
                    }
                }
                words.push(self.load(self.lapic_at + 0x80)?);
                words.push(self.load(self.lapic_at + 0xa0)?);
                for pin in 0..24 {
                    self.store(IOAPIC_BASE, 0x10 + 2 * pin)?;
                    words.push(self.load(IOAPIC_BASE + 0x10)?);
                }
                debug_assert_eq!(words.len(), SNAPSHOT_WORDS);
                self.log(&words)?;
            }
            kind::IOAPIC_READ => {
                self.store(IOAPIC_BASE, a)?;
                let v = self.load(IOAPIC_BASE + 0x10)?;
                let op = self.ram32(CUR_OP);
                self.log(&[record::IOAPIC_READ, op, a, v])?;
            }
            kind::IOAPIC_WRITE => {
                self.store(IOAPIC_BASE, a)?;
                self.store(IOAPIC_BASE + 0x10, b)?;
            }
            kind::LAPIC_READ => {
                let v = self.load(self.lapic_at + a as u64)?;
                let op = self.ram32(CUR_OP);
                self.log(&[record::LAPIC_READ, op, a, v])?;
            }
            _ => {}
        }
        self.deliver_pending(depth)
    }

    fn log(&mut self, words: &[u32]) -> Result<(), Halt> {
        let mut s = self.s();
        let ptr = u64::from_le_bytes(
            s.ram()[LOG_PTR as usize..LOG_PTR as usize + 8]
                .try_into()
                .expect("8 bytes"),
        );
        if ptr + 4 * words.len() as u64 > LOG_END {
            return Err(Halt::End(EndCode::LogFull));
        }
        for (i, w) in words.iter().enumerate() {
            s.put32(ptr + 4 * i as u64, *w);
        }
        let end = ptr + 4 * words.len() as u64;
        s.ram()[LOG_PTR as usize..LOG_PTR as usize + 8].copy_from_slice(&end.to_le_bytes());
        Ok(())
    }

    fn halt(&mut self, depth: usize) -> Result<(), Halt> {
        loop {
            if self.s().machine.pending().is_some() {
                return self.deliver_pending(depth);
            }
            // Blocks in the kernel: the VMM's run_until reaches its deadline.
            self.s().halted = true;
            self.events
                .send(CpuEvent::Halted)
                .map_err(|_| Halt::Stop(Stop::Gone))?;
            self.resume.recv().map_err(|_| Halt::Stop(Stop::Gone))?;
            self.s().halted = false;
        }
    }

    fn deliver_pending(&mut self, depth: usize) -> Result<(), Halt> {
        loop {
            let pending = self.s().machine.pending();
            let Some(interrupt) = pending else {
                return Ok(());
            };
            self.deliver(interrupt, depth)?;
        }
    }

    fn deliver(&mut self, interrupt: Interrupt, depth: usize) -> Result<(), Halt> {
        let deliveries = self.ram32(DELIVERIES) + 1;
        self.s().put32(DELIVERIES, deliveries);
        if deliveries as usize > crate::trace::STORM_LIMIT || depth > crate::trace::STORM_LIMIT {
            return Err(Halt::End(EndCode::Storm));
        }
        let (vector, saved_if) = self.s().machine.take(interrupt);
        let op = self.ram32(CUR_OP);
        self.log(&[record::DELIVER, op, vector as u32, 0])?;
        let count_at = COUNTS + 4 * vector as u64;
        let n = self.ram32(count_at) + 1;
        self.s().put32(count_at, n);
        let body = self.body(vector, n);
        let mut at = body;
        while self.ram32(at) != kind::END {
            self.op(at, depth + 1)?;
            at += 16;
        }
        self.s().machine.iret(saved_if);
        Ok(())
    }

    /// The `V#N` body for the n-th delivery, else the plain one.
    fn body(&self, vector: u8, n: u32) -> u64 {
        let mut at = NTH_TABLE;
        loop {
            let v = self.ram32(at);
            if v == u32::MAX {
                break;
            }
            if v == vector as u32 && self.ram32(at + 4) == n {
                let mut s = self.s();
                return u64::from_le_bytes(
                    s.ram()[at as usize + 8..at as usize + 16]
                        .try_into()
                        .expect("8 bytes"),
                );
            }
            at += 16;
        }
        let mut s = self.s();
        let dir = BODY_DIR as usize + 8 * vector as usize;
        u64::from_le_bytes(s.ram()[dir..dir + 8].try_into().expect("8 bytes"))
    }
}

/// Why an op stops the program.
enum Halt {
    Stop(Stop),
    /// The stub ends the run (storm, full log).
    End(EndCode),
}

impl From<Stop> for Halt {
    fn from(s: Stop) -> Halt {
        Halt::Stop(s)
    }
}
