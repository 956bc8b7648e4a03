//! Linux KVM: the guest stub on KVM's in-kernel irqchip (`kvm`), or on KVM's
//! local APIC with the model's IOAPIC in userspace (`kvm-split`,
//! `KVM_CAP_SPLIT_IRQCHIP`), the shape the seed report tried on HVF.
//!
//! One VM per backend instance, reused: every scenario starts from the
//! format's start state, restored with state writes (registers, segments,
//! `KVM_SET_LAPIC` from a clean state, `KVM_SET_IRQCHIP`, lines low).
//! A halted guest is found by a per-thread timer signal that kicks
//! `KVM_RUN` every [`KICK`]; two kicks in a row that find the vCPU halted
//! make a hang (re-entering once first, because this host's KVM was seen to
//! inject only at the next entry from userspace).

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_regs, kvm_segment,
    kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};

use super::{Availability, Backend, BackendError, Result};
use crate::guest::layout::{
    self, EndCode, END_PORT, HYPERCALL_PORT, IOAPIC_BASE, PING_PORT, RAM_SIZE,
};
use crate::guest::{log, table, Image};
use crate::model::ioapic::{
    InterruptMessage, InterruptSink, Ioapic, IoapicVersion as ModelVersion,
};
use crate::scenario::{IoapicVersion, Irqchip, Op, Scenario};
use crate::trace::{Outcome, Trace};

/// A single `KVM_RUN` that has not returned after this long is kicked to
/// look for a hang. The timer is re-armed before every entry, so it fires
/// only when the vCPU blocks (halted): a kick is an exit to userspace, and on
/// this host's KVM exits change when interrupts are injected, so kicks must
/// not land in a guest that is making progress.
pub const KICK: Duration = Duration::from_millis(3);
/// A scenario still running after this long is an error (a livelocked guest).
pub const RUN_LIMIT: Duration = Duration::from_secs(5);

/// Whether KVM can run the `kvm` (split = false) or `kvm-split` backend.
pub fn probe(split: bool) -> Availability {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) if e.errno() == libc::ENOENT => {
            return Availability::Unavailable("no /dev/kvm".into())
        }
        Err(e) if e.errno() == libc::EACCES => {
            return Availability::Unavailable(
                "no permission to open /dev/kvm (add yourself to the kvm group)".into(),
            )
        }
        Err(e) => return Availability::Unavailable(format!("cannot open /dev/kvm: {e}")),
    };
    let needed: &[(Cap, &str)] = if split {
        &[
            (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
            (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        ]
    } else {
        &[
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        ]
    };
    for (cap, name) in needed {
        if !kvm.check_extension(*cap) {
            return Availability::Unavailable(format!("{name} missing"));
        }
    }
    Availability::Available
}

/// Guest RAM: an anonymous private mapping.
struct GuestRam {
    ptr: *mut u8,
    len: usize,
}

impl GuestRam {
    fn new(len: usize) -> std::io::Result<GuestRam> {
        // SAFETY: an anonymous mapping with no address hint; the result is
        // checked before use and owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(GuestRam {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access from Rust;
        // the guest only runs inside KVM_RUN, which needs &mut self too.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory owned by one GuestRam.
unsafe impl Send for GuestRam {}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}

/// A per-thread timer that interrupts a `KVM_RUN` that blocks.
struct KickTimer {
    id: libc::timer_t,
}

impl KickTimer {
    fn new() -> std::io::Result<KickTimer> {
        static REGISTER: std::sync::Once = std::sync::Once::new();
        REGISTER.call_once(|| {
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
        });
        // SAFETY: zeroed sigevent is a valid starting value.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = kick_signal();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: event and id are valid for the call; the timer is deleted in Drop.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(KickTimer { id })
    }

    /// Arms a one-shot kick after `delay` (zero disarms).
    fn set(&self, delay: Duration) {
        let ts = libc::timespec {
            tv_sec: delay.as_secs() as _,
            tv_nsec: delay.subsec_nanos() as _,
        };
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: zero,
            it_value: ts,
        };
        // SAFETY: a timer this value owns; spec is valid for the call.
        unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for KickTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer this value created, once.
        unsafe { libc::timer_delete(self.id) };
    }
}

/// One VM with one vCPU, in one irqchip shape.
struct Vm {
    split: bool,
    vm: VmFd,
    vcpu: VcpuFd,
    ram: GuestRam,
    sregs: kvm_sregs,
    lapic: kvm_lapic_state,
    events: kvm_vcpu_events,
    /// Full irqchip: the clean PIC and IOAPIC states.
    irqchips: Vec<kvm_bindings::kvm_irqchip>,
    /// Split: the userspace IOAPIC and the routes KVM was last told.
    ioapic: Ioapic,
    routes: Vec<(u32, u32)>,
    /// Pins whose line is (logically) asserted, to lower at reset.
    asserted: u32,
    /// The calls and exits of the current run (bounded), for reports.
    calls: Vec<String>,
    /// The last run ended at the stub's end port in xAPIC mode: the
    /// segments, the APIC base, the 8259s and the MP state are as reset left
    /// them, so the next reset need not write them again.
    clean: bool,
}

fn errno(what: &str) -> impl Fn(kvm_ioctls::Error) -> BackendError + '_ {
    move |e| BackendError::Failed(format!("{what}: {e}"))
}

