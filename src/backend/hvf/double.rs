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

//!
//! Strict mode ([`Double::strict`]) refuses what the real framework and the
//! processor refuse, each rule with its source (issue 18): one VM per
//! [`Process`], vCPU calls only from the creating thread, the destroy
//! order, the VM-entry checks of SDM 26.2/26.3 against a real Intel Mac
//! CPU's capability MSRs ([`vmx`]), a halted vCPU that blocks in the kernel
//! until `hv_vcpu_interrupt`, host-side exits at random (seeded), and an
//! in-kernel IOAPIC with bhyve's identity. It is the default
//! ([`Double::new`]); [`Double::lenient`] is what the loop before issue 18
//! passed.

mod vmx;
pub use vmx::{
    cap2ctrl, Capabilities, EntryFailure, EXIT_REASON_INVALID_GUEST_STATE,
    VM_INSTRUCTION_ERROR_INVALID_CONTROLS,
};

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use hypervisor_framework_sys as hv;

use super::api::reason::VMX_REASON_OTHER_SMI;
use super::api::{event, vmcs, ApicException, Hv, HvError, HvExt, HvResult, Interrupter, RunEnd};
use crate::guest::layout::*;
use crate::guest::stub::{record, SNAPSHOT_WORDS};
use crate::guest::table::kind;
use crate::model::ioapic::{DeliveryMode, InterruptMessage, IoapicVersion, PINS};
use crate::model::machine::Interrupt;
use crate::model::{Machine, MachineConfig, Quirks, Rule};

/// Where the double puts the instruction that faults.
const SCRATCH: u64 = 0x1_f800;
const MOV_STORE: [u8; 2] = [0x89, 0x03]; // mov dword [rbx], eax
const MOV_LOAD: [u8; 2] = [0x8b, 0x03]; // mov eax, dword [rbx]
const OUT_DX_EAX: [u8; 1] = [0xef]; // out dx, eax
const WRMSR: [u8; 2] = [0x0f, 0x30];
const RDMSR: [u8; 2] = [0x0f, 0x32];
const IA32_APIC_BASE: u32 = 0x1b;

/// The task Hypervisor.framework scopes its VM to. Apple: one VM per
/// process (`hv_vm_create`: "Creates a VM instance for the current task";
/// a second create answers `HV_BUSY`, issue 18). Doubles that share a
/// `Process` model one process, so tests choose deliberately what shares it.
#[derive(Clone, Debug, Default)]
pub struct Process(Arc<Mutex<ProcessState>>);

#[derive(Debug, Default)]
struct ProcessState {
    vm: bool,
    vcpus: u32,
}

impl Process {
    pub fn new() -> Process {
        Process::default()
    }
    /// Whether a VM exists in this process now.
    pub fn has_vm(&self) -> bool {
        self.0.lock().unwrap().vm
    }
}

/// What the in-kernel IOAPIC says it is (the version register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoapicIdentity {
    pub version: IoapicVersion,
    pub pins: u32,
}

impl IoapicIdentity {
    /// bhyve's vioapic (version 0x11, 32 entries, no EOI register), which
    /// the framework's state structs follow (`hv_ioapic_state` has
    /// `rtbl[32]`, hv_intr.h), and pmj's QEMU model of HVF's IOAPIC
    /// (`hw/i386/hvf/ioapic.c`: 32 pins, version 0x11). Unverified on a Mac.
    pub const BHYVE: IoapicIdentity = IoapicIdentity {
        version: IoapicVersion::V11,
        pins: 32,
    };
    /// Today's assumption: an ICH IOAPIC (version 0x20, EOI register, 24 pins).
    pub const ICH: IoapicIdentity = IoapicIdentity {
        version: IoapicVersion::V20,
        pins: PINS as u32,
    };
}

/// The strict double's settings.
#[derive(Clone, Debug)]
pub struct StrictConfig {
    pub process: Process,
    pub caps: Capabilities,
    pub ioapic: IoapicIdentity,
    /// On average one VM entry in this many first returns a host-side exit
    /// (`VMX_REASON_IRQ`, or `HV_VM_EXITINFO_SMI`); 0: never.
    pub host_exit_one_in: u32,
    /// Seeds the host-side exits (deterministic in tests).
    pub seed: u64,
    /// How long a halted vCPU blocks without `hv_vcpu_interrupt` before
    /// the double reports it (a real Mac would block forever).
    pub blocked_limit: Duration,
}

impl StrictConfig {
    pub fn new(process: &Process) -> StrictConfig {
        StrictConfig {
            process: process.clone(),
            caps: Capabilities::KABY_LAKE,
            ioapic: IoapicIdentity::BHYVE,
            host_exit_one_in: 8,
            seed: 0x1e_c0de,
            blocked_limit: Duration::from_secs(10),
        }
    }
}

struct Ram(*mut u8, usize);
// SAFETY: the RAM is owned by the VMM for the VM's lifetime; the double only
// touches it while the VMM waits in run_until (the vCPU thread) or between
// runs, never both at once.
unsafe impl Send for Ram {}

/// The "kernel" state the VMM's calls see.
struct State {
    ram: Ram,
    regs: [u64; 18],
    /// The VMCS: in strict mode exactly the fields the VMM or the
    /// processor wrote.
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
    strict: bool,
    ioapic: IoapicIdentity,
    ioregsel: u32,
    blocked_limit: Duration,
    /// Why the last VM entry failed.
    entry_failure: Option<EntryFailure>,
    /// What the double found wrong in the VMM's calls (a mishandled exit,
    /// a refused call), for the VMM's error message.
    fault: Option<String>,
    /// The exception `hv_vcpu_exit_inject_excp` answers after an
    /// `HV_VM_EXITINFO_INJECT_EXCP` exit. Nothing raises one today: the
    /// in-kernel APIC faults only in x2APIC mode, which no call switches it
    /// to (docs/hvf.md).
    exception: Option<ApicException>,
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
    /// Whether the next VM entry injects an event (SDM 24.8.3: bit 31 of
    /// the VM-entry interruption-information field).
    fn injecting(&self) -> bool {
        self.vmcs
            .get(&vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO)
            .is_some_and(|info| info & event::VALID != 0)
    }
}

