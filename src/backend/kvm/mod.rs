//! Linux KVM: the guest stub on KVM's in-kernel irqchip (`kvm`), or on KVM's
//! local APIC with the model's IOAPIC in userspace (`kvm-split`,
//! `KVM_CAP_SPLIT_IRQCHIP`), the shape the seed report tried on HVF.
//!
//! One VM per backend instance, reused: every scenario starts from the
//! format's start state, restored with state writes (registers, segments,
//! `KVM_SET_LAPIC` from a clean state, `KVM_SET_IRQCHIP`, lines low).
//! A halted guest is found by kicks: a watchdog thread signals the vCPU
//! thread when one `KVM_RUN` has lasted a whole [`KICK`], and
//! `kvm_run.immediate_exit` (or `KVM_SET_SIGNAL_MASK`) keeps a kick that
//! lands just before an entry from being lost ([`Watchdog`]); where KVM
//! has the vCPU's `blocking` statistic, a vCPU that blocks (halted) is
//! kicked at once. A kick that finds the vCPU halted with nothing that can
//! wake it ([`halt`]) makes a hang; otherwise two kicks in a row that find
//! it halted do (re-entering once first, because this host's KVM was seen
//! to inject only at the next entry from userspace).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_regs, kvm_run, kvm_segment,
    kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};

use super::kvm_stats::BlockingFlag;
use super::run::{self, CallLog, End, MessagePort, Shape, UserspaceIoapic};
use super::{Availability, Backend, BackendError, Result};
use crate::guest::layout::{
    self, EndCode, END_PORT, HYPERCALL_PORT, IOAPIC_BASE, PING_PORT, RAM_SIZE,
};
use crate::guest::{table, Image};
use crate::model::ioapic::{bits as ioapic_bits, InterruptMessage, PINS as IOAPIC_PINS};
use crate::model::lapic::{reg, LVT_MASKED, SVR_ENABLE};
use crate::scenario::{HostOp, IoapicVersion, Op, Scenario};
use crate::trace::Trace;

mod halt;
mod smp;

/// A single `KVM_RUN` that has not returned after this long is kicked to
/// look for a hang. Only an entry this long is kicked, so kicks land when the
/// vCPU blocks (halted), not in a guest making progress: a kick is an exit
/// to userspace, and on this host's KVM exits change when interrupts are
/// injected.
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

/// How a kick that lands while the vCPU thread is outside `KVM_RUN` (about
/// to enter it) still ends the next `KVM_RUN`, instead of being lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickMechanism {
    /// `KVM_CAP_IMMEDIATE_EXIT`: the signal handler sets the vCPU's
    /// `kvm_run.immediate_exit`, and the next `KVM_RUN` returns `EINTR`
    /// without entering the guest.
    ImmediateExit,
    /// `KVM_SET_SIGNAL_MASK`: the kick signal is blocked outside `KVM_RUN`
    /// and unblocked only inside it, so a kick sent outside stays pending
    /// and ends the next `KVM_RUN` at once.
    SignalMask,
}

