//! The guest stub, assembled at start-up with iced-x86's assembler.
//!
//! 64-bit long mode, entered directly by the VMM (registers and segments set
//! from the host). The stub interprets the op table (see [`super::table`]);
//! each of the 256 IDT entries pushes its vector and enters a common handler
//! that logs the delivery, counts it, runs the vector's body and returns
//! with IRETQ.
//!
//! Register conventions: r12 = IOAPIC base, r14 = LAPIC base (never
//! changed), r15 = the op being executed, r13 = the top-level op index,
//! rbp = this CPU's per-CPU block ([`cpu_block`], never changed; CPU 0's
//! is [`DATA`]). Per-CPU fields are read through rbp, globals at their
//! absolute addresses.
//!
//! Several CPUs (docs/guest-stub.md, "Several CPUs"): with [`SMP`] set,
//! every CPU runs the mailbox loop: it announces itself idle with an `out`
//! to [`IDLE_PORT`], and runs the op posted in its [`PCPU_MAILBOX`].
//! CPUs 1 and up enter at [`Stub::ap_entry`] (started by the host) or
//! [`Stub::sipi_entry`] (after a STARTUP IPI), with EDI = their index.
//!
//! Timing contract (the model implements the same): the top-level loop
//! writes the current op index only *before* dispatching an op, so a
//! delivery caused by op k's last instruction is logged with k; `sti` is
//! `sti; nop` inside op k; `sti-hlt` is `sti; hlt`.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

use super::layout::*;
use super::table::kind;
use crate::model::ioapic::REG_REDTBL;
use crate::model::lapic::{msr_of, reg, LVT_MASKED};
use crate::trace::GP_VECTOR;

/// The assembled stub and the addresses the VMM needs.
#[derive(Clone, Debug)]
pub struct Stub {
    /// Machine code, to be copied to [`CODE`].
    pub code: Vec<u8>,
    /// Where execution starts (CPU 0).
    pub entry: u64,
    /// Where a host-started AP starts: 64-bit mode, the layout's segments,
    /// IF = 0, EDI = the CPU index (1 to 7). The stub sets RSP and RBP.
    pub ap_entry: u64,
    /// Where an AP started by a STARTUP IPI enters long mode's stub (as
    /// [`Stub::ap_entry`]); it also gives its local APIC the start state
    /// (SVR 0x1FF, TPR 0: INIT left it software-disabled, SDM §11.4.7.3).
    pub sipi_entry: u64,
    /// The mailbox loop's `out` to [`IDLE_PORT`] (the address after it is
    /// where an idle CPU resumes).
    pub idle: u64,
    /// The IDT entry point of each vector.
    pub vectors: Vec<u64>,
    /// The addresses just after the interpreter's two `hlt`s (`hlt`,
    /// `sti-hlt`): the RIP an interrupt taken in them saves. QEMU's batch
    /// watchdog tells a halted guest from a running one by it.
    pub after_hlt: [u64; 2],
}

/// Offset of the snapshot record payload: header (kind, op), then IRR, ISR,
/// TMR (8 words each), TPR, PPR, then the 24 redirection-entry low dwords.
pub const SNAPSHOT_WORDS: usize = 2 + 8 * 3 + 2 + 24;

/// Log record kinds.
pub mod record {
    pub const DELIVER: u32 = 1;
    pub const SNAPSHOT: u32 = 2;
    pub const IOAPIC_READ: u32 = 3;
    pub const LAPIC_READ: u32 = 4;
    /// (EXCEPTION, op, vector, error code): a #GP the stub skipped.
    pub const EXCEPTION: u32 = 5;
    /// (LAPIC_MMIO_READ, op, offset, value): `lapic-mmio-read` in x2APIC mode.
    pub const LAPIC_MMIO_READ: u32 = 6;
    /// (PIC_READ, op, port, byte): `pic-read` (issue 15).
    pub const PIC_READ: u32 = 7;
    /// (MSR_READ, op, MSR, 0 or 1): `tsc-deadline-read`, zero or not.
    pub const MSR_READ: u32 = 10;
}

/// WRMSR (0F 30) and RDMSR (0F 32) as the little-endian word at a faulting
/// RIP: the only instructions the #GP handler skips, both two bytes long.
const WRMSR_WORD: u32 = 0x300f;
const RDMSR_WORD: u32 = 0x320f;
const MSR_INSTRUCTION_LEN: i32 = 2;

/// Assembles the stub.
///
/// Ops are dispatched through a table of their bodies' addresses, indexed
/// by op kind (`jmp [rax*8 + table]`: four instructions whatever the kind,
/// where a chain of compares took up to 47; on a host that emulates every
/// guest instruction, as this machine's KVM does, instructions are the
/// guest's cost). The table sits just after the code, in the code area;
/// its address is an operand of the code, so the stub is assembled twice:
/// once to learn where the code ends and where the bodies are, then with
/// the table's address, which changes no instruction's length (an absolute
/// address with an index and no base is always a 32-bit displacement), so
/// nothing moves.
pub fn assemble() -> Result<Stub, IcedError> {
    let (first, bodies) = assemble_with_dispatch_table(CODE_END)?;
    let table = (CODE + first.code.len() as u64).next_multiple_of(8);
    let (mut stub, placed) = assemble_with_dispatch_table(table)?;
    assert!(
        placed == bodies && stub.code.len() == first.code.len(),
        "placing the dispatch table moved the stub's code"
    );
    stub.code.resize((table - CODE) as usize, 0xcc);
    for body in placed {
        stub.code.extend_from_slice(&body.to_le_bytes());
    }
    if CODE + stub.code.len() as u64 > CODE_END {
        panic!("the stub outgrew its code area ({} bytes)", stub.code.len());
    }
    Ok(stub)
}

