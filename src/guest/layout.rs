//! Guest physical memory layout of the stub (identity-mapped) and its ports.
//!
//! ```text
//! 0x0000_1000  GDT (null, 64-bit code 0x08, data 0x10)
//! 0x0000_2000  IDT (256 interrupt gates)
//! 0x0000_3000  PML4, 0x4000 PDPT
//! 0x0000_8000  the SIPI page (STARTUP vector 0x08): the APs' real-mode entry
//! 0x0000_9000  QEMU's boot trampoline
//! 0x0000_b000  four page directories, 0xb000-0xefff
//!              (2 MiB pages identity-mapping 0-4 GiB; the APIC pages uncached)
//! 0x0001_0000  stub code
//! 0x0001_8000  CPU 0's stack (grows down from 0x1f000)
//! 0x0002_0000  data: current op, counters, mode, log pointer, handler tables
//!              (CPU 0's per-CPU block, and the globals)
//! 0x0002_2000  op table: the program, then handler bodies (16 bytes per op)
//! 0x0010_0000  CPU 0's event log (2 MiB)
//! 0x0030_0000  CPUs 1-7: one 128 KiB block each (data, stack, event log)
//! ```
//!
//! Several CPUs (docs/guest-stub.md, "Several CPUs"): every CPU has a
//! per-CPU block whose address the stub keeps in RBP. CPU 0's is [`DATA`],
//! so its per-CPU fields are where the single-CPU stub always had them;
//! CPU K >= 1's is [`cpu_block`]`(K)`. A per-CPU field is at the same
//! offset in every block (the `PCPU_*` offsets); a global field is in
//! [`DATA`] only and is read at its absolute address by every CPU.

/// Guest RAM size, mapped at guest physical 0.
pub const RAM_SIZE: usize = 4 << 20;

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const PML4: u64 = 0x3000;
pub const PDPT: u64 = 0x4000;
/// The four page directories (moved from 0x5000 to free the SIPI page).
pub const PD: u64 = 0xb000;
pub const CODE: u64 = 0x1_0000;
pub const CODE_END: u64 = 0x1_8000;
pub const STACK_TOP: u64 = 0x1_f000;

pub const DATA: u64 = 0x2_0000;
/// Global u32: index of the top-level op running now (or settling: the
/// events of every CPU carry it).
pub const CUR_OP: u64 = DATA;
/// Global u32: deliveries so far in this run, on all CPUs together (the
/// storm limit counts them all); the stub adds with `lock xadd`.
pub const DELIVERIES: u64 = DATA + 0x4;
/// Per-CPU u32 (CPU 0's): 1 when the CPU's APIC is in x2APIC mode.
pub const X2APIC: u64 = DATA + PCPU_X2APIC;
/// u32: the port the stub's end-of-run `out` goes to ([`END_PORT`] under
/// KVM and HVF, QEMU's isa-debug-exit under TCG).
pub const END_PORT_VAR: u64 = DATA + 0xc;
/// u64: where the stub jumps at the end of a run instead of its `out`
/// (0: no handler). QEMU's batches save the run and reset the machine there.
pub const END_HANDLER: u64 = DATA + 0x20;
/// Per-CPU u32 (CPU 0's): set to 1 by the stub's #GP handler when it
/// skips a faulting RDMSR/WRMSR; the op that may fault clears it first and
/// reads it after.
pub const GP_FAULTED: u64 = DATA + PCPU_GP_FAULTED;
/// u32: 1 when the VMM's reset already leaves the 8259s and LVT LINT0 and
/// LINT1 masked (KVM's does): the stub's start skips masking them again,
/// four accesses the hypervisor would emulate on every run. 0 (the other
/// backends): the stub masks them.
pub const PREPARED: u64 = DATA + 0x2c;
/// u32: set to 1 by QEMU's trampoline when it enters the stub.
pub const BOOTED: u64 = DATA + 0x18;
/// Per-CPU u64 (CPU 0's): where the next log record goes.
pub const LOG_PTR: u64 = DATA + PCPU_LOG_PTR;
/// Per-CPU u32 x 256 (CPU 0's): deliveries per vector on this CPU.
pub const COUNTS: u64 = DATA + PCPU_COUNTS;
/// Per-CPU u64 x 256 (CPU 0's): address of each vector's plain handler body.
pub const BODY_DIR: u64 = DATA + PCPU_BODY_DIR;
/// Per-CPU (CPU 0's): (u32 vector, u32 n, u64 body) entries for `V#N`
/// bodies, ended by vector 0xffff_ffff.
pub const NTH_TABLE: u64 = DATA + PCPU_NTH_TABLE;
pub const NTH_TABLE_END: u64 = DATA + PCPU_NTH_TABLE_END;
/// Global u32: 1 when the scenario has several CPUs: every CPU, CPU 0
/// included, runs the mailbox loop (ops posted one at a time, see
/// [`PCPU_MAILBOX`]) instead of CPU 0 running the whole program.
pub const SMP: u64 = DATA + 0x48;
/// Global u32: how many CPUs the scenario has (informational: for a
/// trampoline that must tell which CPU it runs on).
pub const CPUS: u64 = DATA + 0x4c;
/// Global u32: TSC cycles per µs, for `timer-wait`'s bound (written by
/// [`super::Image::install`] from the host's TSC, and by a VMM that knows
/// the guest's TSC rate better, e.g. KVM's `KVM_GET_TSC_KHZ`).
pub const TSC_PER_US: u64 = DATA + 0xf8;
/// Global u64: code every CPU's mailbox loop calls on each pass when it
/// is not 0 (QEMU's in-guest driver of the per-op protocol; 0 under a
/// VMM that drives it from its exits).
pub const IDLE_HOOK: u64 = DATA + 0x50;