impl Vm {
    fn new(kvm: &Kvm, image: &Image, split: bool) -> Result<Vm> {
        let vm = kvm.create_vm().map_err(errno("KVM_CREATE_VM"))?;
        if split {
            let mut cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24;
            vm.enable_cap(&cap)
                .map_err(errno("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        } else {
            vm.create_irq_chip().map_err(errno("KVM_CREATE_IRQCHIP"))?;
        }
        let mut ram =
            GuestRam::new(RAM_SIZE).map_err(|e| BackendError::Failed(format!("guest RAM: {e}")))?;
        image.install(ram.bytes_mut());
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram.ptr as u64,
            flags: 0,
        };
        // SAFETY: the region is backed by `ram`, which lives as long as the VM
        // (both are fields of this Vm, and the VM fd is dropped first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(errno("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(errno("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(errno("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(errno("KVM_SET_CPUID2"))?;

        let mut sregs = vcpu.get_sregs().map_err(errno("KVM_GET_SREGS"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: layout::CODE_SELECTOR,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: layout::DATA_SELECTOR,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt.base = layout::GDT;
        sregs.gdt.limit = 3 * 8 - 1;
        sregs.idt.base = layout::IDT;
        sregs.idt.limit = 256 * 16 - 1;
        sregs.cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
        sregs.cr3 = layout::PML4;
        sregs.cr4 = 0x20; // PAE
        sregs.efer = 0x500; // LME | LMA
        sregs.cr8 = 0;
        // xAPIC, enabled, BSP (SDM §11.4.4); restoring it resets x2APIC mode.
        sregs.apic_base = layout::LAPIC_BASE | 0x900;
        vcpu.set_sregs(&sregs).map_err(errno("KVM_SET_SREGS"))?;

        // The clean LAPIC: software-enabled, TPR 0, LVTs masked, nothing pending.
        let mut lapic = vcpu.get_lapic().map_err(errno("KVM_GET_LAPIC"))?;
        let mut set = |offset: usize, value: u32| {
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[offset + i] = *b as _;
            }
        };
        set(0x80, 0);
        set(0xf0, 0x1ff);
        for lvt in [0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            set(lvt, 0x1_0000);
        }
        for base in [0x100, 0x180, 0x200] {
            for i in 0..8 {
                set(base + 0x10 * i, 0);
            }
        }
        set(0x280, 0);
        let events = vcpu
            .get_vcpu_events()
            .map_err(errno("KVM_GET_VCPU_EVENTS"))?;

        let mut irqchips = Vec::new();
        if !split {
            for chip in [
                KVM_IRQCHIP_PIC_MASTER,
                KVM_IRQCHIP_PIC_SLAVE,
                KVM_IRQCHIP_IOAPIC,
            ] {
                let mut state = kvm_bindings::kvm_irqchip {
                    chip_id: chip,
                    ..Default::default()
                };
                vm.get_irqchip(&mut state)
                    .map_err(errno("KVM_GET_IRQCHIP"))?;
                // SAFETY: the union member matching chip_id, as KVM filled it.
                unsafe {
                    if chip == KVM_IRQCHIP_IOAPIC {
                        let io = &mut state.chip.ioapic;
                        io.id = 0;
                        io.irr = 0;
                        io.ioregsel = 0;
                        for entry in io.redirtbl.iter_mut() {
                            entry.bits = 1 << 16; // masked, vector 0
                        }
                    } else {
                        let pic = &mut state.chip.pic;
                        pic.imr = 0xff;
                        pic.irr = 0;
                        pic.isr = 0;
                        pic.last_irr = 0;
                    }
                }
                irqchips.push(state);
            }
            // GSI n goes to IOAPIC pin n only: the PIC is not in the path.
            let entries: Vec<kvm_irq_routing_entry> = (0..24)
                .map(|pin| {
                    let mut e = kvm_irq_routing_entry {
                        gsi: pin,
                        type_: KVM_IRQ_ROUTING_IRQCHIP,
                        ..Default::default()
                    };
                    e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
                    e.u.irqchip.pin = pin;
                    e
                })
                .collect();
            let routing = KvmIrqRouting::from_entries(&entries)
                .map_err(|e| BackendError::Failed(format!("routing table: {e:?}")))?;
            vm.set_gsi_routing(&routing)
                .map_err(errno("KVM_SET_GSI_ROUTING"))?;
        }
        Ok(Vm {
            split,
            vm,
            vcpu,
            ram,
            sregs,
            lapic,
            events,
            irqchips,
            ioapic: Ioapic::new(ModelVersion::V20),
            routes: Vec::new(),
            asserted: 0,
            calls: Vec::new(),
            clean: false,
        })
    }

    /// Restores the format's start state and loads `table`.
    fn reset(&mut self, image: &Image, table: &table::Table, scenario: &Scenario) -> Result<()> {
        if self.split {
            self.ioapic = Ioapic::new(match scenario.config.ioapic {
                IoapicVersion::V11 => ModelVersion::V11,
                IoapicVersion::V20 => ModelVersion::V20,
            });
            self.sync_routes()?;
        } else {
            for pin in 0..24 {
                if self.asserted & (1 << pin) != 0 {
                    self.vm
                        .set_irq_line(pin, false)
                        .map_err(errno("KVM_IRQ_LINE"))?;
                }
            }
            // The 8259s are out of the GSI routing and only ever masked by
            // the stub: after a clean run only the IOAPIC needs restoring.
            let chips = if self.clean {
                &self.irqchips[2..]
            } else {
                &self.irqchips[..]
            };
            for chip in chips {
                self.vm
                    .set_irqchip(chip)
                    .map_err(errno("KVM_SET_IRQCHIP"))?;
            }
        }
        self.asserted = 0;
        self.calls.clear();
        if !self.clean {
            self.vcpu
                .set_sregs(&self.sregs)
                .map_err(errno("KVM_SET_SREGS"))?;
        }
        self.vcpu
            .set_lapic(&self.lapic)
            .map_err(errno("KVM_SET_LAPIC"))?;
        let regs = kvm_regs {
            rip: image.stub.entry,
            rsp: layout::STACK_TOP,
            rflags: 0x202,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(errno("KVM_SET_REGS"))?;
        self.vcpu
            .set_vcpu_events(&self.events)
            .map_err(errno("KVM_SET_VCPU_EVENTS"))?;
        if !self.clean {
            self.vcpu
                .set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(errno("KVM_SET_MP_STATE"))?;
        }
        self.clean = false;
        image.load(
            self.ram.bytes_mut(),
            table,
            scenario.config.apic == crate::scenario::ApicMode::X2apic,
        );
        Ok(())
    }

    /// Split irqchip: KVM learns which vectors are level-triggered IOAPIC
    /// vectors (and so exits on their EOI) only from the GSI routing table
    /// (`kvm_scan_ioapic_routes`), so it mirrors the IOAPIC's entries.
    fn sync_routes(&mut self) -> Result<()> {
        let routes: Vec<(u32, u32)> = (0..24)
            .map(|pin| {
                let e = self.ioapic.entry(pin);
                let (addr, data) = msi_of(&message_of(&e));
                (addr as u32, if e.masked() { 0 } else { data })
            })
            .collect();
        if routes == self.routes {
            return Ok(());
        }
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .enumerate()
            .map(|(pin, (addr, data))| {
                let mut e = kvm_irq_routing_entry {
                    gsi: pin as u32,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = *addr;
                e.u.msi.data = *data;
                e
            })
            .collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| BackendError::Failed(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(errno("KVM_SET_GSI_ROUTING"))?;
        self.routes = routes;
        Ok(())
    }
}

fn message_of(e: &crate::model::ioapic::RedirectionEntry) -> InterruptMessage {
    InterruptMessage {
        vector: e.vector(),
        delivery: e.delivery(),
        logical: e.logical(),
        dest: e.dest() as u32,
        level: e.level(),
        rule: crate::model::Rule::LevelDelivers,
    }
}

/// MSI address and data of an interrupt message (SDM §11.11).
fn msi_of(m: &InterruptMessage) -> (u64, u32) {
    (
        crate::model::msi::address(m.dest as u8, m.logical),
        crate::model::msi::data(m.vector, m.delivery, m.level),
    )
}

/// The split IOAPIC's message path: `KVM_SIGNAL_MSI`.
struct MsiSink<'a> {
    vm: &'a VmFd,
    failure: Option<String>,
    /// The calls made, for the run's call log.
    sent: Vec<String>,
}

impl InterruptSink for MsiSink<'_> {
    fn send(&mut self, msg: &InterruptMessage) -> bool {
        let (addr, data) = msi_of(msg);
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        let result = self.vm.signal_msi(msi);
        self.sent.push(format!(
            "KVM_SIGNAL_MSI address {addr:#x} data {data:#x} -> {result:?}"
        ));
        match result {
            Ok(delivered) => delivered > 0,
            Err(e) => {
                self.failure.get_or_insert(format!("KVM_SIGNAL_MSI: {e}"));
                false
            }
        }
    }
}

/// The `kvm` and `kvm-split` backends.
pub struct KvmBackend {
    name: &'static str,
    force_split: bool,
    kvm: Kvm,
    image: Image,
    full: Option<Vm>,
    split: Option<Vm>,
    timer: KickTimer,
    /// Exits (returns from KVM_RUN) in the last run.
    pub last_exits: u64,
    /// Whether the last run used the split VM.
    last_split: bool,
}

/// Most calls a run records for its report.
const CALL_LOG_LIMIT: usize = 400;

impl Vm {
    fn note(&mut self, call: String) {
        if self.calls.len() < CALL_LOG_LIMIT {
            self.calls.push(call);
        }
    }
}

impl KvmBackend {
    /// `split`: the `kvm-split` backend (always the split shape); otherwise
    /// the scenario's `irqchip=` decides.
    pub fn open(split: bool) -> std::result::Result<KvmBackend, super::OpenError> {
        let name = if split { "kvm-split" } else { "kvm" };
        if let Availability::Unavailable(why) = probe(split) {
            return Err(super::OpenError::Unavailable {
                name: name.into(),
                why,
            });
        }
        let unavailable = |why: String| super::OpenError::Unavailable {
            name: name.into(),
            why,
        };
        let kvm = Kvm::new().map_err(|e| unavailable(format!("/dev/kvm: {e}")))?;
        let timer = KickTimer::new().map_err(|e| unavailable(format!("timer: {e}")))?;
        Ok(KvmBackend {
            name,
            force_split: split,
            kvm,
            image: Image::build(),
            full: None,
            split: None,
            timer,
            last_exits: 0,
            last_split: false,
        })
    }

    /// Measures the raw exit round trip: `count` `out`s, returns the time per exit.
    pub fn ping(&mut self, count: usize) -> Result<Duration> {
        let table = table::pings(count);
        let KvmBackend {
            kvm, image, full, ..
        } = self;
        let vm = vm_slot(kvm, image, full, false)?;
        vm.reset(image, &table, &Scenario::default())?;
        let start = Instant::now();
        let mut exits = 0u64;
        loop {
            match vm.vcpu.run() {
                Ok(VcpuExit::IoOut(PING_PORT, _)) => exits += 1,
                Ok(VcpuExit::IoOut(END_PORT, _)) => break,
                Ok(VcpuExit::IoOut(..)) => {}
                Ok(other) => {
                    return Err(BackendError::Failed(format!(
                        "unexpected exit {other:?} while pinging"
                    )))
                }
                Err(e) => return Err(BackendError::Failed(format!("KVM_RUN: {e}"))),
            }
        }
        Ok(start.elapsed() / exits.max(1) as u32)
    }
}

/// The VM of one shape, created on first use.
fn vm_slot<'v>(
    kvm: &Kvm,
    image: &Image,
    slot: &'v mut Option<Vm>,
    split: bool,
) -> Result<&'v mut Vm> {
    if slot.is_none() {
        *slot = Some(Vm::new(kvm, image, split)?);
    }
    Ok(slot.as_mut().expect("just created"))
}

/// Why a scenario cannot run on this shape, if it cannot.
fn unsupported(scenario: &Scenario, split: bool) -> Option<String> {
    let c = &scenario.config;
    if !split {
        if c.directed_eoi {
            return Some("KVM's in-kernel IOAPIC does not offer EOI-broadcast suppression (directed-eoi=on needs irqchip=split)".into());
        }
        let needs_v20 = scenario
            .all_ops()
            .any(|op| matches!(op, Op::IoapicEoi(_) | Op::IoapicRead(1)));
        if c.ioapic == IoapicVersion::V20 && needs_v20 {
            return Some(
                "KVM's in-kernel IOAPIC is version 0x11 (no EOI register), and this scenario depends on version 0x20 \
                 (ioapic-eoi or ioapic-read 1); use irqchip=split or ioapic=0x11"
                    .into(),
            );
        }
    }
    None
}

impl Backend for KvmBackend {
    fn name(&self) -> &str {
        self.name
    }

