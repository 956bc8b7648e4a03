//! Guest physical memory layout of the stub (identity-mapped) and its ports.
//!
//! ```text
//! 0x0000_1000  GDT (null, 64-bit code 0x08, data 0x10)
//! 0x0000_2000  IDT (256 interrupt gates)
//! 0x0000_3000  PML4, 0x4000 PDPT, 0x5000-0x8fff four page directories
//!              (2 MiB pages identity-mapping 0-4 GiB; the APIC pages uncached)
//! 0x0001_0000  stub code
//! 0x0001_8000  stack (grows down from 0x1f000)
//! 0x0002_0000  data: current op, counters, mode, log pointer, handler tables
//! 0x0002_2000  op table: the program, then handler bodies (16 bytes per op)
//! 0x0010_0000  event log (2 MiB)
//! ```

/// Guest RAM size, mapped at guest physical 0.
pub const RAM_SIZE: usize = 4 << 20;

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const PML4: u64 = 0x3000;
pub const PDPT: u64 = 0x4000;
pub const PD: u64 = 0x5000;
pub const CODE: u64 = 0x1_0000;
pub const CODE_END: u64 = 0x1_8000;
pub const STACK_TOP: u64 = 0x1_f000;

pub const DATA: u64 = 0x2_0000;
/// u32: index of the top-level op running now.
pub const CUR_OP: u64 = DATA;
/// u32: deliveries so far in this run.
pub const DELIVERIES: u64 = DATA + 0x4;
/// u32: 1 when the scenario runs in x2APIC mode.
pub const X2APIC: u64 = DATA + 0x8;
/// u32: the port the stub's end-of-run `out` goes to ([`END_PORT`] under
/// KVM and HVF, QEMU's isa-debug-exit under TCG).
pub const END_PORT_VAR: u64 = DATA + 0xc;
/// u64: where the stub jumps at the end of a run instead of its `out`
/// (0: no handler). QEMU's batches save the run and reset the machine there.
pub const END_HANDLER: u64 = DATA + 0x20;
/// u32: set to 1 by the stub's #GP handler when it skips a faulting
/// RDMSR/WRMSR; the op that may fault clears it first and reads it after.
pub const GP_FAULTED: u64 = DATA + 0x28;
/// u32: 1 when the VMM's reset already leaves the 8259s and LVT LINT0 and
/// LINT1 masked (KVM's does): the stub's start skips masking them again,
/// four accesses the hypervisor would emulate on every run. 0 (the other
/// backends): the stub masks them.
pub const PREPARED: u64 = DATA + 0x2c;
/// u32: set to 1 by QEMU's trampoline when it enters the stub.
pub const BOOTED: u64 = DATA + 0x18;
/// u64: where the next log record goes.
pub const LOG_PTR: u64 = DATA + 0x10;
/// u32 x 256: deliveries per vector.
pub const COUNTS: u64 = DATA + 0x100;
/// u64 x 256: address of each vector's plain handler body.
pub const BODY_DIR: u64 = DATA + 0x800;
/// (u32 vector, u32 n, u64 body) entries for `V#N` bodies, ended by vector 0xffff_ffff.
pub const NTH_TABLE: u64 = DATA + 0x1000;
pub const NTH_TABLE_END: u64 = DATA + 0x2000;
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