impl KickMechanism {
    /// The immediate exit where this host's KVM has it, else the signal mask.
    fn probe(kvm: &Kvm) -> KickMechanism {
        if kvm.check_extension(Cap::ImmediateExit) {
            KickMechanism::ImmediateExit
        } else {
            KickMechanism::SignalMask
        }
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running under
    /// [`KickMechanism::ImmediateExit`], for the kick handler; null otherwise.
    /// Const-initialised and without a destructor, so reading it is a plain
    /// TLS access, safe in a signal handler (Firecracker's vCPU kick does
    /// the same).
    static KICKED_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KICKED_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: KICKED_RUN points at the live kvm_run mapping of the vCPU
        // this thread runs (registered by `Running::begin`, cleared before the
        // VM can go away); one volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// What the watchdog shares with the vCPU thread.
struct Watch {
    /// Odd from just before each `KVM_RUN` until it returns, even otherwise:
    /// the vCPU thread stores it around every entry (no system call).
    entries: AtomicU64,
    /// The thread running a scenario, while one runs. The watchdog signals
    /// it only with this lock held, so the thread is alive (inside
    /// `run_loop`) when signalled.
    runner: Mutex<Option<Runner>>,
    stop: AtomicBool,
    /// The entry (its odd `entries` value) last kicked early, because the
    /// vCPU blocked in it (see [`Watchdog`]).
    early_kicked: AtomicU64,
    /// An entry not to kick early: the vCPU thread sets it to its next
    /// entry when an early kick found the vCPU halted but could not tell a
    /// hang, so that the next entry runs a whole [`KICK`] for the two-kick
    /// judgement.
    no_early_kick: AtomicU64,
}

/// The scenario run the watchdog watches.
struct Runner {
    thread: libc::pthread_t,
    /// The running vCPU's `blocking` statistic, when an early kick is
    /// wanted and KVM has it.
    blocking: Option<Arc<BlockingFlag>>,
}

impl Watch {
    fn runner(&self) -> std::sync::MutexGuard<'_, Option<Runner>> {
        self.runner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the kick that ended the entry just left was an early one.
    fn last_kick_was_early(&self) -> bool {
        let left = self.entries.load(Ordering::Relaxed);
        self.early_kicked.load(Ordering::Acquire) == left.wrapping_sub(1)
    }

    /// Keeps the next entry from being kicked early.
    fn no_early_kick_next(&self) {
        let left = self.entries.load(Ordering::Relaxed);
        self.no_early_kick.store(left + 1, Ordering::Release);
    }
}

/// The kick watchdog: a thread per backend that wakes [`WATCH_TICKS`] times
/// per [`KICK`] while a scenario runs, and signals the vCPU thread when the
/// entry counter was odd and unchanged over a whole [`KICK`].
///
/// What this guarantees:
/// - A `KVM_RUN` shorter than [`KICK`] is never kicked: a kick needs the
///   same entry seen at wake-ups a whole [`KICK`] apart. A guest that exits
///   faster than that (one making progress) gets no extra exits from us.
/// - A `KVM_RUN` that blocks (a halted vCPU) or spins is kicked within
///   `KICK * (1 + 1 / WATCH_TICKS)`, and again every [`KICK`] while it stays
///   (a kick is never lost for good), so the run loop sees an exit at least
///   that often and checks [`RUN_LIMIT`] there.
/// - A kick that arrives while the thread is between marking an entry and
///   entering (preempted there) is not lost: see [`KickMechanism`].
/// - What it does not guarantee: if the watchdog itself is preempted between
///   its check and its signal for as long as the vCPU takes to leave and
///   re-enter, the kick lands in a later, progressing `KVM_RUN` (an extra
///   exit, never a hang).
///
/// Early kicks: where the run registered the vCPU's `blocking` statistic
/// ([`BlockingFlag`]), an entry seen at two wake-ups in a row is also
/// kicked as soon as that statistic says the vCPU is blocked in the kernel
/// (halted, not making progress), once per entry: a hang is then found
/// within about two wake-ups instead of two [`KICK`]s. Such a kick counts
/// for the hang judgement only through the halt judgement ([`halt`]); the
/// two-kick rule counts only kicks of entries that lasted a whole [`KICK`].
struct Watchdog {
    watch: Arc<Watch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start() -> std::io::Result<Watchdog> {
        static REGISTER: std::sync::Once = std::sync::Once::new();
        REGISTER.call_once(|| {
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
        });
        let watch = Arc::new(Watch {
            entries: AtomicU64::new(0),
            runner: Mutex::new(None),
            stop: AtomicBool::new(false),
            early_kicked: AtomicU64::new(0),
            no_early_kick: AtomicU64::new(0),
        });
        let shared = Arc::clone(&watch);
        let thread = std::thread::Builder::new()
            .name("kvm-kick".into())
            .spawn(move || watch_loop(&shared))?;
        Ok(Watchdog {
            watch,
            thread: Some(thread),
        })
    }
}

/// Watchdog wake-ups per [`KICK`]: a blocked entry is kicked between one
/// and `1 + 1 / WATCH_TICKS` periods after it began.
const WATCH_TICKS: u32 = 4;

/// Idle wake-ups (no scenario running) before the watchdog parks: back to
/// back scenarios then find it awake, and registering one costs no
/// system call to wake it.
const IDLE_TICKS_BEFORE_PARK: u32 = 16;

fn watch_loop(watch: &Watch) {
    let tick = KICK / WATCH_TICKS;
    // The entry last seen, and at how many wake-ups in a row.
    let mut seen = (0, 0);
    let mut idle = 0;
    while !watch.stop.load(Ordering::Acquire) {
        {
            let runner = watch.runner();
            let Some(Runner { thread, blocking }) = &*runner else {
                seen = (0, 0);
                drop(runner);
                idle += 1;
                if idle >= IDLE_TICKS_BEFORE_PARK {
                    // Idle for a while: sleep until `Running::begin`.
                    idle = 0;
                    std::thread::park();
                } else {
                    std::thread::sleep(tick);
                }
                continue;
            };
            idle = 0;
            let now = watch.entries.load(Ordering::Acquire);
            if now & 1 == 0 || now != seen.0 {
                seen = (now, 0);
            } else {
                seen.1 += 1;
                // Seen inside the same entry WATCH_TICKS ticks apart: it
                // has lasted a whole KICK.
                let long = seen.1 == WATCH_TICKS;
                let early = !long
                    && now != watch.early_kicked.load(Ordering::Relaxed)
                    && now != watch.no_early_kick.load(Ordering::Acquire)
                    && blocking
                        .as_ref()
                        .is_some_and(|b| b.is_set().unwrap_or(false));
                if early {
                    watch.early_kicked.store(now, Ordering::Release);
                }
                if long || early {
                    // SAFETY: `thread` is registered, so it is inside
                    // run_loop and alive; the lock keeps it from
                    // deregistering meanwhile.
                    unsafe { libc::pthread_kill(*thread, kick_signal()) };
                }
                if long {
                    // Kicked again only after another whole KICK.
                    seen.1 = 0;
                }
            }
        }
        std::thread::sleep(tick);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The kick signal as a set.
fn kick_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        set
    }
}

/// `struct kvm_signal_mask` with the kernel's 8-byte x86-64 signal set.
#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; 8],
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    kvm_bindings::KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// [`KickMechanism::SignalMask`]: the mask `KVM_RUN` runs with, this
/// thread's current one without the kick signal.
fn set_run_signal_mask(vcpu: &VcpuFd) -> std::io::Result<()> {
    // SAFETY: querying this thread's mask into a valid set.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a null new set only reads the mask.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: mask is an initialised set.
    unsafe { libc::sigdelset(&mut mask, kick_signal()) };
    let mut arg = KvmSignalMask {
        len: 8,
        sigset: [0; 8],
    };
    // SAFETY: sigset_t is at least 8 bytes; its first 8 are the kernel set.
    let bytes =
        unsafe { std::slice::from_raw_parts((&mask as *const libc::sigset_t).cast::<u8>(), 8) };
    arg.sigset.copy_from_slice(bytes);
    // SAFETY: a vCPU fd and a kvm_signal_mask of len 8 followed by 8 bytes,
    // which is what KVM_SET_SIGNAL_MASK reads.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_SET_SIGNAL_MASK(), &arg) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A scenario's run, registered with the watchdog (and, for the immediate
/// exit, with the kick handler) until dropped.
struct Running<'w> {
    watch: &'w Watch,
    mechanism: KickMechanism,
}

thread_local! {
    /// Whether this thread has unblocked the kick signal and not blocked it
    /// since: a run then unblocks it without a system call.
    static KICK_UNBLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Unblocks the kick signal in this thread, unless it already is.
fn unblock_kick() {
    if !KICK_UNBLOCKED.with(Cell::get) {
        let set = kick_sigset();
        // SAFETY: unblocking one signal of this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        KICK_UNBLOCKED.with(|u| u.set(true));
    }
}

impl<'w> Running<'w> {
    /// `blocking`: the vCPU's `blocking` statistic, for early kicks.
    fn begin(
        watchdog: &'w Watchdog,
        mechanism: KickMechanism,
        run: *mut kvm_run,
        blocking: Option<&Arc<BlockingFlag>>,
    ) -> Running<'w> {
        match mechanism {
            KickMechanism::ImmediateExit => {
                KICKED_RUN.with(|r| r.set(run));
                unblock_kick();
            }
            KickMechanism::SignalMask => {
                let set = kick_sigset();
                // SAFETY: blocking one signal of this thread.
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
                KICK_UNBLOCKED.with(|u| u.set(false));
            }
        }
        *watchdog.watch.runner() = Some(Runner {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            blocking: blocking.cloned(),
        });
        if let Some(thread) = &watchdog.thread {
            thread.thread().unpark();
        }
        Running {
            watch: &watchdog.watch,
            mechanism,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.watch.runner() = None;
        // No kick can be sent from here on; one already sent may be pending.
        match self.mechanism {
            KickMechanism::ImmediateExit => KICKED_RUN.with(|r| r.set(std::ptr::null_mut())),
            KickMechanism::SignalMask => {
                while consume_pending_kick() {}
                unblock_kick();
            }
        }
    }
}

/// [`KickMechanism::SignalMask`]: takes a pending (blocked) kick, if any;
/// true if there was one.
fn consume_pending_kick() -> bool {
    let set = kick_sigset();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid set and timeout; the signal is blocked, so this only
    // dequeues it.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == kick_signal() }
}

/// One call or exit of a run, kept as data: formatting waits until a report
/// asks for the log, off the per-exit path.
enum Call {
    Out {
        port: u16,
        value: u32,
    },
    IoapicRead {
        addr: u64,
        value: u32,
    },
    IoapicWrite {
        addr: u64,
        value: u32,
    },
    IoapicEoi(u8),
    Pin {
        pin: u8,
        requested: bool,
    },
    IrqLine {
        gsi: u8,
        requested: bool,
    },
    SignalMsi {
        addr: u64,
        data: u32,
        result: std::result::Result<libc::c_int, kvm_ioctls::Error>,
    },
    /// ---- PIC (issue 15), split: the userspace pair.
    PicOut {
        port: u16,
        value: u8,
    },
    PicIn {
        port: u16,
        value: u8,
    },
    Interrupt {
        vector: u8,
    },
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Out { port, value } => {
                write!(
                    f,
                    "KVM_RUN -> KVM_EXIT_IO out port {port:#x} value {value:#x}"
                )
            }
            Call::IoapicRead { addr, value } => write!(
                f,
                "KVM_RUN -> KVM_EXIT_MMIO read {addr:#x} = {value:#x} (userspace IOAPIC)"
            ),
            Call::IoapicWrite { addr, value } => write!(
                f,
                "KVM_RUN -> KVM_EXIT_MMIO write {addr:#x} = {value:#x} (userspace IOAPIC)"
            ),
            Call::IoapicEoi(vector) => {
                write!(f, "KVM_RUN -> KVM_EXIT_IOAPIC_EOI vector {vector:#04x}")
            }
            Call::Pin { pin, requested } => write!(
                f,
                "userspace IOAPIC pin {pin} {}",
                if *requested { "asserted" } else { "deasserted" }
            ),
            Call::IrqLine { gsi, requested } => {
                write!(f, "KVM_IRQ_LINE gsi {gsi} level {}", u8::from(*requested))
            }
            Call::SignalMsi { addr, data, result } => write!(
                f,
                "KVM_SIGNAL_MSI address {addr:#x} data {data:#x} -> {result:?}"
            ),
            Call::PicOut { port, value } => write!(
                f,
                "KVM_RUN -> KVM_EXIT_IO out port {port:#x} value {value:#04x} (userspace 8259)"
            ),
            Call::PicIn { port, value } => write!(
                f,
                "KVM_RUN -> KVM_EXIT_IO in port {port:#x} = {value:#04x} (userspace 8259)"
            ),
            Call::Interrupt { vector } => {
                write!(
                    f,
                    "KVM_INTERRUPT vector {vector:#04x} (INTA of the userspace 8259)"
                )
            }
        }
    }
}

/// One VM, in one irqchip shape: one vCPU (CPU 0), or several
/// ([`smp`]: the application processors in `aps`).
struct Vm {
    shape: Shape,
    vm: VmFd,
    vcpu: VcpuFd,
    /// CPUs 1 and up of a multi-CPU VM; empty for one CPU.
    aps: Vec<smp::Ap>,
    /// The KVM vCPU id of each CPU (its APIC ID), CPU 0 first.
    ids: Vec<u32>,
    ram: GuestRam,
    sregs: kvm_sregs,
    lapic: kvm_lapic_state,
    events: kvm_vcpu_events,
    /// Full irqchip: the clean PIC and IOAPIC states.
    irqchips: Vec<kvm_bindings::kvm_irqchip>,
    /// Split: the userspace IOAPIC and the routes KVM was last told.
    ioapic: UserspaceIoapic,
    routes: Vec<(u32, u32)>,
    /// Split: the userspace IOAPIC changed since the routes were synced.
    routes_dirty: bool,
    /// GSIs whose line is (logically) asserted, to lower at reset: the
    /// IOAPIC pins (0-23) and the ISA lines ([`ISA_GSI_BASE`] + N).
    asserted: u64,
    /// ---- PIC (issue 15). Split: the model's 8259 pair in userspace (no
    /// PIC in the kernel), and the host's request at IOAPIC pin 0, which
    /// the pair's INT is ORed with (docs/pic.md). Full: unused.
    pic: crate::model::Pic,
    pin0_host: bool,
    /// Split: the level last driven at the userspace IOAPIC's pin 0 by
    /// `assert 0` or the pair.
    ioapic_pin0: bool,
    /// The last run reached the 8259 pair: the next reset restores it.
    pic_used: bool,
    /// The calls and exits of the current run, for reports.
    calls: CallLog<Call>,
    /// What the last run left for the next reset to restore.
    leftover: Leftover,
    /// `KVM_CAP_SYNC_REGS` has the registers, segments and events: reset
    /// writes them into `kvm_run` for the next `KVM_RUN` to load, instead
    /// of one vCPU ioctl each.
    sync_regs: bool,
    /// The system calls of the current run besides `KVM_RUN`.
    syscalls: Cell<RunCalls>,
    /// Where the current run's time went outside `KVM_RUN`.
    times: Cell<RunTimes>,
    /// CPU 0's `blocking` statistic, for early kicks (one-CPU runs).
    blocking: Option<Arc<BlockingFlag>>,
}

/// What a run left behind, beyond what every reset restores (the LAPIC,
/// the general registers, the vCPU events, the IOAPIC, the lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leftover {
    /// It ended at the stub's end port in xAPIC mode, the APIC base never
    /// written: the segments, the APIC base, the 8259s and the MP state
    /// are as reset left them.
    Nothing,
    /// It was found halted (a hang) in xAPIC mode, the APIC base never
    /// written: as [`Leftover::Nothing`] but for the MP state (halted), and
    /// where it stopped (the segments are rewritten anyway: for free, with
    /// `KVM_CAP_SYNC_REGS`).
    Halted,
    /// Anything else (x2APIC, an APIC base write, an error): everything is
    /// restored, the segments and APIC base first.
    Everything,
}