/// The stub with its op dispatch table at `table`, and the table: the
/// address of each op kind's body, by kind (an unknown kind's is a `ret`).
fn assemble_with_dispatch_table(table: u64) -> Result<(Stub, Vec<u64>), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut entry = a.create_label();
    let mut exec_op = a.create_label();
    let mut run_body = a.create_label();
    let mut lapic_read = a.create_label();
    let mut lapic_write = a.create_label();
    let mut common = a.create_label();
    let mut log_full = a.create_label();
    let mut end = a.create_label();
    let mut gp_entry = a.create_label();
    let mut after_hlt = [a.create_label(), a.create_label()];
    let mut idle = a.create_label();
    let mut idle_out = a.create_label();

    // ---- entry: mask the 8259s and LINT0/LINT1, switch to x2APIC if asked,
    // then run the program.
    a.set_label(&mut entry)?;
    a.mov(ebp, DATA as u32)?;
    a.mov(dword_ptr(rbp + PCPU_INDEX), 0)?;
    a.mov(eax, LOG_END as u32)?;
    a.mov(qword_ptr(rbp + PCPU_LOG_LIMIT), rax)?;
    a.cld()?;
    a.mov(r12, IOAPIC_BASE)?;
    a.mov(r14, LAPIC_BASE)?;
    let mut pic_masked = a.create_label();
    a.cmp(dword_ptr(PREPARED), 0)?;
    a.jne(pic_masked)?;
    a.mov(al, 0xffu32 as i32)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    a.set_label(&mut pic_masked)?;
    let mut xapic = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.je(xapic)?;
    // IA32_APIC_BASE: EN (bit 11) | EXTD (bit 10) (SDM §11.12.1).
    a.mov(ecx, 0x1b)?;
    a.rdmsr()?;
    a.or(eax, 0xc00)?;
    a.wrmsr()?;
    a.set_label(&mut xapic)?;
    let mut lints_masked = a.create_label();
    a.cmp(dword_ptr(PREPARED), 0)?;
    a.jne(lints_masked)?;
    for lint in [reg::LVT_LINT0, reg::LVT_LINT1] {
        a.mov(ecx, lint as u32)?;
        a.mov(eax, LVT_MASKED)?;
        a.call(lapic_write)?;
    }
    a.set_label(&mut lints_masked)?;
    a.cmp(dword_ptr(SMP), 0)?;
    a.jne(idle)?;
    a.mov(r15, OPS)?;
    a.xor(r13d, r13d)?;
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut top)?;
    a.mov(dword_ptr(CUR_OP), r13d)?;
    a.cmp(dword_ptr(r15), kind::END as i32)?;
    a.je(done)?;
    a.call(exec_op)?;
    a.add(r15, 16)?;
    a.inc(r13d)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    a.mov(eax, EndCode::Completed as u32)?;
    a.set_label(&mut end)?;
    let mut plain_end = a.create_label();
    a.mov(rdx, qword_ptr(END_HANDLER))?;
    a.test(rdx, rdx)?;
    a.jz(plain_end)?;
    a.jmp(rdx)?;
    a.set_label(&mut plain_end)?;
    a.mov(edx, dword_ptr(END_PORT_VAR))?;
    a.out(dx, eax)?;
    a.hlt()?;
    a.jmp(end)?;
    a.set_label(&mut log_full)?;
    a.mov(eax, EndCode::LogFull as u32)?;
    a.jmp(end)?;

    // ---- ap_entry / sipi_entry (EDI = the CPU index, 1 to 7; IF = 0):
    // this CPU's block and stack, its x2APIC switch, then the mailbox loop.
    let mut ap_entry = a.create_label();
    let mut sipi_entry = a.create_label();
    let mut ap_common = a.create_label();
    a.set_label(&mut sipi_entry)?;
    a.mov(esi, 1)?;
    a.jmp(ap_common)?;
    a.set_label(&mut ap_entry)?;
    a.xor(esi, esi)?;
    a.set_label(&mut ap_common)?;
    a.cli()?;
    a.lea(eax, dword_ptr(rdi - 1))?;
    a.shl(eax, AP_STRIDE.trailing_zeros())?;
    a.add(eax, AP_BLOCKS as i32)?;
    a.mov(ebp, eax)?;
    a.lea(rsp, qword_ptr(rbp + AP_STACK_TOP))?;
    a.cld()?;
    a.mov(r12, IOAPIC_BASE)?;
    a.mov(r14, LAPIC_BASE)?;
    a.mov(dword_ptr(rbp + PCPU_INDEX), edi)?;
    a.lea(rax, qword_ptr(rbp + AP_LOG_END))?;
    a.mov(qword_ptr(rbp + PCPU_LOG_LIMIT), rax)?;
    let mut ap_xapic = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.je(ap_xapic)?;
    a.mov(ecx, 0x1b)?;
    a.rdmsr()?;
    a.or(eax, 0xc00)?;
    a.wrmsr()?;
    a.set_label(&mut ap_xapic)?;
    let mut ap_started = a.create_label();
    a.test(esi, esi)?;
    a.jz(ap_started)?;
    a.mov(ecx, reg::SVR as u32)?;
    a.mov(eax, 0x1ff)?;
    a.call(lapic_write)?;
    a.mov(ecx, reg::TPR as u32)?;
    a.xor(eax, eax)?;
    a.call(lapic_write)?;
    a.set_label(&mut ap_started)?;
    a.sti()?;
    a.nop()?;

    // ---- the mailbox loop (every CPU when SMP is set): idle, then the
    // posted op, if any. An interrupt an idle CPU can take is taken at the
    // `out`'s instruction boundary, or when the VMM resumes it.
    a.set_label(&mut idle)?;
    // For an in-guest driver (QEMU's, which no VMM exit can run): every
    // pass counts, and the global IDLE_HOOK, when set, is called (it keeps
    // every register but RAX, RCX, RDX; it may post to this CPU's mailbox).
    a.inc(dword_ptr(rbp + PCPU_IDLE_PASSES))?;
    let mut no_hook = a.create_label();
    a.mov(rax, qword_ptr(IDLE_HOOK))?;
    a.test(rax, rax)?;
    a.jz(no_hook)?;
    a.call(rax)?;
    a.set_label(&mut no_hook)?;
    a.mov(eax, dword_ptr(rbp + PCPU_INDEX))?;
    a.mov(edx, IDLE_PORT as u32)?;
    a.set_label(&mut idle_out)?;
    a.out(dx, eax)?;
    a.mov(eax, dword_ptr(rbp + PCPU_MAILBOX))?;
    a.test(eax, eax)?;
    a.jz(idle)?;
    a.mov(dword_ptr(rbp + PCPU_MAILBOX), 0)?;
    a.dec(eax)?;
    a.mov(r13d, eax)?;
    a.mov(dword_ptr(CUR_OP), eax)?;
    a.shl(rax, 4)?;
    a.mov(r15, OPS)?;
    a.add(r15, rax)?;
    a.call(exec_op)?;
    a.inc(dword_ptr(rbp + PCPU_OPS_DONE))?;
    a.jmp(idle)?;

    // ---- lapic_read(ecx = offset) -> eax; clobbers ecx, edx.
    a.set_label(&mut lapic_read)?;
    let mut read_msr = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(read_msr)?;
    a.mov(eax, dword_ptr(r14 + rcx))?;
    a.ret()?;
    a.set_label(&mut read_msr)?;
    a.shr(ecx, 4)?;
    a.add(ecx, 0x800)?;
    a.rdmsr()?;
    a.ret()?;

    // ---- lapic_write(ecx = offset, eax = value); clobbers ecx, edx.
    a.set_label(&mut lapic_write)?;
    let mut write_msr = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(write_msr)?;
    a.mov(dword_ptr(r14 + rcx), eax)?;
    a.ret()?;
    a.set_label(&mut write_msr)?;
    a.shr(ecx, 4)?;
    a.add(ecx, 0x800)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.ret()?;

    // ---- run_body(r15 = first op): ops until END; keeps the op index.
    a.set_label(&mut run_body)?;
    let mut body_done = a.create_label();
    a.cmp(dword_ptr(r15), kind::END as i32)?;
    a.je(body_done)?;
    a.call(exec_op)?;
    a.add(r15, 16)?;
    a.jmp(run_body)?;
    a.set_label(&mut body_done)?;
    a.ret()?;

    // ---- exec_op(r15 = op): one op; clobbers rax, rbx, rcx, rdx, rdi.
    a.set_label(&mut exec_op)?;
    let kinds: [(u32, OpBody); 29] = [
        (kind::ROUTE, op_route),
        (kind::MASK, op_mask),
        (kind::HOST, op_host),
        (kind::LAPIC_WRITE, op_lapic_write),
        (kind::SELF_IPI, op_self_ipi),
        (kind::IPI, op_ipi),
        (kind::IOAPIC_EOI, op_ioapic_eoi),
        (kind::CLI, |a, _| a.cli()),
        (kind::STI, |a, _| {
            a.sti()?;
            a.nop()
        }),
        (kind::NOP, |a, _| a.nop()),
        (kind::HLT, |a, _| a.hlt()),
        (kind::STI_HLT, |a, _| {
            a.sti()?;
            a.hlt()
        }),
        (kind::SNAPSHOT, op_snapshot),
        (kind::IOAPIC_READ, op_ioapic_read),
        (kind::IOAPIC_WRITE, op_ioapic_write),
        (kind::LAPIC_READ, op_lapic_read),
        (kind::APIC_BASE, op_apic_base),
        (kind::LINE, op_line),
        (kind::MSI_WRITE, op_msi_write),
        (kind::LAPIC_MMIO_READ, op_lapic_mmio_read),
        (kind::LAPIC_MMIO_WRITE, |a, _| {
            a.mov(ecx, dword_ptr(r15 + 4))?;
            a.mov(eax, dword_ptr(r15 + 8))?;
            a.mov(dword_ptr(r14 + rcx), eax)
        }),
        // MOV to CR8 (SDM §10.8.6.1): TPR[7:4] = the value; the hypervisor's
        // CR8 path, not its APIC-register one.
        (kind::CR8, |a, _| {
            a.mov(eax, dword_ptr(r15 + 4))?;
            a.mov(cr8, rax)
        }),
        (kind::PING, |a, _| {
            a.mov(dx, PING_PORT as u32)?;
            a.out(dx, eax)
        }),
        // ---- PIC (issue 15): byte I/O to the 8259s and ELCRs.
        (kind::PORT_OUT, |a, _| {
            a.mov(edx, dword_ptr(r15 + 4))?;
            a.mov(eax, dword_ptr(r15 + 8))?;
            a.out(dx, al)
        }),
        (kind::PORT_IN, op_port_in),
        // The LAPIC timer (docs/guest-stub.md "The LAPIC timer").
        (kind::TIMER, op_timer),
        (kind::TSC_DEADLINE, op_tsc_deadline),
        (kind::TSC_DEADLINE_READ, op_tsc_deadline_read),
        (kind::TIMER_WAIT, op_timer_wait),
    ];
    let labels = Labels {
        lapic_read,
        lapic_write,
        log_full,
    };
    let max_kind = kinds.iter().map(|(k, _)| *k).max().unwrap_or(0);
    let mut unknown = a.create_label();
    a.mov(eax, dword_ptr(r15))?;
    a.cmp(eax, max_kind as i32)?;
    a.ja(unknown)?;
    a.jmp(qword_ptr(rax * 8 + table))?;
    a.set_label(&mut unknown)?;
    a.ret()?; // unknown kind: nothing
    let mut targets = Vec::new();
    for _ in &kinds {
        targets.push(a.create_label());
    }
    for ((k, body), target) in kinds.iter().zip(targets.iter_mut()) {
        a.set_label(target)?;
        body(&mut a, &labels)?;
        match *k {
            kind::HLT => a.set_label(&mut after_hlt[0])?,
            kind::STI_HLT => a.set_label(&mut after_hlt[1])?,
            _ => {}
        }
        a.ret()?;
    }

    // ---- interrupt entry: one thunk per vector, then the common handler.
    let mut thunks = Vec::new();
    for v in 0..256u32 {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        if v == u32::from(GP_VECTOR) {
            a.jmp(gp_entry)?;
        } else {
            a.push(v as i32)?;
            a.jmp(common)?;
        }
        thunks.push(l);
    }
    gp_handler(&mut a, &mut gp_entry, common, end, log_full)?;
    // The registers the handler and the bodies it runs write (r14 too, but
    // an `apic-base` in a handler moves the LAPIC base for good); the stub
    // never writes r8-r11 and only its top-level loop writes r13.
    const SAVED: [AsmRegister64; 7] = [rax, rbx, rcx, rdx, rsi, rdi, r15];
    a.set_label(&mut common)?;
    for r in SAVED {
        a.push(r)?;
    }
    a.mov(rbx, qword_ptr(rsp + 8 * SAVED.len() as i32))?; // the vector
                                                          // Storm: the 65th delivery ends the run instead of being logged.
    let mut no_storm = a.create_label();
    a.mov(eax, 1)?;
    a.lock().xadd(dword_ptr(DELIVERIES), eax)?;
    a.inc(eax)?;
    a.cmp(eax, crate::trace::STORM_LIMIT as i32 + 1)?;
    a.jb(no_storm)?;
    a.mov(eax, EndCode::Storm as u32)?;
    a.jmp(end)?;
    a.set_label(&mut no_storm)?;
    // Log (DELIVER, op, vector).
    a.mov(rdi, qword_ptr(rbp + PCPU_LOG_PTR))?;
    a.lea(rax, qword_ptr(rdi + 16))?;
    a.cmp(rax, qword_ptr(rbp + PCPU_LOG_LIMIT))?;
    a.jae(log_full)?;
    a.mov(dword_ptr(rdi), record::DELIVER)?;
    a.mov(eax, dword_ptr(CUR_OP))?;
    a.mov(dword_ptr(rdi + 4), eax)?;
    a.mov(dword_ptr(rdi + 8), ebx)?;
    a.mov(dword_ptr(rdi + 12), 0)?;
    a.add(rdi, 16)?;
    a.mov(qword_ptr(rbp + PCPU_LOG_PTR), rdi)?;
    // ecx = ++COUNTS[vector] (this CPU's)
    a.lea(rax, qword_ptr(rbp + rbx * 4 + PCPU_COUNTS))?;
    a.mov(ecx, dword_ptr(rax))?;
    a.inc(ecx)?;
    a.mov(dword_ptr(rax), ecx)?;
    // The V#N body if there is one, else the plain body.
    let mut scan = a.create_label();
    let mut next = a.create_label();
    let mut plain = a.create_label();
    let mut run = a.create_label();
    a.lea(rsi, qword_ptr(rbp + PCPU_NTH_TABLE))?;
    a.set_label(&mut scan)?;
    a.mov(eax, dword_ptr(rsi))?;
    a.cmp(eax, -1)?;
    a.je(plain)?;
    a.cmp(eax, ebx)?;
    a.jne(next)?;
    a.cmp(dword_ptr(rsi + 4), ecx)?;
    a.jne(next)?;
    a.mov(r15, qword_ptr(rsi + 8))?;
    a.jmp(run)?;
    a.set_label(&mut next)?;
    a.add(rsi, 16)?;
    a.jmp(scan)?;
    a.set_label(&mut plain)?;
    a.mov(r15, qword_ptr(rbp + rbx * 8 + PCPU_BODY_DIR))?;
    a.set_label(&mut run)?;
    a.call(run_body)?;
    for r in SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.add(rsp, 8)?; // the vector
    a.iretq()?;

    let result = a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let vectors = thunks
        .iter()
        .map(|t| result.label_ip(t))
        .collect::<Result<Vec<_>, _>>()?;
    let code = result.inner.code_buffer.clone();
    let mut dispatch = vec![result.label_ip(&unknown)?; max_kind as usize + 1];
    for ((k, _), target) in kinds.iter().zip(&targets) {
        dispatch[*k as usize] = result.label_ip(target)?;
    }
    let stub = Stub {
        entry: result.label_ip(&entry)?,
        ap_entry: result.label_ip(&ap_entry)?,
        sipi_entry: result.label_ip(&sipi_entry)?,
        idle: result.label_ip(&idle_out)?,
        code,
        vectors,
        after_hlt: [
            result.label_ip(&after_hlt[0])?,
            result.label_ip(&after_hlt[1])?,
        ],
    };
    Ok((stub, dispatch))
}