// ---- Per-CPU fields: offsets within a CPU's block (RBP in the stub).

/// u32: x2APIC mode flag (the stub switches at its start when it is 1, and
/// follows `apic-base` writes).
pub const PCPU_X2APIC: u64 = 0x8;
/// u64: where this CPU's next log record goes.
pub const PCPU_LOG_PTR: u64 = 0x10;
/// u32: the #GP handler's flag (see [`GP_FAULTED`]).
pub const PCPU_GP_FAULTED: u64 = 0x28;
/// u32: this CPU's index (written by the stub at its entry).
pub const PCPU_INDEX: u64 = 0x30;
/// u32: the op posted to this CPU: top-level op index + 1; 0 for none.
/// The CPU takes it in its mailbox loop (clearing it first), writes
/// [`CUR_OP`], runs the op, adds 1 to [`PCPU_OPS_DONE`] and goes idle.
pub const PCPU_MAILBOX: u64 = 0x34;
/// u64: the end of this CPU's log (a record that would reach it ends the
/// run: log full). Written by the stub at its entry.
pub const PCPU_LOG_LIMIT: u64 = 0x38;
/// u32: ops this CPU has completed from its mailbox in this run.
pub const PCPU_OPS_DONE: u64 = 0x40;
/// u32: passes of this CPU's mailbox loop (never reset; a driver in the
/// guest compares two readings: a CPU that passed twice has been at an
/// instruction boundary of its loop with its own IF since the first).
pub const PCPU_IDLE_PASSES: u64 = 0x44;
/// u32 x 256: deliveries per vector on this CPU (`V#N` counts them).
pub const PCPU_COUNTS: u64 = 0x100;
/// u64 x 256: this CPU's plain body of each vector (`V@K`, else `V`, else `eoi`).
pub const PCPU_BODY_DIR: u64 = 0x800;
/// This CPU's `V#N` table (`V#N@K`, and `V#N` unless a `V@K` body exists).
pub const PCPU_NTH_TABLE: u64 = 0x1000;
pub const PCPU_NTH_TABLE_END: u64 = 0x2000;
/// Within an AP's block: its stack top (the stack grows down to 0x2000).
pub const AP_STACK_TOP: u64 = 0x8000;
/// Within an AP's block: its event log, up to the block's end.
pub const AP_LOG: u64 = 0x8000;
pub const AP_LOG_END: u64 = AP_STRIDE;
/// The APs' blocks: CPU K >= 1 at `AP_BLOCKS + (K - 1) * AP_STRIDE`.
pub const AP_BLOCKS: u64 = 0x30_0000;
pub const AP_STRIDE: u64 = 0x2_0000;
/// The most CPUs the layout has blocks for.
pub const MAX_CPUS: usize = 8;