impl Leftover {
    fn of(end: &End, scenario: &Scenario) -> Leftover {
        let apic_base_kept = scenario.config.apic == crate::scenario::ApicMode::Xapic
            && !scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_)));
        match end {
            End::Stub(_) if apic_base_kept => Leftover::Nothing,
            End::Hang if apic_base_kept => Leftover::Halted,
            _ => Leftover::Everything,
        }
    }
}

/// The system calls a run made besides `KVM_RUN`, by kind: the bench's
/// "ioctls per scenario". On a host where loading a vCPU is dear (a
/// nested or paravirtualised KVM), each vCPU ioctl costs about one exit
/// round trip, while a VM ioctl costs a few hundredths of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCalls {
    /// vCPU ioctls of the reset before the run (`KVM_SET_SREGS`,
    /// `KVM_SET_LAPIC`, `KVM_SET_REGS`, `KVM_SET_VCPU_EVENTS`,
    /// `KVM_SET_MP_STATE`).
    pub reset_vcpu: u32,
    /// VM ioctls of the reset: `KVM_SET_IRQCHIP`, `KVM_IRQ_LINE` lowering
    /// the lines a run left asserted.
    pub reset_vm: u32,
    /// `KVM_SET_GSI_ROUTING` (split shape): at reset and after IOAPIC
    /// writes that change a level-triggered route. It waits for an SRCU
    /// grace period, the dearest call here.
    pub routing: u32,
    /// The time those `KVM_SET_GSI_ROUTING` calls took.
    pub routing_time: Duration,
    /// Host ops and the userspace IOAPIC's messages: `KVM_IRQ_LINE`,
    /// `KVM_SIGNAL_MSI`.
    pub host_op: u32,
    /// The hang judgement after kicks: `KVM_GET_MP_STATE`, and for a
    /// halted vCPU the halt judgement's `KVM_GET_VCPU_EVENTS`,
    /// `KVM_GET_REGS` and `KVM_GET_LAPIC` ([`halt`]).
    pub kick: u32,
}

/// Where a run's time went outside `KVM_RUN`, by phase (the bench's
/// breakdown, `busy_time_per_scenario_us`): each phase is timed at its ends
/// with the vDSO clock (no system call), a few clock reads per run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTimes {
    /// Encoding the scenario's table (`table::encode`).
    pub encode: Duration,
    /// The reset before the run ([`RunCalls::reset_vcpu`], `reset_vm`, the
    /// split shape's routes) and loading the table into guest RAM.
    pub reset: Duration,
    /// Host ops ([`RunCalls::host_op`]) and, split, the userspace IOAPIC's
    /// accesses, EOIs, messages and route changes at exits.
    pub host_ops: Duration,
    /// The hang judgement after kicks ([`RunCalls::kick`]).
    pub judging: Duration,
    /// Decoding the guest's log into the trace (`run::finish`).
    pub finish: Duration,
}

impl RunTimes {
    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: &RunTimes) {
        self.encode += other.encode;
        self.reset += other.reset;
        self.host_ops += other.host_ops;
        self.judging += other.judging;
        self.finish += other.finish;
    }

    /// All of them.
    pub fn total(&self) -> Duration {
        self.encode + self.reset + self.host_ops + self.judging + self.finish
    }
}

impl RunCalls {
    /// All of them.
    pub fn total(&self) -> u32 {
        self.reset_vcpu + self.reset_vm + self.routing + self.host_op + self.kick
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &RunCalls) {
        self.reset_vcpu += other.reset_vcpu;
        self.reset_vm += other.reset_vm;
        self.routing += other.routing;
        self.routing_time += other.routing_time;
        self.host_op += other.host_op;
        self.kick += other.kick;
    }
}

/// The format's start registers for the stub: 64-bit code and flat data
/// segments from its GDT, its IDT, paging on, and an enabled xAPIC as BSP
/// (restoring these also leaves x2APIC mode).
fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: layout::CODE_SELECTOR,
        type_: 0xb, // execute/read, accessed
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
        type_: 0x3, // read/write, accessed
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
    sregs.cr0 = CR0_LONG_MODE;
    sregs.cr3 = layout::PML4;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME_LMA;
    sregs.cr8 = 0;
    sregs.apic_base = layout::LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_BSP;
    sregs
}

/// The clean LAPIC: software-enabled, TPR 0, LVTs masked, nothing pending
/// (the format's start state).
fn clean_lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let mut set = |offset: u16, value: u32| {
        let offset = offset as usize;
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    };
    set(reg::TPR, 0);
    set(reg::SVR, SVR_ENABLE | SPURIOUS_VECTOR);
    for lvt in run::LVTS {
        set(lvt, LVT_MASKED);
    }
    // The 256-bit ISR, TMR and IRR, eight registers 16 bytes apart each.
    for base in [reg::ISR, reg::TMR, reg::IRR] {
        for i in 0..8 {
            set(base + 0x10 * i, 0);
        }
    }
    set(reg::ESR, 0);
    lapic
}

