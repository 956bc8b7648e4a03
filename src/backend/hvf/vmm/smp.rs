//! Several vCPUs on `hvf` and `hvf-split` (issue 13): one thread per vCPU,
//! the host-driven protocol of docs/guest-stub.md ("Several CPUs") that the
//! KVM backend follows (`src/backend/kvm/smp.rs`), and INIT/SIPI through the
//! in-kernel APIC with the framework's `HV_VM_EXITINFO_INIT_AP` and
//! `HV_VM_EXITINFO_STARTUP_AP` exits (docs/hvf.md, "Several vCPUs").
//!
//! hv.h: `hv_vcpu_create` "creates a vCPU instance for the current thread"
//! and every other vCPU call "must be called by the owning thread". So CPU
//! 0's vCPU is the VMM's (the thread that opened the backend), and each AP
//! (CPU K >= 1) has a thread of its own that creates, runs and destroys its
//! vCPU. The quiescence rule serialises the CPUs anyway (each op runs on its
//! CPU to its idle `out`, then settling rounds resume every running CPU in
//! index order until a round changes nothing), so the VMM hands itself to
//! the thread of the CPU it steps and waits ([`HvfVmm::on_cpu`]): the loop
//! of `vmm.rs` runs unchanged on any CPU, each vCPU call made by its owner.
//!
//! INIT and STARTUP IPIs go through the in-kernel APIC, which resets an
//! INIT's targets and hands the IPI back as an exit of the *sender*
//! (`hv_vcpu_exit_init_ap`, `hv_vcpu_exit_startup_ap`: the targets by vCPU
//! ID, and `ap_rip`). As pmj's QEMU does, a target of INIT that runs is
//! re-INITed (it waits for SIPI: the VMM runs it no more) and one that waits
//! already is left alone; a target of STARTUP that waits is started by the
//! VMM, on its own thread, before its next turn. `ap_rip` is the stub's
//! SIPI page (vector 0x08, 0x8000), whose only work is to ask for the long-
//! mode state of `Stub::sipi_entry` (port 0x513): the VMM gives that state
//! at once, which is what the page's `out` would get.

use std::sync::mpsc;

use super::*;
use crate::guest::layout::{cpu_stack_top, SIPI_PAGE};
use crate::scenario::ApStart;

/// Settling rounds after an op, at most: every round that changes
/// something records or delivers, and the storm limit ends the run long
/// before (as on KVM).
const MAX_SETTLE_ROUNDS: usize = 4 * crate::trace::STORM_LIMIT + 8;

/// What the VMM keeps of each CPU's vCPU while another CPU runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct CpuView {
    pub(super) vcpu: u32,
    pub(super) apic_window: u64,
    pub(super) apic_base: u64,
}

impl CpuView {
    /// A vCPU not created yet: the window and IA32_APIC_BASE at power-up
    /// (SDM §11.4.4: 0xFEE00000, enabled; no BSP bit on an AP).
    pub(super) fn fresh() -> CpuView {
        CpuView {
            vcpu: u32::MAX,
            apic_window: LAPIC_BASE,
            apic_base: LAPIC_BASE | APIC_BASE_EN,
        }
    }
}

/// An INIT or STARTUP IPI a CPU sent, as its exit described it.
#[derive(Clone, Debug)]
pub(super) enum ApEvent {
    /// `hv_vcpu_exit_init_ap`: the targets, by vCPU ID.
    Init(Vec<bool>),
    /// `hv_vcpu_exit_startup_ap`: the targets and `ap_rip`.
    Startup(Vec<bool>, u64),
}