impl vmx::Fields for State {
    fn field(&self, encoding: u32) -> Option<u64> {
        self.vmcs.get(&encoding).copied()
    }
    fn rflags(&self) -> u64 {
        self.regs[hv::HV_X86_RFLAGS as usize]
    }
}

enum CpuEvent {
    Exit,
    Halted,
    /// `hv_vcpu_interrupt` ended a blocked HLT.
    Kicked,
    /// The VMM mishandled an exit (see `State::fault`).
    Fault,
    Stopped,
}

/// `hv_vcpu_interrupt`'s flag, and the generation of the vCPU thread that
/// may consume it (a replaced thread stops waiting).
#[derive(Default)]
struct Kick {
    state: Mutex<(bool, u64)>,
    cond: Condvar,
}

impl Kick {
    fn set(&self) {
        self.state.lock().unwrap().0 = true;
        self.cond.notify_all();
    }
    fn take(&self) -> bool {
        std::mem::take(&mut self.state.lock().unwrap().0)
    }
    fn next_generation(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.cond.notify_all();
        s.1
    }
    /// Waits for a kick; `None` if the thread was replaced, `Some(false)` at
    /// the limit.
    fn wait(&self, generation: u64, limit: Duration) -> Option<bool> {
        let s = self.state.lock().unwrap();
        let (mut s, _) = self
            .cond
            .wait_timeout_while(s, limit, |(kicked, g)| !*kicked && *g == generation)
            .unwrap();
        if s.1 != generation {
            return None;
        }
        Some(std::mem::take(&mut s.0))
    }
}

struct CpuThread {
    resume: SyncSender<()>,
    events: Receiver<CpuEvent>,
    _handle: JoinHandle<()>,
}

/// How many vCPUs the strict double's VM takes: the format's limit
/// (`config cpus=` up to 8). The framework's own limit is
/// `hv_capability(HV_CAP_VCPUMAX)` (hv.h), whose value on a Mac is not
/// known here.
pub const MAX_VCPUS: usize = 8;

/// The strict double's framework-side bookkeeping.
struct Strict {
    config: StrictConfig,
    vm: bool,
    /// The owning thread of each vCPU ID (`None`: free); IDs are handed
    /// out lowest free first.
    owners: [Option<ThreadId>; MAX_VCPUS],
    rng: u64,
}

impl Strict {
    /// The vCPU the calling thread created, if any.
    fn own_vcpu(&self) -> Option<u32> {
        let me = std::thread::current().id();
        self.owners
            .iter()
            .position(|o| *o == Some(me))
            .map(|i| i as u32)
    }
}