/// Vector 13: a #GP, or an interrupt with vector 13 (an MSI can carry one).
/// An exception pushes an error code, so the saved CS is at rsp+16; for an
/// interrupt rsp+16 holds the saved RFLAGS, whose bit 1 is always set (SDM
/// vol. 1 §3.4.3), so it never equals the code selector 0x08. A #GP at the
/// stub's RDMSR or WRMSR is logged (EXCEPTION, op, 13, error code), sets
/// [`GP_FAULTED`] and returns past the two-byte instruction; the stub's
/// other instructions never fault, so a #GP anywhere else ends the run
/// ([`EndCode::UnexpectedFault`]).
fn gp_handler(
    a: &mut CodeAssembler,
    gp_entry: &mut CodeLabel,
    common: CodeLabel,
    end: CodeLabel,
    log_full: CodeLabel,
) -> Result<(), IcedError> {
    let mut fault = a.create_label();
    let mut skip = a.create_label();
    let mut unexpected = a.create_label();
    a.set_label(gp_entry)?;
    a.cmp(qword_ptr(rsp + 16), CODE_SELECTOR as i32)?;
    a.je(fault)?;
    a.push(GP_VECTOR as i32)?;
    a.jmp(common)?;
    a.set_label(&mut fault)?;
    a.push(rax)?;
    a.push(rdi)?;
    // Stack: rdi, rax, error code, RIP, CS, RFLAGS, RSP, SS.
    a.mov(rax, qword_ptr(rsp + 24))?;
    a.movzx(eax, word_ptr(rax))?;
    a.cmp(eax, WRMSR_WORD as i32)?;
    a.je(skip)?;
    a.cmp(eax, RDMSR_WORD as i32)?;
    a.jne(unexpected)?;
    a.set_label(&mut skip)?;
    a.add(qword_ptr(rsp + 24), MSR_INSTRUCTION_LEN)?;
    a.mov(dword_ptr(rbp + PCPU_GP_FAULTED), 1)?;
    a.mov(rdi, qword_ptr(rbp + PCPU_LOG_PTR))?;
    a.lea(rax, qword_ptr(rdi + 16))?;
    a.cmp(rax, qword_ptr(rbp + PCPU_LOG_LIMIT))?;
    a.jae(log_full)?;
    a.mov(dword_ptr(rdi), record::EXCEPTION)?;
    a.mov(eax, dword_ptr(CUR_OP))?;
    a.mov(dword_ptr(rdi + 4), eax)?;
    a.mov(dword_ptr(rdi + 8), GP_VECTOR as u32)?;
    a.mov(eax, dword_ptr(rsp + 16))?;
    a.mov(dword_ptr(rdi + 12), eax)?;
    a.add(rdi, 16)?;
    a.mov(qword_ptr(rbp + PCPU_LOG_PTR), rdi)?;
    a.pop(rdi)?;
    a.pop(rax)?;
    a.add(rsp, 8)?; // the error code
    a.iretq()?;
    a.set_label(&mut unexpected)?;
    a.mov(eax, EndCode::UnexpectedFault as u32)?;
    a.jmp(end)
}

