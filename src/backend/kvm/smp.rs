//! Several vCPUs on `kvm` and `kvm-split`: the stub on every vCPU and the
//! quiescence rule of docs/scenario-format.md ("Several CPUs"), driven by
//! the host (the protocol of docs/guest-stub.md, "Several CPUs").
//!
//! One host thread runs the VM's vCPUs one at a time. The rule serialises
//! them anyway (each op runs on its CPU to its idle `out`; then settling
//! rounds resume every running CPU in index order until a round changes
//! nothing), and one thread keeps the order deterministic and each step a
//! single `KVM_RUN` of one vCPU. KVM does not need a thread per vCPU: a
//! vCPU's `KVM_RUN` may come from any thread, and since it always comes
//! from this one, the pid change that costs an RCU grace period
//! (`kvm_vcpu_ioctl`) happens once per vCPU. IPIs, IOAPIC and MSI messages
//! to a vCPU that is not in `KVM_RUN` wait in its local APIC, and KVM
//! injects them when that vCPU is resumed: an idle CPU takes what is
//! pending when its settling turn comes, with the IF its last op left.
//!
//! The kick watchdog covers every vCPU: it watches the one entry counter
//! of this thread, and the kick handler ends the `KVM_RUN` of whichever
//! vCPU this thread is in ([`KICKED_RUN`] follows it). A vCPU halted with
//! nothing to wake it is a hang; one blocked waiting for a SIPI (an INIT
//! reached it) is found the same way and leaves the round.
//!
//! INIT and SIPI go through the in-kernel local APIC. No vCPU is KVM's BSP
//! ([`no_bsp`]; CPU 0's IA32_APIC_BASE has no BSP bit either, which is what
//! `kvm_vcpu_is_bsp` reads), so an INIT sends any CPU to wait for SIPI, as
//! the format says (a BSP would restart at the reset vector). A CPU that may have received one is looked at with
//! `KVM_GET_MP_STATE` (which makes KVM process a pending INIT or SIPI)
//! before its turn, and only in scenarios that can send them. A SIPI starts
//! the AP in real mode at the SIPI page, whose `out` to
//! [`AP_START_PORT`] asks for the long-mode state of `Stub::sipi_entry`.

use super::*;
use crate::guest::layout::{cpu_stack_top, AP_START_PORT, IDLE_PORT};
use crate::scenario::{ApStart, ApicMode, IpiDelivery, MAX_CPUS};
use kvm_bindings::{CpuId, KVM_MP_STATE_INIT_RECEIVED};

vmm_sys_util::ioctl_io_nr!(KVM_SET_BOOT_CPU_ID, kvm_bindings::KVMIO, 0x78);

/// Most `KVM_RUN`s of one CPU's step (an op, or a settling turn): a guest
/// that keeps exiting without reaching its idle `out` is bounded by
/// [`RUN_LIMIT`] anyway; this only bounds the settling rounds, which end
/// by the storm limit long before.
const MAX_SETTLE_ROUNDS: usize = 4 * crate::trace::STORM_LIMIT + 8;

/// The most vCPUs a VM gets on this host, probed: `KVM_CAP_MAX_VCPUS`
/// (`KVM_CAP_NR_VCPUS` where the kernel has no MAX), at most
/// [`MAX_CPUS`].
pub(super) fn probe_max_vcpus(kvm: &Kvm) -> usize {
    let max = kvm.check_extension_int(Cap::MaxVcpus);
    let max = if max > 0 {
        max
    } else {
        kvm.check_extension_int(Cap::NrVcpus)
    };
    (max.max(1) as usize).min(MAX_CPUS)
}

/// `KVM_SET_BOOT_CPU_ID` with an id no vCPU of the VM has: every vCPU is
/// an AP to KVM, so an INIT sends any of them to wait for SIPI
/// (`kvm_apic_accept_events`: a BSP would restart at the reset vector), as
/// the format says of every CPU. Must precede the first `KVM_CREATE_VCPU`.
pub(super) fn no_bsp(vm: &VmFd, ids: &[u32]) -> Result<()> {
    let unused = (0..).find(|id| !ids.contains(id)).expect("a free id");
    // SAFETY: a VM fd and an ioctl that takes its argument by value.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_val(vm, KVM_SET_BOOT_CPU_ID(), u64::from(unused))
    };
    if ret < 0 {
        return Err(BackendError::kvm("KVM_SET_BOOT_CPU_ID")(
            kvm_ioctls::Error::last(),
        ));
    }
    Ok(())
}