/// The double. `quirks` switch on known HVF bugs in its in-kernel irqchip.
pub struct Double {
    state: Arc<Mutex<State>>,
    cpu: Option<CpuThread>,
    kick: Arc<Kick>,
    strict: Option<Strict>,
    /// The run ended badly (a fault, a stopped vCPU): runs fail until the
    /// VMM starts over from the entry point.
    dead: bool,
    /// Every call the VMM made, by name (the tests check the seed's steps).
    pub calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Double {
    /// The strict double (the default), in a process of its own.
    pub fn new(quirks: Quirks) -> Double {
        Double::strict(StrictConfig::new(&Process::new()), quirks)
    }

    /// The lenient double that the loop before issue 18 passed (it accepts
    /// any VMCS, returns at the deadline from a blocked HLT, forwards
    /// `hv_vcpu_write_msr(IA32_APIC_BASE)` to the model). Kept to show what
    /// it let through; the loop of `vmm.rs` runs on the strict one.
    pub fn lenient(quirks: Quirks) -> Double {
        Double::build(quirks, None)
    }

    /// The strict double (issue 18).
    pub fn strict(config: StrictConfig, quirks: Quirks) -> Double {
        Double::build(quirks, Some(config))
    }

    fn build(quirks: Quirks, config: Option<StrictConfig>) -> Double {
        let ioapic = config.as_ref().map_or(IoapicIdentity::ICH, |c| c.ioapic);
        let state = State {
            ram: Ram(std::ptr::null_mut(), 0),
            regs: [0; 18],
            vmcs: HashMap::new(),
            machine: fresh_machine(false, quirks, ioapic.version),
            quirks,
            apic_ctrl: 0,
            exit_info: 0,
            eoi_vector: None,
            apic_read_value: 0,
            halted: false,
            apic_window: LAPIC_BASE,
            strict: config.is_some(),
            ioapic,
            ioregsel: 0,
            blocked_limit: config
                .as_ref()
                .map_or(Duration::from_secs(10), |c| c.blocked_limit),
            entry_failure: None,
            fault: None,
            exception: None,
        };
        Double {
            state: Arc::new(Mutex::new(state)),
            cpu: None,
            kick: Arc::default(),
            strict: config.map(|config| Strict {
                rng: config.seed | 1,
                config,
                vm: false,
                owners: [None; MAX_VCPUS],
            }),
            calls: Arc::default(),
            dead: false,
        }
    }

    /// Why the last VM entry failed, if it did.
    pub fn entry_failure(&self) -> Option<EntryFailure> {
        self.state.lock().unwrap().entry_failure.clone()
    }

    /// What the double found wrong in the VMM's calls (a mishandled exit,
    /// a blocked HLT nothing interrupted, a refused call).
    pub fn fault(&self) -> Option<String> {
        self.state.lock().unwrap().fault.clone()
    }

    fn log(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }

    fn with<T>(&self, call: &'static str, f: impl FnOnce(&mut State) -> T) -> T {
        self.log(call);
        f(&mut self.state.lock().unwrap())
    }

    /// A vCPU call: strict mode checks that the vCPU exists and that this
    /// is the thread that created it (hv.h, every `hv_vcpu_*` call but
    /// `hv_vcpu_interrupt`: "Must be called by the owning thread"; the
    /// error code for a foreign thread is not documented: the double
    /// answers `HV_BAD_ARGUMENT`, unverified). Then that the vCPU is the
    /// one the double plays ([`Double::owner_check`]).
    fn on_vcpu<T>(
        &self,
        call: &'static str,
        vcpu: u32,
        f: impl FnOnce(&mut State) -> HvResult<T>,
    ) -> HvResult<T> {
        self.owner_check(call, vcpu)?;
        if vcpu != 0 {
            // The double's State is one vCPU's (registers, VMCS, one
            // model Machine): a vCPU other than the first exists, owned by
            // its thread, but nothing of it is played yet (docs/hvf.md,
            // "Several vCPUs"). Refused rather than answered with vCPU 0's
            // state.
            self.log(call);
            self.state.lock().unwrap().fault = Some(format!(
                "{call} on vCPU {vcpu}: the double plays only vCPU 0 (docs/hvf.md, \"Several vCPUs\")"
            ));
            return Err(err(call, hv::HV_UNSUPPORTED));
        }
        self.with(call, f)
    }

    /// The framework's thread rule alone (strict mode): `vcpu` exists and
    /// the calling thread created it, else `HV_BAD_ARGUMENT`.
    fn owner_check(&self, call: &'static str, vcpu: u32) -> HvResult<()> {
        let Some(strict) = &self.strict else {
            return Ok(());
        };
        let owner = strict.owners.get(vcpu as usize).copied().flatten();
        if owner.is_none() || owner != Some(std::thread::current().id()) {
            self.log(call);
            return Err(err(call, hv::HV_BAD_ARGUMENT));
        }
        Ok(())
    }

    /// Ends the vCPU thread (a new run from the entry point, or destroy).
    fn stop_cpu(&mut self) {
        self.cpu = None;
        self.kick.next_generation();
    }

    fn start_cpu(&mut self) {
        let generation = self.kick.next_generation();
        self.cpu = Some(spawn(
            Arc::clone(&self.state),
            Arc::clone(&self.kick),
            generation,
        ));
    }

    /// Resumes (or starts) the vCPU thread and waits for its next event;
    /// an event that ends the run ends the thread too.
    fn resume(&mut self, call: &'static str) -> HvResult<CpuEvent> {
        let event = self.next_event(call);
        if !matches!(
            event,
            Ok(CpuEvent::Exit | CpuEvent::Halted | CpuEvent::Kicked)
        ) {
            self.stop_cpu();
            self.dead = true;
        }
        event
    }

    fn next_event(&mut self, call: &'static str) -> HvResult<CpuEvent> {
        if self.dead {
            return Err(err(call, hv::HV_ERROR));
        }
        match &self.cpu {
            Some(cpu) => cpu.resume.send(()).map_err(|_| err(call, hv::HV_ERROR))?,
            None => self.start_cpu(),
        }
        let limit = self.state.lock().unwrap().blocked_limit + Duration::from_secs(10);
        let cpu = self.cpu.as_ref().expect("started");
        cpu.events
            .recv_timeout(limit)
            .map_err(|_| err(call, hv::HV_ERROR))
    }

    /// A VM exit the framework returns without guest progress.
    fn host_exit(&self, info: u32, reason: u32) -> RunEnd {
        let mut s = self.state.lock().unwrap();
        s.exit_info = info;
        s.vmcs.insert(hv::VMCS_RO_EXIT_REASON, reason as u64);
        RunEnd::Exit
    }

    /// One `hv_vcpu_run_until` in strict mode, whatever the deadline: the
    /// guest here runs without taking time, and a blocked HLT ignores the
    /// deadline (the safe assumption: hv.h says the deadline uses
    /// the VMX preemption timer, which does not count in the kernel's idle
    /// loop; unverified).
    fn run_strict(&mut self, call: &'static str, vcpu: u32) -> HvResult<RunEnd> {
        self.on_vcpu(call, vcpu, |_| Ok(()))?;
        if self.dead {
            return Err(err(call, hv::HV_ERROR));
        }
        // hv.h, hv_vcpu_interrupt: "Forces an immediate VMEXIT"; one that
        // came while the vCPU was not running ends the next run at once
        // (the double's reading; unverified). It shows as an external
        // interrupt exit, as the host IPI behind it would.
        // An entry that injects an event delivers it before anything else
        // happens (SDM 26.6.1): the double takes no host exit on that entry,
        // so the event is never left to the IDT-vectoring information.
        let injecting = self.state.lock().unwrap().injecting();
        if !injecting && self.kick.take() {
            return Ok(self.host_exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_IRQ));
        }
        let caps = self.strict.as_ref().expect("strict").config.caps;
        {
            let mut s = self.state.lock().unwrap();
            s.entry_failure = vmx::check_entry(&caps, &*s).err();
            match &s.entry_failure {
                Some(EntryFailure::Control(_)) => {
                    // VMfailValid: the run call fails, the VM-instruction
                    // error field says 7 (SDM 26.1, 30.4). Apple's
                    // hv_vcpu_vmx_status (macOS 12) reads the ZF/CF of such a
                    // failure; that run_until answers HV_ERROR is unverified.
                    s.vmcs.insert(
                        vmcs::VMCS_RO_INSTR_ERROR,
                        VM_INSTRUCTION_ERROR_INVALID_CONTROLS,
                    );
                    return Err(err(call, hv::HV_ERROR));
                }
                Some(EntryFailure::GuestState(_)) => {
                    // A VM exit with reason 33 | 1 << 31, qualification 0
                    // (SDM 26.7); uhyve's loop handles it as such
                    // (VMX_REASON_VMENTRY_GUEST after hv_vcpu_run).
                    s.exit_info = hv::HV_VM_EXITINFO_VMX;
                    s.vmcs
                        .insert(hv::VMCS_RO_EXIT_REASON, EXIT_REASON_INVALID_GUEST_STATE);
                    s.vmcs.insert(hv::VMCS_RO_EXIT_QUALIFIC, 0);
                    return Ok(RunEnd::Exit);
                }
                None => {}
            }
        }
        if let Some((info, reason)) = self.roll_host_exit().filter(|_| !injecting) {
            return Ok(self.host_exit(info, reason));
        }
        match self.resume(call)? {
            CpuEvent::Exit => Ok(RunEnd::Exit),
            CpuEvent::Kicked => Ok(self.host_exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_IRQ)),
            CpuEvent::Halted | CpuEvent::Fault | CpuEvent::Stopped => Err(err(call, hv::HV_ERROR)),
        }
    }

    /// A host interrupt or SMI taken in VMX non-root operation: the
    /// framework returns it to the VMM, which resumes (OrbStack resumes on
    /// `VMX_REASON_IRQ`, `IO_SMI`, `OTHER_SMI` and `HV_VM_EXITINFO_SMI`
    /// without advancing RIP). Seeded xorshift, so tests are deterministic.
    fn roll_host_exit(&mut self) -> Option<(u32, u32)> {
        let strict = self.strict.as_mut()?;
        let one_in = strict.config.host_exit_one_in;
        if one_in == 0 {
            return None;
        }
        let mut x = strict.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        strict.rng = x;
        if x % one_in as u64 != 0 {
            return None;
        }
        Some(if (x >> 32) % 8 == 0 {
            (hv::HV_VM_EXITINFO_SMI, VMX_REASON_OTHER_SMI)
        } else {
            (hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_IRQ)
        })
    }

    /// Pins the model has (24) but the identity may claim more.
    fn ioapic_pin(&self, call: &'static str, pin: i32) -> HvResult<usize> {
        let s = self.state.lock().unwrap();
        if !s.strict {
            return Ok(pin as usize);
        }
        if pin < 0 || pin as u32 >= s.ioapic.pins {
            return Err(err(call, hv::HV_BAD_ARGUMENT));
        }
        if pin as usize >= PINS {
            // The identity says 32 pins, the model's IOAPIC has 24
            // (model/src/ioapic.rs PINS): a known gap, not HVF behaviour.
            return Err(err(call, hv::HV_UNSUPPORTED));
        }
        Ok(pin as usize)
    }
}

