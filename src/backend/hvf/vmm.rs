//! The Hypervisor.framework VMM loop, following the seed report's steps and
//! the three VMMs that run on HVF's in-kernel APIC (pmj's QEMU
//! `target/i386/hvf`, OrbStack `src/hvf/src/x86_64/`, uhyve
//! `src/macos/x86_64/vcpu.rs`):
//!
//! - bring-up: the VMX controls from the capability MSRs (`cap2ctrl`), the
//!   CR0/CR4 guest/host masks and read shadows, all eight segments (TR and
//!   LDTR included) for a direct long-mode entry;
//! - start-up probes: the in-kernel IOAPIC's version and pin count (its
//!   version register), and whether x2APIC works (a one-op guest switches
//!   to it and the MSR is read back);
//! - every scenario: the vCPU's activity and interruptibility states and
//!   event injection reset; `hv_vcpu_run_until(HV_DEADLINE_FOREVER)` with a
//!   watchdog thread calling `hv_vcpu_interrupt`; a hang is the stub's op
//!   and delivery counters standing still across kicks; host IRQ and SMI
//!   exits resumed; RDMSR answered; IA32_APIC_BASE as pmj's QEMU handles it;
//! - `hv_vcpu_exit_info` after every exit, APIC MMIO forwarded to
//!   `hv_vcpu_apic_read`/`write` (with the `no_side_effect` follow-up),
//!   IOAPIC MMIO to `hv_vm_ioapic_read`/`write`, lines with
//!   assert/deassert/pulse, MSIs with `hv_vm_lapic_msi`. In the split shape
//!   the model's IOAPIC lives here, learns EOIs from
//!   `HV_VM_EXITINFO_IOAPIC_EOI`, and sends with `hv_vm_send_ioapic_intr`;
//! - teardown: `hv_vcpu_destroy`, then `hv_vm_destroy`, failures logged.
//!
//! MMIO instructions are decoded with iced-x86. Several vCPUs: [`smp`].

mod smp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypervisor_framework_sys as hv;
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};

use super::api::reason::{VMX_REASON_IO_SMI, VMX_REASON_OTHER_SMI};
use super::api::{cap, cap2ctrl, event, vmcs, ApicException, Hv, HvError, HvExt, Interrupter};
use crate::backend::run::{self, CallLog, End, MessagePort, Shape, UserspaceIoapic};
use crate::backend::{BackendError, Result};
use crate::guest::layout::{
    self, EndCode, AP_START_PORT, CUR_OP, DELIVERIES, END_PORT, HYPERCALL_PORT, IDLE_PORT,
    IOAPIC_BASE, LAPIC_BASE, PING_PORT, RAM_SIZE,
};
use crate::guest::{table, Image};
use crate::model::ioapic::{bits, InterruptMessage, IOREGSEL, IOWIN, PINS, REG_REDTBL};
use crate::model::lapic::{reg, LVT_MASKED, SVR_ENABLE};
use crate::scenario::{ApicMode, HostOp, IoapicVersion, Op, Scenario};
use crate::trace::{Outcome, Trace};

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
/// How often the watchdog calls `hv_vcpu_interrupt` while a scenario runs:
/// with `HV_VM_ACCEL_APIC` an idle HLT stays in the kernel, so without it a
/// hung guest would never give the loop back.
const KICK: Duration = Duration::from_millis(2);
/// A hang: this many host-side exits in a row with no guest exit between
/// them and the stub's op and delivery counters unchanged, spread over at
/// least [`HANG_AFTER`].
const QUIET_EXITS: u32 = 3;
const HANG_AFTER: Duration = Duration::from_millis(4);

/// VMX control bits the loop asks for (SDM vol. 3C 24.6-24.8).
const ACTIVATE_SECONDARY: u64 = 1 << 31;
const VIRTUALIZE_APIC_ACCESSES: u64 = 1 << 0;
const HOST_ADDRESS_SPACE_SIZE: u64 = 1 << 9;
const IA32E_MODE_GUEST: u64 = 1 << 9;

/// The guest's control registers: CR0 PG WP NE ET MP PE, CR4 VMXE PAE,
/// EFER LMA LME (SDM vol. 3A 2.5, 9.8.5).
const GUEST_CR0: u64 = 0x8005_0033;
const GUEST_CR4: u64 = 0x2020;
const GUEST_EFER: u64 = 0x500;
/// CR4.VMXE: owned by the host, hidden from the guest by the read shadow.
const CR4_VMXE: u64 = 1 << 13;

/// IA32_APIC_BASE (SDM vol. 3A 11.4.4): BSP, EXTD, EN and the base field.
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;
/// The base field, bits 12 up to MAXPHYADDR - 1. The guest's MAXPHYADDR is
/// the host's under Hypervisor.framework (CPUID 0x80000008 is passed
/// through): 39 on the Kaby Lake the double models (unverified per Mac);
/// the stub writes 32-bit values only, so no scenario reaches the top bits.
const APIC_BASE_ADDRESS: u64 = ((1 << 39) - 1) & !0xfff;
/// The MSRs "architecturally reserved and dedicated for accessing APIC
/// registers in x2APIC mode" (SDM §11.12.1.2).
const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0xbff;