fn errno(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BackendError {
    BackendError::kvm(call)
}

/// IA32_APIC_BASE bits (SDM §11.4.4): this processor is the BSP, and the
/// APIC is globally enabled.
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_ENABLE: u64 = 1 << 11;
/// Control register and EFER bits of the stub's long mode (SDM vol. 3A §2.5).
const CR0_LONG_MODE: u64 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
const CR4_PAE: u64 = 0x20;
const EFER_LME_LMA: u64 = 0x500;
/// RFLAGS at the stub's entry: IF, and bit 1, which is always set.
const RFLAGS_START: u64 = 0x202;
/// The spurious vector the format starts with (SVR 0x1FF with the enable bit).
const SPURIOUS_VECTOR: u32 = 0xff;

impl Vm {
    fn new(kvm: &Kvm, image: &Image, shape: Shape) -> Result<Vm> {
        Vm::with_cpus(kvm, image, shape, &[0])
    }

    /// A VM whose CPU K is the vCPU with id `ids[K]` (its APIC ID). With
    /// more than one, no vCPU is KVM's BSP ([`smp::no_bsp`]).
    fn with_cpus(kvm: &Kvm, image: &Image, shape: Shape, ids: &[u32]) -> Result<Vm> {
        let vm = kvm.create_vm().map_err(errno("KVM_CREATE_VM"))?;
        Vm::create_irqchip(&vm, shape)?;
        let mut ram = Vm::map_ram(&vm, image)?;
        if ids.len() > 1 {
            smp::no_bsp(&vm, ids)?;
        }
        let vcpu = vm
            .create_vcpu(u64::from(ids[0]))
            .map_err(errno("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(errno("KVM_GET_SUPPORTED_CPUID"))?;
        let cpu0_cpuid = if ids.len() > 1 {
            smp::cpuid_for(&cpuid, ids[0])
        } else {
            cpuid.clone()
        };
        vcpu.set_cpuid2(&cpu0_cpuid)
            .map_err(errno("KVM_SET_CPUID2"))?;
        // `timer-wait` counts its bound in the guest's TSC (KVM may scale
        // it); the host-measured rate stays where KVM does not say.
        if let Ok(khz) = vcpu.get_tsc_khz() {
            crate::guest::set_tsc_per_us(ram.bytes_mut(), khz / 1000);
        }
        let mut sregs = long_mode_sregs(vcpu.get_sregs().map_err(errno("KVM_GET_SREGS"))?);
        if ids.len() > 1 {
            // KVM's BSP is the vCPU whose APIC base has the BSP bit
            // (`kvm_vcpu_is_bsp`): without it, an INIT sends CPU 0 to wait
            // for SIPI as it does every other CPU (smp.rs).
            sregs.apic_base &= !APIC_BASE_BSP;
        }
        vcpu.set_sregs(&sregs).map_err(errno("KVM_SET_SREGS"))?;
        let lapic = clean_lapic(vcpu.get_lapic().map_err(errno("KVM_GET_LAPIC"))?);
        let events = vcpu
            .get_vcpu_events()
            .map_err(errno("KVM_GET_VCPU_EVENTS"))?;
        let irqchips = if shape.is_split() {
            Vec::new()
        } else {
            let chips = Vm::clean_irqchips(&vm)?;
            Vm::route_gsis_to_ioapic(&vm)?;
            chips
        };
        let wanted = kvm_bindings::KVM_SYNC_X86_REGS
            | kvm_bindings::KVM_SYNC_X86_SREGS
            | kvm_bindings::KVM_SYNC_X86_EVENTS;
        let synced = vm.check_extension_int(Cap::SyncRegs).max(0) as u32;
        let blocking = BlockingFlag::open(&vm, &vcpu).map(Arc::new);
        let aps = ids[1..]
            .iter()
            .map(|&id| smp::Ap::new(&vm, &cpuid, id))
            .collect::<Result<Vec<_>>>()?;
        Ok(Vm {
            shape,
            vm,
            vcpu,
            aps,
            ids: ids.to_vec(),
            ram,
            sregs,
            lapic,
            events,
            irqchips,
            ioapic: UserspaceIoapic::default(),
            routes: Vec::new(),
            routes_dirty: false,
            asserted: 0,
            pic: userspace_pic(),
            pin0_host: false,
            ioapic_pin0: false,
            pic_used: false,
            calls: CallLog::default(),
            leftover: Leftover::Everything,
            sync_regs: synced & wanted == wanted,
            syscalls: Cell::default(),
            times: Cell::default(),
            blocking,
        })
    }

    /// The in-kernel irqchip (PIC, IOAPIC, LAPIC), or in the split shape the
    /// LAPIC alone, with the IOAPIC's pins as its userspace GSIs.
    fn create_irqchip(vm: &VmFd, shape: Shape) -> Result<()> {
        if shape.is_split() {
            let mut cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = IOAPIC_PINS as u64;
            vm.enable_cap(&cap)
                .map_err(errno("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))
        } else {
            vm.create_irq_chip().map_err(errno("KVM_CREATE_IRQCHIP"))
        }
    }

    /// Guest RAM with the image installed, mapped at guest address 0.
    fn map_ram(vm: &VmFd, image: &Image) -> Result<GuestRam> {
        let mut ram = GuestRam::new(RAM_SIZE).map_err(BackendError::io("guest RAM"))?;
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
        Ok(ram)
    }

    /// The clean 8259 and IOAPIC states: everything masked, nothing
    /// pending (IOAPIC entries masked with vector 0).
    fn clean_irqchips(vm: &VmFd) -> Result<Vec<kvm_bindings::kvm_irqchip>> {
        let mut irqchips = Vec::new();
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
                        entry.bits = ioapic_bits::MASKED;
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
        Ok(irqchips)
    }

    /// GSI n goes to IOAPIC pin n only: the PIC is not in the path of
    /// `assert`. GSI [`ISA_GSI_BASE`] + n is ISA line n (issue 15): PIC IR
    /// n, then IOAPIC pin n, as KVM's default routing wires GSI n
    /// (`kvm_setup_default_irq_routing`).
    fn route_gsis_to_ioapic(vm: &VmFd) -> Result<()> {
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        let mut entries: Vec<kvm_irq_routing_entry> = (0..IOAPIC_PINS as u32)
            .map(|pin| irqchip(pin, KVM_IRQCHIP_IOAPIC, pin))
            .collect();
        for line in (0..16u32).filter(|&l| l != 2) {
            let gsi = ISA_GSI_BASE + line;
            let (chip, pin) = if line < 8 {
                (KVM_IRQCHIP_PIC_MASTER, line)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, line - 8)
            };
            entries.push(irqchip(gsi, chip, pin));
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, line));
        }
        vm.set_gsi_routing(&routing_table(&entries))
            .map_err(errno("KVM_SET_GSI_ROUTING"))
    }

    /// Counts a system call of the current run.
    fn count(&self, kind: impl FnOnce(&mut RunCalls) -> &mut u32) {
        let mut calls = self.syscalls.get();
        *kind(&mut calls) += 1;
        self.syscalls.set(calls);
    }

    /// Adds the time since `start` to a phase of the current run.
    fn spent(&self, phase: impl FnOnce(&mut RunTimes) -> &mut Duration, start: Instant) {
        let mut times = self.times.get();
        *phase(&mut times) += start.elapsed();
        self.times.set(times);
    }

    /// Restores the format's start state and loads `table`.
    ///
    /// What it writes, in this order (the order matters: `KVM_SET_LAPIC`
    /// reads the ID and LDR in the format of the APIC mode it finds, so the
    /// APIC base goes first):
    /// - the IOAPIC (and after anything but a clean run, the 8259s), and the
    ///   lines a run left asserted: VM ioctls, cheap;
    /// - the segments and APIC base, as `KVM_SET_SREGS`, when the run may
    ///   have changed the APIC base ([`Leftover::Everything`]);
    /// - the LAPIC, `KVM_SET_LAPIC`, always: a run changes it, and only a
    ///   vCPU ioctl reads it back;
    /// - the MP state, `KVM_SET_MP_STATE`, unless the run ended at the
    ///   stub's end port (runnable);
    /// - the general registers, the vCPU events, and after a hang the
    ///   segments: through `kvm_run` (`KVM_CAP_SYNC_REGS`), which the next
    ///   `KVM_RUN` loads before it enters, or as ioctls where the cap lacks them.
    fn reset(&mut self, image: &Image, table: &table::Table, scenario: &Scenario) -> Result<()> {
        let start = Instant::now();
        self.syscalls.set(RunCalls::default());
        self.times.set(RunTimes::default());
        let result = self.reset_state(image, table, scenario);
        self.spent(|t| &mut t.reset, start);
        result
    }

    /// [`Vm::reset`]'s writes.
    fn reset_state(
        &mut self,
        image: &Image,
        table: &table::Table,
        scenario: &Scenario,
    ) -> Result<()> {
        let leftover = self.leftover;
        if self.shape.is_split() {
            self.ioapic.reset(scenario.config.ioapic);
            self.sync_routes()?;
            self.pic = userspace_pic();
            self.pin0_host = false;
            self.ioapic_pin0 = false;
            self.vcpu.get_kvm_run().request_interrupt_window = 0;
        } else {
            for gsi in 0..64u32 {
                if self.asserted & (1 << gsi) != 0 {
                    self.count(|c| &mut c.reset_vm);
                    self.vm
                        .set_irq_line(gsi, false)
                        .map_err(errno("KVM_IRQ_LINE"))?;
                }
            }
            // The 8259s are restored masked; after a clean run that did
            // not reach them (no PIC op) only the IOAPIC needs restoring.
            let chips = if leftover == Leftover::Nothing && !self.pic_used {
                &self.irqchips[2..]
            } else {
                &self.irqchips[..]
            };
            for chip in chips {
                self.count(|c| &mut c.reset_vm);
                self.vm
                    .set_irqchip(chip)
                    .map_err(errno("KVM_SET_IRQCHIP"))?;
            }
        }
        self.asserted = 0;
        self.pic_used = scenario.uses_pic();
        self.calls.clear();
        let sregs_by_ioctl = match leftover {
            Leftover::Nothing => false,
            Leftover::Halted => !self.sync_regs,
            Leftover::Everything => true,
        };
        if sregs_by_ioctl {
            self.count(|c| &mut c.reset_vcpu);
            self.vcpu
                .set_sregs(&self.sregs)
                .map_err(errno("KVM_SET_SREGS"))?;
        }
        self.count(|c| &mut c.reset_vcpu);
        self.vcpu
            .set_lapic(&self.lapic)
            .map_err(errno("KVM_SET_LAPIC"))?;
        if leftover != Leftover::Nothing {
            self.count(|c| &mut c.reset_vcpu);
            self.vcpu
                .set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(errno("KVM_SET_MP_STATE"))?;
        }
        let regs = kvm_regs {
            rip: image.stub.entry,
            rsp: layout::STACK_TOP,
            rflags: RFLAGS_START,
            ..Default::default()
        };
        if self.sync_regs {
            // Loaded by the next KVM_RUN before it enters (sync_regs in
            // arch/x86/kvm/x86.c), as KVM_SET_REGS, KVM_SET_SREGS and
            // KVM_SET_VCPU_EVENTS would, in that order. kvm_valid_regs
            // stays 0, so KVM never writes these fields back: a KVM_RUN
            // that returns before loading them (an immediate exit) leaves
            // them and their dirty bits for the next one.
            let synced = self.vcpu.sync_regs_mut();
            synced.regs = regs;
            synced.events = self.events;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            self.vcpu.set_sync_dirty_reg(SyncReg::VcpuEvents);
            if leftover == Leftover::Halted {
                self.vcpu.sync_regs_mut().sregs = self.sregs;
                self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
            } else {
                // Not after KVM_SET_LAPIC (a run that never entered may
                // have left the bit set).
                self.vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
            }
        } else {
            self.count(|c| &mut c.reset_vcpu);
            self.vcpu.set_regs(&regs).map_err(errno("KVM_SET_REGS"))?;
            self.count(|c| &mut c.reset_vcpu);
            self.vcpu
                .set_vcpu_events(&self.events)
                .map_err(errno("KVM_SET_VCPU_EVENTS"))?;
        }
        self.leftover = Leftover::Everything;
        image.load(
            self.ram.bytes_mut(),
            table,
            scenario.config.apic == crate::scenario::ApicMode::X2apic,
        );
        // The LAPIC just written has LINT0 and LINT1 masked (clean_lapic),
        // and the 8259s were restored masked (clean_irqchips) and nothing
        // unmasks them (no op reaches their ports; the split shape has none
        // in the kernel): the stub need not mask them again.
        let at = layout::PREPARED as usize;
        self.ram.bytes_mut()[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        Ok(())
    }

    /// Split irqchip: KVM learns which vectors are level-triggered IOAPIC
    /// vectors (and so exits on their EOI) only from the GSI routing table
    /// (`kvm_scan_ioapic_routes`), so it mirrors the IOAPIC's entries.
    fn sync_routes(&mut self) -> Result<()> {
        let routes: Vec<(u32, u32)> = (0..IOAPIC_PINS)
            .map(|pin| {
                let e = self.ioapic.entry(pin);
                // Only level-triggered routes make KVM exit on their
                // vector's EOI (kvm_scan_ioapic_routes in arch/x86/kvm/irq.c
                // skips edge ones): edge ones are written as empty, so
                // changing them costs no call. A masked level entry keeps
                // its route (as QEMU's ioapic_update_kvm_routes leaves it):
                // its remote IRR is still reset by the EOI (82093AA §3.2.4,
                // bit 14, whatever bit 16 says), so its vector's EOI must
                // still reach this IOAPIC; and mask and unmask change no
                // route.
                if !e.level() {
                    return (0, 0);
                }
                let (addr, data) = msi_of(&message_of(&e));
                (addr as u32, data)
            })
            .collect();
        if routes == self.routes {
            self.routes_dirty = false;
            return Ok(());
        }
        self.count(|c| &mut c.routing);
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
        let routing = routing_table(&entries);
        let start = Instant::now();
        let result = self.vm.set_gsi_routing(&routing);
        let mut calls = self.syscalls.get();
        calls.routing_time += start.elapsed();
        self.syscalls.set(calls);
        result.map_err(errno("KVM_SET_GSI_ROUTING"))?;
        self.routes = routes;
        self.routes_dirty = false;
        Ok(())
    }
}

/// The first GSI of the ISA lines in the full shape's routing (issue 15):
/// ISA line N is GSI 24 + N, to PIC IR N and IOAPIC pin N.
const ISA_GSI_BASE: u32 = 24;

/// The split shape's 8259 pair: the model's, with the VMMs' edge latch
/// (as the model backend runs it, docs/scenario-format.md), masked as the
/// format's start machine has it.
fn userspace_pic() -> crate::model::Pic {
    let mut pic = crate::model::Pic::new(crate::model::PicConfig {
        edge_requests: crate::model::EdgeRequests::HeldUntilAck,
    });
    for port in [0x21, 0xa1] {
        let _ = pic.port_write(port, 0xff);
    }
    pic
}

/// A GSI routing table.
fn routing_table(entries: &[kvm_irq_routing_entry]) -> KvmIrqRouting {
    // It fails only past KVM_MAX_IRQ_ROUTES (4096) entries.
    KvmIrqRouting::from_entries(entries).expect("24 routes fit KVM's routing table")
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

/// The split IOAPIC's message path, and the `msi` host op's: `KVM_SIGNAL_MSI`.
struct MsiPort<'a> {
    vm: &'a VmFd,
    syscalls: &'a Cell<RunCalls>,
}

impl MessagePort for MsiPort<'_> {
    type Error = kvm_ioctls::Error;
    type Call = Call;

    fn send(
        &mut self,
        msg: &InterruptMessage,
        log: &mut CallLog<Call>,
    ) -> std::result::Result<bool, kvm_ioctls::Error> {
        let (addr, data) = msi_of(msg);
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        let mut calls = self.syscalls.get();
        calls.host_op += 1;
        self.syscalls.set(calls);
        let result = self.vm.signal_msi(msi);
        log.note(|| Call::SignalMsi { addr, data, result });
        match result {
            // KVM's slow delivery path (`kvm_irq_delivery_to_apic`, taken
            // when the APIC map is mixed or aliased: xAPIC and x2APIC CPUs
            // together, shared IDs) returns -1 when no APIC matched, which
            // the ioctl passes on as -EPERM: a message that reached no one,
            // not a failure (found by the multi-CPU campaign).
            Err(e) if e.errno() == libc::EPERM => Ok(false),
            result => result.map(|delivered| delivered > 0),
        }
    }
}

/// A failed `KVM_SIGNAL_MSI` ends the run.
fn msi_failed(e: kvm_ioctls::Error) -> String {
    format!("KVM_SIGNAL_MSI: {e}")
}

/// The `kvm` and `kvm-split` backends.
pub struct KvmBackend {
    name: &'static str,
    /// The shape it was opened with (`kvm-split`: always split).
    opened: Shape,
    kvm: Kvm,
    image: Image,
    full: Option<Vm>,
    split: Option<Vm>,
    /// The VM of [`KvmBackend::ping`].
    ping: Option<Vm>,
    /// Multi-CPU VMs, one per (shape, vCPU ids), most recently used last.
    smp: Vec<Vm>,
    /// The most vCPUs this host's KVM gives a VM (`KVM_CAP_MAX_VCPUS`),
    /// at most [`crate::scenario::MAX_CPUS`].
    max_vcpus: usize,
    kicks: Kicks,
    /// Exits (returns from KVM_RUN) in the last run.
    pub last_exits: u64,
    /// The system calls of the last run (with its reset) besides `KVM_RUN`.
    pub last_calls: RunCalls,
    /// Where the last run's time went outside `KVM_RUN`.
    pub last_times: RunTimes,
    /// Whether the last run used the split VM.
    last_split: bool,
    /// Whether the last run used a multi-CPU VM (the last of `smp`).
    last_smp: bool,
    /// `kvm-split-ioapic:DEVICE`: the device in place of the model's IOAPIC.
    device: Option<super::byo::Device>,
}

/// The kick machinery of one backend, and its test hook.
struct Kicks {
    watchdog: Watchdog,
    mechanism: KickMechanism,
    /// Test hook: a pause before the entry that follows each kick.
    delay_entry_after_kick: Option<Duration>,
    /// Kicks of the last run that arrived in the hook's pause, before entry.
    before_entry: u64,
    /// Kicks of the last run that ended a `KVM_RUN` which had not run the
    /// vCPU (and so were not counted for the hang judgement).
    without_entry: u64,
    /// Bench knob: the time the last run spent inside `KVM_RUN`, when
    /// measured (a clock read around each entry, off by default).
    time_in_run: Option<Duration>,
    /// The halt judgement ([`halt`]) and early kicks: on, but for tests of
    /// the two-kick rule.
    judge_halts: bool,
    /// Test hook: the rule that judged the last one-CPU run a hang.
    hang_rule: Option<HangRule>,
}

/// What judged a run a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangRule {
    /// The first kick that found the vCPU halted, with nothing that can
    /// wake it ([`halt`]).
    HaltFinal,
    /// Two kicks in a row, of entries that lasted a whole [`KICK`], that
    /// found the vCPU halted.
    TwoKicks,
}

impl KvmBackend {
    /// `split`: the `kvm-split` backend (always the split shape); otherwise
    /// the scenario's `irqchip=` decides.
    /// `kvm-split-ioapic:DEVICE`: the split shape with `device` as the
    /// userspace IOAPIC (byo.rs).
    pub fn open_with_device(
        name: &'static str,
        device: super::byo::Device,
    ) -> std::result::Result<KvmBackend, super::OpenError> {
        let mut backend = KvmBackend::open(true)?;
        backend.name = name;
        backend.device = Some(device);
        Ok(backend)
    }

    pub fn open(split: bool) -> std::result::Result<KvmBackend, super::OpenError> {
        let (name, opened) = if split {
            ("kvm-split", Shape::Split)
        } else {
            ("kvm", Shape::Full)
        };
        if let Availability::Unavailable(why) = probe(opened.is_split()) {
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
        let watchdog =
            Watchdog::start().map_err(|e| unavailable(format!("kick watchdog thread: {e}")))?;
        let mechanism = KickMechanism::probe(&kvm);
        let max_vcpus = smp::probe_max_vcpus(&kvm);
        Ok(KvmBackend {
            name,
            opened,
            kvm,
            image: Image::build(),
            full: None,
            split: None,
            ping: None,
            smp: Vec::new(),
            max_vcpus,
            kicks: Kicks {
                watchdog,
                mechanism,
                delay_entry_after_kick: None,
                before_entry: 0,
                without_entry: 0,
                time_in_run: None,
                judge_halts: true,
                hang_rule: None,
            },
            last_exits: 0,
            last_calls: RunCalls::default(),
            last_times: RunTimes::default(),
            last_split: false,
            last_smp: false,
            device: None,
        })
    }

    /// How kicks reach this backend's vCPU: probed at open.
    pub fn kick_mechanism(&self) -> KickMechanism {
        self.kicks.mechanism
    }

    /// Test knob: kick with `mechanism` (e.g. the signal-mask fallback on a
    /// host that has the immediate exit).
    #[doc(hidden)]
    pub fn force_kick_mechanism(&mut self, mechanism: KickMechanism) {
        self.kicks.mechanism = mechanism;
    }

    /// Test hook: after every kick, pause `delay` between marking the next
    /// entry and making it, so that the next kick lands outside `KVM_RUN`
    /// (a vCPU thread preempted just before entry).
    #[doc(hidden)]
    pub fn delay_entry_after_kick(&mut self, delay: Option<Duration>) {
        self.kicks.delay_entry_after_kick = delay;
    }

    /// Test knob: judge a hang only by the two-kick rule, without the halt
    /// judgement ([`halt`]) and without early kicks (on by default).
    #[doc(hidden)]
    pub fn judge_halts(&mut self, on: bool) {
        self.kicks.judge_halts = on;
    }

    /// Test hook: the rule that judged the last one-CPU run a hang, if it hung.
    #[doc(hidden)]
    pub fn last_hang_rule(&self) -> Option<HangRule> {
        self.kicks.hang_rule
    }

    /// Test hook: how many kicks of the last run arrived during a
    /// [`delay_entry_after_kick`](Self::delay_entry_after_kick) pause.
    #[doc(hidden)]
    pub fn kicks_before_entry(&self) -> u64 {
        self.kicks.before_entry
    }

    /// Test hook: how many kicks of the last run ended a `KVM_RUN` that had
    /// not run the vCPU (known only with [`KickMechanism::ImmediateExit`]).
    #[doc(hidden)]
    pub fn kicks_without_entry(&self) -> u64 {
        self.kicks.without_entry
    }

    /// Bench knob: measure the time each run spends inside `KVM_RUN`.
    #[doc(hidden)]
    pub fn measure_time_in_run(&mut self, on: bool) {
        self.kicks.time_in_run = on.then_some(Duration::ZERO);
    }

    /// Bench knob: the last run's time inside `KVM_RUN`, if measured.
    #[doc(hidden)]
    pub fn last_time_in_run(&self) -> Option<Duration> {
        self.kicks.time_in_run
    }

    /// Measures the raw exit round trip: a guest doing `count` `out`s in a
    /// loop, each one `KVM_RUN` returning `KVM_EXIT_IO`; returns the time
    /// per round trip. The clock starts at the first exit, so the reset
    /// and the stub's start are not in it, and stops at the stub's last
    /// `out` (its end port): `count` round trips. It runs on a VM of its
    /// own, so that measuring it between scenarios leaves theirs as a
    /// campaign would.
    pub fn ping(&mut self, count: usize) -> Result<Duration> {
        let table = table::pings(count.max(1));
        let KvmBackend {
            kvm, image, ping, ..
        } = self;
        let vm = vm_slot(kvm, image, ping, Shape::Full)?;
        vm.reset(image, &table, &Scenario::default())?;
        let mut start = None;
        let mut exits = 0u64;
        loop {
            match vm.vcpu.run() {
                Ok(VcpuExit::IoOut(PING_PORT, _)) if start.is_none() => {
                    start = Some(Instant::now())
                }
                Ok(VcpuExit::IoOut(PING_PORT, _)) => exits += 1,
                Ok(VcpuExit::IoOut(END_PORT, _)) => {
                    exits += 1;
                    break;
                }
                Ok(VcpuExit::IoOut(..)) => {}
                Ok(other) => return Err(BackendError::UnexpectedExit(format!("{other:?}"))),
                Err(e) => return Err(BackendError::kvm("KVM_RUN")(e)),
            }
        }
        // It ended at the end port, in xAPIC mode, the APIC base untouched.
        vm.leftover = Leftover::Nothing;
        let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
        Ok(elapsed / exits.max(1) as u32)
    }
}

/// The VM of one shape, created on first use.
fn vm_slot<'v>(
    kvm: &Kvm,
    image: &Image,
    slot: &'v mut Option<Vm>,
    shape: Shape,
) -> Result<&'v mut Vm> {
    if slot.is_none() {
        *slot = Some(Vm::new(kvm, image, shape)?);
    }
    Ok(slot.as_mut().expect("just created"))
}