/// Emits one op kind's body.
type OpBody = fn(&mut CodeAssembler, &Labels) -> Result<(), IcedError>;

/// Labels the op bodies call.
struct Labels {
    lapic_read: CodeLabel,
    lapic_write: CodeLabel,
    log_full: CodeLabel,
}

fn op_route(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    // The first dword (index a), then the other one (index a ^ 1), in the
    // order `route ... order=` asks (docs/scenario-format.md, `route`).
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r12), eax)?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.mov(dword_ptr(r12 + 0x10), eax)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.xor(eax, 1)?;
    a.mov(dword_ptr(r12), eax)?;
    a.mov(eax, dword_ptr(r15 + 12))?;
    a.mov(dword_ptr(r12 + 0x10), eax)
}

fn op_mask(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    // Read-modify-write of the low dword's bit 16.
    let mut clear = a.create_label();
    let mut write = a.create_label();
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r12), eax)?;
    a.mov(eax, dword_ptr(r12 + 0x10))?;
    a.cmp(dword_ptr(r15 + 8), 0)?;
    a.je(clear)?;
    a.or(eax, 0x1_0000)?;
    a.jmp(write)?;
    a.set_label(&mut clear)?;
    a.and(eax, !0x1_0000i32)?;
    a.set_label(&mut write)?;
    a.mov(dword_ptr(r12 + 0x10), eax)
}