/// What the in-kernel IOAPIC says it is (its version register, 82093AA
/// §3.2.2: version in bits 7:0, the highest entry in 23:16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoapicIdentity {
    pub version: IoapicVersion,
    pub pins: u32,
}

/// The most CPUs a scenario runs on here: the format's limit, and the
/// double's (`double::MAX_VCPUS`); the framework's own is
/// `hv_capability(HV_CAP_VCPUMAX)`, unknown here.
pub const MAX_CPUS: usize = crate::scenario::MAX_CPUS;

/// The `hvf` / `hvf-split` backend over any [`Hv`].
pub struct HvfVmm<H: Hv + HvExt + Send> {
    hv: H,
    name: String,
    /// The shape the backend was opened with (`hvf-split`: always split).
    opened: Shape,
    workarounds: Workarounds,
    image: Image,
    ram: PageAligned,
    vcpu: u32,
    /// Whether the vCPU and the VM still exist (teardown).
    alive: bool,
    watchdog: Option<Watchdog>,
    /// The in-kernel IOAPIC, as its version register reads at start-up.
    identity: IoapicIdentity,
    /// Why x2APIC is taken as unavailable (`Ok`: the start-up probe passed).
    x2apic: std::result::Result<(), String>,
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
    /// IA32_APIC_BASE as the guest sees it (pmj's QEMU: `s->apicbase`).
    apic_base: u64,
    // Several CPUs (`smp`). `vcpu`, `apic_window` and `apic_base` are the
    // selected CPU's; `views` keeps every CPU's while another runs.
    /// CPUs 1 and up: the threads that own their vCPUs.
    aps: Vec<smp::ApThread>,
    views: Vec<smp::CpuView>,
    /// The CPU selected now.
    current: usize,
    /// A multi-CPU run in progress.
    smp: Option<smp::SmpRun>,
    /// The calls made, in order (for reports).
    pub calls: CallLog,
}