fn err(call: &'static str, code: i32) -> HvError {
    HvError { call, code }
}

impl Hv for Double {
    fn create_vm(&mut self, ram: *mut u8, size: usize) -> HvResult<()> {
        if let Some(strict) = &mut self.strict {
            // Apple: one VM per process; a second hv_vm_create answers
            // HV_BUSY (issue 18).
            let mut process = strict.config.process.0.lock().unwrap();
            if process.vm {
                drop(process);
                self.log("hv_vm_create");
                return Err(err("hv_vm_create", hv::HV_BUSY));
            }
            process.vm = true;
            strict.vm = true;
        }
        self.with("hv_vm_create", |s| s.ram = Ram(ram, size));
        self.log("hv_vm_map");
        Ok(())
    }
    fn create_vcpu(&mut self) -> HvResult<u32> {
        const CALL: &str = "hv_vcpu_create";
        let mut id = 0;
        if let Some(strict) = &mut self.strict {
            // hv.h: "Creates a vCPU instance for the current thread"; it
            // needs the task's VM (error code unverified). Each thread
            // owns at most one vCPU, as every VMM read (pmj's QEMU,
            // OrbStack) has one thread per vCPU; what a second create on
            // the same thread answers is not documented (the double:
            // HV_BUSY, unverified). IDs: lowest free first, up to
            // MAX_VCPUS (then HV_NO_RESOURCES).
            if !strict.vm {
                self.calls.lock().unwrap().push(CALL);
                return Err(err(CALL, hv::HV_ERROR));
            }
            if strict.own_vcpu().is_some() {
                self.calls.lock().unwrap().push(CALL);
                return Err(err(CALL, hv::HV_BUSY));
            }
            let Some(free) = strict.owners.iter().position(Option::is_none) else {
                self.calls.lock().unwrap().push(CALL);
                return Err(err(CALL, hv::HV_NO_RESOURCES));
            };
            strict.owners[free] = Some(std::thread::current().id());
            strict.config.process.0.lock().unwrap().vcpus += 1;
            id = free as u32;
        }
        self.with(CALL, |_| Ok(id))
    }
    fn reset_irqchip(&mut self, vcpu: u32) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_put_state", vcpu, |_| Ok(()))?;
        self.with("hv_vm_ioapic_put_state", |s| {
            s.machine = fresh_machine(false, s.quirks, s.ioapic.version);
            s.apic_window = LAPIC_BASE;
            s.eoi_vector = None;
            s.halted = false;
            s.ioregsel = 0;
        });
        Ok(())
    }
    fn set_apic_address(&mut self, vcpu: u32, gpa: u64) -> HvResult<()> {
        self.on_vcpu("hv_vmx_vcpu_set_apic_address", vcpu, |s| {
            s.apic_window = gpa & !0xfff;
            Ok(())
        })
    }
    fn apic_ctrl(&mut self, vcpu: u32, ctrl: u64) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_ctrl", vcpu, |s| {
            s.apic_ctrl = ctrl;
            Ok(())
        })
    }
    fn read_register(&mut self, vcpu: u32, reg: u32) -> HvResult<u64> {
        self.on_vcpu("hv_vcpu_read_register", vcpu, |s| {
            s.regs
                .get(reg as usize)
                .copied()
                .ok_or(err("hv_vcpu_read_register", hv::HV_ERROR))
        })
    }
    fn write_register(&mut self, vcpu: u32, reg: u32, value: u64) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_write_register", vcpu, |s| {
            match s.regs.get_mut(reg as usize) {
                Some(r) => {
                    *r = value;
                    Ok(())
                }
                None => Err(err("hv_vcpu_write_register", hv::HV_ERROR)),
            }
        })?;
        if reg == hv::HV_X86_RIP && !(SCRATCH..SCRATCH + 16).contains(&value) {
            // A new run from the entry point: the old vCPU thread ends.
            self.stop_cpu();
            self.dead = false;
        }
        Ok(())
    }
    fn read_vmcs(&mut self, vcpu: u32, field: u32) -> HvResult<u64> {
        self.on_vcpu("hv_vmx_vcpu_read_vmcs", vcpu, |s| {
            if field == hv::VMCS_GUEST_ACTIVITY_STATE && !s.strict {
                return Ok(u64::from(s.halted));
            }
            Ok(s.vmcs.get(&field).copied().unwrap_or(0))
        })
    }
    fn write_vmcs(&mut self, vcpu: u32, field: u32, value: u64) -> HvResult<()> {
        self.on_vcpu("hv_vmx_vcpu_write_vmcs", vcpu, |s| {
            s.vmcs.insert(field, value);
            Ok(())
        })
    }
    fn write_msr(&mut self, vcpu: u32, msr: u32, value: u64) -> HvResult<()> {
        const CALL: &str = "hv_vcpu_write_msr";
        self.on_vcpu(CALL, vcpu, |s| {
            if msr != IA32_APIC_BASE {
                return Ok(());
            }
            if s.strict {
                // Issue 18: none of QEMU (pmj), OrbStack, uhyve writes
                // IA32_APIC_BASE through hv_vcpu_write_msr under
                // HV_VM_ACCEL_APIC; pmj's QEMU validates the transition,
                // moves the window with hv_vmx_vcpu_set_apic_address and
                // reads the MSR back. What the framework does with the write
                // is unknown, so the strict double refuses it.
                s.fault = Some(format!(
                    "hv_vcpu_write_msr(IA32_APIC_BASE, {value:#x}) refused: move the window with hv_vmx_vcpu_set_apic_address, as pmj's QEMU does"
                ));
                return Err(err(CALL, hv::HV_ERROR));
            }
            // The guest's IA32_APIC_BASE write (forwarded by the VMM).
            // FB14021745: moving the window and enabling the APIC in one
            // write fails unless the window was moved first.
            let enables = !s.machine.lapic.hw_enabled() && value & (1 << 11) != 0;
            let moved_first = s.apic_window == value & !0xfff;
            if s.quirks.contains(Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS) && enables && !moved_first
            {
                return Ok(());
            }
            if s.machine.write_apic_base(value as u32).is_err() {
                return Err(err(CALL, hv::HV_ERROR));
            }
            Ok(())
        })
    }
    fn run_until(&mut self, vcpu: u32, _timeout: Duration) -> HvResult<RunEnd> {
        const CALL: &str = "hv_vcpu_run_until";
        if self.strict.is_some() {
            return self.run_strict(CALL, vcpu);
        }
        self.log(CALL);
        match self.resume(CALL)? {
            CpuEvent::Exit => Ok(RunEnd::Exit),
            CpuEvent::Halted => Ok(RunEnd::Deadline),
            CpuEvent::Kicked | CpuEvent::Fault | CpuEvent::Stopped => Err(err(CALL, hv::HV_ERROR)),
        }
    }
    fn exit_info(&mut self, vcpu: u32) -> HvResult<u32> {
        self.on_vcpu("hv_vcpu_exit_info", vcpu, |s| Ok(s.exit_info))
    }
    fn exit_ioapic_eoi(&mut self, vcpu: u32) -> HvResult<u8> {
        self.on_vcpu("hv_vcpu_exit_ioapic_eoi", vcpu, |s| {
            s.eoi_vector
                .take()
                .ok_or(err("hv_vcpu_exit_ioapic_eoi", hv::HV_ERROR))
        })
    }
    fn exit_inject_excp(&mut self, vcpu: u32) -> HvResult<ApicException> {
        self.on_vcpu("hv_vcpu_exit_inject_excp", vcpu, |s| {
            s.exception
                .take()
                .ok_or(err("hv_vcpu_exit_inject_excp", hv::HV_ERROR))
        })
    }
    fn exit_apic_access_read(&mut self, vcpu: u32) -> HvResult<u32> {
        self.on_vcpu("hv_vcpu_exit_apic_access_read", vcpu, |s| {
            Ok(s.apic_read_value)
        })
    }
    fn apic_read(&mut self, vcpu: u32, offset: u32) -> HvResult<u32> {
        const CALL: &str = "hv_vcpu_apic_read";
        self.on_vcpu(CALL, vcpu, |s| {
            apic_offset(s, CALL, offset)?;
            Ok(s.machine.lapic.read(offset as u16))
        })
    }
    fn apic_write(&mut self, vcpu: u32, offset: u32, value: u32) -> HvResult<bool> {
        const CALL: &str = "hv_vcpu_apic_write";
        self.on_vcpu(CALL, vcpu, |s| {
            apic_offset(s, CALL, offset)?;
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
                Err(_) => Err(err("hv_vm_lapic_msi", hv::HV_ERROR)),
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
            let value = s.machine.ioapic_mmio_read(gpa - IOAPIC_BASE);
            if s.strict && gpa - IOAPIC_BASE == 0x10 && s.ioregsel == 1 {
                // The version register with the identity's pin count
                // (82093AA 3.2.2: bits 23:16 the highest entry).
                return Ok(value & !0x00ff_00ff
                    | (s.ioapic.pins - 1) << 16
                    | s.ioapic.version.value());
            }
            Ok(value)
        })
    }
    fn ioapic_write(&mut self, gpa: u64, value: u32) -> HvResult<()> {
        self.with("hv_vm_ioapic_write", |s| {
            if gpa == IOAPIC_BASE {
                s.ioregsel = value & 0xff;
            }
            s.machine.ioapic_mmio_write(gpa - IOAPIC_BASE, value)
        });
        Ok(())
    }
    fn ioapic_assert_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_assert_irq", pin)?;
        self.with("hv_vm_ioapic_assert_irq", |s| s.machine.set_irq(pin, true));
        Ok(())
    }
    fn ioapic_deassert_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_deassert_irq", pin)?;
        self.with("hv_vm_ioapic_deassert_irq", |s| {
            s.machine.set_irq(pin, false)
        });
        Ok(())
    }
    fn ioapic_pulse_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_pulse_irq", pin)?;
        self.with("hv_vm_ioapic_pulse_irq", |s| {
            s.machine.set_irq(pin, true);
            s.machine.set_irq(pin, false);
        });
        Ok(())
    }
    fn atpic_port_write(&mut self, _port: i32, _value: u8) -> HvResult<()> {
        self.log("hv_vm_atpic_port_write");
        Ok(())
    }
}