fn op_host(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dx, HYPERCALL_PORT as u32)?;
    a.out(dx, eax)
}

fn op_lapic_write(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    a.mov(ecx, dword_ptr(r15 + 4))?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.call(l.lapic_write)
}

fn op_self_ipi(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    let mut x2 = a.create_label();
    let mut out = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(x2)?;
    // xAPIC: ICR high (destination 0), then ICR low with the self shorthand
    // (bits 19:18 = 01), fixed, edge (SDM §11.6.1).
    a.mov(dword_ptr(r14 + reg::ICR_HIGH as i32), 0)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.or(eax, 0x4_0000)?;
    a.mov(dword_ptr(r14 + reg::ICR_LOW as i32), eax)?;
    a.jmp(out)?;
    a.set_label(&mut x2)?;
    // x2APIC SELF IPI register, MSR 0x83F (SDM §11.12.11).
    a.mov(ecx, msr_of(reg::SELF_IPI))?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.set_label(&mut out)?;
    a.nop()
}

/// `ipi`: the ICR write, its low dword last (SDM §11.6.1: writing ICR low
/// sends the IPI); in x2APIC mode one WRMSR of MSR 0x830 (SDM §11.12.9).
fn op_ipi(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    let mut x2 = a.create_label();
    let mut out = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(x2)?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.shl(eax, 24)?;
    a.mov(dword_ptr(r14 + reg::ICR_HIGH as i32), eax)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r14 + reg::ICR_LOW as i32), eax)?;
    a.jmp(out)?;
    a.set_label(&mut x2)?;
    a.mov(ecx, msr_of(reg::ICR_LOW))?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(edx, dword_ptr(r15 + 8))?;
    a.wrmsr()?;
    a.set_label(&mut out)?;
    a.nop()
}