/// Why a scenario cannot run on this shape, if it cannot.
/// Whether this host's KVM offers the TSC-deadline timer: CPUID.01H:ECX
/// bit 24 in `KVM_GET_SUPPORTED_CPUID` (SDM §11.5.4.1). The VMs get the
/// supported CPUID as it is (`Vm::with_cpus`), so the guest sees the bit
/// exactly when KVM's local APIC has the mode. Probed once per process.
pub fn tsc_deadline_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(kvm) = Kvm::new() else { return false };
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .is_ok_and(|cpuid| {
                cpuid
                    .as_slice()
                    .iter()
                    .any(|e| e.function == 1 && e.index == 0 && e.ecx & 1 << 24 != 0)
            })
    })
}

/// What `fit` does for the timer: the TSC-deadline ops go where KVM has no
/// TSC-deadline timer.
fn fit_timer(scenario: &mut Scenario) {
    if !tsc_deadline_supported() {
        scenario.retain_ops(|op| !op.uses_tsc_deadline());
    }
}

fn unsupported(scenario: &Scenario, shape: Shape) -> Option<String> {
    let c = &scenario.config;
    if scenario.uses_tsc_deadline() && !tsc_deadline_supported() {
        return Some(
            "this host's KVM does not offer the TSC-deadline timer (CPUID.01H:ECX[24] clear in KVM_GET_SUPPORTED_CPUID)".into(),
        );
    }
    if scenario.uses_timer_ops() && scenario.uses_smp() {
        return Some("the LAPIC timer ops run on one CPU only".into());
    }
    // ---- PIC (issue 15): the pair is wired to CPU 0 of one CPU.
    if scenario.uses_pic() && scenario.uses_smp() {
        return Some("the 8259 pair is modelled on one CPU only (its INT is CPU 0's LINT0)".into());
    }
    if shape == Shape::Full {
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

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        unsupported(scenario, Shape::for_run(self.opened, scenario))
            .or_else(|| smp::unsupported(scenario))
            .or_else(|| self.device.and_then(|d| d.refuses(scenario)))
    }

    /// Several vCPUs ([`smp`]), up to what this host's KVM gives a VM; a
    /// device under test (`kvm-split-ioapic:DEVICE`) runs on one.
    fn max_cpus(&self) -> usize {
        if self.device.is_some() {
            1
        } else {
            self.max_vcpus
        }
    }

    /// KVM's in-kernel IOAPIC is version 0x11 without directed EOI: a
    /// generated scenario for the full irqchip gets that config. A
    /// generated scenario says the shape it runs as (`kvm-split` runs
    /// every one split), so that the model's exits to the VMM are the
    /// ones the run has (IOAPIC accesses reach userspace).
    fn fit(&self, scenario: &mut Scenario) {
        if let Some(device) = self.device {
            device.fit(scenario);
            return;
        }
        if Shape::for_run(self.opened, scenario).is_split() {
            scenario.config.irqchip = crate::scenario::Irqchip::Split;
        }
        fit_timer(scenario);
        if self.unsupported(scenario).is_some() {
            scenario.config.ioapic = IoapicVersion::V11;
            scenario.config.directed_eoi = false;
        }
    }

    fn calls(&self) -> Vec<String> {
        let vm = if self.last_smp {
            self.smp.last().as_ref().copied()
        } else if self.last_split {
            self.split.as_ref()
        } else {
            self.full.as_ref()
        };
        vm.map_or_else(Vec::new, |vm| vm.calls.lines())
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        let shape = Shape::for_run(self.opened, scenario);
        let name = self.name;
        let encoding = Instant::now();
        let table =
            table::encode(scenario).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        let encode = encoding.elapsed();
        self.last_smp = scenario.uses_smp();
        if self.last_smp {
            return self.execute_smp(scenario, shape, &table);
        }
        self.last_split = shape.is_split();
        let KvmBackend {
            kvm,
            image,
            full,
            split,
            kicks,
            last_exits,
            last_calls,
            last_times,
            device,
            ..
        } = self;
        let slot = match shape {
            Shape::Full => full,
            Shape::Split => split,
        };
        let fresh = slot.is_none();
        let vm = vm_slot(kvm, image, slot, shape)?;
        if let (true, Some(device), Shape::Split) = (fresh, device, shape) {
            vm.ioapic = UserspaceIoapic::with_device(device.make);
        }
        vm.reset(image, &table, scenario)?;
        let apic_base_kept = !scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_)));
        let (end, exits) = run_loop(vm, &table, kicks, apic_base_kept)?;
        *last_exits = exits;
        vm.leftover = Leftover::of(&end, scenario);
        *last_calls = vm.syscalls.get();
        let finishing = Instant::now();
        let trace = run::finish(name, end, image, vm.ram.bytes());
        let mut times = vm.times.get();
        times.encode = encode;
        times.finish = finishing.elapsed();
        *last_times = times;
        trace
    }
}

