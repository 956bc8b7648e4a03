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
use crate::model::system::{Node, System};
use crate::model::{MachineConfig, Quirks, Rule};

/// Where the double puts the instruction that faults: one 32-byte slot per
/// vCPU (each vCPU's exit has its own instruction), below the data area.
const SCRATCH: u64 = 0x1_f800;
const SCRATCH_SLOT: u64 = 0x20;
const SCRATCH_END: u64 = SCRATCH + SCRATCH_SLOT * MAX_VCPUS as u64;
const MOV_STORE: [u8; 2] = [0x89, 0x03]; // mov dword [rbx], eax
const MOV_LOAD: [u8; 2] = [0x8b, 0x03]; // mov eax, dword [rbx]
const OUT_DX_EAX: [u8; 1] = [0xef]; // out dx, eax
const WRMSR: [u8; 2] = [0x0f, 0x30];
const RDMSR: [u8; 2] = [0x0f, 0x32];
const IA32_APIC_BASE: u32 = 0x1b;
/// The ICR's delivery mode field (SDM §11.6.1, bits 10:8): INIT and STARTUP.
const ICR_INIT: u32 = 5;
const ICR_STARTUP: u32 = 6;

/// vCPU `id`'s scratch slot.
const fn scratch(id: usize) -> u64 {
    SCRATCH + SCRATCH_SLOT * id as u64
}

/// The guest stub's entry points: the double tells by RIP which start the
/// VMM gave a vCPU (docs/guest-stub.md, "Several CPUs").
#[derive(Clone, Copy, Debug)]
struct Entries {
    entry: u64,
    ap_entry: u64,
    sipi_entry: u64,
}

fn entries() -> Entries {
    static ENTRIES: std::sync::OnceLock<Entries> = std::sync::OnceLock::new();
    *ENTRIES.get_or_init(|| {
        let stub = crate::guest::Image::build().stub;
        Entries {
            entry: stub.entry,
            ap_entry: stub.ap_entry,
            sipi_entry: stub.sipi_entry,
        }
    })
}

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

/// The "kernel" state the VMM's calls see: the VM's (RAM, the in-kernel
/// irqchip: one local APIC per vCPU on one bus with the IOAPIC, the model's
/// [`System`]) and each vCPU's.
struct State {
    ram: Ram,
    /// The in-kernel APICs and IOAPIC. Node `i` is vCPU `i`'s APIC (APIC
    /// ID `i`); IDs of destroyed vCPUs below the highest live one keep a
    /// node that waits for SIPI (it takes nothing but INIT and STARTUP).
    system: System,
    quirks: Quirks,
    strict: bool,
    ioapic: IoapicIdentity,
    ioregsel: u32,
    blocked_limit: Duration,
    /// Each vCPU's state, by vCPU ID.
    cpus: Vec<CpuState>,
}

/// One vCPU's registers, VMCS and exit state.
struct CpuState {
    regs: [u64; 18],
    /// The VMCS: in strict mode exactly the fields the VMM or the
    /// processor wrote.
    vmcs: HashMap<u32, u64>,
    apic_ctrl: u64,
    exit_info: u32,
    eoi_vector: Option<u8>,
    apic_read_value: u32,
    halted: bool,
    /// Where the APIC's MMIO window is (`hv_vmx_vcpu_set_apic_address`).
    apic_window: u64,
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
    /// The INIT or STARTUP IPI this vCPU sent last, which
    /// `hv_vcpu_exit_init_ap`/`startup_ap` describe after its exit.
    ap_exit: Option<ApExit>,
    /// An INIT reached this vCPU since the VMM last started it: the
    /// processor is reset and waits for SIPI (SDM vol. 3A §11.4.7.3), so
    /// resuming it where it stopped is refused.
    init_seen: bool,
    /// A STARTUP IPI started this vCPU after that INIT: the VMM must start
    /// it afresh (at the SIPI page's entry) before it runs.
    sipi_started: bool,
}