/// A host op done by the guest (QEMU): drive ISA IRQ line a to level b
/// (2: pulse) through pc-testdev.
fn op_line(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    // Level 2 is a pulse: 1 then 0, one op. A pulse is atomic, as the host
    // does it under KVM: the interrupt that the rising edge requests must
    // not be taken between the two writes (the CPU recognises it at the
    // next instruction boundary with IF = 1, SDM vol. 3A §6.6; QEMU's TCG
    // does so since 8.1.2/8.2, where every I/O instruction ends its
    // translation block), or a level pin's EOI finds the line still high
    // and the vector storms. RFLAGS is restored afterwards, so a pulse
    // under `cli` keeps IF = 0.
    let mut single = a.create_label();
    let mut done = a.create_label();
    a.mov(edx, QEMU_TESTDEV_IRQ_PORT as u32)?;
    a.add(edx, dword_ptr(r15 + 4))?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.cmp(eax, 2)?;
    a.jne(single)?;
    a.pushfq()?;
    a.cli()?;
    a.mov(al, 1)?;
    a.out(dx, al)?;
    a.xor(eax, eax)?;
    a.out(dx, al)?;
    a.popfq()?;
    // An exit to the VMM: under KVM with QEMU's userspace irqchip
    // (`qemu-kvm-userspace`) the pending interrupt is injected at the next
    // KVM_RUN (`kvm_arch_pre_run`), and this host's KVM does not exit by
    // itself when IF becomes 1 (docs/known-divergences.md,
    // kvm-deferred-injection). Port 0x80 is the POST port, a no-op.
    a.out(0x80, al)?;
    a.jmp(done)?;
    a.set_label(&mut single)?;
    a.out(dx, al)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// A host op done by the guest (QEMU TCG): an MSI is a write of its data to
/// its address, which QEMU's APIC page turns into a message.
fn op_msi_write(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    a.mov(ebx, dword_ptr(r15 + 4))?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.mov(dword_ptr(rbx), eax)
}

/// WRMSR IA32_APIC_BASE, then reach the APIC where it now is: r14 follows
/// the base, and the x2APIC flag follows EXTD (bit 10). A write that
/// raised #GP changed nothing, so neither changes.
fn op_apic_base(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    let mut faulted = a.create_label();
    a.mov(ecx, 0x1b)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.xor(edx, edx)?;
    a.mov(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.wrmsr()?;
    a.cmp(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.jne(faulted)?;
    a.mov(r14d, eax)?;
    a.and(r14d, 0xffff_f000u32 as i32)?;
    a.shr(eax, 10)?;
    a.and(eax, 1)?;
    a.mov(dword_ptr(rbp + PCPU_X2APIC), eax)?;
    a.set_label(&mut faulted)?;
    a.nop()
}

fn op_ioapic_eoi(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r12 + 0x40), eax)
}

/// Reserves `bytes` of log at rdi (jumps to log_full if there is no room).
fn log_reserve(a: &mut CodeAssembler, l: &Labels, bytes: u64) -> Result<(), IcedError> {
    a.mov(rdi, qword_ptr(rbp + PCPU_LOG_PTR))?;
    a.lea(rax, qword_ptr(rdi + bytes as i32))?;
    a.cmp(rax, qword_ptr(rbp + PCPU_LOG_LIMIT))?;
    a.jae(l.log_full)
}

/// A snapshot or read record is written with interrupts held (pushfq; cli
/// ... popfq), so that a handler's own record cannot land inside it; an
/// interrupt that arrives meanwhile is taken at the popfq, still in this op.
fn op_snapshot(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, SNAPSHOT_WORDS as u64 * 4)?;
    a.mov(eax, record::SNAPSHOT)?;
    a.stosd()?;
    a.mov(eax, dword_ptr(CUR_OP))?;
    a.stosd()?;
    // The same 26 reads as `lapic_read` makes, with the mode tested once
    // per snapshot instead of once per read (fewer instructions, the same
    // accesses in the same order).
    let registers: Vec<u16> = [reg::IRR, reg::ISR, reg::TMR]
        .iter()
        .flat_map(|base| (0..8).map(move |i| base + 0x10 * i))
        .chain([reg::TPR, reg::PPR])
        .collect();
    let mut x2apic = a.create_label();
    let mut lapic_done = a.create_label();
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(x2apic)?;
    for &offset in &registers {
        a.mov(eax, dword_ptr(r14 + offset as i32))?;
        a.stosd()?;
    }
    a.jmp(lapic_done)?;
    a.set_label(&mut x2apic)?;
    for &offset in &registers {
        a.mov(ecx, msr_of(offset))?;
        a.rdmsr()?;
        a.stosd()?;
    }
    a.set_label(&mut lapic_done)?;
    for pin in 0..24u32 {
        a.mov(dword_ptr(r12), REG_REDTBL as u32 + 2 * pin)?;
        a.mov(eax, dword_ptr(r12 + 0x10))?;
        a.stosd()?;
    }
    a.mov(qword_ptr(rbp + PCPU_LOG_PTR), rdi)?;
    a.popfq()
}

fn log_read(a: &mut CodeAssembler, kind: u32) -> Result<(), IcedError> {
    // eax = value, ebx = register
    a.mov(dword_ptr(rdi), kind)?;
    a.mov(edx, dword_ptr(CUR_OP))?;
    a.mov(dword_ptr(rdi + 4), edx)?;
    a.mov(dword_ptr(rdi + 8), ebx)?;
    a.mov(dword_ptr(rdi + 12), eax)?;
    a.add(rdi, 16)?;
    a.mov(qword_ptr(rbp + PCPU_LOG_PTR), rdi)
}