impl HvExt for Double {
    /// The double's in-kernel APIC is the model's, which has no clock: a
    /// timer that counts in real time while the guest spins or halts is
    /// not something it can be (`timer-wait` and `hlt` would need the
    /// double to pass time), so it refuses rather than run another meaning.
    fn lapic_timer_unsupported(&self) -> Option<&'static str> {
        Some("the HVF test double's in-kernel APIC (the model, without a clock) has no LAPIC timer: the timer ops (`timer`, `tsc-deadline`, `tsc-deadline-read`, `timer-wait`) run on Hypervisor.framework itself")
    }

    fn read_capability(&mut self, field: u32) -> HvResult<u64> {
        let caps = self
            .strict
            .as_ref()
            .map_or(Capabilities::KABY_LAKE, |s| s.config.caps);
        self.log("hv_vmx_read_capability");
        caps.read(field)
            .ok_or(err("hv_vmx_read_capability", hv::HV_BAD_ARGUMENT))
    }
    fn read_msr(&mut self, vcpu: u32, msr: u32) -> HvResult<u64> {
        self.on_vcpu("hv_vcpu_read_msr", vcpu, |s| {
            if msr != IA32_APIC_BASE {
                return Err(err("hv_vcpu_read_msr", hv::HV_UNSUPPORTED));
            }
            // SDM 11.4.4: base, EN (bit 11), EXTD (bit 10), BSP (bit 8).
            let lapic = &s.machine.lapic;
            Ok(s.apic_window
                | u64::from(lapic.hw_enabled()) << 11
                | u64::from(lapic.x2apic()) << 10
                | 1 << 8)
        })
    }
    fn run_forever(&mut self, vcpu: u32) -> HvResult<RunEnd> {
        const CALL: &str = "hv_vcpu_run_until(HV_DEADLINE_FOREVER)";
        if self.strict.is_some() {
            return self.run_strict(CALL, vcpu);
        }
        self.run_until(vcpu, Duration::MAX)
    }
    fn interrupter(&mut self, vcpu: u32) -> HvResult<Interrupter> {
        self.on_vcpu("hv_vcpu_interrupt", vcpu, |_| Ok(()))?;
        let kick = Arc::clone(&self.kick);
        Ok(Arc::new(move || {
            kick.set();
            Ok(())
        }))
    }
    fn reset_apic(&mut self, vcpu: u32) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_put_state", vcpu, |s| {
            s.machine.lapic = fresh_machine(false, s.quirks, s.ioapic.version).lapic;
            // The power-up SVR, 0xFF: software-disabled (SDM §11.4.7.1).
            let _ = s.machine.lapic_write(0xf0, 0xff);
            s.apic_window = LAPIC_BASE;
            s.eoi_vector = None;
            Ok(())
        })
    }
    /// No INIT or STARTUP exit happens on the double yet (it plays one
    /// vCPU, and multi-CPU scenarios, the only ones with `ipi init` or
    /// `ipi startup`, are refused before the run): after any other exit
    /// the call answers `HV_ERROR`, as `hv_vcpu_exit_ioapic_eoi` does
    /// after an exit that is not an EOI (the double's reading).
    fn exit_init_ap(&mut self, vcpu: u32, _count: u32) -> HvResult<Vec<bool>> {
        const CALL: &str = "hv_vcpu_exit_init_ap";
        self.on_vcpu(CALL, vcpu, |_| Err(err(CALL, hv::HV_ERROR)))
    }
    fn exit_startup_ap(&mut self, vcpu: u32, _count: u32) -> HvResult<(Vec<bool>, u64)> {
        const CALL: &str = "hv_vcpu_exit_startup_ap";
        self.on_vcpu(CALL, vcpu, |_| Err(err(CALL, hv::HV_ERROR)))
    }
    fn destroy_vcpu(&mut self, vcpu: u32) -> HvResult<()> {
        const CALL: &str = "hv_vcpu_destroy";
        self.owner_check(CALL, vcpu)?;
        self.log(CALL);
        if vcpu == 0 {
            self.stop_cpu();
        }
        if let Some(strict) = &mut self.strict {
            strict.owners[vcpu as usize] = None;
            strict.config.process.0.lock().unwrap().vcpus -= 1;
        }
        Ok(())
    }
    fn destroy_vm(&mut self) -> HvResult<()> {
        self.log("hv_vm_destroy");
        let Some(strict) = &mut self.strict else {
            return Ok(());
        };
        if !strict.vm {
            return Err(err("hv_vm_destroy", hv::HV_ERROR));
        }
        let mut process = strict.config.process.0.lock().unwrap();
        // The destroy order: the VM goes only after its vCPUs (issue 18:
        // hv_vm_destroy with a live vCPU answers HV_BUSY and the VM stays;
        // unverified on a Mac).
        if process.vcpus > 0 {
            return Err(err("hv_vm_destroy", hv::HV_BUSY));
        }
        process.vm = false;
        strict.vm = false;
        Ok(())
    }
}