/// The supported CPUID with `apic_id` as the initial APIC ID (leaf 1
/// EBX[31:24], leaves 0xB and 0x1F EDX), as a VMM gives each vCPU.
pub(super) fn cpuid_for(base: &CpuId, apic_id: u32) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (apic_id & 0xff) << 24,
            0xb | 0x1f => e.edx = apic_id,
            _ => {}
        }
    }
    cpuid
}

/// An application processor: its vCPU and its clean start state.
pub(super) struct Ap {
    pub(super) vcpu: VcpuFd,
    sregs: kvm_sregs,
    lapic: kvm_lapic_state,
}

impl Ap {
    pub(super) fn new(vm: &VmFd, cpuid: &CpuId, id: u32) -> Result<Ap> {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(errno("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&cpuid_for(cpuid, id))
            .map_err(errno("KVM_SET_CPUID2"))?;
        let mut sregs = long_mode_sregs(vcpu.get_sregs().map_err(errno("KVM_GET_SREGS"))?);
        sregs.apic_base &= !APIC_BASE_BSP;
        vcpu.set_sregs(&sregs).map_err(errno("KVM_SET_SREGS"))?;
        let lapic = clean_lapic(vcpu.get_lapic().map_err(errno("KVM_GET_LAPIC"))?);
        Ok(Ap { vcpu, sregs, lapic })
    }
}

/// The scenario's APIC IDs, CPU 0 first.
fn apic_ids(scenario: &Scenario) -> Vec<u32> {
    (0..scenario.cpus())
        .map(|cpu| u32::from(scenario.config.apic_id(cpu)))
        .collect()
}

/// Whether two CPUs share an APIC ID (`apic-ids` aliases).
fn aliased(scenario: &Scenario) -> bool {
    let ids = apic_ids(scenario);
    !ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id))
}

/// The vCPU ids of a scenario's CPUs: their APIC IDs (KVM's APIC ID is the
/// vCPU id; in x2APIC mode it cannot be anything else). Aliased xAPIC IDs
/// cannot be vCPU ids: the CPU indexes are, and each CPU's xAPIC ID
/// register is written by `KVM_SET_LAPIC` ([`Vm::reset_smp`]; KVM keeps
/// an xAPIC ID the VMM gives, and delivers to aliased IDs by its slow path,
/// `kvm_recalculate_apic_map`).
fn vcpu_ids(scenario: &Scenario) -> Vec<u32> {
    if aliased(scenario) {
        (0..scenario.cpus() as u32).collect()
    } else {
        apic_ids(scenario)
    }
}

/// Why a multi-CPU scenario cannot run on KVM, if it cannot: in x2APIC
/// mode KVM's x2APIC ID is the vCPU id, so two CPUs cannot share one.
pub(super) fn unsupported(scenario: &Scenario) -> Option<String> {
    (scenario.uses_smp() && aliased(scenario) && scenario.config.apic == ApicMode::X2apic).then(
        || {
            "KVM's x2APIC ID is the vCPU id: two CPUs cannot share an x2APIC ID (apic-ids repeats one)"
                .into()
        },
    )
}

/// Writes an xAPIC ID into a `kvm_lapic_state` (the ID register, bits
/// 31:24, SDM §11.4.6).
fn set_xapic_id(lapic: &mut kvm_lapic_state, id: u32) {
    let at = reg::ID as usize;
    lapic.regs[at..at + 4].copy_from_slice(&(id << 24).to_le_bytes().map(|b| b as _));
}

/// Whether an op of the scenario can send INIT or SIPI: an `ipi` of
/// either, a raw write of the ICR (offset 0x300, MSR 0x830), or a route in
/// INIT mode (which the model refuses, but KVM sends). A CPU an INIT
/// reaches in a scenario that has none of these is still found (the kick
/// sees it waiting) and left out of the rounds: never a stall.
fn may_init(scenario: &Scenario) -> bool {
    scenario.config.ap_start == ApStart::Sipi
        || scenario.all_ops().any(|op| match *op {
            Op::Ipi(ipi) => matches!(
                ipi.delivery,
                IpiDelivery::Init | IpiDelivery::InitDeassert | IpiDelivery::Startup
            ),
            Op::LapicWrite { offset, .. } | Op::LapicMmioWrite { offset, .. } => {
                offset == reg::ICR_LOW
            }
            Op::Route { route, .. } => route.delivery == crate::scenario::DeliveryMode::Init,
            _ => false,
        })
}