fn op_ioapic_read(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, 16)?;
    a.mov(ebx, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r12), ebx)?;
    a.mov(eax, dword_ptr(r12 + 0x10))?;
    log_read(a, record::IOAPIC_READ)?;
    a.popfq()
}

/// `pic-read`: a byte from the port, logged with interrupts held (a poll
/// read is an acknowledge of its own; nothing may land inside the record).
fn op_port_in(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, 16)?;
    a.mov(ebx, dword_ptr(r15 + 4))?;
    a.mov(edx, ebx)?;
    a.xor(eax, eax)?;
    a.in_(al, dx)?;
    log_read(a, record::PIC_READ)?;
    a.popfq()
}

fn op_ioapic_write(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mov(dword_ptr(r12), eax)?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.mov(dword_ptr(r12 + 0x10), eax)
}

/// A load from the APIC page whatever the mode; logged as a LAPIC_READ in
/// xAPIC mode and a LAPIC_MMIO_READ in x2APIC mode.
fn op_lapic_mmio_read(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    let mut x2 = a.create_label();
    let mut logged = a.create_label();
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, 16)?;
    a.mov(ebx, dword_ptr(r15 + 4))?;
    a.mov(eax, dword_ptr(r14 + rbx))?;
    a.cmp(dword_ptr(rbp + PCPU_X2APIC), 0)?;
    a.jne(x2)?;
    log_read(a, record::LAPIC_READ)?;
    a.jmp(logged)?;
    a.set_label(&mut x2)?;
    log_read(a, record::LAPIC_MMIO_READ)?;
    a.set_label(&mut logged)?;
    a.popfq()
}