/// One `KVM_RUN` return, as the run loop handles it.
enum Exit {
    /// `out` to a port.
    Out { port: u16, value: u32 },
    /// A read of the userspace IOAPIC, already answered.
    IoapicRead,
    /// A write to the userspace IOAPIC.
    IoapicWrite { addr: u64, value: u32 },
    /// A level-triggered IOAPIC vector's EOI (split irqchip).
    IoapicEoi(u8),
    /// ---- PIC (issue 15), split: an `out` to an 8259 or ELCR port (an `in`
    /// is answered in [`Entry::enter`]).
    PicOut { port: u16, value: u8 },
    /// `EINTR`: a kick. `entered`: `KVM_RUN` ran the vCPU (the kick did not
    /// just end an entry the thread had not yet made).
    Kicked { entered: bool },
    /// An exit to userspace with nothing to do.
    Nothing,
    /// Split: the 8259 pair was read (a poll read acknowledges).
    PicChanged,
    /// The run ends here.
    End(End),
}

/// The 8259s' data ports (mask writes), which exit only without an
/// in-kernel PIC.
const PIC_MASTER_DATA: u16 = 0x21;
const PIC_SLAVE_DATA: u16 = 0xa1;

/// Exits between two looks at the clock: the run loop checks [`RUN_LIMIT`]
/// on every kick and every this many exits, so a guest that keeps exiting
/// without ending is bounded too, at no per-exit cost.
const LIMIT_CHECK_EXITS: u64 = 1024;

fn over_limit() -> End {
    End::Error(format!("the guest did not finish within {RUN_LIMIT:?}"))
}