/// CPU `cpu`'s per-CPU block (RBP in the stub): [`DATA`] for CPU 0.
pub const fn cpu_block(cpu: usize) -> u64 {
    if cpu == 0 {
        DATA
    } else {
        AP_BLOCKS + (cpu as u64 - 1) * AP_STRIDE
    }
}

/// CPU `cpu`'s stack top.
pub const fn cpu_stack_top(cpu: usize) -> u64 {
    if cpu == 0 {
        STACK_TOP
    } else {
        cpu_block(cpu) + AP_STACK_TOP
    }
}

/// CPU `cpu`'s event log: start and end.
pub const fn cpu_log(cpu: usize) -> (u64, u64) {
    if cpu == 0 {
        (LOG, LOG_END)
    } else {
        (cpu_block(cpu) + AP_LOG, cpu_block(cpu) + AP_LOG_END)
    }
}

/// The SIPI page: a STARTUP IPI with vector 0x08 starts the AP in real
/// mode at 0x0800:0000 (SDM vol. 3A §9.4.4.1). What the page holds is the
/// backend's: [`Image::install`](super::Image::install) puts the
/// VMM-assisted entry there (`out` to [`AP_START_PORT`]); an in-guest
/// trampoline (QEMU) may replace it, ending at `Stub::sipi_entry`.
pub const SIPI_PAGE: u64 = (crate::scenario::SIPI_VECTOR as u64) << 12;
pub const OPS: u64 = DATA + 0x2000;
pub const OPS_END: u64 = 0x10_0000;
pub const LOG: u64 = 0x10_0000;
pub const LOG_END: u64 = 0x30_0000;

/// The stub's own segment selectors.
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// `out` to this port: the VMM performs host op number EAX, then resumes.
pub const HYPERCALL_PORT: u16 = 0x0510;
/// `out` to this port: the run ends; EAX is an [`EndCode`].
pub const END_PORT: u16 = 0x0511;
/// `out` to this port: nothing (the benchmark's raw exit round trip).
pub const PING_PORT: u16 = 0x0512;
/// `out` to this port from the SIPI page, in real mode: the VMM gives the
/// vCPU that made it the long-mode start state at `Stub::sipi_entry` with
/// EDI = its CPU index (docs/guest-stub.md, "Several CPUs").
pub const AP_START_PORT: u16 = 0x0513;
/// `out` to this port (EAX = the CPU index): the CPU is idle in its
/// mailbox loop: the op it was given is done, or it has taken what it
/// could. The VMM may post an op to its mailbox before resuming it; an
/// `out` to an unassigned port is ignored by QEMU, so there the loop spins.
pub const IDLE_PORT: u16 = 0x0514;
/// QEMU's `isa-debug-exit` device: an `out` of V exits with status 2V+1.
pub const QEMU_EXIT_PORT: u16 = 0x00f4;
/// QEMU's `pc-testdev`: a byte written to 0x2000+N sets ISA IRQ line N.
pub const QEMU_TESTDEV_IRQ_PORT: u16 = 0x2000;
/// The real-mode-to-long-mode trampoline a QEMU boot jumps to.
pub const TRAMPOLINE: u64 = 0x9000;

/// Why the stub ended the run (EAX of the `out` to [`END_PORT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EndCode {
    Completed = 0,
    /// The 65th delivery: a storm.
    Storm = 1,
    /// The event log is full.
    LogFull = 2,
    /// A #GP at an instruction other than the stub's RDMSR/WRMSR (a stub
    /// bug or a backend that faults where nothing may fault).
    UnexpectedFault = 3,
}

impl EndCode {
    pub fn from_u32(v: u32) -> Option<EndCode> {
        match v {
            0 => Some(EndCode::Completed),
            1 => Some(EndCode::Storm),
            2 => Some(EndCode::LogFull),
            3 => Some(EndCode::UnexpectedFault),
            _ => None,
        }
    }
}