/// Per multi-CPU run: what the CPU that ran last saw.
#[derive(Debug, Default)]
pub(super) struct SmpRun {
    pub(super) events: Vec<ApEvent>,
    /// It reached its idle `out`.
    pub(super) idle: bool,
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread that owns an AP's vCPU: it runs what the VMM hands it.
pub(super) struct ApThread {
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl ApThread {
    fn spawn(cpu: usize) -> std::io::Result<ApThread> {
        let (jobs, next) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name(format!("hvf-vcpu-{cpu}"))
            .spawn(move || {
                while let Ok(job) = next.recv() {
                    job();
                }
            })?;
        Ok(ApThread {
            jobs: Some(jobs),
            handle: Some(handle),
        })
    }
}

impl Drop for ApThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The VMM handed to the thread of the CPU it steps.
struct SendPtr<T>(*mut T);
// SAFETY: the pointer is used only by the one job it is sent with, while
// the thread that sent it waits for that job to finish and touches nothing
// of the VMM meanwhile ([`HvfVmm::on_cpu`]): the access stays exclusive, as
// a `&mut` handed over and back.
unsafe impl<T> Send for SendPtr<T> {}

/// A CPU's step: to its idle `out`, or the end of the run.
enum Step {
    Idle,
    End(End),
}

fn thread_gone(cpu: usize) -> BackendError {
    BackendError::UnexpectedExit(format!("the thread of CPU {cpu}'s vCPU ended"))
}

impl<H: Hv + HvExt + Send> HvfVmm<H> {
    /// Makes CPU `cpu`'s vCPU the one the loop's calls name (its ID, APIC
    /// window and IA32_APIC_BASE), and the one the watchdog kicks.
    pub(super) fn select(&mut self, cpu: usize) {
        if cpu != self.current {
            self.views[self.current] = CpuView {
                vcpu: self.vcpu,
                apic_window: self.apic_window,
                apic_base: self.apic_base,
            };
            let view = self.views[cpu];
            (self.vcpu, self.apic_window, self.apic_base) =
                (view.vcpu, view.apic_window, view.apic_base);
            self.current = cpu;
        }
        if let Some(w) = &self.watchdog {
            w.watch(cpu);
        }
    }

    /// Runs `f` with this VMM on the thread that owns CPU `cpu`'s vCPU
    /// (CPU 0: this one), that CPU selected, and waits for it.
    pub(super) fn on_cpu<R: Send>(
        &mut self,
        cpu: usize,
        f: impl FnOnce(&mut Self) -> R + Send,
    ) -> Result<R> {
        if cpu == 0 {
            self.select(0);
            return Ok(f(self));
        }
        let jobs = self.aps[cpu - 1]
            .jobs
            .clone()
            .ok_or_else(|| thread_gone(cpu))?;
        let (done, result) = mpsc::sync_channel::<R>(1);
        let me = SendPtr(self as *mut Self);
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let me = me;
            // SAFETY: see `SendPtr`: the sender waits below until `done`
            // is sent or dropped, after this last use.
            let vmm = unsafe { &mut *me.0 };
            vmm.select(cpu);
            let _ = done.send(f(vmm));
        });
        // SAFETY: the job borrows from this frame (`f`'s captures, `self`),
        // and this frame waits for it to finish before it returns: the
        // borrow outlives the job, as with a scoped thread. Only the
        // lifetime is erased; the type is otherwise the same.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        jobs.send(job).map_err(|_| thread_gone(cpu))?;
        result.recv().map_err(|_| thread_gone(cpu))
    }

    /// Exactly `n` CPUs: APs made (each on a new thread of its own, which
    /// creates its vCPU and brings it up as CPU 0's was) or destroyed
    /// (highest first, on its thread), so that the in-kernel APICs on the
    /// bus are the scenario's CPUs and no others.
    pub(super) fn set_cpus(&mut self, n: usize) -> Result<()> {
        while self.aps.len() + 1 > n {
            let cpu = self.aps.len();
            let destroyed = self.on_cpu(cpu, |vmm| vmm.hv.destroy_vcpu(vmm.vcpu))?;
            self.select(0);
            if let Some(w) = &self.watchdog {
                w.set_kick(cpu, None);
            }
            self.aps.pop();
            self.views.pop();
            destroyed?;
        }
        while self.aps.len() + 1 < n {
            let cpu = self.aps.len() + 1;
            self.aps
                .push(ApThread::spawn(cpu).map_err(BackendError::io("a vCPU thread"))?);
            self.views.push(CpuView::fresh());
            let made = self.on_cpu(cpu, |vmm| -> Result<Interrupter> {
                let id = vmm.hv.create_vcpu()?;
                vmm.vcpu = id;
                if id as usize != cpu {
                    return Err(BackendError::Unsupported(format!(
                        "the framework gave CPU {cpu} vCPU ID {id}: its in-kernel APIC ID would not be the CPU's"
                    )));
                }
                vmm.bring_up()?;
                Ok(vmm.hv.interrupter(id)?)
            });
            self.select(0);
            match made {
                Ok(Ok(kick)) => {
                    if let Some(w) = &self.watchdog {
                        w.set_kick(cpu, Some(kick));
                    }
                }
                failed => {
                    if self.views[cpu].vcpu == u32::MAX {
                        // No vCPU was made: the thread goes with its slot.
                        self.aps.pop();
                        self.views.pop();
                    }
                    failed??;
                }
            }
        }
        Ok(())
    }