/// Runs the vCPU until the stub ends the run, hangs, or fails; returns how it
/// ended and the exits taken.
///
/// Hang judgement: a kick that finds the vCPU halted with nothing that can
/// wake it ([`Vm::halt_is_final`]; `apic_base_kept`: no op of the scenario
/// writes the APIC base); else a kick
/// that finds the vCPU halted, a re-entry, and a second kick that finds it
/// halted again (this host's KVM was seen to inject only at the next entry
/// from userspace, so one kick is not enough), both kicks of entries that
/// lasted a whole [`KICK`]. An entry the kick ended before it was made
/// counts for neither.
fn run_loop(
    vm: &mut Vm,
    table: &table::Table,
    kicks: &mut Kicks,
    apic_base_kept: bool,
) -> Result<(End, u64)> {
    let run = std::ptr::addr_of_mut!(*vm.vcpu.get_kvm_run());
    if kicks.mechanism == KickMechanism::SignalMask {
        set_run_signal_mask(&vm.vcpu).map_err(BackendError::io("KVM_SET_SIGNAL_MASK"))?;
    }
    let Kicks {
        watchdog,
        mechanism,
        delay_entry_after_kick,
        before_entry,
        without_entry,
        time_in_run,
        judge_halts,
        hang_rule,
    } = kicks;
    *without_entry = 0;
    *hang_rule = None;
    if let Some(time) = time_in_run.as_mut() {
        *time = Duration::ZERO;
    }
    let blocking = vm.blocking.as_ref().filter(|_| *judge_halts);
    let _running = Running::begin(watchdog, *mechanism, run, blocking);
    let mut entry = Entry {
        watch: &watchdog.watch,
        mechanism: *mechanism,
        kicks_before_entry: before_entry,
        time_in_run,
    };
    *entry.kicks_before_entry = 0;
    let started = Instant::now();
    let mut exits = 0u64;
    let mut halted_kicks = 0;
    let mut delay_entry = None;
    loop {
        if vm.routes_dirty {
            vm.sync_routes()?;
        }
        if vm.shape.is_split() && vm.pic_used {
            if let Err(end) = vm.offer_extint() {
                return Ok((end, exits));
            }
        }
        exits += 1;
        if exits % LIMIT_CHECK_EXITS == 0 && started.elapsed() > RUN_LIMIT {
            return Ok((over_limit(), exits));
        }
        let exit = entry.enter(vm, 0, delay_entry.take())?;
        let host_op = match exit {
            Exit::Kicked { entered } => {
                if entered {
                    let judging = Instant::now();
                    let early = watchdog.watch.last_kick_was_early();
                    let halted = vm.halted()?;
                    let hang = if !halted {
                        halted_kicks = 0;
                        None
                    } else if *judge_halts && vm.halt_is_final(apic_base_kept)? {
                        Some(HangRule::HaltFinal)
                    } else if early {
                        watchdog.watch.no_early_kick_next();
                        None
                    } else {
                        // Two kicks, or more while a timer may still
                        // wake a `hlt` (its bound, table.rs).
                        halted_kicks += 1;
                        (halted_kicks >= table.halted_kicks_for_hang(KICK))
                            .then_some(HangRule::TwoKicks)
                    };
                    vm.spent(|t| &mut t.judging, judging);
                    if hang.is_some() {
                        *hang_rule = hang;
                        return Ok((End::Hang, exits));
                    }
                    delay_entry = *delay_entry_after_kick;
                } else {
                    *without_entry += 1;
                }
                if started.elapsed() > RUN_LIMIT {
                    return Ok((over_limit(), exits));
                }
                continue;
            }
            Exit::Out { port, value } => match vm.handle_out(port, value) {
                Ok(host_op) => host_op,
                Err(end) => return Ok((end, exits)),
            },
            Exit::IoapicWrite { addr, value } => {
                let start = Instant::now();
                let result = vm.handle_ioapic_write(addr, value);
                vm.spent(|t| &mut t.host_ops, start);
                if let Err(end) = result {
                    return Ok((end, exits));
                }
                None
            }
            Exit::IoapicEoi(vector) => {
                let start = Instant::now();
                let result = vm.handle_ioapic_eoi(vector);
                vm.spent(|t| &mut t.host_ops, start);
                if let Err(end) = result {
                    return Ok((end, exits));
                }
                None
            }
            Exit::IoapicRead | Exit::Nothing => None,
            Exit::PicOut { port, value } => {
                vm.calls.note(|| Call::PicOut { port, value });
                let _ = vm.pic.port_write(port, value);
                if let Err(message) = vm.after_pic() {
                    return Ok((End::Error(message), exits));
                }
                None
            }
            Exit::PicChanged => {
                if let Err(message) = vm.after_pic() {
                    return Ok((End::Error(message), exits));
                }
                None
            }
            Exit::End(end) => return Ok((end, exits)),
        };
        halted_kicks = 0;
        if let Some(index) = host_op {
            let Some(op) = table.host_ops.get(index) else {
                let message = format!("the guest asked for host op {index}, which does not exist");
                return Ok((End::Error(message), exits));
            };
            let start = Instant::now();
            let result = perform(vm, op);
            vm.spent(|t| &mut t.host_ops, start);
            if let Err(message) = result {
                return Ok((End::Error(message), exits));
            }
        }
    }
}

/// What an entry needs of the kick machinery.
struct Entry<'k> {
    watch: &'k Watch,
    mechanism: KickMechanism,
    kicks_before_entry: &'k mut u64,
    time_in_run: &'k mut Option<Duration>,
}

impl Entry<'_> {
    /// One `KVM_RUN`, marked for the watchdog: the only system call on the
    /// per-entry path. `delay`: the test hook, a pause between marking the
    /// entry and making it (the window in which a kick lands outside).
    fn enter(&mut self, vm: &mut Vm, cpu: usize, delay: Option<Duration>) -> Result<Exit> {
        let entries = &self.watch.entries;
        let before = entries.load(Ordering::Relaxed);
        entries.store(before + 1, Ordering::Release);
        let split = vm.shape.is_split();
        let Vm {
            vcpu: cpu0,
            aps,
            ioapic,
            calls,
            pic,
            ..
        } = vm;
        let vcpu = if cpu == 0 {
            cpu0
        } else {
            &mut aps[cpu - 1].vcpu
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
            if kick_is_waiting(vcpu, self.mechanism) {
                *self.kicks_before_entry += 1;
            }
        }
        let clock = self.time_in_run.is_some().then(Instant::now);
        let result = vcpu.run();
        if let (Some(start), Some(time)) = (clock, self.time_in_run.as_mut()) {
            *time += start.elapsed();
        }
        entries.store(before + 2, Ordering::Release);
        Ok(match result {
            Ok(VcpuExit::IoOut(port, data)) if split && is_pic_port(port) => Exit::PicOut {
                port,
                value: data.first().copied().unwrap_or(0),
            },
            Ok(VcpuExit::IoIn(port, data)) if split && is_pic_port(port) => {
                let value = pic.port_read(port).unwrap_or(0xff);
                if let Some(byte) = data.first_mut() {
                    *byte = value;
                }
                calls.note(|| Call::PicIn { port, value });
                Exit::PicChanged
            }
            Ok(VcpuExit::IrqWindowOpen) => Exit::Nothing,
            Ok(VcpuExit::IoOut(port, data)) => Exit::Out {
                port,
                value: data.iter().rev().fold(0u32, |acc, b| acc << 8 | *b as u32),
            },
            Ok(VcpuExit::MmioRead(addr, data)) if split && run::in_ioapic_window(addr) => {
                let value = ioapic.mmio_read(addr - IOAPIC_BASE);
                calls.note(|| Call::IoapicRead { addr, value });
                let n = data.len().min(4);
                data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
                Exit::IoapicRead
            }
            Ok(VcpuExit::MmioWrite(addr, data)) if split && run::in_ioapic_window(addr) => {
                let mut bytes = [0u8; 4];
                let n = data.len().min(4);
                bytes[..n].copy_from_slice(&data[..n]);
                Exit::IoapicWrite {
                    addr,
                    value: u32::from_le_bytes(bytes),
                }
            }
            Ok(VcpuExit::IoapicEoi(vector)) if split => Exit::IoapicEoi(vector),
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                Exit::End(End::Error(format!("unexpected MMIO access at {addr:#x}")))
            }
            Ok(VcpuExit::Shutdown) => Exit::End(End::Error(
                "the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into(),
            )),
            Ok(VcpuExit::InternalError) => Exit::End(End::Error(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR, e.g. an emulation failure)".into(),
            )),
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::End(End::Error(format!(
                "VM entry failed (hardware reason {reason:#x})"
            ))),
            Ok(VcpuExit::Hlt) => Exit::End(End::Hang),
            Ok(VcpuExit::Intr) => Exit::Nothing,
            Ok(other) => Exit::End(End::Error(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Kicked {
                entered: take_kick(vcpu, self.mechanism),
            },
            Err(e) => return Err(BackendError::kvm("KVM_RUN")(e)),
        })
    }
}

/// After an `EINTR`: clears the kick so the next entry runs, and says whether
/// `KVM_RUN` had run the vCPU. With the immediate exit, KVM writes
/// `KVM_EXIT_INTR` only when a signal ended a real run; the immediate-exit
/// path returns before touching `exit_reason`, which is reset here so the
/// next `EINTR` tells again. With the signal mask it cannot be told apart:
/// every `EINTR` counts as a run.
fn take_kick(vcpu: &mut VcpuFd, mechanism: KickMechanism) -> bool {
    match mechanism {
        KickMechanism::ImmediateExit => {
            let run = std::ptr::addr_of_mut!(*vcpu.get_kvm_run());
            // SAFETY: the vCPU's kvm_run mapping, written by this thread
            // and its kick handler only; volatile so the handler's store is seen.
            unsafe {
                let entered = (*run).exit_reason == kvm_bindings::KVM_EXIT_INTR;
                std::ptr::addr_of_mut!((*run).exit_reason)
                    .write_volatile(kvm_bindings::KVM_EXIT_UNKNOWN);
                std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0);
                entered
            }
        }
        KickMechanism::SignalMask => {
            // Kicks are realtime signals, which queue: take them all.
            while consume_pending_kick() {}
            true
        }
    }
}

/// The test hook's look: a kick has arrived and waits for the next entry.
fn kick_is_waiting(vcpu: &mut VcpuFd, mechanism: KickMechanism) -> bool {
    match mechanism {
        KickMechanism::ImmediateExit => {
            let run = std::ptr::addr_of_mut!(*vcpu.get_kvm_run());
            // SAFETY: as in take_kick.
            unsafe { std::ptr::addr_of!((*run).immediate_exit).read_volatile() != 0 }
        }
        KickMechanism::SignalMask => {
            // SAFETY: sigpending fills the set it is given.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut set);
                libc::sigismember(&set, kick_signal()) == 1
            }
        }
    }
}

impl Vm {
    fn halted(&self) -> Result<bool> {
        self.count(|c| &mut c.kick);
        let mp = self
            .vcpu
            .get_mp_state()
            .map_err(errno("KVM_GET_MP_STATE"))?;
        Ok(mp.mp_state == KVM_MP_STATE_HALTED)
    }