    /// KVM's in-kernel IOAPIC is version 0x11 without directed EOI: a
    /// generated scenario for the full irqchip gets that config.
    fn fit(&self, scenario: &mut Scenario) {
        let split = self.force_split || scenario.config.irqchip == Irqchip::Split;
        if !split && unsupported(scenario, false).is_some() {
            scenario.config.ioapic = IoapicVersion::V11;
            scenario.config.directed_eoi = false;
        }
    }

    fn calls(&self) -> Vec<String> {
        let vm = if self.last_split {
            &self.split
        } else {
            &self.full
        };
        vm.as_ref().map_or_else(Vec::new, |vm| vm.calls.clone())
    }

    fn run(&mut self, scenario: &Scenario) -> Result<Trace> {
        let split = self.force_split || scenario.config.irqchip == Irqchip::Split;
        let name = self.name;
        if let Some(why) = unsupported(scenario, split) {
            return Err(BackendError::Unsupported(why));
        }
        let table =
            table::encode(scenario).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        self.last_split = split;
        let KvmBackend {
            kvm,
            image,
            full,
            split: split_vm,
            timer,
            last_exits,
            ..
        } = self;
        let vm = vm_slot(kvm, image, if split { split_vm } else { full }, split)?;
        vm.reset(image, &table, scenario)?;
        let result = run_loop(vm, &table, timer);
        timer.set(Duration::ZERO);
        let (end, exits) = result?;
        *last_exits = exits;
        // A run that moved or switched the APIC base needs the segments
        // (and so the APIC base) written again.
        vm.clean = matches!(end, End::Stub(_))
            && scenario.config.apic == crate::scenario::ApicMode::Xapic
            && !scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_)));
        let (cur_op, log_bytes) = image.read_back(vm.ram.bytes());
        let mut trace = Trace::new(name);
        trace.events = log::decode(log_bytes).map_err(|e| BackendError::Failed(e.to_string()))?;
        match end {
            End::Stub(EndCode::Completed) => {}
            End::Stub(EndCode::Storm) => trace.outcome = Outcome::Storm,
            End::Stub(EndCode::LogFull) => {
                return Err(BackendError::Failed("the guest's event log is full".into()))
            }
            End::Hang => {
                trace.outcome = Outcome::Hang;
                trace.hang_op = Some(cur_op);
            }
            End::Error(message) => {
                trace.outcome = Outcome::Error;
                trace.error = Some(format!("{message} (during op {cur_op})"));
            }
        }
        Ok(trace)
    }
}