    /// Destroys every AP's vCPU on its thread, highest first (teardown).
    pub(super) fn destroy_aps(&mut self) {
        while !self.aps.is_empty() {
            let cpu = self.aps.len();
            let alive = self.views[cpu].vcpu != u32::MAX || self.current == cpu;
            if alive {
                match self.on_cpu(cpu, |vmm| vmm.hv.destroy_vcpu(vmm.vcpu)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("irqdiff: {}: tearing the VM down: {e}", self.name),
                    Err(e) => eprintln!("irqdiff: {}: tearing the VM down: {e}", self.name),
                }
            }
            self.select(0);
            if let Some(w) = &self.watchdog {
                w.set_kick(cpu, None);
            }
            self.aps.pop();
            self.views.pop();
        }
    }

    /// AP `cpu`'s start state, on its thread: its in-kernel APIC as at
    /// creation (waiting for SIPI, as an AP's is after power-up, until it
    /// is started), the VMM's view of its APIC, SVR and TPR and masked
    /// LVTs (SVR 0xFF, software-disabled, for `ap-start=sipi`: the power-up
    /// state, SDM §11.4.7.1), its vCPU's activity, interruptibility and
    /// event injection cleared, and its registers at `Stub::ap_entry` with
    /// EDI = its index (docs/guest-stub.md, "Several CPUs").
    fn reset_ap(&mut self, cpu: usize, sipi: bool) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.hv.reset_irqchip(v)?;
        self.apic_window = LAPIC_BASE;
        self.apic_base = self.hv.read_msr(v, IA32_APIC_BASE)?;
        self.hv.apic_ctrl(
            v,
            if self.split() {
                hv::HV_APIC_CTRL_IOAPIC_EOI
            } else {
                hv::HV_APIC_CTRL_DEFAULT
            },
        )?;
        let svr = if sipi { 0xff } else { SVR_ENABLE | 0xff };
        self.hv.apic_write(v, reg::SVR as u32, svr)?;
        self.hv.apic_write(v, reg::TPR as u32, 0)?;
        for lvt in run::LVTS {
            self.hv.apic_write(v, lvt as u32, LVT_MASKED)?;
        }
        self.clear_events(v)?;
        self.start_regs(cpu, self.image.stub.ap_entry)
    }

    /// No HLT activity, STI or MOV SS blocking, or event left to inject
    /// (SDM 24.4.2, 24.8.3).
    fn clear_events(&mut self, v: u32) -> std::result::Result<(), HvError> {
        for field in [
            vmcs::VMCS_GUEST_ACTIVITY_STATE,
            vmcs::VMCS_GUEST_INTERRUPTIBILITY,
            vmcs::VMCS_CTRL_VMENTRY_IRQ_INFO,
        ] {
            self.hv.write_vmcs(v, field, 0)?;
        }
        Ok(())
    }

    /// An AP entry's registers: RIP, EDI = the CPU index, its stack, IF = 0.
    fn start_regs(&mut self, cpu: usize, rip: u64) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.hv.write_register(v, hv::HV_X86_RIP, rip)?;
        self.hv.write_register(v, hv::HV_X86_RDI, cpu as u64)?;
        self.hv
            .write_register(v, hv::HV_X86_RSP, cpu_stack_top(cpu))?;
        self.hv.write_register(v, hv::HV_X86_RFLAGS, 0x2)
    }

    /// A STARTUP IPI started AP `cpu` (on its thread): the long-mode state
    /// of `Stub::sipi_entry`, which the SIPI page's `out` asks for, given at
    /// once (OrbStack and pmj's QEMU start the AP on
    /// `HV_VM_EXITINFO_STARTUP_AP` the same way, at `ap_rip` in real mode).
    fn start_ap(&mut self, cpu: usize) -> std::result::Result<(), HvError> {
        let v = self.vcpu;
        self.clear_events(v)?;
        self.calls
            .note(|| format!("CPU {cpu}: started at sipi_entry (STARTUP_AP)"));
        self.start_regs(cpu, self.image.stub.sipi_entry)
    }

    /// `HV_VM_EXITINFO_INIT_AP` or `STARTUP_AP` on the sending vCPU: the
    /// targets (and `ap_rip`), noted for the conductor.
    pub(super) fn ap_exit(&mut self, info: u32) -> std::result::Result<Option<End>, HvError> {
        let count = self.views.len() as u32;
        let event = if info == hv::HV_VM_EXITINFO_INIT_AP {
            ApEvent::Init(self.hv.exit_init_ap(self.vcpu, count)?)
        } else {
            let (targets, rip) = self.hv.exit_startup_ap(self.vcpu, count)?;
            ApEvent::Startup(targets, rip)
        };
        self.calls.note(|| format!("  {event:?}"));
        match &mut self.smp {
            Some(run) => {
                run.events.push(event);
                Ok(None)
            }
            None => Ok(Some(End::Error(format!(
                "an INIT or STARTUP IPI ({event:?}) in a run of one CPU"
            )))),
        }
    }

    /// Resumes CPU `cpu` until its idle `out` or the end of the run; a
    /// STARTUP IPI's target is started first.
    fn step(&mut self, cpu: usize, table: &table::Table, start: bool) -> Result<Step> {
        self.on_cpu(cpu, |vmm| {
            if start {
                vmm.start_ap(cpu)?;
            }
            if let Some(run) = &mut vmm.smp {
                run.idle = false;
            }
            let end = match vmm.run_loop(table) {
                Ok(end) => end,
                Err(e) => End::Error(e.to_string()),
            };
            let idle = vmm.smp.as_ref().is_some_and(|run| run.idle);
            Ok(if idle { Step::Idle } else { Step::End(end) })
        })?
    }

    /// Runs a scenario of the multi-CPU extension.
    pub(super) fn run_smp(&mut self, scenario: &Scenario, table: &table::Table) -> Result<Trace> {
        let n = scenario.cpus();
        self.select(0);
        self.set_cpus(n)?;
        self.shape = Shape::for_run(self.opened, scenario);
        let sipi = scenario.config.ap_start == ApStart::Sipi;
        for cpu in 1..n {
            self.on_cpu(cpu, |vmm| vmm.reset_ap(cpu, sipi))??;
        }
        self.select(0);
        self.reset(scenario, table)?;
        let x2apic = scenario.config.apic == ApicMode::X2apic;
        self.image.load_smp(&mut self.ram, table, x2apic, n);
        self.smp = Some(SmpRun::default());
        let watchdog = self.watchdog.as_ref().expect("started in new");
        watchdog.arm(true);
        let mut conductor = Conductor {
            cpus: n,
            waiting: if sipi { (1u32 << n) - 2 } else { 0 },
            start: 0,
            started: Instant::now(),
        };
        let end = conductor.program(self, scenario, table);
        self.select(0);
        let watchdog = self.watchdog.as_ref().expect("started in new");
        watchdog.arm(false);
        self.smp = None;
        let end = match (end, watchdog.failure()) {
            (_, Some(e)) => End::Error(format!("the watchdog's {e}")),
            (Ok(end), None) => end,
            (Err(e), None) => End::Error(e.to_string()),
        };
        finish_smp(&self.name, end, &self.image, &self.ram, n)
    }
}