impl CpuState {
    fn new() -> CpuState {
        CpuState {
            regs: [0; 18],
            vmcs: HashMap::new(),
            apic_ctrl: 0,
            exit_info: 0,
            eoi_vector: None,
            apic_read_value: 0,
            halted: false,
            apic_window: LAPIC_BASE,
            entry_failure: None,
            fault: None,
            exception: None,
            ap_exit: None,
            init_seen: false,
            sipi_started: false,
        }
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

/// What an INIT or STARTUP IPI did, for the sender's exit (hv.h: the
/// targets in `is_actv[]` by vCPU ID; `ap_rip` the start address).
#[derive(Clone, Copy, Debug)]
struct ApExit {
    startup: bool,
    /// The vCPUs it reached: for INIT every addressed one, for STARTUP
    /// those it started (the ones waiting for SIPI), one bit per ID.
    targets: u32,
    /// STARTUP: the vector << 12 (SDM §9.4.4.1: the real-mode start page).
    rip: u64,
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
    fn get64(&mut self, at: u64) -> u64 {
        u64::from_le_bytes(
            self.ram()[at as usize..at as usize + 8]
                .try_into()
                .expect("8 bytes"),
        )
    }
    fn put64(&mut self, at: u64, v: u64) {
        self.ram()[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// The first fault any vCPU recorded.
    fn fault(&self) -> Option<String> {
        self.cpus.iter().find_map(|c| c.fault.clone())
    }
    /// The model's configuration of the in-kernel irqchip.
    fn config(&self) -> MachineConfig {
        machine_config(self.quirks, self.ioapic.version)
    }
    /// Gives vCPU `id` a fresh in-kernel APIC (its state at creation),
    /// growing the bus to it if needed.
    fn fresh_apic(&mut self, id: usize) {
        let node = fresh_node(self.config(), id);
        while self.system.nodes.len() <= id {
            let absent = self.system.nodes.len();
            self.system.nodes.push(absent_node(self.config(), absent));
        }
        self.system.nodes[id] = node;
    }
}

impl vmx::Fields for CpuState {
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

/// One vCPU's player: the thread that plays its guest, and its kick.
#[derive(Default)]
struct Player {
    cpu: Option<CpuThread>,
    kick: Arc<Kick>,
    /// The run ended badly (a fault, a stopped vCPU): runs fail until the
    /// VMM starts over from an entry point.
    dead: bool,
}

/// The double. `quirks` switch on known HVF bugs in its in-kernel irqchip.
pub struct Double {
    state: Arc<Mutex<State>>,
    /// By vCPU ID.
    players: Vec<Player>,
    strict: Option<Strict>,
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
            system: System::new(machine_config(quirks, ioapic.version), &[], false),
            quirks,
            strict: config.is_some(),
            ioapic,
            ioregsel: 0,
            blocked_limit: config
                .as_ref()
                .map_or(Duration::from_secs(10), |c| c.blocked_limit),
            cpus: (0..MAX_VCPUS).map(|_| CpuState::new()).collect(),
        };
        Double {
            state: Arc::new(Mutex::new(state)),
            players: (0..MAX_VCPUS).map(|_| Player::default()).collect(),
            strict: config.map(|config| Strict {
                rng: config.seed | 1,
                config,
                vm: false,
                owners: [None; MAX_VCPUS],
            }),
            calls: Arc::default(),
        }
    }

    /// Why vCPU 0's last VM entry failed, if it did.
    pub fn entry_failure(&self) -> Option<EntryFailure> {
        self.entry_failure_of(0)
    }

    /// Why vCPU `vcpu`'s last VM entry failed, if it did.
    pub fn entry_failure_of(&self, vcpu: u32) -> Option<EntryFailure> {
        let s = self.state.lock().unwrap();
        s.cpus.get(vcpu as usize)?.entry_failure.clone()
    }

    /// What the double found wrong in the VMM's calls (a mishandled exit,
    /// a blocked HLT nothing interrupted, a refused call), on any vCPU.
    pub fn fault(&self) -> Option<String> {
        self.state.lock().unwrap().fault()
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
    /// answers `HV_BAD_ARGUMENT`, unverified). `f` gets the VM's state and
    /// the vCPU's index into it.
    fn on_vcpu<T>(
        &self,
        call: &'static str,
        vcpu: u32,
        f: impl FnOnce(&mut State, usize) -> HvResult<T>,
    ) -> HvResult<T> {
        self.owner_check(call, vcpu)?;
        if vcpu as usize >= MAX_VCPUS {
            self.log(call);
            return Err(err(call, hv::HV_BAD_ARGUMENT));
        }
        self.with(call, |s| f(s, vcpu as usize))
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

    /// Ends vCPU `v`'s player thread (a new run from an entry point, or
    /// destroy).
    fn stop_cpu(&mut self, v: usize) {
        let player = &mut self.players[v];
        player.cpu = None;
        player.kick.next_generation();
    }

    fn start_cpu(&mut self, v: usize) {
        let player = &mut self.players[v];
        let generation = player.kick.next_generation();
        player.cpu = Some(spawn(
            Arc::clone(&self.state),
            Arc::clone(&player.kick),
            generation,
            v,
        ));
    }

    /// Resumes (or starts) vCPU `v`'s player and waits for its next event;
    /// an event that ends the run ends the thread too.
    fn resume(&mut self, call: &'static str, v: usize) -> HvResult<CpuEvent> {
        let event = self.next_event(call, v);
        if !matches!(
            event,
            Ok(CpuEvent::Exit | CpuEvent::Halted | CpuEvent::Kicked)
        ) {
            self.stop_cpu(v);
            self.players[v].dead = true;
        }
        event
    }

    fn next_event(&mut self, call: &'static str, v: usize) -> HvResult<CpuEvent> {
        if self.players[v].dead {
            return Err(err(call, hv::HV_ERROR));
        }
        if let Err(why) = self.boot_check(v) {
            let mut s = self.state.lock().unwrap();
            s.cpus[v].fault = Some(why);
            return Err(err(call, hv::HV_ERROR));
        }
        match &self.players[v].cpu {
            Some(cpu) => cpu.resume.send(()).map_err(|_| err(call, hv::HV_ERROR))?,
            None => self.start_cpu(v),
        }
        let limit = self.state.lock().unwrap().blocked_limit + Duration::from_secs(10);
        let cpu = self.players[v].cpu.as_ref().expect("started");
        cpu.events
            .recv_timeout(limit)
            .map_err(|_| err(call, hv::HV_ERROR))
    }

    /// The in-kernel APIC's INIT and STARTUP state against how the VMM
    /// runs vCPU `v` (the double's reading of hv.h and of the two VMMs that
    /// run several vCPUs, docs/hvf.md "Several vCPUs"; bhyve's vlapic keeps
    /// the same boot state):
    /// - an INIT reached it: the processor waits for SIPI (SDM vol. 3A
    ///   §11.4.7.3); resuming it where it stopped, or starting it before a
    ///   STARTUP IPI did, is refused;
    /// - a STARTUP IPI started it: it starts at the stub's SIPI entry
    ///   (where the SIPI page at `ap_rip` leads), not where it stopped;
    /// - an AP that waits for SIPI since its creation (the APs' power-up
    ///   state, SDM vol. 3A §9.4.1) and that the VMM starts at an entry
    ///   point is started by the VMM itself (`ap-start=host`): it runs.
    fn boot_check(&mut self, v: usize) -> Result<(), String> {
        let fresh = self.players[v].cpu.is_none();
        let mut s = self.state.lock().unwrap();
        let rip = s.cpus[v].regs[hv::HV_X86_RIP as usize];
        let (init_seen, sipi_started) = (s.cpus[v].init_seen, s.cpus[v].sipi_started);
        if !fresh {
            if init_seen {
                return Err(format!(
                    "vCPU {v} was resumed after an INIT reached it (HV_VM_EXITINFO_INIT_AP of its sender): the processor was reset and waits for SIPI"
                ));
            }
            return Ok(());
        }
        if init_seen && !sipi_started {
            return Err(format!(
                "vCPU {v} was started after an INIT reached it and before a STARTUP IPI did: it waits for SIPI"
            ));
        }
        if sipi_started && rip != entries().sipi_entry {
            return Err(format!(
                "vCPU {v}, started by a STARTUP IPI, was run at {rip:#x}, not at the stub's SIPI entry {:#x}",
                entries().sipi_entry
            ));
        }
        let c = &mut s.cpus[v];
        (c.init_seen, c.sipi_started) = (false, false);
        if let Some(node) = s.system.nodes.get_mut(v) {
            node.waiting_for_sipi = false;
        }
        Ok(())
    }

    /// A VM exit the framework returns without guest progress.
    fn host_exit(&self, v: usize, info: u32, reason: u32) -> RunEnd {
        let mut s = self.state.lock().unwrap();
        let c = &mut s.cpus[v];
        c.exit_info = info;
        c.vmcs.insert(hv::VMCS_RO_EXIT_REASON, reason as u64);
        RunEnd::Exit
    }

    /// One `hv_vcpu_run_until` in strict mode, whatever the deadline: the
    /// guest here runs without taking time, and a blocked HLT ignores the
    /// deadline (the safe assumption: hv.h says the deadline uses
    /// the VMX preemption timer, which does not count in the kernel's idle
    /// loop; unverified).
    fn run_strict(&mut self, call: &'static str, vcpu: u32) -> HvResult<RunEnd> {
        self.on_vcpu(call, vcpu, |_, _| Ok(()))?;
        let v = vcpu as usize;
        if self.players[v].dead {
            return Err(err(call, hv::HV_ERROR));
        }
        // hv.h, hv_vcpu_interrupt: "Forces an immediate VMEXIT"; one that
        // came while the vCPU was not running ends the next run at once
        // (the double's reading; unverified). It shows as an external
        // interrupt exit, as the host IPI behind it would.
        // An entry that injects an event delivers it before anything else
        // happens (SDM 26.6.1): the double takes no host exit on that entry,
        // so the event is never left to the IDT-vectoring information.
        let injecting = self.state.lock().unwrap().cpus[v].injecting();
        if !injecting && self.players[v].kick.take() {
            return Ok(self.host_exit(v, hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_IRQ));
        }
        let caps = self.strict.as_ref().expect("strict").config.caps;
        {
            let mut s = self.state.lock().unwrap();
            let c = &mut s.cpus[v];
            c.entry_failure = vmx::check_entry(&caps, &*c).err();
            match &c.entry_failure {
                Some(EntryFailure::Control(_)) => {
                    // VMfailValid: the run call fails, the VM-instruction
                    // error field says 7 (SDM 26.1, 30.4). Apple's
                    // hv_vcpu_vmx_status (macOS 12) reads the ZF/CF of such a
                    // failure; that run_until answers HV_ERROR is unverified.
                    c.vmcs.insert(
                        vmcs::VMCS_RO_INSTR_ERROR,
                        VM_INSTRUCTION_ERROR_INVALID_CONTROLS,
                    );
                    return Err(err(call, hv::HV_ERROR));
                }
                Some(EntryFailure::GuestState(_)) => {
                    // A VM exit with reason 33 | 1 << 31, qualification 0
                    // (SDM 26.7); uhyve's loop handles it as such
                    // (VMX_REASON_VMENTRY_GUEST after hv_vcpu_run).
                    c.exit_info = hv::HV_VM_EXITINFO_VMX;
                    c.vmcs
                        .insert(hv::VMCS_RO_EXIT_REASON, EXIT_REASON_INVALID_GUEST_STATE);
                    c.vmcs.insert(hv::VMCS_RO_EXIT_QUALIFIC, 0);
                    return Ok(RunEnd::Exit);
                }
                None => {}
            }
        }
        if let Some((info, reason)) = self.roll_host_exit().filter(|_| !injecting) {
            return Ok(self.host_exit(v, info, reason));
        }
        match self.resume(call, v)? {
            CpuEvent::Exit => Ok(RunEnd::Exit),
            CpuEvent::Kicked => Ok(self.host_exit(v, hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_IRQ)),
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
        // The new vCPU's APIC joins the bus with APIC ID = its vCPU ID (the
        // double's reading: hv.h gives the APIC no other ID, and bhyve's
        // vlapic, which the framework's follows, uses the vCPU ID).
        self.stop_cpu(id as usize);
        self.players[id as usize].dead = false;
        self.with(CALL, |s| {
            s.cpus[id as usize] = CpuState::new();
            s.fresh_apic(id as usize);
            Ok(id)
        })
    }
    /// The vCPU's APIC and the VM's IOAPIC as they were at creation. An AP
    /// (vCPU 1 and up) is then in its power-up state, waiting for SIPI
    /// (SDM vol. 3A §9.4.1; bhyve's vlapic: `BS_INIT` for every vCPU but
    /// the first), until an INIT-SIPI starts it or the VMM starts it at an
    /// entry point itself ([`Double::boot_check`]).
    fn reset_irqchip(&mut self, vcpu: u32) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_put_state", vcpu, |s, v| {
            s.fresh_apic(v);
            s.system.nodes[v].waiting_for_sipi = v != 0;
            let c = &mut s.cpus[v];
            c.apic_window = LAPIC_BASE;
            c.eoi_vector = None;
            c.halted = false;
            (c.init_seen, c.sipi_started, c.ap_exit) = (false, false, None);
            Ok(())
        })?;
        self.with("hv_vm_ioapic_put_state", |s| {
            let fresh = System::new(s.config(), &[0], false);
            s.system.ioapic = fresh.ioapic;
            s.system.clear_decisions();
            let _ = (s.system.take_inited(), s.system.take_unmodelled());
            s.ioregsel = 0;
        });
        Ok(())
    }
    fn set_apic_address(&mut self, vcpu: u32, gpa: u64) -> HvResult<()> {
        self.on_vcpu("hv_vmx_vcpu_set_apic_address", vcpu, |s, v| {
            s.cpus[v].apic_window = gpa & !0xfff;
            Ok(())
        })
    }
    fn apic_ctrl(&mut self, vcpu: u32, ctrl: u64) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_ctrl", vcpu, |s, v| {
            s.cpus[v].apic_ctrl = ctrl;
            Ok(())
        })
    }
    fn read_register(&mut self, vcpu: u32, reg: u32) -> HvResult<u64> {
        self.on_vcpu("hv_vcpu_read_register", vcpu, |s, v| {
            s.cpus[v]
                .regs
                .get(reg as usize)
                .copied()
                .ok_or(err("hv_vcpu_read_register", hv::HV_ERROR))
        })
    }
    fn write_register(&mut self, vcpu: u32, reg: u32, value: u64) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_write_register", vcpu, |s, v| {
            match s.cpus[v].regs.get_mut(reg as usize) {
                Some(r) => {
                    *r = value;
                    Ok(())
                }
                None => Err(err("hv_vcpu_write_register", hv::HV_ERROR)),
            }
        })?;
        if reg == hv::HV_X86_RIP && !(SCRATCH..SCRATCH_END).contains(&value) {
            // A new run from an entry point: the old player thread ends.
            self.stop_cpu(vcpu as usize);
            self.players[vcpu as usize].dead = false;
        }
        Ok(())
    }
    fn read_vmcs(&mut self, vcpu: u32, field: u32) -> HvResult<u64> {
        self.on_vcpu("hv_vmx_vcpu_read_vmcs", vcpu, |s, v| {
            let c = &s.cpus[v];
            if field == hv::VMCS_GUEST_ACTIVITY_STATE && !s.strict {
                return Ok(u64::from(c.halted));
            }
            Ok(c.vmcs.get(&field).copied().unwrap_or(0))
        })
    }
    fn write_vmcs(&mut self, vcpu: u32, field: u32, value: u64) -> HvResult<()> {
        self.on_vcpu("hv_vmx_vcpu_write_vmcs", vcpu, |s, v| {
            s.cpus[v].vmcs.insert(field, value);
            Ok(())
        })
    }
    fn write_msr(&mut self, vcpu: u32, msr: u32, value: u64) -> HvResult<()> {
        const CALL: &str = "hv_vcpu_write_msr";
        self.on_vcpu(CALL, vcpu, |s, v| {
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
                s.cpus[v].fault = Some(format!(
                    "hv_vcpu_write_msr(IA32_APIC_BASE, {value:#x}) refused: move the window with hv_vmx_vcpu_set_apic_address, as pmj's QEMU does"
                ));
                return Err(err(CALL, hv::HV_ERROR));
            }
            // The guest's IA32_APIC_BASE write (forwarded by the VMM).
            // FB14021745: moving the window and enabling the APIC in one
            // write fails unless the window was moved first.
            let lapic = &s.system.nodes[v].lapic;
            let enables = !lapic.hw_enabled() && value & (1 << 11) != 0;
            let moved_first = s.cpus[v].apic_window == value & !0xfff;
            if s.quirks.contains(Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS) && enables && !moved_first
            {
                return Ok(());
            }
            if s.system.write_apic_base(v, value as u32).is_err() {
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
        if vcpu as usize >= MAX_VCPUS {
            return Err(err(CALL, hv::HV_BAD_ARGUMENT));
        }
        match self.resume(CALL, vcpu as usize)? {
            CpuEvent::Exit => Ok(RunEnd::Exit),
            CpuEvent::Halted => Ok(RunEnd::Deadline),
            CpuEvent::Kicked | CpuEvent::Fault | CpuEvent::Stopped => Err(err(CALL, hv::HV_ERROR)),
        }
    }
    fn exit_info(&mut self, vcpu: u32) -> HvResult<u32> {
        self.on_vcpu("hv_vcpu_exit_info", vcpu, |s, v| Ok(s.cpus[v].exit_info))
    }
    fn exit_ioapic_eoi(&mut self, vcpu: u32) -> HvResult<u8> {
        self.on_vcpu("hv_vcpu_exit_ioapic_eoi", vcpu, |s, v| {
            s.cpus[v]
                .eoi_vector
                .take()
                .ok_or(err("hv_vcpu_exit_ioapic_eoi", hv::HV_ERROR))
        })
    }
    fn exit_inject_excp(&mut self, vcpu: u32) -> HvResult<ApicException> {
        self.on_vcpu("hv_vcpu_exit_inject_excp", vcpu, |s, v| {
            s.cpus[v]
                .exception
                .take()
                .ok_or(err("hv_vcpu_exit_inject_excp", hv::HV_ERROR))
        })
    }
    fn exit_apic_access_read(&mut self, vcpu: u32) -> HvResult<u32> {
        self.on_vcpu("hv_vcpu_exit_apic_access_read", vcpu, |s, v| {
            Ok(s.cpus[v].apic_read_value)
        })
    }
    fn apic_read(&mut self, vcpu: u32, offset: u32) -> HvResult<u32> {
        const CALL: &str = "hv_vcpu_apic_read";
        self.on_vcpu(CALL, vcpu, |s, v| {
            apic_offset(s, CALL, offset)?;
            Ok(s.system.nodes[v].lapic.read(offset as u16))
        })
    }
    fn apic_write(&mut self, vcpu: u32, offset: u32, value: u32) -> HvResult<bool> {
        const CALL: &str = "hv_vcpu_apic_write";
        self.on_vcpu(CALL, vcpu, |s, v| {
            apic_offset(s, CALL, offset)?;
            Ok(lapic_write(s, v, offset as u16, value))
        })
    }
    fn lapic_msi(&mut self, address: u64, data: u64) -> HvResult<()> {
        self.with("hv_vm_lapic_msi", |s| {
            match crate::model::msi::decode(address, data as u32) {
                Ok(msg) => {
                    s.system.message(&msg);
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
            s.system.message(&msg);
            Ok(())
        })
    }
    fn ioapic_read(&mut self, gpa: u64) -> HvResult<u32> {
        self.with("hv_vm_ioapic_read", |s| {
            let value = s.system.ioapic_mmio_read(gpa - IOAPIC_BASE);
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
            s.system.ioapic_mmio_write(gpa - IOAPIC_BASE, value)
        });
        Ok(())
    }
    fn ioapic_assert_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_assert_irq", pin)?;
        self.with("hv_vm_ioapic_assert_irq", |s| s.system.set_irq(pin, true));
        Ok(())
    }
    fn ioapic_deassert_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_deassert_irq", pin)?;
        self.with("hv_vm_ioapic_deassert_irq", |s| {
            s.system.set_irq(pin, false)
        });
        Ok(())
    }
    fn ioapic_pulse_irq(&mut self, pin: i32) -> HvResult<()> {
        let pin = self.ioapic_pin("hv_vm_ioapic_pulse_irq", pin)?;
        self.with("hv_vm_ioapic_pulse_irq", |s| {
            s.system.set_irq(pin, true);
            s.system.set_irq(pin, false);
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
        self.on_vcpu("hv_vcpu_read_msr", vcpu, |s, v| {
            if msr != IA32_APIC_BASE {
                return Err(err("hv_vcpu_read_msr", hv::HV_UNSUPPORTED));
            }
            // SDM 11.4.4: base, EN (bit 11), EXTD (bit 10), BSP (bit 8:
            // vCPU 0, the processor the VMM starts first).
            let lapic = &s.system.nodes[v].lapic;
            Ok(s.cpus[v].apic_window
                | u64::from(lapic.hw_enabled()) << 11
                | u64::from(lapic.x2apic()) << 10
                | u64::from(v == 0) << 8)
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
        self.on_vcpu("hv_vcpu_interrupt", vcpu, |_, _| Ok(()))?;
        let kick = Arc::clone(&self.players[vcpu as usize].kick);
        Ok(Arc::new(move || {
            kick.set();
            Ok(())
        }))
    }
    fn reset_apic(&mut self, vcpu: u32) -> HvResult<()> {
        self.on_vcpu("hv_vcpu_apic_put_state", vcpu, |s, v| {
            // The APIC alone: the processor's state (IF, NMI blocking) and
            // its wait-for-SIPI state stay.
            let node = &s.system.nodes[v];
            let (cpu, waiting) = (node.cpu, node.waiting_for_sipi);
            s.fresh_apic(v);
            let node = &mut s.system.nodes[v];
            (node.cpu, node.waiting_for_sipi) = (cpu, waiting);
            // The power-up SVR, 0xFF: software-disabled (SDM §11.4.7.1).
            let _ = s.system.nodes[v].lapic.write(0xf0, 0xff);
            s.cpus[v].apic_window = LAPIC_BASE;
            s.cpus[v].eoi_vector = None;
            Ok(())
        })
    }
    /// After an `HV_VM_EXITINFO_INIT_AP` exit of `vcpu` (the sender of an
    /// INIT IPI): the vCPUs it reached, `is_actv[i]` for vCPU ID `i`. After
    /// any other exit the call answers `HV_ERROR`, as
    /// `hv_vcpu_exit_ioapic_eoi` does after an exit that is not an EOI (the
    /// double's reading); a `count` below the highest target's ID + 1
    /// answers `HV_BAD_ARGUMENT` (the array cannot hold the answer).
    fn exit_init_ap(&mut self, vcpu: u32, count: u32) -> HvResult<Vec<bool>> {
        const CALL: &str = "hv_vcpu_exit_init_ap";
        self.on_vcpu(CALL, vcpu, |s, v| {
            let c = &mut s.cpus[v];
            match c.ap_exit {
                Some(e) if !e.startup && c.exit_info == hv::HV_VM_EXITINFO_INIT_AP => {
                    targets(CALL, e.targets, count)
                }
                _ => Err(err(CALL, hv::HV_ERROR)),
            }
        })
    }
    /// After an `HV_VM_EXITINFO_STARTUP_AP` exit of the sender: the vCPUs
    /// the STARTUP IPI started (those waiting for SIPI) and `ap_rip`, the
    /// vector << 12 (SDM vol. 3A §9.4.4.1: the real-mode start page).
    /// Which of the addressed vCPUs `is_actv` names on a Mac is not
    /// documented; OrbStack starts each one it names.
    fn exit_startup_ap(&mut self, vcpu: u32, count: u32) -> HvResult<(Vec<bool>, u64)> {
        const CALL: &str = "hv_vcpu_exit_startup_ap";
        self.on_vcpu(CALL, vcpu, |s, v| {
            let c = &mut s.cpus[v];
            match c.ap_exit {
                Some(e) if e.startup && c.exit_info == hv::HV_VM_EXITINFO_STARTUP_AP => {
                    Ok((targets(CALL, e.targets, count)?, e.rip))
                }
                _ => Err(err(CALL, hv::HV_ERROR)),
            }
        })
    }
    fn destroy_vcpu(&mut self, vcpu: u32) -> HvResult<()> {
        const CALL: &str = "hv_vcpu_destroy";
        self.owner_check(CALL, vcpu)?;
        self.log(CALL);
        if (vcpu as usize) < MAX_VCPUS {
            self.stop_cpu(vcpu as usize);
            let mut s = self.state.lock().unwrap();
            let v = vcpu as usize;
            // Its APIC leaves the bus; one below a live vCPU stays as a
            // node that takes nothing but INIT and STARTUP.
            if v + 1 == s.system.nodes.len() {
                s.system.nodes.pop();
            } else if v < s.system.nodes.len() {
                s.system.nodes[v] = absent_node(s.config(), v);
            }
        }
        if let Some(strict) = &mut self.strict {
            strict.owners[vcpu as usize] = None;
            strict.config.process.0.lock().unwrap().vcpus -= 1;
            // Trailing nodes of destroyed vCPUs go too.
            let mut s = self.state.lock().unwrap();
            while s.system.nodes.len() > 1 && strict.owners[s.system.nodes.len() - 1].is_none() {
                s.system.nodes.pop();
            }
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

/// `is_actv[count]` from a bit set of vCPU IDs.
fn targets(call: &'static str, set: u32, count: u32) -> HvResult<Vec<bool>> {
    let needed = u32::BITS - set.leading_zeros();
    if count < needed {
        return Err(err(call, hv::HV_BAD_ARGUMENT));
    }
    Ok((0..count).map(|i| i < 32 && set & 1 << i != 0).collect())
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

/// A guest write of vCPU `v`'s local APIC (MMIO forwarded by the VMM, or
/// an x2APIC WRMSR the kernel handles). Returns `no_side_effect`; when
/// false, the vCPU's exit info says what the VMM must do: an EOI for the
/// userspace IOAPIC, or an INIT or STARTUP IPI whose targets the VMM
/// starts (docs/hvf.md, "Several vCPUs").
fn lapic_write(s: &mut State, v: usize, offset: u16, value: u32) -> bool {
    if offset == 0xb0 {
        return eoi_write(s, v);
    }
    let waiting: Vec<bool> = s.system.nodes.iter().map(|n| n.waiting_for_sipi).collect();
    let _ = s.system.take_inited();
    let _ = s.system.lapic_write(v, offset, value);
    if offset != 0x300 {
        return true;
    }
    ap_exit(s, v, value, &waiting)
}

/// The EOI of vCPU `v`: local, then broadcast to the in-kernel IOAPIC, or
/// (`HV_APIC_CTRL_IOAPIC_EOI`) handed to the VMM as an exit.
fn eoi_write(s: &mut State, v: usize) -> bool {
    let Some(vector) = s.system.local_eoi(v) else {
        return true;
    };
    if !s.cpus[v].split() {
        s.system.ioapic_eoi(vector);
        return true;
    }
    // HV_APIC_CTRL_IOAPIC_EOI: the EOI becomes an exit for the VMM. With the
    // seed's FB14425590 the exit info never says so (the vector can still be
    // fetched, as the seed author did for xAPIC EOI writes).
    s.cpus[v].eoi_vector = Some(vector);
    if s.quirks.contains(Quirks::SPLIT_EOI_LOST) {
        return true;
    }
    s.cpus[v].exit_info = hv::HV_VM_EXITINFO_IOAPIC_EOI;
    false
}

/// After vCPU `v`'s ICR write of `low`: an INIT or STARTUP IPI that reached
/// a vCPU becomes `HV_VM_EXITINFO_INIT_AP` or `STARTUP_AP` on the sender
/// (hv.h: "may occur as part of handling writes to the ICR register"). The
/// in-kernel APIC has already reset the INIT's targets and taken the
/// STARTUP's (the model's bus); starting a processor is the VMM's. `waiting`:
/// which vCPUs waited for SIPI before the write. INIT level de-assert
/// reaches nobody, and an IPI that reached nobody makes no exit.
fn ap_exit(s: &mut State, v: usize, low: u32, waiting: &[bool]) -> bool {
    let mode = (low >> 8) & 7;
    let inited = s.system.take_inited();
    let exit = match mode {
        ICR_INIT if inited != 0 => {
            for (i, c) in s.cpus.iter_mut().enumerate() {
                if inited & 1 << i != 0 {
                    (c.init_seen, c.sipi_started) = (true, false);
                }
            }
            ApExit {
                startup: false,
                targets: inited,
                rip: 0,
            }
        }
        ICR_STARTUP => {
            let started = s
                .system
                .nodes
                .iter()
                .zip(waiting)
                .enumerate()
                .filter(|(_, (n, &was))| was && !n.waiting_for_sipi)
                .fold(0u32, |set, (i, _)| set | 1 << i);
            if started == 0 {
                return true;
            }
            for (i, c) in s.cpus.iter_mut().enumerate() {
                if started & 1 << i != 0 {
                    c.sipi_started = true;
                }
            }
            ApExit {
                startup: true,
                targets: started,
                rip: u64::from(low & 0xff) << 12,
            }
        }
        _ => return true,
    };
    let c = &mut s.cpus[v];
    c.ap_exit = Some(exit);
    c.exit_info = if exit.startup {
        hv::HV_VM_EXITINFO_STARTUP_AP
    } else {
        hv::HV_VM_EXITINFO_INIT_AP
    };
    false
}

/// The model's configuration of the in-kernel irqchip. The FB14021745
/// quirk is the double's own (it depends on the VMM's calls), not the
/// model's.
fn machine_config(quirks: Quirks, ioapic: IoapicVersion) -> MachineConfig {
    MachineConfig {
        x2apic: false,
        quirks: quirks - Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS,
        ioapic,
        ..MachineConfig::default()
    }
}

/// vCPU `id`'s APIC at creation: APIC ID `id`.
fn fresh_node(config: MachineConfig, id: usize) -> Node {
    System::new(config, &[id as u32], false).nodes.remove(0)
}

/// The node of a destroyed vCPU below a live one: it waits for SIPI, so it
/// takes no fixed interrupt and no NMI.
fn absent_node(config: MachineConfig, id: usize) -> Node {
    let mut node = fresh_node(config, id);
    node.lapic.init_reset();
    node.waiting_for_sipi = true;
    node
}

fn spawn(state: Arc<Mutex<State>>, kick: Arc<Kick>, generation: u64, id: usize) -> CpuThread {
    let (resume_tx, resume_rx) = mpsc::sync_channel(0);
    let (event_tx, event_rx) = mpsc::sync_channel(0);
    let handle = std::thread::spawn(move || {
        let mut cpu = Vcpu {
            id,
            block: cpu_block(id),
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

/// A vCPU's player thread: the guest stub's behaviour on that CPU
/// (docs/guest-stub.md; "Several CPUs" for the per-CPU blocks, entries and
/// the mailbox loop).
struct Vcpu {
    /// The vCPU ID, which is the stub's CPU index.
    id: usize,
    /// This CPU's block (the stub's RBP): its per-CPU fields.
    block: u64,
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

    /// This vCPU's state, under the VM's lock.
    fn c<T>(&self, f: impl FnOnce(&mut CpuState) -> T) -> T {
        f(&mut self.s().cpus[self.id])
    }

    fn x2apic(&self) -> bool {
        self.s().system.nodes[self.id].lapic.x2apic()
    }

    fn fault(&self, why: String) -> Stop {
        self.c(|c| c.fault = Some(why));
        let _ = self.events.send(CpuEvent::Fault);
        Stop::Gone
    }

    /// Stops with an exit and waits for the VMM to resume.
    fn exit(
        &mut self,
        info: u32,
        reason: u32,
        code: &[u8],
        set: impl FnOnce(&mut CpuState),
    ) -> Step {
        let at = scratch(self.id);
        {
            let mut s = self.s();
            s.ram()[at as usize..at as usize + code.len()].copy_from_slice(code);
            let c = &mut s.cpus[self.id];
            c.regs[hv::HV_X86_RIP as usize] = at;
            c.exit_info = info;
            c.vmcs.insert(hv::VMCS_RO_EXIT_REASON, reason as u64);
            c.vmcs
                .insert(hv::VMCS_RO_VMEXIT_INSTR_LEN, code.len() as u64);
            set(c);
        }
        self.events.send(CpuEvent::Exit).map_err(|_| Stop::Gone)?;
        self.resume.recv().map_err(|_| Stop::Gone)?;
        if self.deliver_injected(!code.is_empty())? {
            return Ok(());
        }
        let rip = self.c(|c| c.regs[hv::HV_X86_RIP as usize]);
        if rip != at + code.len() as u64 {
            return Err(self.fault(format!(
                "the VMM left vCPU {}'s RIP at {rip:#x}, not past the exiting instruction ({:#x})",
                self.id,
                at + code.len() as u64
            )));
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
            let c = &mut s.cpus[self.id];
            if !c.injecting() {
                return Ok(false);
            }
            let info = c.vmcs[&vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO];
            c.vmcs
                .insert(vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO, info & !event::VALID);
            let code = c
                .vmcs
                .get(&vmcs::VMCS_CTRL_VMENTRY_EXC_ERROR)
                .copied()
                .unwrap_or(0);
            let rip = c.regs[hv::HV_X86_RIP as usize] as usize;
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
        let gp = self.block + PCPU_GP_FAULTED;
        let mut s = self.s();
        s.put32(gp, 1);
        s.cpus[self.id].regs[hv::HV_X86_RIP as usize] = at + 2;
        Ok(true)
    }

    /// The run from the entry point the VMM gave. Strict: a vCPU entered
    /// with activity state HLT (SDM 26.6.2: the processor enters the HLT
    /// state, as the VMCS says) waits for an interrupt before the first
    /// instruction.
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
            s.strict && s.cpus[self.id].vmcs.get(&hv::VMCS_GUEST_ACTIVITY_STATE) == Some(&1)
        };
        if halted_at_entry {
            match self.halt(0) {
                Ok(()) => {}
                Err(Halt::Stop(s)) => return Err(s),
                Err(Halt::End(code)) => return self.out(END_PORT, code as u32),
            }
        }
        let (rip, rdi) = self.c(|c| {
            (
                c.regs[hv::HV_X86_RIP as usize],
                c.regs[hv::HV_X86_RDI as usize],
            )
        });
        let e = entries();
        if rip == e.entry && self.id == 0 {
            return self.program();
        }
        if (rip == e.ap_entry || rip == e.sipi_entry) && self.id != 0 {
            if rdi != self.id as u64 {
                return Err(self.fault(format!(
                    "vCPU {} started at the stub's AP entry with EDI = {rdi}, not its CPU index",
                    self.id
                )));
            }
            return self.ap(rip == e.sipi_entry);
        }
        Err(self.fault(format!(
            "vCPU {} started at {rip:#x}, which is not its entry in the stub (CPU 0: entry {:#x}; CPUs 1-7: ap_entry {:#x}, sipi_entry {:#x})",
            self.id, e.entry, e.ap_entry, e.sipi_entry
        )))
    }

    fn out(&mut self, port: u16, value: u32) -> Step {
        self.exit(
            hv::HV_VM_EXITINFO_VMX,
            hv::VMX_REASON_IO,
            &OUT_DX_EAX,
            |c| {
                // Qualification: size - 1 in bits 2:0, OUT (bit 3 clear), port in 31:16.
                c.vmcs
                    .insert(hv::VMCS_RO_EXIT_QUALIFIC, (port as u64) << 16 | 3);
                c.regs[hv::HV_X86_RAX as usize] = value as u64;
            },
        )
    }

    /// An exit the in-kernel APIC makes after an access it handled itself
    /// (x2APIC MSRs never exit): the trap-like exit of `info`, RIP stays.
    fn side_exit(&mut self) -> Step {
        let info = self.c(|c| c.exit_info);
        self.exit(info, 0, &[], |_| {})
    }

    fn store(&mut self, gpa: u64, value: u32) -> Step {
        let (x2apic, window) = {
            let s = self.s();
            (
                s.system.nodes[self.id].lapic.x2apic(),
                s.cpus[self.id].apic_window,
            )
        };
        let offset = gpa.wrapping_sub(self.lapic_at);
        if offset < 0x1000 && (x2apic || gpa == window + offset) {
            if x2apic {
                // x2APIC MSRs never exit; an EOI meant for the userspace
                // IOAPIC, or an INIT or STARTUP IPI, is an exit of its own.
                let no_side_effect = {
                    let mut s = self.s();
                    lapic_write(&mut s, self.id, offset as u16, value)
                };
                if !no_side_effect {
                    self.side_exit()?;
                }
                return Ok(());
            }
            return self.exit(
                hv::HV_VM_EXITINFO_VMX,
                hv::VMX_REASON_APIC_ACCESS,
                &MOV_STORE,
                |c| {
                    c.vmcs.insert(hv::VMCS_RO_EXIT_QUALIFIC, offset | 1 << 12);
                    c.regs[hv::HV_X86_RBX as usize] = gpa;
                    c.regs[hv::HV_X86_RAX as usize] = value as u64;
                },
            );
        }
        self.exit(
            hv::HV_VM_EXITINFO_VMX,
            hv::VMX_REASON_EPT_VIOLATION,
            &MOV_STORE,
            |c| {
                c.vmcs.insert(hv::VMCS_GUEST_PHYSICAL_ADDRESS, gpa);
                c.regs[hv::HV_X86_RBX as usize] = gpa;
                c.regs[hv::HV_X86_RAX as usize] = value as u64;
            },
        )
    }

    fn load(&mut self, gpa: u64) -> Result<u32, Stop> {
        let window = self.c(|c| c.apic_window);
        if gpa.wrapping_sub(self.lapic_at) < 0x1000 && gpa.wrapping_sub(window) < 0x1000 {
            let offset = (gpa - window) as u16;
            let (x2apic, value) = {
                let mut s = self.s();
                let v = s.system.lapic_read(self.id, offset).unwrap_or(0);
                (s.system.nodes[self.id].lapic.x2apic(), v)
            };
            if x2apic {
                return Ok(value);
            }
            self.exit(hv::HV_VM_EXITINFO_APIC_ACCESS_READ, 0, &MOV_LOAD, |c| {
                c.apic_read_value = value;
                c.regs[hv::HV_X86_RBX as usize] = gpa;
            })?;
        } else {
            self.exit(
                hv::HV_VM_EXITINFO_VMX,
                hv::VMX_REASON_EPT_VIOLATION,
                &MOV_LOAD,
                |c| {
                    c.vmcs.insert(hv::VMCS_GUEST_PHYSICAL_ADDRESS, gpa);
                    c.regs[hv::HV_X86_RBX as usize] = gpa;
                },
            )?;
        }
        Ok(self.c(|c| c.regs[hv::HV_X86_RAX as usize]) as u32)
    }

    fn ram32(&self, at: u64) -> u32 {
        self.s().get32(at)
    }

    /// The stub's `mov ecx, 0x1b; rdmsr; or eax, 0xc00; wrmsr` when this
    /// CPU's x2APIC flag is set: both MSR accesses exit (IA32_APIC_BASE is
    /// not a native MSR).
    fn x2apic_switch(&mut self) -> Step {
        if self.ram32(self.block + PCPU_X2APIC) == 0 {
            return Ok(());
        }
        self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_RDMSR, &RDMSR, |c| {
            c.regs[hv::HV_X86_RCX as usize] = 0x1b;
        })?;
        let base = self.c(|c| c.regs[hv::HV_X86_RAX as usize]) as u32 | 0xc00;
        self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |c| {
            c.regs[hv::HV_X86_RCX as usize] = 0x1b;
            c.regs[hv::HV_X86_RAX as usize] = base as u64;
            c.regs[hv::HV_X86_RDX as usize] = 0;
        })
    }

    /// CPU 0 at the stub's entry.
    fn program(&mut self) -> Step {
        {
            let mut s = self.s();
            s.put32(self.block + PCPU_INDEX, 0);
            s.put64(self.block + PCPU_LOG_LIMIT, LOG_END);
        }
        if self.ram32(PREPARED) == 0 {
            self.out(0x21, 0xff)?;
            self.out(0xa1, 0xff)?;
        }
        self.x2apic_switch()?;
        if self.ram32(PREPARED) == 0 {
            self.store(self.lapic_at + 0x350, 1 << 16)?;
            self.store(self.lapic_at + 0x360, 1 << 16)?;
        }
        if self.ram32(SMP) != 0 {
            return self.mailbox_loop();
        }
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

    /// CPU K >= 1 at `ap_entry` or (`sipi`) `sipi_entry`: IF = 0, its
    /// block, its x2APIC switch; after a SIPI the start state's SVR 0x1FF
    /// and TPR 0 (INIT left the APIC software-disabled, SDM §11.4.7.3);
    /// `sti; nop`; the mailbox loop.
    fn ap(&mut self, sipi: bool) -> Step {
        {
            let mut s = self.s();
            s.system.nodes[self.id].cpu.cli();
            s.put32(self.block + PCPU_INDEX, self.id as u32);
            s.put64(self.block + PCPU_LOG_LIMIT, self.block + AP_LOG_END);
        }
        self.x2apic_switch()?;
        if sipi {
            self.lapic_store(0xf0, 0x1ff)?;
            self.lapic_store(0x80, 0)?;
        }
        {
            let mut s = self.s();
            let cpu = &mut s.system.nodes[self.id].cpu;
            cpu.sti();
            cpu.end_of_instruction();
        }
        self.mailbox_loop()
    }

    /// The stub's `lapic_write`: MMIO, or WRMSR 0x800 + offset / 16 in
    /// x2APIC mode (handled in the kernel, like MMIO through `store`).
    fn lapic_store(&mut self, offset: u64, value: u32) -> Step {
        self.store(self.lapic_at + offset, value)
    }

    /// The mailbox loop (docs/guest-stub.md, "Several CPUs"): `out` to the
    /// idle port with EAX = the CPU index; then whatever this CPU can take
    /// (an interrupt is taken at that instruction boundary, when the VMM
    /// resumes it, with the IF its last op left); then the posted op, if
    /// any.
    fn mailbox_loop(&mut self) -> Step {
        loop {
            let passes = self.block + PCPU_IDLE_PASSES;
            {
                let mut s = self.s();
                let n = s.get32(passes).wrapping_add(1);
                s.put32(passes, n);
            }
            self.out(IDLE_PORT, self.id as u32)?;
            let posted = match self.deliver_pending(0) {
                Ok(()) => self.ram32(self.block + PCPU_MAILBOX),
                Err(Halt::Stop(s)) => return Err(s),
                Err(Halt::End(code)) => return self.out(END_PORT, code as u32),
            };
            if posted == 0 {
                continue;
            }
            let k = posted - 1;
            {
                let mut s = self.s();
                s.put32(self.block + PCPU_MAILBOX, 0);
                s.put32(CUR_OP, k);
            }
            match self.op(OPS + 16 * k as u64, 0) {
                Ok(()) => {}
                Err(Halt::Stop(s)) => return Err(s),
                Err(Halt::End(code)) => return self.out(END_PORT, code as u32),
            }
            let done = self.block + PCPU_OPS_DONE;
            let mut s = self.s();
            let n = s.get32(done) + 1;
            s.put32(done, n);
        }
    }

    /// One op of the table at `at`, then whatever became deliverable.
    fn op(&mut self, at: u64, depth: usize) -> Result<(), Halt> {
        let w = |v: &Self, i: u64| v.ram32(at + 4 * i);
        let (k, a, b, c) = (w(self, 0), w(self, 1), w(self, 2), w(self, 3));
        let id = self.id;
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
                if self.x2apic() {
                    self.store(self.lapic_at + 0x3f0, a)?;
                } else {
                    self.store(self.lapic_at + 0x310, 0)?;
                    self.store(self.lapic_at + 0x300, 0x4_0000 | a)?;
                }
            }
            // The stub's `ipi`: xAPIC ICR high (destination << 24) then
            // low; x2APIC one WRMSR of MSR 0x830, handled in the kernel
            // (SDM §11.12.9), whose INIT or STARTUP is an exit of its own.
            kind::IPI => {
                if self.x2apic() {
                    let no_side_effect = {
                        let mut s = self.s();
                        let waiting: Vec<bool> =
                            s.system.nodes.iter().map(|n| n.waiting_for_sipi).collect();
                        let _ = s.system.take_inited();
                        let _ = s.system.send_icr(id, a, b);
                        ap_exit(&mut s, id, a, &waiting)
                    };
                    if !no_side_effect {
                        self.side_exit()?;
                    }
                } else {
                    self.store(self.lapic_at + 0x310, b << 24)?;
                    self.store(self.lapic_at + 0x300, a)?;
                }
            }
            kind::IOAPIC_EOI => self.store(IOAPIC_BASE + 0x40, a)?,
            kind::APIC_BASE => {
                // The stub: clear GP_FAULTED, WRMSR, and follow the new base
                // and mode only if the write did not fault.
                let gp = self.block + PCPU_GP_FAULTED;
                self.s().put32(gp, 0);
                self.exit(hv::HV_VM_EXITINFO_VMX, hv::VMX_REASON_WRMSR, &WRMSR, |c| {
                    c.regs[hv::HV_X86_RCX as usize] = 0x1b;
                    c.regs[hv::HV_X86_RAX as usize] = a as u64;
                    c.regs[hv::HV_X86_RDX as usize] = 0;
                })?;
                if self.ram32(gp) == 0 {
                    self.lapic_at = (a & !0xfff) as u64;
                    let x2apic = u32::from(a & (1 << 10) != 0);
                    self.s().put32(self.block + PCPU_X2APIC, x2apic);
                }
            }
            kind::CLI => self.s().system.nodes[id].cpu.cli(),
            kind::STI => {
                let mut s = self.s();
                let cpu = &mut s.system.nodes[id].cpu;
                cpu.sti();
                cpu.end_of_instruction();
            }
            kind::NOP | kind::PING => {}
            kind::HLT => self.halt(depth)?,
            kind::STI_HLT => {
                {
                    let mut s = self.s();
                    let cpu = &mut s.system.nodes[id].cpu;
                    cpu.sti();
                    cpu.end_of_instruction();
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
            kind::LAPIC_MMIO_READ if self.x2apic() => {
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

    /// Appends `words` to this CPU's event log (its pointer and limit in
    /// its block).
    fn log(&mut self, words: &[u32]) -> Result<(), Halt> {
        let mut s = self.s();
        let ptr_at = self.block + PCPU_LOG_PTR;
        let ptr = s.get64(ptr_at);
        let limit = if self.id == 0 {
            LOG_END
        } else {
            self.block + AP_LOG_END
        };
        if ptr + 4 * words.len() as u64 > limit {
            return Err(Halt::End(EndCode::LogFull));
        }
        for (i, w) in words.iter().enumerate() {
            s.put32(ptr + 4 * i as u64, *w);
        }
        s.put64(ptr_at, ptr + 4 * words.len() as u64);
        Ok(())
    }

    fn halt(&mut self, depth: usize) -> Result<(), Halt> {
        let strict = self.s().strict;
        loop {
            if self.s().system.pending(self.id).is_some() {
                if strict {
                    self.c(|c| c.vmcs.insert(hv::VMCS_GUEST_ACTIVITY_STATE, 0));
                }
                return self.deliver_pending(depth);
            }
            if strict {
                self.blocked_halt()?;
                continue;
            }
            // Blocks in the kernel: the VMM's run_until reaches its deadline.
            self.c(|c| c.halted = true);
            self.events
                .send(CpuEvent::Halted)
                .map_err(|_| Halt::Stop(Stop::Gone))?;
            self.resume.recv().map_err(|_| Halt::Stop(Stop::Gone))?;
            self.c(|c| c.halted = false);
        }
    }

    /// Strict: under HV_VM_ACCEL_APIC an idle HLT stays in the kernel with
    /// no exit (issue 18) and, the safe assumption, no deadline ends it:
    /// only `hv_vcpu_interrupt` does. The activity state reads HLT meanwhile.
    fn blocked_halt(&mut self) -> Result<(), Halt> {
        let limit = {
            let mut s = self.s();
            s.cpus[self.id]
                .vmcs
                .insert(hv::VMCS_GUEST_ACTIVITY_STATE, 1);
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
            Some(false) => Err(Halt::Stop(self.fault(format!(
                "vCPU {} blocked in HLT for {limit:?} and nothing called hv_vcpu_interrupt (on a Mac: forever)",
                self.id
            )))),
        }
    }

    fn deliver_pending(&mut self, depth: usize) -> Result<(), Halt> {
        loop {
            let pending = self.s().system.pending(self.id);
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
        let (vector, saved_if) = self.s().system.take(self.id, interrupt);
        let op = self.ram32(CUR_OP);
        self.log(&[record::DELIVER, op, vector as u32, 0])?;
        let count_at = self.block + PCPU_COUNTS + 4 * vector as u64;
        let n = self.ram32(count_at) + 1;
        self.s().put32(count_at, n);
        let body = self.body(vector, n);
        let mut at = body;
        while self.ram32(at) != kind::END {
            self.op(at, depth + 1)?;
            at += 16;
        }
        self.s().system.iret(self.id, saved_if);
        Ok(())
    }

    /// This CPU's `V#N` body for the n-th delivery, else its plain one.
    fn body(&self, vector: u8, n: u32) -> u64 {
        let mut at = self.block + PCPU_NTH_TABLE;
        loop {
            let v = self.ram32(at);
            if v == u32::MAX {
                break;
            }
            if v == vector as u32 && self.ram32(at + 4) == n {
                return self.s().get64(at + 8);
            }
            at += 16;
        }
        self.s()
            .get64(self.block + PCPU_BODY_DIR + 8 * vector as u64)
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