enum End {
    Stub(EndCode),
    Hang,
    Error(String),
}

/// Runs the vCPU until the stub ends the run, hangs, or fails.
fn run_loop(vm: &mut Vm, table: &table::Table, timer: &KickTimer) -> Result<(End, u64)> {
    let started = Instant::now();
    let mut exits = 0u64;
    let mut halted_kicks = 0;
    let mut routes_dirty = false;
    loop {
        if routes_dirty {
            vm.sync_routes()?;
            routes_dirty = false;
        }
        exits += 1;
        timer.set(KICK);
        let exit = vm.vcpu.run();
        let mut host_op = None;
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                let value = data.iter().rev().fold(0u32, |acc, b| acc << 8 | *b as u32);
                if port != PING_PORT {
                    vm.note(format!(
                        "KVM_RUN -> KVM_EXIT_IO out port {port:#x} value {value:#x}"
                    ));
                }
                match port {
                    HYPERCALL_PORT => host_op = Some(value as usize),
                    END_PORT => {
                        return Ok((
                            EndCode::from_u32(value).map_or_else(
                                || End::Error(format!("bad end code {value}")),
                                End::Stub,
                            ),
                            exits,
                        ))
                    }
                    // The 8259 mask writes exit only without an in-kernel PIC.
                    0x21 | 0xa1 | PING_PORT => {}
                    other => {
                        return Ok((
                            End::Error(format!("unexpected out to port {other:#x}")),
                            exits,
                        ))
                    }
                }
            }
            Ok(VcpuExit::MmioRead(addr, data))
                if vm.split && (IOAPIC_BASE..IOAPIC_BASE + 0x1000).contains(&addr) =>
            {
                let value = vm.ioapic.mmio_read(addr - IOAPIC_BASE);
                vm.calls.push(format!(
                    "KVM_RUN -> KVM_EXIT_MMIO read {addr:#x} = {value:#x} (userspace IOAPIC)"
                ));
                let bytes = value.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Ok(VcpuExit::MmioWrite(addr, data))
                if vm.split && (IOAPIC_BASE..IOAPIC_BASE + 0x1000).contains(&addr) =>
            {
                let mut bytes = [0u8; 4];
                let n = data.len().min(4);
                bytes[..n].copy_from_slice(&data[..n]);
                let value = u32::from_le_bytes(bytes);
                if vm.calls.len() < CALL_LOG_LIMIT {
                    vm.calls.push(format!(
                        "KVM_RUN -> KVM_EXIT_MMIO write {addr:#x} = {value:#x} (userspace IOAPIC)"
                    ));
                }
                let mut sink = MsiSink {
                    vm: &vm.vm,
                    failure: None,
                    sent: Vec::new(),
                };
                vm.ioapic.mmio_write(addr - IOAPIC_BASE, value, &mut sink);
                vm.calls.append(&mut sink.sent);
                if let Some(f) = sink.failure {
                    return Ok((End::Error(f), exits));
                }
                routes_dirty = true;
            }
            Ok(VcpuExit::IoapicEoi(vector)) if vm.split => {
                if vm.calls.len() < CALL_LOG_LIMIT {
                    vm.calls.push(format!(
                        "KVM_RUN -> KVM_EXIT_IOAPIC_EOI vector {vector:#04x}"
                    ));
                }
                let mut sink = MsiSink {
                    vm: &vm.vm,
                    failure: None,
                    sent: Vec::new(),
                };
                vm.ioapic.eoi(vector, &mut sink);
                vm.calls.append(&mut sink.sent);
                if let Some(f) = sink.failure {
                    return Ok((End::Error(f), exits));
                }
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                return Ok((
                    End::Error(format!("unexpected MMIO access at {addr:#x}")),
                    exits,
                ))
            }
            Ok(VcpuExit::Shutdown) => {
                return Ok((
                    End::Error("the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into()),
                    exits,
                ))
            }
            Ok(VcpuExit::InternalError) => {
                return Ok((
                    End::Error(
                        "KVM internal error (KVM_EXIT_INTERNAL_ERROR, e.g. an emulation failure)"
                            .into(),
                    ),
                    exits,
                ))
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return Ok((
                    End::Error(format!("VM entry failed (hardware reason {reason:#x})")),
                    exits,
                ))
            }
            Ok(VcpuExit::Hlt) => return Ok((End::Hang, exits)),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => return Ok((End::Error(format!("unexpected exit {other:?}")), exits)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                let mp = vm.vcpu.get_mp_state().map_err(errno("KVM_GET_MP_STATE"))?;
                if mp.mp_state == KVM_MP_STATE_HALTED {
                    halted_kicks += 1;
                    if halted_kicks >= 2 {
                        return Ok((End::Hang, exits));
                    }
                } else {
                    halted_kicks = 0;
                }
                if started.elapsed() > RUN_LIMIT {
                    return Ok((
                        End::Error(format!("the guest did not finish within {RUN_LIMIT:?}")),
                        exits,
                    ));
                }
                continue;
            }
            Err(e) => return Err(BackendError::Failed(format!("KVM_RUN: {e}"))),
        }
        halted_kicks = 0;
        if let Some(index) = host_op {
            let op = *table.host_ops.get(index).ok_or_else(|| {
                BackendError::Failed(format!(
                    "the guest asked for host op {index}, which does not exist"
                ))
            })?;
            if let Err(message) = perform(vm, &op) {
                return Ok((End::Error(message), exits));
            }
        }
    }
}