/// The host's side of the quiescence rule for one run.
struct Conductor {
    cpus: usize,
    /// CPUs waiting for a SIPI, by bit: not resumed.
    waiting: u32,
    /// CPUs a STARTUP IPI started, by bit: started at their next turn.
    start: u32,
    started: Instant,
}

impl Conductor {
    /// One step of `cpu`, then what its INIT and STARTUP IPIs did.
    fn step<H: Hv + HvExt + Send>(
        &mut self,
        vmm: &mut HvfVmm<H>,
        cpu: usize,
        table: &table::Table,
    ) -> Result<Step> {
        if self.started.elapsed() > RUN_LIMIT {
            return Ok(Step::End(End::Error(format!(
                "the guest did not finish within {RUN_LIMIT:?}"
            ))));
        }
        let start = self.start & 1 << cpu != 0;
        self.start &= !(1 << cpu);
        let step = vmm.step(cpu, table, start)?;
        let events = vmm
            .smp
            .as_mut()
            .map(|run| std::mem::take(&mut run.events))
            .unwrap_or_default();
        for event in events {
            match event {
                // pmj's QEMU: a running target is re-INITed (it waits for
                // SIPI); one waiting already is left alone.
                ApEvent::Init(targets) => {
                    for (i, _) in targets.iter().enumerate().filter(|(_, &t)| t) {
                        self.waiting |= 1 << i;
                        self.start &= !(1 << i);
                    }
                }
                ApEvent::Startup(targets, rip) => {
                    if rip != SIPI_PAGE {
                        return Ok(Step::End(End::Error(format!(
                            "a STARTUP IPI to {rip:#x}: the stub's SIPI page is at {SIPI_PAGE:#x}"
                        ))));
                    }
                    for (i, _) in targets.iter().enumerate().filter(|(_, &t)| t) {
                        if self.waiting & 1 << i != 0 {
                            self.waiting &= !(1 << i);
                            self.start |= 1 << i;
                        }
                    }
                }
            }
        }
        Ok(step)
    }