    /// Whether the halted vCPU can never leave `hlt` ([`halt`]): no event
    /// pending in KVM, and IF = 0 or, the APIC globally enabled, no
    /// interrupt its local APIC can deliver. `apic_base_kept`: no op of the
    /// scenario writes the APIC base, so the APIC is enabled as reset left
    /// it; otherwise `KVM_GET_SREGS` tells. Up to four vCPU ioctls, counted
    /// with the kick's.
    fn halt_is_final(&self, apic_base_kept: bool) -> Result<bool> {
        self.count(|c| &mut c.kick);
        let events = self
            .vcpu
            .get_vcpu_events()
            .map_err(errno("KVM_GET_VCPU_EVENTS"))?;
        if !halt::no_pending_event(&events) {
            return Ok(false);
        }
        self.count(|c| &mut c.kick);
        let regs = self.vcpu.get_regs().map_err(errno("KVM_GET_REGS"))?;
        if regs.rflags & halt::RFLAGS_IF == 0 {
            return Ok(true);
        }
        if !apic_base_kept {
            self.count(|c| &mut c.kick);
            let sregs = self.vcpu.get_sregs().map_err(errno("KVM_GET_SREGS"))?;
            if sregs.apic_base & APIC_BASE_ENABLE == 0 {
                return Ok(false);
            }
        }
        self.count(|c| &mut c.kick);
        let lapic = self.vcpu.get_lapic().map_err(errno("KVM_GET_LAPIC"))?;
        Ok(halt::no_deliverable_interrupt(&lapic))
    }

    /// An `out`: a host op to perform, nothing, or the end of the run.
    fn handle_out(&mut self, port: u16, value: u32) -> std::result::Result<Option<usize>, End> {
        if port != PING_PORT {
            self.calls.note(|| Call::Out { port, value });
        }
        match port {
            HYPERCALL_PORT => Ok(Some(value as usize)),
            END_PORT => Err(EndCode::from_u32(value)
                .map_or_else(|| End::Error(format!("bad end code {value}")), End::Stub)),
            PIC_MASTER_DATA | PIC_SLAVE_DATA | PING_PORT => Ok(None),
            other => Err(End::Error(format!("unexpected out to port {other:#x}"))),
        }
    }

    /// A write to the userspace IOAPIC; its routes are synced before the next entry.
    fn handle_ioapic_write(&mut self, addr: u64, value: u32) -> std::result::Result<(), End> {
        self.calls.note(|| Call::IoapicWrite { addr, value });
        let result = self.ioapic.mmio_write(
            addr - IOAPIC_BASE,
            value,
            &mut MsiPort {
                vm: &self.vm,
                syscalls: &self.syscalls,
            },
            &mut self.calls,
        );
        self.routes_dirty = true;
        result.map_err(|e| End::Error(msi_failed(e)))
    }

    /// A level-triggered vector's EOI, broadcast to the userspace IOAPIC.
    fn handle_ioapic_eoi(&mut self, vector: u8) -> std::result::Result<(), End> {
        self.calls.note(|| Call::IoapicEoi(vector));
        self.ioapic
            .eoi(
                vector,
                &mut MsiPort {
                    vm: &self.vm,
                    syscalls: &self.syscalls,
                },
                &mut self.calls,
            )
            .map_err(|e| End::Error(msi_failed(e)))
    }
}

/// Performs a host op. `assert` means "interrupt requested", whatever the
/// pin's polarity: both KVM's IOAPIC and the model's take the logical level.
fn perform(vm: &mut Vm, op: &HostOp) -> std::result::Result<(), String> {
    match *op {
        HostOp::Assert(pin) => vm.drive(pin.get(), true),
        HostOp::Deassert(pin) => vm.drive(pin.get(), false),
        HostOp::Pulse(pin) => {
            vm.drive(pin.get(), true)?;
            vm.drive(pin.get(), false)
        }
        HostOp::Msi(m) => MsiPort {
            vm: &vm.vm,
            syscalls: &vm.syscalls,
        }
        .send(&m.message(), &mut vm.calls)
        .map(|_| ())
        .map_err(msi_failed),
        HostOp::IsaAssert(l) => vm.drive_isa(l.get(), true),
        HostOp::IsaDeassert(l) => vm.drive_isa(l.get(), false),
        HostOp::IsaPulse(l) => {
            vm.drive_isa(l.get(), true)?;
            vm.drive_isa(l.get(), false)
        }
    }
}

/// The 8259s' and ELCRs' ports (docs/pic.md).
fn is_pic_port(port: u16) -> bool {
    crate::scenario::PicPort::new(port).is_some()
}

/// `KVM_INTERRUPT` (`_IOW(KVMIO, 0x86, struct kvm_interrupt)`), which
/// kvm-ioctls does not wrap: with the split irqchip it queues an ExtINT
/// vector (`pending_external_vector`, arch/x86/kvm/x86.c
/// `kvm_vcpu_ioctl_interrupt`), taken when LINT0 accepts it
/// (`kvm_cpu_has_extint` in arch/x86/kvm/irq.c).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

fn kvm_interrupt(vcpu: &VcpuFd, vector: u8) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
    // SAFETY: KVM_INTERRUPT reads one struct kvm_interrupt, which lives
    // for the call; the fd is this vCPU's.
    let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_INTERRUPT as _, &irq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Vm {
    /// ISA line `line` to `high` (issue 15). Full: KVM_IRQ_LINE on its GSI
    /// ([`ISA_GSI_BASE`] + line: PIC IR line and IOAPIC pin line). Split:
    /// the userspace pair, then the userspace IOAPIC's pin.
    fn drive_isa(&mut self, line: u8, high: bool) -> std::result::Result<(), String> {
        if self.shape.is_split() {
            let _ = self.pic.set_irq(line, high);
            self.after_pic()?;
            if line == 0 {
                self.pin0_host = high;
                let level = high || self.pic.int_output();
                return self.drive(0, level);
            }
            return self.drive(line, high);
        }
        let gsi = ISA_GSI_BASE + line as u32;
        if high {
            self.asserted |= 1 << gsi;
        } else {
            self.asserted &= !(1 << gsi);
        }
        self.calls.note(|| Call::IrqLine {
            gsi: gsi as u8,
            requested: high,
        });
        self.count(|c| &mut c.host_op);
        self.vm
            .set_irq_line(gsi, high)
            .map_err(|e| format!("KVM_IRQ_LINE: {e}"))
    }

    /// Split: the pair changed: its INT drives the userspace IOAPIC's pin 0
    /// (ORed with the host's request there), as the model wires it.
    fn after_pic(&mut self) -> std::result::Result<(), String> {
        let int = self.pic.int_output();
        let level = self.pin0_host || int;
        if self.ioapic_pin0 != level {
            self.ioapic_pin0 = level;
            self.drive(0, level)?;
        }
        Ok(())
    }

    /// Split, before an entry: the pair's INT high is offered to the vCPU
    /// as QEMU's `kvm_arch_pre_run` does: when `kvm_run` says the vCPU can
    /// take an external interrupt now (IF set and LINT0 accepting it), the
    /// INTA (the pair's vector) and `KVM_INTERRUPT`; otherwise an
    /// interrupt-window exit is asked for.
    fn offer_extint(&mut self) -> std::result::Result<(), End> {
        let int = self.pic.int_output();
        let run = self.vcpu.get_kvm_run();
        if !int {
            run.request_interrupt_window = 0;
            return Ok(());
        }
        if run.ready_for_interrupt_injection == 0 {
            run.request_interrupt_window = 1;
            return Ok(());
        }
        run.request_interrupt_window = 0;
        let vector = self.pic.acknowledge();
        self.calls.note(|| Call::Interrupt { vector });
        self.count(|c| &mut c.host_op);
        kvm_interrupt(&self.vcpu, vector).map_err(|e| End::Error(format!("KVM_INTERRUPT: {e}")))?;
        self.after_pic().map_err(End::Error)
    }
}

impl Vm {
    /// Drives IOAPIC pin `pin` to the logical level `requested`.
    fn drive(&mut self, pin: u8, requested: bool) -> std::result::Result<(), String> {
        if requested {
            self.asserted |= 1 << pin;
        } else {
            self.asserted &= !(1 << pin);
        }
        if self.shape.is_split() {
            self.calls.note(|| Call::Pin { pin, requested });
            return self
                .ioapic
                .set_irq(
                    pin as usize,
                    requested,
                    &mut MsiPort {
                        vm: &self.vm,
                        syscalls: &self.syscalls,
                    },
                    &mut self.calls,
                )
                .map_err(msi_failed);
        }
        // KVM's in-kernel IOAPIC takes KVM_IRQ_LINE's level as the request
        // itself and never looks at the polarity bit (ioapic_set_irq in
        // arch/x86/kvm/ioapic.c), so the logical level is what is driven.
        self.calls.note(|| Call::IrqLine {
            gsi: pin,
            requested,
        });
        self.count(|c| &mut c.host_op);
        self.vm
            .set_irq_line(pin as u32, requested)
            .map_err(|e| format!("KVM_IRQ_LINE: {e}"))
    }
}

/// Bench: the VMs' vCPUs, for KVM's own statistics of them (`kvm_stats.rs`).
impl KvmBackend {
    /// The VM and vCPU (index 0) the last run used, if one ran.
    #[doc(hidden)]
    pub fn last_run_vcpu(&self) -> Option<(&VmFd, &VcpuFd, u32)> {
        let vm = if self.last_split {
            &self.split
        } else {
            &self.full
        };
        vm.as_ref().map(|vm| (&vm.vm, &vm.vcpu, 0))
    }

    /// The VM and vCPU of [`KvmBackend::ping`], once it has run.
    #[doc(hidden)]
    pub fn ping_vcpu(&self) -> Option<(&VmFd, &VcpuFd, u32)> {
        self.ping.as_ref().map(|vm| (&vm.vm, &vm.vcpu, 0))
    }
}