fn op_lapic_read(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, 16)?;
    a.mov(ebx, dword_ptr(r15 + 4))?;
    a.mov(ecx, ebx)?;
    let mut faulted = a.create_label();
    a.mov(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.call(l.lapic_read)?;
    // A faulting RDMSR read nothing: its #GP is the op's only event.
    a.cmp(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.jne(faulted)?;
    log_read(a, record::LAPIC_READ)?;
    a.set_label(&mut faulted)?;
    a.popfq()
}

/// `timer`: the divide configuration, the LVT timer entry, then (unless
/// the mode is TSC-deadline) the initial count, which starts the count:
/// the op's triggering access is its last (SDM §11.5.4).
fn op_timer(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    let mut done = a.create_label();
    a.mov(ecx, reg::TIMER_DIVIDE as u32)?;
    a.mov(eax, dword_ptr(r15 + 8))?;
    a.call(l.lapic_write)?;
    a.mov(ecx, reg::LVT_TIMER as u32)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.call(l.lapic_write)?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.and(eax, 3 << 17)?;
    a.cmp(eax, 2 << 17)?;
    a.je(done)?;
    a.mov(ecx, reg::TIMER_INITIAL as u32)?;
    a.mov(eax, dword_ptr(r15 + 12))?;
    a.call(l.lapic_write)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// `tsc-deadline`: WRMSR IA32_TSC_DEADLINE (0x6E0) with 0, the TSC just
/// read (a deadline passed by the time of the write), or the TSC + b.
fn op_tsc_deadline(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    let mut write = a.create_label();
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.cmp(dword_ptr(r15 + 4), 0)?;
    a.je(write)?;
    a.rdtsc()?;
    a.cmp(dword_ptr(r15 + 4), 1)?;
    a.je(write)?;
    a.add(eax, dword_ptr(r15 + 8))?;
    a.adc(edx, 0)?;
    a.set_label(&mut write)?;
    a.mov(ecx, crate::model::lapic_timer::MSR_TSC_DEADLINE)?;
    a.wrmsr()?;
    a.nop()
}

/// `tsc-deadline-read`: RDMSR IA32_TSC_DEADLINE, logged as 1 when it is
/// not 0 (its value is a host TSC); nothing is logged if it faulted.
fn op_tsc_deadline_read(a: &mut CodeAssembler, l: &Labels) -> Result<(), IcedError> {
    let mut faulted = a.create_label();
    a.pushfq()?;
    a.cli()?;
    log_reserve(a, l, 16)?;
    a.mov(ebx, crate::model::lapic_timer::MSR_TSC_DEADLINE)?;
    a.mov(ecx, ebx)?;
    a.mov(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.rdmsr()?;
    a.cmp(dword_ptr(rbp + PCPU_GP_FAULTED), 0)?;
    a.jne(faulted)?;
    a.or(eax, edx)?;
    a.setne(al)?;
    a.movzx(eax, al)?;
    log_read(a, record::MSR_READ)?;
    a.set_label(&mut faulted)?;
    a.popfq()
}

/// `timer-wait max=N`: spins until the delivery count moves (an interrupt
/// was taken, the timer's or any) or N µs of TSC pass (N x [`TSC_PER_US`]).
/// A spin, not a `hlt`: it keeps the IF the scenario left, and with IF = 0
/// it lasts its whole bound, by which time an expiry is in the IRR.
fn op_timer_wait(a: &mut CodeAssembler, _: &Labels) -> Result<(), IcedError> {
    let mut spin = a.create_label();
    let mut done = a.create_label();
    a.mov(ebx, dword_ptr(DELIVERIES))?;
    a.mov(eax, dword_ptr(r15 + 4))?;
    a.mul(dword_ptr(TSC_PER_US))?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(rdi, rax)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.add(rdi, rax)?;
    a.set_label(&mut spin)?;
    a.cmp(dword_ptr(DELIVERIES), ebx)?;
    a.jne(done)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, rdi)?;
    a.jb(spin)?;
    a.set_label(&mut done)?;
    a.nop()
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    use super::*;

    fn decode_at(stub: &Stub, ip: u64) -> Vec<Instruction> {
        let at = (ip - CODE) as usize;
        let mut decoder = Decoder::with_ip(64, &stub.code[at..], ip, DecoderOptions::NONE);
        (0..4).map(|_| decoder.decode()).collect()
    }

    /// The dispatch: `jmp [rax*8 + table]` into a table of body addresses
    /// placed just after the code, each pointing at its kind's body.
    #[test]
    fn ops_dispatch_through_a_table_of_their_bodies() {
        let stub = assemble().unwrap();
        let mut decoder = Decoder::with_ip(64, &stub.code, CODE, DecoderOptions::NONE);
        let jumps: Vec<Instruction> = decoder
            .iter()
            .take_while(|i| !i.is_invalid())
            .filter(|i| {
                i.mnemonic() == Mnemonic::Jmp
                    && i.op0_kind() == OpKind::Memory
                    && i.memory_index() == Register::RAX
            })
            .collect();
        assert_eq!(jumps.len(), 1, "one dispatch jump");
        let table = jumps[0].memory_displacement64();
        assert_eq!(table % 8, 0);
        let entry = |kind: u32| {
            let at = (table - CODE) as usize + 8 * kind as usize;
            u64::from_le_bytes(stub.code[at..at + 8].try_into().unwrap())
        };
        // The table ends the code: one entry per kind up to the last.
        assert_eq!(
            stub.code.len() as u64,
            table - CODE + 8 * (kind::TIMER_WAIT.max(kind::PORT_IN).max(kind::PING) as u64 + 1)
        );
        // `ping` is `mov dx, PING_PORT; out dx, eax; ret`.
        let ping = decode_at(&stub, entry(kind::PING));
        assert_eq!(ping[0].mnemonic(), Mnemonic::Mov);
        assert_eq!(ping[0].immediate16(), PING_PORT);
        assert_eq!(ping[1].mnemonic(), Mnemonic::Out);
        assert_eq!(ping[2].mnemonic(), Mnemonic::Ret);
        // A kind in the gap below the timer's (24-39) is not an op: `ret`.
        assert_eq!(decode_at(&stub, entry(30))[0].mnemonic(), Mnemonic::Ret);
        // `cli` is `cli; ret`; kind 0 (never dispatched) is a bare `ret`.
        assert_eq!(
            decode_at(&stub, entry(kind::CLI))[..2]
                .iter()
                .map(Instruction::mnemonic)
                .collect::<Vec<_>>(),
            [Mnemonic::Cli, Mnemonic::Ret]
        );
        assert_eq!(
            decode_at(&stub, entry(kind::END))[0].mnemonic(),
            Mnemonic::Ret
        );
        // A kind past the table is not dispatched: `cmp eax, max; ja ret`
        // just before the jump.
        let mut decoder = Decoder::with_ip(64, &stub.code, CODE, DecoderOptions::NONE);
        let before: Vec<Instruction> = decoder
            .iter()
            .take_while(|i| i.ip() < jumps[0].ip())
            .collect();
        let [.., cmp, ja] = before.as_slice() else {
            panic!("no bounds check before the dispatch")
        };
        assert_eq!(
            (cmp.mnemonic(), cmp.immediate32()),
            (
                Mnemonic::Cmp,
                kind::TIMER_WAIT.max(kind::PORT_IN).max(kind::PING)
            )
        );
        assert_eq!(ja.mnemonic(), Mnemonic::Ja);
    }

    /// A snapshot reads the 26 LAPIC registers in the same order in either
    /// mode: by MMIO at r14 + offset in xAPIC mode, by RDMSR in x2APIC mode.
    #[test]
    fn a_snapshot_reads_the_lapic_registers_in_order_in_either_mode() {
        let mut a = CodeAssembler::new(64).unwrap();
        let labels = Labels {
            lapic_read: a.create_label(),
            lapic_write: a.create_label(),
            log_full: a.create_label(),
        };
        op_snapshot(&mut a, &labels).unwrap();
        for mut l in [labels.lapic_read, labels.lapic_write, labels.log_full] {
            a.set_label(&mut l).unwrap();
            a.ret().unwrap();
        }
        let code = a.assemble(CODE).unwrap();
        let mut decoder = Decoder::with_ip(64, &code, CODE, DecoderOptions::NONE);
        let instructions: Vec<Instruction> = decoder.iter().collect();
        let expected: Vec<u32> = [reg::IRR, reg::ISR, reg::TMR]
            .iter()
            .flat_map(|base| (0..8).map(move |i| (base + 0x10 * i) as u32))
            .chain([reg::TPR as u32, reg::PPR as u32])
            .collect();
        let mmio: Vec<u32> = instructions
            .iter()
            .filter(|i| i.op1_kind() == OpKind::Memory && i.memory_base() == Register::R14)
            .map(|i| i.memory_displacement32())
            .collect();
        assert_eq!(mmio, expected);
        let msrs: Vec<u32> = instructions
            .windows(2)
            .filter(|w| w[1].mnemonic() == Mnemonic::Rdmsr)
            .map(|w| w[0].immediate32())
            .collect();
        assert_eq!(
            msrs,
            expected
                .iter()
                .map(|&o| msr_of(o as u16))
                .collect::<Vec<_>>()
        );
        // No call per read any more: the LAPIC is read inline.
        assert!(instructions.iter().all(|i| i.mnemonic() != Mnemonic::Call));
    }
}