/// Strict: `hv_vcpu_apic_read`/`write` take a "byte offset into the APIC
/// page" (hv.h) of a 32-bit access: one beyond the page's last dword or not
/// dword-aligned is refused with `HV_BAD_ARGUMENT` (the double's reading;
/// the framework's answer is undocumented). The guest's own MMIO is
/// aligned: the stub's accesses are 32-bit MOVs at 16-byte or dword
/// offsets.
fn apic_offset(s: &State, call: &'static str, offset: u32) -> HvResult<()> {
    if s.strict && (offset > 0xffc || offset % 4 != 0) {
        return Err(err(call, hv::HV_BAD_ARGUMENT));
    }
    Ok(())
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
fn fresh_machine(x2apic: bool, quirks: Quirks, ioapic: IoapicVersion) -> Machine {
    let quirks = quirks - Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS;
    Machine::new(MachineConfig {
        x2apic,
        quirks,
        ioapic,
        ..MachineConfig::default()
    })
}

fn spawn(state: Arc<Mutex<State>>, kick: Arc<Kick>, generation: u64) -> CpuThread {
    let (resume_tx, resume_rx) = mpsc::sync_channel(0);
    let (event_tx, event_rx) = mpsc::sync_channel(0);
    let handle = std::thread::spawn(move || {
        let mut cpu = Vcpu {
            lapic_at: LAPIC_BASE,
            state,
            kick,
            generation,
            resume: resume_rx,
            events: event_tx,
        };
        let _ = cpu.start();
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
    /// The stub ends the run: an exception its handler does not skip, or
    /// a full log while recording one.
    End(EndCode),
}

type Step = Result<(), Stop>;

/// The vCPU thread: the guest stub's behaviour.
struct Vcpu {
    /// Where the stub reaches the APIC (its r14).
    lapic_at: u64,
    state: Arc<Mutex<State>>,
    kick: Arc<Kick>,
    /// Which thread this is (`Kick`): a replaced one stops.
    generation: u64,
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
        if self.deliver_injected(!code.is_empty())? {
            return Ok(());
        }
        let rip = self.s().regs[hv::HV_X86_RIP as usize];
        if rip != SCRATCH + code.len() as u64 {
            self.s().fault = Some(format!(
                "the VMM left RIP at {rip:#x}, not past the exiting instruction ({:#x})",
                SCRATCH + code.len() as u64
            ));
            let _ = self.events.send(CpuEvent::Fault);
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// The event the VMM injected at this VM entry, if any, delivered as
    /// the processor does (SDM vol. 3C 26.6.1: through the guest's IDT
    /// before its first instruction; the entry checks admitted only #GP,
    /// a hardware exception with error code) to the guest stub's #GP
    /// handler (docs/guest-stub.md), whose work this plays: the saved RIP
    /// must point at an RDMSR or WRMSR (the fault left RIP on the
    /// instruction), else the stub ends the run with `UnexpectedFault`; the
    /// fault is logged (EXCEPTION, op, 13, error code), `GP_FAULTED` set,
    /// and the guest resumes past the two-byte instruction. The valid bit
    /// is cleared, as every VM exit clears it (SDM 24.8.3). True when an
    /// event was delivered. `at_exit`: the vCPU stopped at an exiting
    /// instruction (else in HLT or at the entry point, where RIP is on no
    /// instruction of the stub's that may fault).
    fn deliver_injected(&mut self, at_exit: bool) -> Result<bool, Stop> {
        let (code, at) = {
            let mut s = self.s();
            if !s.injecting() {
                return Ok(false);
            }
            let info = s.vmcs[&vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO];
            s.vmcs
                .insert(vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO, info & !event::VALID);
            let code = s
                .vmcs
                .get(&vmcs::VMCS_CTRL_VMENTRY_EXC_ERROR)
                .copied()
                .unwrap_or(0);
            let rip = s.regs[hv::HV_X86_RIP as usize] as usize;
            let bytes = s.ram().get(rip..rip + 2).map(|b| [b[0], b[1]]);
            if !at_exit || (bytes != Some(WRMSR) && bytes != Some(RDMSR)) {
                return Err(Stop::End(EndCode::UnexpectedFault));
            }
            (code as u32, rip as u64)
        };
        let op = self.ram32(CUR_OP);
        self.log(&[record::EXCEPTION, op, 13, code])
            .map_err(|h| match h {
                Halt::End(code) => Stop::End(code),
                Halt::Stop(s) => s,
            })?;
        let mut s = self.s();
        s.put32(GP_FAULTED, 1);
        s.regs[hv::HV_X86_RIP as usize] = at + 2;
        Ok(true)
    }

    /// The run from the entry point. Strict: a vCPU entered with activity
    /// state HLT (SDM 26.6.2: the processor enters the HLT state, as the
    /// VMCS says) waits for an interrupt before the first instruction.
    fn start(&mut self) -> Step {
        match self.begin() {
            Err(Stop::End(code)) => self.out(END_PORT, code as u32),
            other => other,
        }
    }

    fn begin(&mut self) -> Step {
        // An event injected at the entry point finds no RDMSR or WRMSR at
        // RIP: the stub's handler ends the run.
        self.deliver_injected(false)?;
        let halted_at_entry = {
            let s = self.s();
            s.strict && s.vmcs.get(&hv::VMCS_GUEST_ACTIVITY_STATE) == Some(&1)
        };
        if halted_at_entry {
            match self.halt(0) {
                Ok(()) => {}
                Err(Halt::Stop(s)) => return Err(s),
                Err(Halt::End(code)) => return self.out(END_PORT, code as u32),
            }
        }
        self.program()
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
            // The stub's `mov ecx, 0x1b; rdmsr; or eax, 0xc00; wrmsr`: both
            // MSR accesses exit (IA32_APIC_BASE is not a native MSR).
            self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_RDMSR, &RDMSR, |s| {
                s.regs[hv::HV_X86_RCX as usize] = 0x1b;
            })?;
            let base = self.s().regs[hv::HV_X86_RAX as usize] as u32 | 0xc00;
            self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |s| {
                s.regs[hv::HV_X86_RCX as usize] = 0x1b;
                s.regs[hv::HV_X86_RAX as usize] = base as u64;
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
                self.store(IOAPIC_BASE, a ^ 1)?;
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
            kind::LAPIC_WRITE | kind::LAPIC_MMIO_WRITE => {
                self.store(self.lapic_at + a as u64, b)?
            }
            // MOV to CR8: TPR[7:4] (SDM §10.8.6.1), under HV_VM_ACCEL_APIC
            // handled by the in-kernel APIC like a TPR write.
            kind::CR8 => self.store(self.lapic_at + 0x80, a << 4)?,
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
                // The stub: clear GP_FAULTED, WRMSR, and follow the new base
                // and mode only if the write did not fault.
                self.s().put32(GP_FAULTED, 0);
                self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |s| {
                    s.regs[hv::HV_X86_RCX as usize] = 0x1b;
                    s.regs[hv::HV_X86_RAX as usize] = a as u64;
                    s.regs[hv::HV_X86_RDX as usize] = 0;
                })?;
                if self.ram32(GP_FAULTED) == 0 {
                    self.lapic_at = (a & !0xfff) as u64;
                    let x2apic = u32::from(a & (1 << 10) != 0);
                    self.s().put32(X2APIC, x2apic);
                }
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
            // x2APIC mode: nothing answers at the page (the model's choice).
            kind::LAPIC_MMIO_READ if self.s().machine.lapic.x2apic() => {
                let op = self.ram32(CUR_OP);
                self.log(&[record::LAPIC_MMIO_READ, op, a, u32::MAX])?;
            }
            kind::LAPIC_MMIO_READ => {
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
        let strict = self.s().strict;
        loop {
            if self.s().machine.pending().is_some() {
                if strict {
                    self.s().vmcs.insert(hv::VMCS_GUEST_ACTIVITY_STATE, 0);
                }
                return self.deliver_pending(depth);
            }
            if strict {
                self.blocked_halt()?;
                continue;
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

    /// Strict: under HV_VM_ACCEL_APIC an idle HLT stays in the kernel with
    /// no exit (issue 18) and, the safe assumption, no deadline ends it:
    /// only `hv_vcpu_interrupt` does. The activity state reads HLT meanwhile.
    fn blocked_halt(&mut self) -> Result<(), Halt> {
        let limit = {
            let mut s = self.s();
            s.vmcs.insert(hv::VMCS_GUEST_ACTIVITY_STATE, 1);
            s.blocked_limit
        };
        match self.kick.wait(self.generation, limit) {
            None => Err(Halt::Stop(Stop::Gone)),
            Some(true) => {
                self.events
                    .send(CpuEvent::Kicked)
                    .map_err(|_| Halt::Stop(Stop::Gone))?;
                self.resume.recv().map_err(|_| Halt::Stop(Stop::Gone))?;
                // An event injected on a host exit in HLT: RIP is past the
                // HLT, on no RDMSR or WRMSR.
                self.deliver_injected(false)?;
                Ok(())
            }
            Some(false) => {
                self.s().fault = Some(format!(
                    "the vCPU blocked in HLT for {limit:?} and nothing called hv_vcpu_interrupt (on a Mac: forever)"
                ));
                let _ = self.events.send(CpuEvent::Fault);
                Err(Halt::Stop(Stop::Gone))
            }
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
        match s {
            Stop::End(code) => Halt::End(code),
            s => Halt::Stop(s),
        }
    }
}