/// Performs a host op. `assert` means "interrupt requested", whatever the
/// pin's polarity: both KVM's IOAPIC and the model's take the logical level.
fn perform(vm: &mut Vm, op: &Op) -> std::result::Result<(), String> {
    let drive = |vm: &mut Vm, pin: u8, requested: bool| -> std::result::Result<(), String> {
        if requested {
            vm.asserted |= 1 << pin;
        } else {
            vm.asserted &= !(1 << pin);
        }
        if vm.split {
            vm.note(format!(
                "userspace IOAPIC pin {pin} {}",
                if requested { "asserted" } else { "deasserted" }
            ));
            let mut sink = MsiSink {
                vm: &vm.vm,
                failure: None,
                sent: Vec::new(),
            };
            vm.ioapic.set_irq(pin as usize, requested, &mut sink);
            vm.calls.append(&mut sink.sent);
            return sink.failure.map_or(Ok(()), Err);
        }
        // KVM's in-kernel IOAPIC takes KVM_IRQ_LINE's level as the request
        // itself and never looks at the polarity bit (ioapic_set_irq in
        // arch/x86/kvm/ioapic.c), so the logical level is what is driven.
        vm.note(format!(
            "KVM_IRQ_LINE gsi {pin} level {}",
            u8::from(requested)
        ));
        vm.vm
            .set_irq_line(pin as u32, requested)
            .map_err(|e| format!("KVM_IRQ_LINE: {e}"))
    };
    match *op {
        Op::Assert(pin) => drive(vm, pin.get(), true),
        Op::Deassert(pin) => drive(vm, pin.get(), false),
        Op::Pulse(pin) => {
            drive(vm, pin.get(), true)?;
            drive(vm, pin.get(), false)
        }
        Op::Msi(m) => {
            let msg = m.message();
            let mut sink = MsiSink {
                vm: &vm.vm,
                failure: None,
                sent: Vec::new(),
            };
            sink.send(&msg);
            vm.calls.append(&mut sink.sent);
            sink.failure.map_or(Ok(()), Err)
        }
        other => Err(format!("`{}` is not a host op", other.keyword())),
    }
}