impl Vm {
    fn cpus(&self) -> usize {
        1 + self.aps.len()
    }

    fn vcpu_of(&self, cpu: usize) -> &VcpuFd {
        if cpu == 0 {
            &self.vcpu
        } else {
            &self.aps[cpu - 1].vcpu
        }
    }

    fn vcpu_of_mut(&mut self, cpu: usize) -> &mut VcpuFd {
        if cpu == 0 {
            &mut self.vcpu
        } else {
            &mut self.aps[cpu - 1].vcpu
        }
    }

    fn mp_state(&self, cpu: usize) -> Result<u32> {
        self.count(|c| &mut c.kick);
        Ok(self
            .vcpu_of(cpu)
            .get_mp_state()
            .map_err(errno("KVM_GET_MP_STATE"))?
            .mp_state)
    }

    /// Restores the start state of every CPU and loads the scenario: CPU 0
    /// and the irqchip as on one CPU ([`Vm::reset`], everything restored),
    /// then each AP: segments, a clean local APIC (software-disabled for
    /// `ap-start=sipi`, the power-up state), no latched INIT (the events),
    /// runnable or waiting for SIPI, and its registers at `ap_entry`.
    fn reset_smp(
        &mut self,
        image: &Image,
        table: &table::Table,
        scenario: &Scenario,
    ) -> Result<()> {
        self.leftover = Leftover::Everything;
        self.reset(image, table, scenario)?;
        let x2apic = scenario.config.apic == ApicMode::X2apic;
        let cpus = self.cpus();
        image.load_smp(self.ram.bytes_mut(), table, x2apic, cpus);
        let sipi = scenario.config.ap_start == ApStart::Sipi;
        let aliased = aliased(scenario);
        if aliased && scenario.config.apic_id(0) != 0 {
            let mut lapic = self.lapic;
            set_xapic_id(&mut lapic, u32::from(scenario.config.apic_id(0)));
            self.count(|c| &mut c.reset_vcpu);
            self.vcpu
                .set_lapic(&lapic)
                .map_err(errno("KVM_SET_LAPIC"))?;
        }
        for (i, ap) in self.aps.iter().enumerate() {
            let cpu = i + 1;
            let mut lapic = ap.lapic;
            if aliased {
                set_xapic_id(&mut lapic, u32::from(scenario.config.apic_id(cpu)));
            }
            if sipi {
                // SVR 0xFF: software-disabled (SDM §11.4.7.1, after RESET).
                let svr = reg::SVR as usize;
                lapic.regs[svr..svr + 4].copy_from_slice(&0xffu32.to_le_bytes().map(|b| b as _));
            }
            let mut calls = self.syscalls.get();
            calls.reset_vcpu += 5;
            self.syscalls.set(calls);
            ap.vcpu
                .set_sregs(&ap.sregs)
                .map_err(errno("KVM_SET_SREGS"))?;
            ap.vcpu.set_lapic(&lapic).map_err(errno("KVM_SET_LAPIC"))?;
            ap.vcpu
                .set_vcpu_events(&self.events)
                .map_err(errno("KVM_SET_VCPU_EVENTS"))?;
            ap.vcpu
                .set_mp_state(kvm_mp_state {
                    mp_state: if sipi {
                        KVM_MP_STATE_INIT_RECEIVED
                    } else {
                        KVM_MP_STATE_RUNNABLE
                    },
                })
                .map_err(errno("KVM_SET_MP_STATE"))?;
            ap.vcpu
                .set_regs(&kvm_regs {
                    rip: image.stub.ap_entry,
                    rdi: cpu as u64,
                    rsp: cpu_stack_top(cpu),
                    rflags: 0x2,
                    ..Default::default()
                })
                .map_err(errno("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    /// The SIPI page's `out`: CPU `cpu` enters long mode at
    /// `Stub::sipi_entry`. The `out` is completed first (a `KVM_RUN` with
    /// the immediate exit, as KVM's API asks before state is changed),
    /// then the segments of the layout (keeping the APIC base, which INIT
    /// left as it was) and the registers are written.
    fn start_ap(&mut self, cpu: usize, image: &Image) -> Result<()> {
        let vcpu = self.vcpu_of_mut(cpu);
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        let sregs = vcpu.get_sregs().map_err(errno("KVM_GET_SREGS"))?;
        let mut long = long_mode_sregs(sregs);
        long.apic_base = sregs.apic_base;
        vcpu.set_sregs(&long).map_err(errno("KVM_SET_SREGS"))?;
        vcpu.set_regs(&kvm_regs {
            rip: image.stub.sipi_entry,
            rdi: cpu as u64,
            rsp: cpu_stack_top(cpu),
            rflags: 0x2,
            ..Default::default()
        })
        .map_err(errno("KVM_SET_REGS"))?;
        self.count(|c| &mut c.reset_vcpu);
        Ok(())
    }
}

/// How one CPU's step ended.
enum Step {
    /// It reached its idle `out`.
    Idle,
    /// It waits for a SIPI (an INIT reached it).
    Waiting,
    /// The run ends.
    End(End),
}

/// The host's side of the quiescence rule for one run.
struct Conductor<'k, 'w> {
    entry: Entry<'k>,
    mechanism: KickMechanism,
    delay_entry_after_kick: Option<Duration>,
    without_entry: &'w mut u64,
    started: Instant,
    exits: u64,
    /// CPUs waiting for a SIPI, by bit.
    waiting: u32,
    /// Whether an op can send INIT or SIPI (then CPUs are looked at).
    may_init: bool,
}

impl Conductor<'_, '_> {
    /// Resumes `cpu` until its idle `out`, performing host ops and the
    /// userspace IOAPIC's accesses on the way.
    fn step(
        &mut self,
        vm: &mut Vm,
        cpu: usize,
        table: &table::Table,
        image: &Image,
    ) -> Result<Step> {
        let mut halted_kicks = 0;
        let mut delay_entry = None;
        if self.mechanism == KickMechanism::ImmediateExit {
            let run = std::ptr::addr_of_mut!(*vm.vcpu_of_mut(cpu).get_kvm_run());
            KICKED_RUN.with(|r| r.set(run));
        }
        loop {
            if vm.routes_dirty {
                vm.sync_routes()?;
            }
            self.exits += 1;
            if self.exits % LIMIT_CHECK_EXITS == 0 && self.started.elapsed() > RUN_LIMIT {
                return Ok(Step::End(over_limit()));
            }
            let exit = self.entry.enter(vm, cpu, delay_entry.take())?;
            let host_op = match exit {
                Exit::Kicked { entered } => {
                    if entered {
                        match vm.mp_state(cpu)? {
                            KVM_MP_STATE_HALTED => {
                                halted_kicks += 1;
                                if halted_kicks >= 2 {
                                    return Ok(Step::End(End::Hang));
                                }
                            }
                            KVM_MP_STATE_INIT_RECEIVED => {
                                self.waiting |= 1 << cpu;
                                return Ok(Step::Waiting);
                            }
                            _ => halted_kicks = 0,
                        }
                        delay_entry = self.delay_entry_after_kick;
                    } else {
                        *self.without_entry += 1;
                    }
                    if self.started.elapsed() > RUN_LIMIT {
                        return Ok(Step::End(over_limit()));
                    }
                    continue;
                }
                Exit::Out {
                    port: IDLE_PORT, ..
                } => return Ok(Step::Idle),
                Exit::Out {
                    port: AP_START_PORT,
                    ..
                } => {
                    vm.start_ap(cpu, image)?;
                    None
                }
                Exit::Out { port, value } => match vm.handle_out(port, value) {
                    Ok(host_op) => host_op,
                    Err(end) => return Ok(Step::End(end)),
                },
                Exit::IoapicWrite { addr, value } => {
                    if let Err(end) = vm.handle_ioapic_write(addr, value) {
                        return Ok(Step::End(end));
                    }
                    None
                }
                Exit::IoapicEoi(vector) => {
                    if let Err(end) = vm.handle_ioapic_eoi(vector) {
                        return Ok(Step::End(end));
                    }
                    None
                }
                Exit::IoapicRead | Exit::Nothing => None,
                // The 8259 pair is refused on several CPUs (`unsupported`).
                Exit::PicOut { .. } | Exit::PicChanged => None,
                // An INIT that reaches the CPU while KVM emulates its ICR
                // write resets it mid-instruction, and KVM reports an
                // emulation failure; the CPU waits for SIPI all the same.
                Exit::End(End::Error(_))
                    if self.may_init && vm.mp_state(cpu)? == KVM_MP_STATE_INIT_RECEIVED =>
                {
                    self.waiting |= 1 << cpu;
                    return Ok(Step::Waiting);
                }
                Exit::End(end) => return Ok(Step::End(end)),
            };
            halted_kicks = 0;
            if let Some(index) = host_op {
                let Some(op) = table.host_ops.get(index) else {
                    let message =
                        format!("the guest asked for host op {index}, which does not exist");
                    return Ok(Step::End(End::Error(message)));
                };
                if let Err(message) = perform(vm, op) {
                    return Ok(Step::End(End::Error(message)));
                }
            }
        }
    }

    /// Whether `cpu` waits for a SIPI now: looked at only where an op can
    /// send INIT or SIPI (`KVM_GET_MP_STATE` makes KVM take a pending one).
    fn refresh_waiting(&mut self, vm: &Vm, cpu: usize) -> Result<bool> {
        if self.may_init {
            if vm.mp_state(cpu)? == KVM_MP_STATE_INIT_RECEIVED {
                self.waiting |= 1 << cpu;
            } else {
                self.waiting &= !(1 << cpu);
            }
        }
        Ok(self.waiting & 1 << cpu != 0)
    }

    /// One settling round: every CPU that runs takes what it can, in index
    /// order. `None` when it ran to the end of the round.
    fn round(&mut self, vm: &mut Vm, table: &table::Table, image: &Image) -> Result<Option<End>> {
        for cpu in 0..vm.cpus() {
            if self.refresh_waiting(vm, cpu)? {
                continue;
            }
            if let Step::End(end) = self.step(vm, cpu, table, image)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// Rounds until one in which no CPU recorded anything.
    fn settle(&mut self, vm: &mut Vm, table: &table::Table, image: &Image) -> Result<Option<End>> {
        let cpus = vm.cpus();
        for _ in 0..MAX_SETTLE_ROUNDS {
            let before = image.progress(vm.ram.bytes(), cpus);
            if let Some(end) = self.round(vm, table, image)? {
                return Ok(Some(end));
            }
            if image.progress(vm.ram.bytes(), cpus) == before {
                return Ok(None);
            }
        }
        Ok(Some(End::Error(format!(
            "the CPUs did not settle within {MAX_SETTLE_ROUNDS} rounds"
        ))))
    }

    /// The whole program: the CPUs' start, then each op and its settling.
    fn program(
        &mut self,
        vm: &mut Vm,
        table: &table::Table,
        image: &Image,
        scenario: &Scenario,
    ) -> Result<End> {
        for cpu in 0..vm.cpus() {
            if self.waiting & 1 << cpu != 0 {
                continue;
            }
            if let Step::End(end) = self.step(vm, cpu, table, image)? {
                return Ok(end);
            }
        }
        for (k, op) in scenario.ops.iter().enumerate() {
            let cpu = scenario.cpu_of(k) as usize;
            if cpu >= vm.cpus() {
                return Ok(End::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, and the scenario has {} CPU(s)",
                    op.keyword(),
                    vm.cpus()
                )));
            }
            if self.refresh_waiting(vm, cpu)? {
                return Ok(End::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, which waits for a startup IPI",
                    op.keyword()
                )));
            }
            image.post(vm.ram.bytes_mut(), cpu, k);
            match self.step(vm, cpu, table, image)? {
                Step::Idle => {}
                Step::Waiting => {
                    return Ok(End::Error(format!(
                        "op {k} ({}): an INIT reached CPU {cpu}, the CPU running the op (its program cannot go on)",
                        op.keyword()
                    )))
                }
                Step::End(end) => return Ok(end),
            }
            if self.may_init && self.refresh_waiting(vm, cpu)? {
                return Ok(End::Error(format!(
                    "op {k} ({}): an INIT reached CPU {cpu}, the CPU running the op (its program cannot go on)",
                    op.keyword()
                )));
            }
            if let Some(end) = self.settle(vm, table, image)? {
                return Ok(end);
            }
        }
        Ok(End::Stub(EndCode::Completed))
    }
}

/// Runs a multi-CPU scenario on `vm` (reset and loaded): returns how it
/// ended and the exits taken.
fn run_smp(
    vm: &mut Vm,
    table: &table::Table,
    image: &Image,
    scenario: &Scenario,
    kicks: &mut Kicks,
) -> Result<(End, u64)> {
    if kicks.mechanism == KickMechanism::SignalMask {
        for cpu in 0..vm.cpus() {
            set_run_signal_mask(vm.vcpu_of(cpu))
                .map_err(BackendError::io("KVM_SET_SIGNAL_MASK"))?;
        }
    }
    let run = std::ptr::addr_of_mut!(*vm.vcpu.get_kvm_run());
    let Kicks {
        watchdog,
        mechanism,
        delay_entry_after_kick,
        before_entry,
        without_entry,
        time_in_run,
        judge_halts: _,
        hang_rule,
    } = kicks;
    *hang_rule = None;
    *without_entry = 0;
    if let Some(time) = time_in_run.as_mut() {
        *time = Duration::ZERO;
    }
    *before_entry = 0;
    // No early kicks: one thread runs the CPUs in turn.
    let _running = Running::begin(watchdog, *mechanism, run, None);
    let sipi = scenario.config.ap_start == ApStart::Sipi;
    let mut conductor = Conductor {
        entry: Entry {
            watch: &watchdog.watch,
            mechanism: *mechanism,
            kicks_before_entry: before_entry,
            time_in_run,
        },
        mechanism: *mechanism,
        delay_entry_after_kick: *delay_entry_after_kick,
        without_entry,
        started: Instant::now(),
        exits: 0,
        waiting: if sipi { !1 } else { 0 },
        may_init: may_init(scenario),
    };
    let end = conductor.program(vm, table, image, scenario)?;
    Ok((end, conductor.exits))
}

impl KvmBackend {
    /// A multi-CPU VM for `shape` and these vCPU ids: the cached one, or a
    /// new one (the least recently used of [`SMP_VMS`] is dropped).
    fn smp_vm(&mut self, shape: Shape, ids: &[u32]) -> Result<&mut Vm> {
        if let Some(i) = self
            .smp
            .iter()
            .position(|vm| vm.shape == shape && vm.ids == ids)
        {
            let vm = self.smp.remove(i);
            self.smp.push(vm);
        } else {
            if self.smp.len() == SMP_VMS {
                self.smp.remove(0);
            }
            let mut vm = Vm::with_cpus(&self.kvm, &self.image, shape, ids)?;
            if let (Some(device), Shape::Split) = (self.device, shape) {
                vm.ioapic = UserspaceIoapic::with_device(device.make);
            }
            self.smp.push(vm);
        }
        Ok(self.smp.last_mut().expect("just pushed"))
    }

    /// Runs a scenario of the multi-CPU extension.
    pub(super) fn execute_smp(
        &mut self,
        scenario: &Scenario,
        shape: Shape,
        table: &table::Table,
    ) -> Result<Trace> {
        let name = self.name;
        self.last_split = shape.is_split();
        let ids = vcpu_ids(scenario);
        self.smp_vm(shape, &ids)?;
        let KvmBackend {
            image,
            smp,
            kicks,
            last_exits,
            last_calls,
            last_times,
            ..
        } = self;
        let vm = smp.last_mut().expect("smp_vm made it");
        vm.reset_smp(image, table, scenario)?;
        let (end, exits) = run_smp(vm, table, image, scenario, kicks)?;
        *last_exits = exits;
        vm.leftover = Leftover::Everything;
        *last_calls = vm.syscalls.get();
        *last_times = vm.times.get();
        finish(name, end, image, vm)
    }
}

/// Multi-CPU VMs kept between runs (a campaign's scenarios have 2 to 4
/// CPUs in two shapes, mostly with the default APIC IDs).
const SMP_VMS: usize = 8;

/// The trace of a multi-CPU run: every CPU's log, merged by op.
fn finish(name: &str, end: End, image: &Image, vm: &Vm) -> Result<Trace> {
    run::finish_cpus(name, end, image, vm.ram.bytes(), vm.cpus())
}