    /// One settling round: every CPU that runs takes what it can, in index
    /// order. `None` when it ran to the end of the round.
    fn round<H: Hv + HvExt + Send>(
        &mut self,
        vmm: &mut HvfVmm<H>,
        table: &table::Table,
    ) -> Result<Option<End>> {
        for cpu in 0..self.cpus {
            if self.waiting & 1 << cpu != 0 {
                continue;
            }
            if let Step::End(end) = self.step(vmm, cpu, table)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// Rounds until one in which no CPU recorded anything.
    fn settle<H: Hv + HvExt + Send>(
        &mut self,
        vmm: &mut HvfVmm<H>,
        table: &table::Table,
    ) -> Result<Option<End>> {
        for _ in 0..MAX_SETTLE_ROUNDS {
            let before = (vmm.image.progress(&vmm.ram, self.cpus), self.waiting);
            if let Some(end) = self.round(vmm, table)? {
                return Ok(Some(end));
            }
            if (vmm.image.progress(&vmm.ram, self.cpus), self.waiting) == before {
                return Ok(None);
            }
        }
        Ok(Some(End::Error(format!(
            "the CPUs did not settle within {MAX_SETTLE_ROUNDS} rounds"
        ))))
    }

    /// The whole program: the CPUs' start, then each op and its settling.
    fn program<H: Hv + HvExt + Send>(
        &mut self,
        vmm: &mut HvfVmm<H>,
        scenario: &Scenario,
        table: &table::Table,
    ) -> Result<End> {
        for cpu in 0..self.cpus {
            if self.waiting & 1 << cpu != 0 {
                continue;
            }
            if let Step::End(end) = self.step(vmm, cpu, table)? {
                return Ok(end);
            }
        }
        for (k, op) in scenario.ops.iter().enumerate() {
            let cpu = scenario.cpu_of(k) as usize;
            if cpu >= self.cpus {
                return Ok(End::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, and the scenario has {} CPU(s)",
                    op.keyword(),
                    self.cpus
                )));
            }
            if self.waiting & 1 << cpu != 0 {
                return Ok(End::Error(format!(
                    "op {k} ({}) is on CPU {cpu}, which waits for a startup IPI",
                    op.keyword()
                )));
            }
            vmm.image.post(&mut vmm.ram, cpu, k);
            if let Step::End(end) = self.step(vmm, cpu, table)? {
                return Ok(end);
            }
            if self.waiting & 1 << cpu != 0 {
                return Ok(End::Error(format!(
                    "op {k} ({}): an INIT reached CPU {cpu}, the CPU running the op (its program cannot go on)",
                    op.keyword()
                )));
            }
            if let Some(end) = self.settle(vmm, table)? {
                return Ok(end);
            }
        }
        Ok(End::Stub(EndCode::Completed))
    }
}

/// The trace of a multi-CPU run: every CPU's log, merged by op.
fn finish_smp(name: &str, end: End, image: &Image, ram: &[u8], cpus: usize) -> Result<Trace> {
    run::finish_cpus(name, end, image, ram, cpus)
}