impl<H: Hv + HvExt + Send> HvfVmm<H> {
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
        let mut vmm = HvfVmm {
            hv,
            name: name.to_string(),
            opened,
            workarounds,
            image,
            ram,
            vcpu,
            alive: true,
            watchdog: None,
            identity: IoapicIdentity {
                version: IoapicVersion::V20,
                pins: PINS as u32,
            },
            x2apic: Err("not probed yet".into()),
            shape: opened,
            ioapic: UserspaceIoapic::default(),
            select: 0,
            entry_low: [MASKED_ENTRY; PINS],
            asserted: 0,
            apic_window: LAPIC_BASE,
            apic_base: LAPIC_BASE | APIC_BASE_EN | APIC_BASE_BSP,
            aps: Vec::new(),
            views: vec![smp::CpuView::fresh()],
            current: 0,
            smp: None,
            calls: CallLog::default(),
        };
        // From here on, Drop tears the VM down in order.
        vmm.bring_up()?;
        let kick = vmm.hv.interrupter(vcpu)?;
        vmm.watchdog = Some(Watchdog::start(kick));
        vmm.identity = vmm.probe_ioapic()?;
        vmm.x2apic = vmm.probe_x2apic();
        Ok(vmm)
    }

    pub fn hv(&mut self) -> &mut H {
        &mut self.hv
    }

    /// The shape the backend was opened with.
    pub fn opened(&self) -> Shape {
        self.opened
    }

    /// The in-kernel IOAPIC's identity, read at start-up.
    pub fn ioapic_identity(&self) -> IoapicIdentity {
        self.identity
    }

    /// Why x2APIC is unavailable, if the start-up probe failed.
    pub fn x2apic_unavailable(&self) -> Option<&str> {
        self.x2apic.as_ref().err().map(String::as_str)
    }

    /// The VMCS of a direct long-mode entry, as QEMU, OrbStack and uhyve
    /// build theirs.
    fn bring_up(&mut self) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.hv.set_apic_address(v, LAPIC_BASE)?;
        // Controls from the capability MSRs (SDM 26.2.1.1-3: each must
        // respect its allowed-0 and allowed-1 settings).
        let mut caps = [0; 5];
        for (c, field) in caps.iter_mut().zip([
            cap::PINBASED,
            cap::PROCBASED,
            cap::PROCBASED2,
            cap::EXIT,
            cap::ENTRY,
        ]) {
            *c = self.hv.read_capability(field)?;
        }
        let [pin, proc, proc2, exit, entry] = caps;
        let controls = [
            (vmcs::VMCS_CTRL_PIN_BASED, cap2ctrl(pin, 0)),
            (
                vmcs::VMCS_CTRL_CPU_BASED,
                cap2ctrl(proc, ACTIVATE_SECONDARY),
            ),
            (
                vmcs::VMCS_CTRL_CPU_BASED2,
                cap2ctrl(proc2, VIRTUALIZE_APIC_ACCESSES),
            ),
            (
                vmcs::VMCS_CTRL_VMEXIT_CONTROLS,
                cap2ctrl(exit, HOST_ADDRESS_SPACE_SIZE),
            ),
            (
                vmcs::VMCS_CTRL_VMENTRY_CONTROLS,
                cap2ctrl(entry, IA32E_MODE_GUEST),
            ),
        ];
        for (field, value) in controls {
            self.hv.write_vmcs(v, field, value)?;
        }
        // CR0/CR4 against the fixed bits (SDM 26.3.1.1); the host owns the
        // fixed-to-1 bits (the masks), the guest reads CR4 without VMXE.
        let fixed = |hv: &mut H, f0, f1, value: u64| -> std::result::Result<(u64, u64), HvError> {
            let (f0, f1) = (hv.read_capability(f0)?, hv.read_capability(f1)?);
            Ok(((value | f0) & f1, f0))
        };
        let (cr0, cr0_mask) = fixed(&mut self.hv, cap::CR0_FIXED0, cap::CR0_FIXED1, GUEST_CR0)?;
        let (cr4, cr4_mask) = fixed(&mut self.hv, cap::CR4_FIXED0, cap::CR4_FIXED1, GUEST_CR4)?;
        for (field, value) in [
            (vmcs::VMCS_CTRL_CR0_MASK, cr0_mask),
            (vmcs::VMCS_CTRL_CR0_SHADOW, cr0),
            (vmcs::VMCS_CTRL_CR4_MASK, cr4_mask),
            (vmcs::VMCS_CTRL_CR4_SHADOW, cr4 & !CR4_VMXE),
            (vmcs::VMCS_GUEST_CR0, cr0),
            (vmcs::VMCS_GUEST_CR3, layout::PML4),
            (vmcs::VMCS_GUEST_CR4, cr4),
            (vmcs::VMCS_GUEST_IA32_EFER, GUEST_EFER),
        ] {
            self.hv.write_vmcs(v, field, value)?;
        }
        long_mode_segments(&mut self.hv, v)
    }

    /// The in-kernel IOAPIC's version register (82093AA §3.2.2), through
    /// `hv_vm_ioapic_read`: which IOAPIC the full shape's model must be.
    fn probe_ioapic(&mut self) -> Result<IoapicIdentity> {
        self.hv.ioapic_write(IOAPIC_BASE + IOREGSEL, 1)?;
        let value = self.hv.ioapic_read(IOAPIC_BASE + IOWIN)?;
        let version = match value & 0xff {
            0x11 => IoapicVersion::V11,
            0x20 => IoapicVersion::V20,
            other => {
                return Err(BackendError::Unsupported(format!(
                    "the in-kernel IOAPIC reports version {other:#x} (register {value:#x}); the model has 0x11 and 0x20"
                )))
            }
        };
        Ok(IoapicIdentity {
            version,
            pins: ((value >> 16) & 0xff) + 1,
        })
    }

    /// A one-op guest that switches to x2APIC: x2APIC works if the run
    /// completes and IA32_APIC_BASE reads back with EXTD set.
    fn probe_x2apic(&mut self) -> std::result::Result<(), String> {
        let probe = crate::scenario::parse("config apic=x2apic\nnop\n").expect("a valid probe");
        self.x2apic = Ok(());
        let trace = self.run_scenario(&probe).map_err(|e| e.to_string())?;
        match trace.outcome {
            Outcome::Completed => Ok(()),
            _ => Err(trace
                .error
                .unwrap_or_else(|| format!("the probe guest ended in {:?}", trace.outcome))),
        }
    }

    fn split(&self) -> bool {
        self.shape.is_split()
    }

    /// Why this VMM cannot run `scenario` as written (the backend's
    /// `unsupported`): x2APIC before the probe showed it works, and on the
    /// full shape an IOAPIC other than the in-kernel one.
    /// [`HvExt::lapic_timer_unsupported`] of the framework under this VMM.
    pub fn lapic_timer_unsupported(&self) -> Option<&'static str> {
        self.hv.lapic_timer_unsupported()
    }

    pub fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        // ---- PIC (issue 15): the framework's ATPIC is not driven yet.
        if scenario.uses_pic() {
            return Some(
                "the HVF backends do not drive the framework's 8259 pair (hv_vm_atpic_*) yet: pic-write, pic-read and isa- ops are refused".into(),
            );
        }
        let uses_x2apic = scenario.config.apic == ApicMode::X2apic
            || scenario
                .all_ops()
                .any(|op| matches!(op, Op::ApicBase(v) if *v as u64 & APIC_BASE_EXTD != 0));
        if let (true, Err(why)) = (uses_x2apic, &self.x2apic) {
            return Some(format!(
                "x2APIC is taken as unavailable on this Hypervisor.framework: the start-up probe (a guest switching to x2APIC) failed: {why}"
            ));
        }
        if !scenario.config.default_apic_ids() {
            return Some(
                "the in-kernel APIC's ID is the vCPU ID (bhyve's vlapic, which it follows, keeps the ID register read-only): apic-ids other than the CPU indexes cannot be given".into(),
            );
        }
        if Shape::for_run(self.opened, scenario) == Shape::Split {
            return None;
        }
        let id = self.identity;
        let version_dependent = scenario
            .all_ops()
            .any(|op| matches!(op, Op::IoapicEoi(_) | Op::IoapicRead(1)));
        if version_dependent && scenario.config.ioapic != id.version {
            return Some(format!(
                "the in-kernel IOAPIC is version {:#x} ({} pins) and this scenario depends on version {:#x} (ioapic-eoi or ioapic-read 1): use irqchip=split or ioapic={:#x}",
                version_value(id.version), id.pins, version_value(scenario.config.ioapic), version_value(id.version)
            ));
        }
        let reads_version = scenario.all_ops().any(|op| matches!(op, Op::IoapicRead(1)));
        if reads_version && id.pins != PINS as u32 {
            return Some(format!(
                "the in-kernel IOAPIC has {} pins and the model {PINS}: its version register (ioapic-read 1) differs; use irqchip=split",
                id.pins
            ));
        }
        None
    }

    /// A generated scenario gets what this VMM offers: the in-kernel
    /// IOAPIC's version on the full shape, xAPIC while x2APIC is
    /// unavailable, the CPU indexes as APIC IDs.
    pub fn fit(&self, scenario: &mut Scenario) {
        crate::scenario::generate::drop_pic_ops(scenario);
        if Shape::for_run(self.opened, scenario) == Shape::Full {
            scenario.config.ioapic = self.identity.version;
        }
        // The in-kernel APIC's ID is the vCPU ID (`unsupported`).
        scenario.config.apic_ids = crate::scenario::INDEX_APIC_IDS;
        if self.x2apic.is_err() {
            scenario.config.apic = ApicMode::Xapic;
            let ops = scenario
                .ops
                .iter_mut()
                .chain(scenario.handlers.values_mut().flatten());
            for op in ops {
                if let Op::ApicBase(v) = op {
                    *v &= !(APIC_BASE_EXTD as u32);
                }
            }
        }
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
        // pmj's QEMU (hvf_apic_do_reset): the APIC base as the kernel has it.
        self.apic_base = self.hv.read_msr(v, IA32_APIC_BASE)?;
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
        // The vCPU's own state from the last run: active, no STI or MOV SS
        // blocking, no event left to inject (SDM 24.4.2, 24.8.3).
        for field in [
            vmcs::VMCS_GUEST_ACTIVITY_STATE,
            vmcs::VMCS_GUEST_INTERRUPTIBILITY,
            vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO,
        ] {
            self.hv.write_vmcs(v, field, 0)?;
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
        // The RAM outlives the run: a multi-CPU run before this one left
        // the global SMP word set (`Image::load_smp` sets it again for one).
        let smp = layout::SMP as usize;
        self.ram[smp..smp + 4].copy_from_slice(&0u32.to_le_bytes());
        self.calls.clear();
        Ok(())
    }

    /// Runs one scenario.
    pub fn run_scenario(&mut self, scenario: &Scenario) -> Result<Trace> {
        let table =
            table::encode(scenario).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        if scenario.uses_smp() {
            return self.run_smp(scenario, &table);
        }
        // One CPU: no AP's APIC may be on the bus (a broadcast would reach it).
        self.select(0);
        self.set_cpus(1)?;
        self.reset(scenario, &table)?;
        let watchdog = self.watchdog.as_ref().expect("started in new");
        watchdog.arm(true);
        let end = self.run_loop(&table);
        let watchdog = self.watchdog.as_ref().expect("started in new");
        watchdog.arm(false);
        let end = match (end, watchdog.failure()) {
            (_, Some(e)) => End::Error(format!("the watchdog's {e}")),
            (Ok(end), None) => end,
            (Err(e), None) => End::Error(e.to_string()),
        };
        run::finish(&self.name, end, &self.image, &self.ram)
    }

    fn ram32(&self, at: u64) -> u32 {
        let at = at as usize;
        u32::from_le_bytes(self.ram[at..at + 4].try_into().expect("4 bytes"))
    }

    fn run_loop(&mut self, table: &table::Table) -> std::result::Result<End, HvError> {
        let v = self.vcpu;
        let started = Instant::now();
        let mut quiet = Quiet::default();
        loop {
            if started.elapsed() > RUN_LIMIT {
                return Ok(End::Error(format!(
                    "the guest did not finish within {RUN_LIMIT:?}"
                )));
            }
            // Returns on a VM exit or a watchdog kick: a blocked HLT never
            // reaches a deadline (OrbStack and QEMU run without one).
            self.hv.run_forever(v)?;
            // Seed step 2: the exit info first, after every exit.
            let info = self.hv.exit_info(v)?;
            self.calls
                .note(|| format!("hv_vcpu_run_until(FOREVER) -> hv_vcpu_exit_info = {info}"));
            let host_side = match info {
                hv::HV_VM_EXITINFO_SMI => true,
                hv::HV_VM_EXITINFO_VMX => {
                    let reason = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_REASON)? as u32;
                    matches!(
                        reason,
                        hv::VMX_REASON_IRQ | VMX_REASON_IO_SMI | VMX_REASON_OTHER_SMI
                    )
                }
                _ => false,
            };
            if host_side {
                // OrbStack resumes on these without touching RIP; a hang is
                // the stub standing still across them.
                let progress = (self.ram32(CUR_OP), self.ram32(DELIVERIES));
                if quiet.still(progress, Instant::now()) {
                    return Ok(End::Hang);
                }
                continue;
            }
            quiet = Quiet::default();
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
                    // SDM §11.4.3: a globally disabled APIC has no
                    // registers; its page reads 0 (the model's reading), and
                    // the in-kernel APIC, never told of the disable, is not
                    // asked.
                    let value = if self.apic_base & APIC_BASE_EN == 0 {
                        0
                    } else {
                        self.hv.exit_apic_access_read(v)?
                    };
                    self.complete_read(&access, value, rip)?;
                }
                hv::HV_VM_EXITINFO_IOAPIC_EOI => {
                    let vector = self.hv.exit_ioapic_eoi(v)?;
                    self.userspace_eoi(vector)?;
                }
                hv::HV_VM_EXITINFO_INJECT_EXCP => self.apic_exception(None)?,
                // An INIT or STARTUP IPI the in-kernel APIC sent for this
                // vCPU (an x2APIC ICR write, handled in the kernel).
                hv::HV_VM_EXITINFO_INIT_AP | hv::HV_VM_EXITINFO_STARTUP_AP => {
                    if let Some(end) = self.ap_exit(info)? {
                        return Ok(end);
                    }
                }
                other => return Ok(End::Error(format!("unexpected exit info {other}"))),
            }
        }
    }

    /// Whether the guest's WRMSR of IA32_APIC_BASE with `value` raises #GP
    /// (SDM §11.4.4, §11.12.5, the model's `Lapic::write_apic_base`):
    /// reserved bits 7:0, 9 and those above MAXPHYADDR; a transition other
    /// than 0 -> EN, EN -> 0, EN -> EN|EXTD, EN|EXTD -> 0 or none (EXTD
    /// without EN, x2APIC back to xAPIC, disabled straight to x2APIC).
    fn apic_base_write_faults(&self, value: u64) -> bool {
        let flags = |x: u64| x & (APIC_BASE_EN | APIC_BASE_EXTD);
        let (old, new) = (flags(self.apic_base), flags(value));
        let allowed = new == 0
            || new == old
            || (old == 0 && new == APIC_BASE_EN)
            || (old == APIC_BASE_EN && new == APIC_BASE_EN | APIC_BASE_EXTD);
        let reserved = !(APIC_BASE_ADDRESS | APIC_BASE_EN | APIC_BASE_EXTD | APIC_BASE_BSP);
        !allowed || value & reserved != 0
    }

    /// Whether the guest's RDMSR or WRMSR of `msr` raises #GP before any
    /// register is reached: an x2APIC MSR (0x800-0xBFF) while the APIC is
    /// not in x2APIC mode (SDM §11.12.1.2; KVM `kvm_x2apic_msr_read`/`write`
    /// answer 1, which is #GP). In x2APIC mode the in-kernel APIC handles
    /// these MSRs itself and reports its own faults as
    /// `HV_VM_EXITINFO_INJECT_EXCP`.
    fn x2apic_msr_faults(&self, msr: u32) -> bool {
        X2APIC_MSRS.contains(&msr) && self.apic_base & APIC_BASE_EXTD == 0
    }

    /// Delivers `e` to the guest at the next VM entry (SDM vol. 3C §26.6,
    /// event injection): the VM-entry interruption-information field, type
    /// hardware exception, with the error code when the exception pushes
    /// one (§26.2.1.3); RIP stays on the faulting instruction when the
    /// exception restarts it, as a fault does (SDM vol. 3A §6.5), else moves
    /// past it (`len` bytes; `None`: the exit's instruction length).
    fn inject(&mut self, e: ApicException, len: Option<u64>) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.calls.note(|| {
            format!(
                "  inject vector {} (error code {:?}, restart {})",
                e.vector, e.error_code, e.restart
            )
        });
        if let Some(code) = e.error_code {
            self.hv
                .write_vmcs(v, vmcs::VMCS_CTRL_VMENTRY_EXC_ERROR, code as u64)?;
        }
        let info = event::hardware_exception(e.vector, e.error_code.is_some());
        self.hv
            .write_vmcs(v, vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO, info)?;
        if !e.restart {
            let rip = self.hv.read_register(v, hv::HV_X86_RIP)?;
            let len = match len {
                Some(len) => len,
                None => self.hv.read_vmcs(v, hv::VMCS_RO_VMEXIT_INSTR_LEN)?,
            };
            self.hv.write_register(v, hv::HV_X86_RIP, rip + len)?;
        }
        Ok(())
    }

    /// The guest's valid WRMSR to IA32_APIC_BASE, as pmj's QEMU handles it
    /// (`hvf_apic_set_base`; the faulting ones are
    /// [`Self::apic_base_write_faults`]): the MMIO window moved with
    /// `hv_vmx_vcpu_set_apic_address` (never `hv_vcpu_write_msr`); the MSR
    /// read back, which must show the mode the guest asked for. A disable
    /// puts the in-kernel APIC back to its power-up state.
    fn write_apic_base(&mut self, value: u64) -> std::result::Result<Option<End>, HvError> {
        let v = self.vcpu;
        let flags = |x: u64| x & (APIC_BASE_EN | APIC_BASE_EXTD);
        let (old, new) = (flags(self.apic_base), flags(value));
        let base = value & APIC_BASE_ADDRESS;
        self.apic_base = base | new | (self.apic_base & APIC_BASE_BSP);
        if old != 0 && new == 0 {
            // SDM §11.4.3: a disabled APIC is at its power-up state; pmj's
            // QEMU only clears its own copy, here the in-kernel APIC is put
            // back to its state at creation so that it takes nothing more.
            self.hv.reset_apic(v)?;
            self.apic_window = LAPIC_BASE;
            self.calls
                .note(|| "  hv_vcpu_apic_put_state(the state at creation)".into());
        }
        // MMIO exists only with the APIC enabled in xAPIC mode. FB14021745:
        // the window moves first, whatever the guest enables with it.
        let mmio = new == APIC_BASE_EN;
        if mmio && base != self.apic_window {
            self.hv.set_apic_address(v, base)?;
            self.apic_window = base;
            self.calls
                .note(|| format!("  hv_vmx_vcpu_set_apic_address({base:#x})"));
        }
        let readback = self.hv.read_msr(v, IA32_APIC_BASE)?;
        self.calls.note(|| {
            format!("  IA32_APIC_BASE {value:#x} -> hv_vcpu_read_msr(0x1b) = {readback:#x}")
        });
        if new != 0 && readback & APIC_BASE_EXTD != new & APIC_BASE_EXTD {
            return Ok(Some(End::Error(format!(
                "the in-kernel APIC did not take the mode of IA32_APIC_BASE {value:#x}: it reads back {readback:#x}"
            ))));
        }
        if mmio && readback & APIC_BASE_ADDRESS != base {
            return Ok(Some(End::Error(format!(
                "the in-kernel APIC's window is not at {base:#x}: IA32_APIC_BASE reads back {readback:#x}"
            ))));
        }
        Ok(None)
    }

    /// The guest's RDMSR: IA32_APIC_BASE from the VMM's view (pmj's QEMU:
    /// `cpu_get_apic_base`), any other MSR from the framework.
    fn read_msr_exit(&mut self, msr: u32) -> std::result::Result<u64, HvError> {
        if msr == IA32_APIC_BASE {
            return Ok(self.apic_base);
        }
        self.hv.read_msr(self.vcpu, msr)
    }
    /// `HV_VM_EXITINFO_INJECT_EXCP`: the in-kernel APIC refused the guest's
    /// access (an x2APIC register rule, SDM §11.12.1.2-3) and hands the
    /// exception back, to be delivered as the processor would.
    /// `len`: the faulting instruction's length, `None` for the exit's.
    fn apic_exception(&mut self, len: Option<u64>) -> std::result::Result<(), HvError> {
        let e = self.hv.exit_inject_excp(self.vcpu)?;
        self.calls
            .note(|| format!("  hv_vcpu_exit_inject_excp -> {e:?}"));
        self.inject(e, len)
    }

    fn vmx_exit(&mut self, table: &table::Table) -> std::result::Result<Option<End>, HvError> {
        let v = self.vcpu;
        let full_reason = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_REASON)?;
        let reason = full_reason as u32 & 0xffff;
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
                    // Several CPUs: the CPU is idle in its mailbox loop
                    // (docs/guest-stub.md): its step ends.
                    IDLE_PORT if self.smp.is_some() => {
                        if let Some(run) = &mut self.smp {
                            run.idle = true;
                        }
                        return Ok(Some(End::Stub(EndCode::Completed)));
                    }
                    // The SIPI page's `out`: the loop starts a STARTUP
                    // IPI's targets at sipi_entry itself, never there.
                    AP_START_PORT => {
                        return Ok(Some(End::Error(
                            "an out to the SIPI page's port 0x513: the VMM starts APs at sipi_entry on STARTUP_AP".into(),
                        )))
                    }
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
                if self.apic_base & APIC_BASE_EN == 0 {
                    // SDM §11.4.3: a globally disabled APIC has no
                    // registers, so the write reaches nothing (no ICR, no
                    // SVR). No call tells the in-kernel APIC of the disable,
                    // so the VMM drops the write itself.
                    self.calls.note(|| {
                        format!(
                            "  APIC write {offset:#x} = {value:#x} dropped: the APIC is disabled"
                        )
                    });
                    self.hv
                        .write_register(v, hv::HV_X86_RIP, rip + access.len)?;
                    return Ok(None);
                }
                let no_side_effect = self.hv.apic_write(v, offset, value)?;
                self.calls.note(|| format!("  hv_vcpu_apic_write({offset:#x}, {value:#x}) -> no_side_effect {no_side_effect}"));
                self.hv
                    .write_register(v, hv::HV_X86_RIP, rip + access.len)?;
                // Seed step 3: a write with side effects: the exit info says which.
                let side_effect = if no_side_effect {
                    None
                } else {
                    Some(self.hv.exit_info(v)?)
                };
                if side_effect == Some(hv::HV_VM_EXITINFO_IOAPIC_EOI) {
                    let vector = self.hv.exit_ioapic_eoi(v)?;
                    self.userspace_eoi(vector)?;
                } else if matches!(
                    side_effect,
                    Some(hv::HV_VM_EXITINFO_INIT_AP | hv::HV_VM_EXITINFO_STARTUP_AP)
                ) {
                    if let Some(end) = self.ap_exit(side_effect.expect("matched"))? {
                        return Ok(Some(end));
                    }
                } else if side_effect == Some(hv::HV_VM_EXITINFO_INJECT_EXCP) {
                    // The write faulted: back to the instruction, whose
                    // fault the exception's restart flag decides.
                    self.hv.write_register(v, hv::HV_X86_RIP, rip)?;
                    self.apic_exception(Some(access.len))?;
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
                let faults = self.x2apic_msr_faults(msr)
                    || (msr == IA32_APIC_BASE && self.apic_base_write_faults(value));
                if faults {
                    // The stub's #GP handler logs the fault and skips the
                    // WRMSR (docs/guest-stub.md): RIP stays on it.
                    self.calls.note(|| {
                        format!(
                            "  WRMSR {msr:#x} {value:#x} (from {:#x}): #GP",
                            self.apic_base
                        )
                    });
                    self.inject(ApicException::GP, None)?;
                    return Ok(None);
                }
                if msr != IA32_APIC_BASE {
                    return Ok(Some(End::Error(format!(
                        "the guest wrote MSR {msr:#x}, which the stub never does"
                    ))));
                }
                if let Some(end) = self.write_apic_base(value)? {
                    return Ok(Some(end));
                }
                let len = self.hv.read_vmcs(v, hv::VMCS_RO_VMEXIT_INSTR_LEN)?;
                self.hv.write_register(v, hv::HV_X86_RIP, rip + len)?;
            }
            hv::VMX_REASON_RDMSR => {
                let msr = self.hv.read_register(v, hv::HV_X86_RCX)? as u32;
                if self.x2apic_msr_faults(msr) {
                    self.calls.note(|| format!("  RDMSR {msr:#x}: #GP"));
                    self.inject(ApicException::GP, None)?;
                    return Ok(None);
                }
                let value = self.read_msr_exit(msr)?;
                self.calls
                    .note(|| format!("  RDMSR {msr:#x} -> {value:#x}"));
                self.hv
                    .write_register(v, hv::HV_X86_RAX, value & 0xffff_ffff)?;
                self.hv.write_register(v, hv::HV_X86_RDX, value >> 32)?;
                let len = self.hv.read_vmcs(v, hv::VMCS_RO_VMEXIT_INSTR_LEN)?;
                self.hv.write_register(v, hv::HV_X86_RIP, rip + len)?;
            }
            // HLT exiting is off (the in-kernel APIC wakes the vCPU); should
            // the framework set it anyway, an HLT exit is a halted guest.
            hv::VMX_REASON_HLT => return Ok(Some(End::Hang)),
            hv::VMX_REASON_TRIPLE_FAULT => {
                return Ok(Some(End::Error("the guest triple-faulted".into())))
            }
            hv::VMX_REASON_VMENTRY_GUEST => {
                // SDM 26.7: a VM-entry failure (bit 31) due to invalid guest
                // state; the bring-up is wrong, not the irqchip.
                let qual = self.hv.read_vmcs(v, hv::VMCS_RO_EXIT_QUALIFIC)?;
                return Ok(Some(End::Error(format!(
                    "VM entry failed: invalid guest state (exit reason {full_reason:#x}, qualification {qual:#x})"
                ))));
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
            // Refused by `unsupported` (no ATPIC path yet).
            HostOp::IsaAssert(_) | HostOp::IsaDeassert(_) | HostOp::IsaPulse(_) => Err(HvError {
                call: "hv_vm_atpic_assert_irq (not driven by this backend)",
                code: -1,
            }),
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

/// The scenario format's IOAPIC version as the version register has it.
fn version_value(version: IoapicVersion) -> u32 {
    match version {
        IoapicVersion::V11 => 0x11,
        IoapicVersion::V20 => 0x20,
    }
}

/// The eight segments of a direct 64-bit entry (SDM 26.3.1.2): flat code and
/// data (G = 1 with limit 0xFFFFFFFF, so limit[11:0] are all ones), FS and
/// GS like data, LDTR unusable, TR a busy 64-bit TSS; and GDTR/IDTR.
fn long_mode_segments<H: Hv>(hv: &mut H, v: u32) -> std::result::Result<(), HvError> {
    let code = layout::CODE_SELECTOR as u64;
    let data = layout::DATA_SELECTOR as u64;
    const FLAT: u64 = 0xffff_ffff;
    const DATA_AR: u64 = 0xc093; // present, read/write accessed, D/B, G
    const CODE_AR: u64 = 0xa09b; // present, execute/read accessed, L, G
    const UNUSABLE: u64 = 1 << 16;
    const BUSY_TSS_AR: u64 = 0x8b; // present, type 11
                                   // (selector, limit, access rights) in the order ES CS SS DS FS GS LDTR TR.
    let segments = [
        (data, FLAT, DATA_AR),
        (code, FLAT, CODE_AR),
        (data, FLAT, DATA_AR),
        (data, FLAT, DATA_AR),
        (data, FLAT, DATA_AR),
        (data, FLAT, DATA_AR),
        (0, 0, UNUSABLE),
        (0, 0x67, BUSY_TSS_AR),
    ];
    for (index, (selector, limit, ar)) in (0u32..).zip(segments) {
        let (sel_field, limit_field, ar_field, base_field) = vmcs::segment(index);
        hv.write_vmcs(v, sel_field, selector)?;
        hv.write_vmcs(v, limit_field, limit)?;
        hv.write_vmcs(v, ar_field, ar)?;
        hv.write_vmcs(v, base_field, 0)?;
    }
    hv.write_vmcs(v, vmcs::VMCS_GUEST_GDTR_BASE, layout::GDT)?;
    hv.write_vmcs(v, vmcs::VMCS_GUEST_GDTR_LIMIT, 23)?;
    hv.write_vmcs(v, vmcs::VMCS_GUEST_IDTR_BASE, layout::IDT)?;
    hv.write_vmcs(v, vmcs::VMCS_GUEST_IDTR_LIMIT, 256 * 16 - 1)
}

/// Host-side exits in a row without guest progress: the hang judgement.
#[derive(Default)]
struct Quiet {
    /// The stub's (op, deliveries) counters at the first of them.
    at: Option<((u32, u32), Instant)>,
    exits: u32,
}

impl Quiet {
    /// One more host-side exit, at `now`, with the counters at
    /// `progress`; true when the guest has stood still long enough to be
    /// hung.
    fn still(&mut self, progress: (u32, u32), now: Instant) -> bool {
        match self.at {
            Some((seen, since)) if seen == progress => {
                self.exits += 1;
                self.exits >= QUIET_EXITS && now.duration_since(since) >= HANG_AFTER
            }
            _ => {
                self.at = Some((progress, now));
                self.exits = 1;
                false
            }
        }
    }
}

/// The thread that calls `hv_vcpu_interrupt` every [`KICK`] while a
/// scenario runs (the one vCPU call allowed from another thread, hv.h), on
/// the vCPU that runs now (several CPUs run one at a time).
struct Watchdog {
    shared: Arc<WatchdogState>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WatchdogState {
    armed: AtomicBool,
    stop: AtomicBool,
    /// Each vCPU's `hv_vcpu_interrupt`, by CPU index.
    kicks: Mutex<Vec<Interrupter>>,
    /// The CPU that runs now.
    current: std::sync::atomic::AtomicUsize,
    /// The first `hv_vcpu_interrupt` that failed.
    failure: Mutex<Option<HvError>>,
}

impl Watchdog {
    fn start(kick: Interrupter) -> Watchdog {
        let shared = Arc::new(WatchdogState::default());
        shared.kicks.lock().unwrap().push(kick);
        let state = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            while !state.stop.load(Ordering::Acquire) {
                if state.armed.load(Ordering::Acquire) {
                    let cpu = state.current.load(Ordering::Acquire);
                    let kick = state.kicks.lock().unwrap().get(cpu).cloned();
                    if let Some(Err(e)) = kick.map(|kick| kick()) {
                        state.failure.lock().unwrap().get_or_insert(e);
                    }
                    std::thread::park_timeout(KICK);
                } else {
                    std::thread::park();
                }
            }
        });
        Watchdog {
            shared,
            thread: Some(thread),
        }
    }

    fn arm(&self, armed: bool) {
        self.shared.armed.store(armed, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// CPU `cpu`'s `hv_vcpu_interrupt` (CPUs 1 and up, as their vCPUs come
    /// and go).
    fn set_kick(&self, cpu: usize, kick: Option<Interrupter>) {
        let mut kicks = self.shared.kicks.lock().unwrap();
        match kick {
            Some(kick) if cpu < kicks.len() => kicks[cpu] = kick,
            Some(kick) => kicks.push(kick),
            None => kicks.truncate(cpu),
        }
    }

    /// The watchdog kicks CPU `cpu` from now on.
    fn watch(&self, cpu: usize) {
        self.shared.current.store(cpu, Ordering::Release);
    }

    fn failure(&self) -> Option<HvError> {
        self.shared.failure.lock().unwrap().take()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl<H: Hv + HvExt + Send> Drop for HvfVmm<H> {
    /// `hv_vcpu_destroy` (on this, the owning thread) before
    /// `hv_vm_destroy`; a failure is logged, since Drop cannot return it.
    fn drop(&mut self) {
        if !self.alive {
            self.watchdog = None;
            return;
        }
        self.alive = false;
        self.destroy_aps();
        self.select(0);
        self.watchdog = None;
        if let Err(e) = self.hv.destroy_vcpu(self.vcpu) {
            eprintln!("irqdiff: {}: tearing the VM down: {e}", self.name);
        }
        if let Err(e) = self.hv.destroy_vm() {
            eprintln!("irqdiff: {}: tearing the VM down: {e}", self.name);
        }
    }
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

    #[test]
    fn a_hang_is_three_quiet_host_exits_over_the_hang_time() {
        let t0 = Instant::now();
        let later = t0 + HANG_AFTER;
        let mut quiet = Quiet::default();
        assert!(!quiet.still((2, 0), t0));
        assert!(!quiet.still((2, 0), t0));
        // Three in a row, but within HANG_AFTER of the first: not yet.
        assert!(!quiet.still((2, 0), t0));
        assert!(quiet.still((2, 0), later));
        // Progress (a delivery) starts the count again.
        assert!(!quiet.still((2, 1), later));
        assert!(!quiet.still((2, 1), later + HANG_AFTER));
        // Two exits are never enough, however long apart.
        let mut two = Quiet::default();
        assert!(!two.still((5, 0), t0));
        assert!(!two.still((5, 0), t0 + 10 * HANG_AFTER));
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
