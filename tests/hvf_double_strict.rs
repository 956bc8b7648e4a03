//! The strict Hypervisor.framework double (issue 18 part 1), driven directly
//! through its trait as a VMM would: one test per refusal, each showing the
//! error or exit a real Mac (framework or processor) gives for one of the
//! issue's problems (1)-(8), and one test that a correct bring-up (the
//! fixed loop's: capabilities, cap2ctrl, all eight segments, masks and
//! shadows, `HV_DEADLINE_FOREVER` plus a `hv_vcpu_interrupt` watchdog,
//! resume on host exits) runs the guest stub.
//!
//! The loop before issue 18 tripped (1)-(6) and (8) and would have
//! misreported (7); those tests say so. They drive the double themselves;
//! `tests/hvf_double.rs` shows that today's `vmm.rs` passes every rule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypervisor_framework_sys as hv;
use irqdiff::backend::hvf::api::{cap, vmcs::*, Hv, HvExt, RunEnd};
use irqdiff::backend::hvf::double::{
    cap2ctrl, Double, EntryFailure, IoapicIdentity, Process, StrictConfig,
    EXIT_REASON_INVALID_GUEST_STATE,
};
use irqdiff::guest::layout::{self, EndCode, CUR_OP, END_PORT, HYPERCALL_PORT, IOAPIC_BASE};
use irqdiff::guest::{table, Image};
use irqdiff::model::Quirks;
use irqdiff::scenario::parse;

const IA32E_MODE_GUEST: u64 = 1 << 9;
const HOST_ADDRESS_SPACE_SIZE: u64 = 1 << 9;
const ACTIVATE_SECONDARY: u64 = 1 << 31;
const VIRTUALIZE_APIC_ACCESSES: u64 = 1 << 0;
const CR0: u64 = 0x8005_0033; // PG WP NE ET MP PE
const CR4: u64 = 0x2020; // VMXE PAE
const EFER: u64 = 0x500; // LMA LME

/// A guest: the stub image in RAM and a strict double over it.
struct Guest {
    hv: Double,
    ram: Vec<u8>,
    image: Image,
    vcpu: u32,
    /// What a WRMSR exit gets: this event injected (interruption
    /// information, error code), and RIP advanced past the WRMSR or not.
    wrmsr: Option<(u64, u64, bool)>,
}

fn config(process: &Process) -> StrictConfig {
    StrictConfig {
        host_exit_one_in: 0,
        blocked_limit: Duration::from_millis(300),
        ..StrictConfig::new(process)
    }
}

impl Guest {
    fn new(config: StrictConfig) -> Guest {
        let image = Image::build();
        let mut ram = vec![0u8; layout::RAM_SIZE];
        image.install(&mut ram);
        let mut hv = Double::strict(config, Quirks::empty());
        let len = ram.len();
        hv.create_vm(ram.as_mut_ptr(), len).unwrap();
        let vcpu = hv.create_vcpu().unwrap();
        hv.set_apic_address(vcpu, layout::LAPIC_BASE).unwrap();
        Guest {
            hv,
            ram,
            image,
            vcpu,
            wrmsr: None,
        }
    }

    fn w(&mut self, field: u32, value: u64) {
        self.hv.write_vmcs(self.vcpu, field, value).unwrap();
    }

    fn r(&mut self, field: u32) -> u64 {
        self.hv.read_vmcs(self.vcpu, field).unwrap()
    }

    /// The execution controls as QEMU, OrbStack and uhyve set them: read the
    /// capabilities, apply the allowed-0/allowed-1 rule.
    fn controls(&mut self) {
        let c = |g: &mut Guest, field| g.hv.read_capability(field).unwrap();
        let (pin, proc, proc2, exit, entry) = (
            c(self, cap::PINBASED),
            c(self, cap::PROCBASED),
            c(self, cap::PROCBASED2),
            c(self, cap::EXIT),
            c(self, cap::ENTRY),
        );
        self.w(VMCS_CTRL_PIN_BASED, cap2ctrl(pin, 0));
        self.w(VMCS_CTRL_CPU_BASED, cap2ctrl(proc, ACTIVATE_SECONDARY));
        self.w(
            VMCS_CTRL_CPU_BASED2,
            cap2ctrl(proc2, VIRTUALIZE_APIC_ACCESSES),
        );
        self.w(
            VMCS_CTRL_VMEXIT_CONTROLS,
            cap2ctrl(exit, HOST_ADDRESS_SPACE_SIZE),
        );
        self.w(
            VMCS_CTRL_VMENTRY_CONTROLS,
            cap2ctrl(entry, IA32E_MODE_GUEST),
        );
    }

    /// CR0/CR4 masks and read shadows: the host owns the fixed bits, the
    /// guest sees CR4 without VMXE.
    fn masks(&mut self) {
        self.w(VMCS_CTRL_CR0_MASK, 0x8000_0021);
        self.w(VMCS_CTRL_CR0_SHADOW, CR0);
        self.w(VMCS_CTRL_CR4_MASK, 0x2000);
        self.w(VMCS_CTRL_CR4_SHADOW, CR4 & !0x2000);
    }

    /// 64-bit long mode entered directly, every segment written.
    fn long_mode(&mut self) {
        self.w(VMCS_GUEST_CR0, CR0);
        self.w(VMCS_GUEST_CR3, layout::PML4);
        self.w(VMCS_GUEST_CR4, CR4);
        self.w(VMCS_GUEST_IA32_EFER, EFER);
        let code = layout::CODE_SELECTOR as u64;
        let data = layout::DATA_SELECTOR as u64;
        // (selector, limit, access rights): ES CS SS DS FS GS LDTR TR.
        let segments = [
            (data, 0xffff_ffff, 0xc093),
            (code, 0xffff_ffff, 0xa09b),
            (data, 0xffff_ffff, 0xc093),
            (data, 0xffff_ffff, 0xc093),
            (data, 0xffff_ffff, 0xc093),
            (data, 0xffff_ffff, 0xc093),
            (0, 0, 1 << 16), // LDTR unusable
            (0, 0x67, 0x8b), // a busy 64-bit TSS
        ];
        for (i, (sel, limit, ar)) in segments.into_iter().enumerate() {
            let (s, l, a, b) = segment(i as u32);
            self.w(s, sel);
            self.w(l, limit);
            self.w(a, ar);
            self.w(b, 0);
        }
        self.w(VMCS_GUEST_GDTR_BASE, layout::GDT);
        self.w(VMCS_GUEST_GDTR_LIMIT, 23);
        self.w(VMCS_GUEST_IDTR_BASE, layout::IDT);
        self.w(VMCS_GUEST_IDTR_LIMIT, 256 * 16 - 1);
    }

    /// The correct bring-up.
    fn bring_up(&mut self) {
        self.controls();
        self.masks();
        self.long_mode();
    }

    /// Loads a scenario; `reset_vcpu_state`: the activity and
    /// interruptibility states and event injection back to their start.
    fn load(&mut self, text: &str, reset_vcpu_state: bool) {
        let v = self.vcpu;
        let table = table::encode(&parse(text).unwrap()).unwrap();
        self.hv.reset_irqchip(v).unwrap();
        self.hv.apic_ctrl(v, hv::HV_APIC_CTRL_DEFAULT).unwrap();
        self.hv.apic_write(v, 0xf0, 0x1ff).unwrap();
        if reset_vcpu_state {
            self.w(VMCS_GUEST_ACTIVITY_STATE, 0);
            self.w(VMCS_GUEST_INTERRUPTIBILITY, 0);
            self.w(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
        }
        let entry = self.image.stub.entry;
        self.hv.write_register(v, hv::HV_X86_RIP, entry).unwrap();
        self.hv
            .write_register(v, hv::HV_X86_RSP, layout::STACK_TOP)
            .unwrap();
        self.hv.write_register(v, hv::HV_X86_RFLAGS, 0x202).unwrap();
        self.image.load(&mut self.ram, &table, false);
    }

    fn reg(&mut self, reg: u32) -> u64 {
        self.hv.read_register(self.vcpu, reg).unwrap()
    }

    fn advance(&mut self) {
        let rip = self.reg(hv::HV_X86_RIP);
        let len = self.r(hv::VMCS_RO_VMEXIT_INSTR_LEN);
        self.hv
            .write_register(self.vcpu, hv::HV_X86_RIP, rip + len)
            .unwrap();
    }

    fn cur_op(&self) -> u32 {
        u32::from_le_bytes(
            self.ram[CUR_OP as usize..CUR_OP as usize + 4]
                .try_into()
                .unwrap(),
        )
    }

    fn count(&self, vector: u8) -> u32 {
        let at = (layout::COUNTS + 4 * vector as u64) as usize;
        u32::from_le_bytes(self.ram[at..at + 4].try_into().unwrap())
    }

    /// The fixed loop: `HV_DEADLINE_FOREVER`, a watchdog calling
    /// `hv_vcpu_interrupt` every 20 ms, resume on host exits, a hang judged
    /// by the op counter standing still over three kicks in HLT.
    fn run(&mut self) -> Outcome {
        let kick = self.hv.interrupter(self.vcpu).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    kick().unwrap();
                }
            })
        };
        let outcome = self.drive();
        stop.store(true, Ordering::Relaxed);
        watchdog.join().unwrap();
        outcome
    }

    fn drive(&mut self) -> Outcome {
        let v = self.vcpu;
        let mut host_exits = 0;
        let mut still = (u32::MAX, 0);
        loop {
            assert_eq!(self.hv.run_forever(v).unwrap(), RunEnd::Exit);
            match self.hv.exit_info(v).unwrap() {
                hv::HV_VM_EXITINFO_SMI => host_exits += 1,
                hv::HV_VM_EXITINFO_APIC_ACCESS_READ => {
                    let value = self.hv.exit_apic_access_read(v).unwrap();
                    self.hv
                        .write_register(v, hv::HV_X86_RAX, value as u64)
                        .unwrap();
                    self.advance();
                }
                hv::HV_VM_EXITINFO_VMX => {
                    let reason = self.r(VMCS_RO_EXIT_REASON);
                    match reason as u32 {
                        hv::VMX_REASON_IRQ => {
                            host_exits += 1;
                            let op = self.cur_op();
                            let halted = self.r(VMCS_GUEST_ACTIVITY_STATE) == 1;
                            still = match (halted, still) {
                                (true, (last, n)) if last == op => (op, n + 1),
                                (true, _) => (op, 1),
                                (false, _) => (u32::MAX, 0),
                            };
                            if still.1 >= 3 {
                                return Outcome::Hang { op, host_exits };
                            }
                        }
                        hv::VMX_REASON_IO => {
                            let port = (self.r(VMCS_RO_EXIT_QUALIFIC) >> 16) as u16;
                            let value = self.reg(hv::HV_X86_RAX) as u32;
                            self.advance();
                            match port {
                                END_PORT => {
                                    return Outcome::End {
                                        code: EndCode::from_u32(value).unwrap(),
                                        host_exits,
                                    }
                                }
                                // These tests' scenarios have no host ops.
                                HYPERCALL_PORT => panic!("a host op"),
                                port => self.hv.atpic_port_write(port as i32, value as u8).unwrap(),
                            }
                        }
                        hv::VMX_REASON_APIC_ACCESS => {
                            let offset = self.r(VMCS_RO_EXIT_QUALIFIC) as u32 & 0xfff;
                            let value = self.reg(hv::HV_X86_RAX) as u32;
                            self.hv.apic_write(v, offset, value).unwrap();
                            self.advance();
                        }
                        hv::VMX_REASON_EPT_VIOLATION => {
                            // The double's MMIO moves: 89 03 store, 8b 03 load.
                            let gpa = self.r(hv::VMCS_GUEST_PHYSICAL_ADDRESS);
                            let rip = self.reg(hv::HV_X86_RIP) as usize;
                            if self.ram[rip] == 0x89 {
                                let value = self.reg(hv::HV_X86_RAX) as u32;
                                self.hv.ioapic_write(gpa, value).unwrap();
                            } else {
                                let value = self.hv.ioapic_read(gpa).unwrap();
                                self.hv
                                    .write_register(v, hv::HV_X86_RAX, value as u64)
                                    .unwrap();
                            }
                            self.advance();
                        }
                        hv::VMX_REASON_WRMSR => {
                            let (info, code, advance) = self.wrmsr.expect("a WRMSR exit");
                            self.w(VMCS_CTRL_VMENTRY_EXC_ERROR, code);
                            self.w(VMCS_CTRL_VMENTRY_IRQ_INFO, info);
                            if advance {
                                self.advance();
                            }
                        }
                        other => panic!("unexpected exit reason {other:#x}"),
                    }
                }
                other => panic!("unexpected exit info {other}"),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    End { code: EndCode, host_exits: u32 },
    Hang { op: u32, host_exits: u32 },
}

/// A correctly brought-up guest with `text` loaded.
fn ready(config: StrictConfig, text: &str) -> Guest {
    let mut g = Guest::new(config);
    g.bring_up();
    g.load(text, true);
    g
}

fn guest_state_failure(g: &mut Guest) -> String {
    let v = g.vcpu;
    assert_eq!(g.hv.run_forever(v).unwrap(), RunEnd::Exit);
    assert_eq!(g.hv.exit_info(v).unwrap(), hv::HV_VM_EXITINFO_VMX);
    assert_eq!(g.r(VMCS_RO_EXIT_REASON), EXIT_REASON_INVALID_GUEST_STATE);
    assert_eq!(g.r(VMCS_RO_EXIT_QUALIFIC), 0);
    match g.hv.entry_failure() {
        Some(EntryFailure::GuestState(why)) => why,
        other => panic!("{other:?}"),
    }
}

fn control_failure(g: &mut Guest) -> String {
    let v = g.vcpu;
    let e = g.hv.run_forever(v).unwrap_err();
    assert_eq!(e.code, hv::HV_ERROR);
    assert_eq!(g.r(VMCS_RO_INSTR_ERROR), 7);
    match g.hv.entry_failure() {
        Some(EntryFailure::Control(why)) => why,
        other => panic!("{other:?}"),
    }
}

// ---- (1) one VM per process, the destroy order ----

/// Tripped the loop before issue 18: `fuzz` drops a probe VM (`hv_vm_destroy` without
/// `hv_vcpu_destroy`, result ignored), then creates one VM per job thread.
#[test]
fn a_second_vm_in_the_process_is_busy_and_the_vm_outlives_its_vcpu() {
    let process = Process::new();
    let mut probe = Guest::new(config(&process));
    assert_eq!(probe.hv.destroy_vm().unwrap_err().code, hv::HV_BUSY);
    drop(probe);
    assert!(process.has_vm(), "the probe's VM is still the process's");
    let mut ram = vec![0u8; 4096];
    let mut job = Double::strict(config(&process), Quirks::empty());
    let e = job.create_vm(ram.as_mut_ptr(), ram.len()).unwrap_err();
    assert_eq!((e.call, e.code), ("hv_vm_create", hv::HV_BUSY));
}

#[test]
fn vcpu_then_vm_destroyed_frees_the_process_for_the_next_vm() {
    let process = Process::new();
    let mut first = Guest::new(config(&process));
    let v = first.vcpu;
    first.hv.destroy_vcpu(v).unwrap();
    first.hv.destroy_vm().unwrap();
    assert!(!process.has_vm());
    assert!(first.hv.read_register(v, hv::HV_X86_RIP).is_err());
    let second = Guest::new(config(&process));
    assert!(process.has_vm());
    drop(second);
}

// ---- the framework's thread rule ----

/// Not tripped by the loop as far as it was read (each backend stays
/// on the thread that made it); a guard for the later per-job workers.
#[test]
fn vcpu_calls_from_another_thread_are_refused_except_hv_vcpu_interrupt() {
    let mut g = Guest::new(config(&Process::new()));
    let v = g.vcpu;
    let kick = g.hv.interrupter(v).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let e = g.hv.read_register(v, hv::HV_X86_RIP).unwrap_err();
                assert_eq!(
                    (e.call, e.code),
                    ("hv_vcpu_read_register", hv::HV_BAD_ARGUMENT)
                );
                assert!(g.hv.run_forever(v).is_err());
                kick().unwrap();
                // VM-wide calls have no owner.
                g.hv.ioapic_write(IOAPIC_BASE, 1).unwrap();
            })
            .join()
            .unwrap();
    });
    assert!(g.hv.read_register(v, hv::HV_X86_RIP).is_ok());
}

/// Several vCPUs (issue 13): each thread that calls `hv_vcpu_create` owns
/// the vCPU it gets (IDs lowest free first), and a vCPU call is accepted
/// only from its owner, whichever vCPU it is: hv.h, "Must be called by the
/// owning thread" (the double's HV_BAD_ARGUMENT is unverified). One thread
/// creates one vCPU (the double's HV_BUSY, unverified); the VM goes only
/// after every vCPU; a destroyed vCPU's ID is free again.
#[test]
fn each_thread_owns_the_vcpu_it_created_and_no_other() {
    let process = Process::new();
    let mut g = Guest::new(config(&process));
    assert_eq!(g.vcpu, 0);
    let rip = hv::HV_X86_RIP;
    let refused = |e: irqdiff::backend::hvf::api::HvError| (e.call, e.code);
    assert_eq!(
        refused(g.hv.create_vcpu().unwrap_err()),
        ("hv_vcpu_create", hv::HV_BUSY),
        "a second vCPU on one thread"
    );
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                assert_eq!(g.hv.create_vcpu().unwrap(), 1);
                assert_eq!(
                    refused(g.hv.read_register(0, rip).unwrap_err()),
                    ("hv_vcpu_read_register", hv::HV_BAD_ARGUMENT),
                    "vCPU 0 is the main thread's"
                );
                assert_eq!(
                    refused(g.hv.destroy_vcpu(0).unwrap_err()),
                    ("hv_vcpu_destroy", hv::HV_BAD_ARGUMENT)
                );
                assert!(
                    g.hv.read_register(1, rip).is_ok(),
                    "its own vCPU passes the thread rule"
                );
            })
            .join()
            .unwrap();
    });
    // vCPU 1 outlives its thread's scope: still the other thread's.
    assert_eq!(
        refused(g.hv.write_register(1, rip, 0).unwrap_err()),
        ("hv_vcpu_write_register", hv::HV_BAD_ARGUMENT)
    );
    assert_eq!(
        refused(g.hv.run_forever(1).unwrap_err()),
        (
            "hv_vcpu_run_until(HV_DEADLINE_FOREVER)",
            hv::HV_BAD_ARGUMENT
        )
    );
    assert_eq!(
        refused(g.hv.read_register(2, rip).unwrap_err()),
        ("hv_vcpu_read_register", hv::HV_BAD_ARGUMENT),
        "no vCPU 2"
    );
    assert!(g.hv.read_register(0, rip).is_ok());
    g.hv.destroy_vcpu(0).unwrap();
    assert_eq!(
        refused(g.hv.destroy_vm().unwrap_err()),
        ("hv_vm_destroy", hv::HV_BUSY),
        "vCPU 1 is alive"
    );
    // Its owner thread is gone, so nothing can destroy vCPU 1 (as on a
    // Mac, where it goes with the process); a new thread gets ID 0, the
    // lowest free.
    std::thread::scope(|scope| {
        scope
            .spawn(|| assert_eq!(g.hv.create_vcpu().unwrap(), 0))
            .join()
            .unwrap();
    });
}

/// `hv_vcpu_exit_init_ap` and `hv_vcpu_exit_startup_ap` follow the thread
/// rule, and answer HV_ERROR when the last exit was no INIT_AP or
/// STARTUP_AP.
#[test]
fn the_ap_exit_calls_need_the_owner_and_an_ap_exit() {
    let mut g = Guest::new(config(&Process::new()));
    let v = g.vcpu;
    let e = g.hv.exit_init_ap(v, 8).unwrap_err();
    assert_eq!((e.call, e.code), ("hv_vcpu_exit_init_ap", hv::HV_ERROR));
    let e = g.hv.exit_startup_ap(v, 8).unwrap_err();
    assert_eq!((e.call, e.code), ("hv_vcpu_exit_startup_ap", hv::HV_ERROR));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let e = g.hv.exit_init_ap(v, 8).unwrap_err();
                assert_eq!(
                    (e.call, e.code),
                    ("hv_vcpu_exit_init_ap", hv::HV_BAD_ARGUMENT)
                );
                let e = g.hv.exit_startup_ap(v, 8).unwrap_err();
                assert_eq!(
                    (e.call, e.code),
                    ("hv_vcpu_exit_startup_ap", hv::HV_BAD_ARGUMENT)
                );
            })
            .join()
            .unwrap();
    });
}

/// The strict VM takes up to MAX_VCPUS vCPUs, one per thread; one more
/// answers HV_NO_RESOURCES.
#[test]
fn the_vm_takes_max_vcpus_vcpus() {
    use irqdiff::backend::hvf::double::MAX_VCPUS;
    let mut g = Guest::new(config(&Process::new()));
    let hv = std::sync::Mutex::new(&mut g.hv);
    let ids: Vec<u32> = std::thread::scope(|scope| {
        (1..MAX_VCPUS)
            .map(|_| scope.spawn(|| hv.lock().unwrap().create_vcpu().unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    });
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..MAX_VCPUS as u32).collect::<Vec<_>>());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let e = hv.lock().unwrap().create_vcpu().unwrap_err();
                assert_eq!((e.call, e.code), ("hv_vcpu_create", hv::HV_NO_RESOURCES));
            })
            .join()
            .unwrap();
    });
}

// ---- (2) execution controls ----

/// Tripped the loop before issue 18: it never reads the capabilities nor writes the
/// pin-based, processor-based and exit controls.
#[test]
fn unset_execution_controls_fail_entry_with_vm_instruction_error_7() {
    let mut g = Guest::new(config(&Process::new()));
    g.masks();
    g.long_mode();
    let entry = g.r(VMCS_CTRL_VMENTRY_CONTROLS);
    g.w(VMCS_CTRL_VMENTRY_CONTROLS, entry | IA32E_MODE_GUEST);
    g.load("nop\n", true);
    let why = control_failure(&mut g);
    assert!(
        why.contains("pin-based") && why.contains("never written"),
        "{why}"
    );
}

#[test]
fn controls_outside_the_capabilities_fail_entry() {
    let mut g = ready(config(&Process::new()), "nop\n");
    // Must-be-1 bits 1, 2, 4 of the pin-based controls cleared.
    g.w(VMCS_CTRL_PIN_BASED, 0);
    assert!(control_failure(&mut g).contains("pin-based controls 0x0"));
    // Posted interrupts (bit 7): allowed-1 is 0 on Kaby Lake.
    let pin = g.hv.read_capability(cap::PINBASED).unwrap();
    g.w(VMCS_CTRL_PIN_BASED, cap2ctrl(pin, 1 << 7) | 1 << 7);
    assert!(control_failure(&mut g).contains("may-be-1 0x7f"));
}

// ---- (3) guest state ----

/// Tripped the loop before issue 18: FS, GS, LDTR and the TR selector, base and limit
/// (and SS/DS/ES limits and bases) are never written.
#[test]
fn unwritten_segment_fields_fail_entry_with_reason_33() {
    let mut fresh = Guest::new(config(&Process::new()));
    fresh.controls();
    fresh.masks();
    // Today's long_mode: CS whole, SS/DS/ES selector and AR only, TR AR.
    fresh.w(VMCS_GUEST_CR0, CR0);
    fresh.w(VMCS_GUEST_CR3, layout::PML4);
    fresh.w(VMCS_GUEST_CR4, CR4);
    fresh.w(VMCS_GUEST_IA32_EFER, EFER);
    let (cs, cs_limit, cs_ar, _) = segment(1);
    fresh.w(cs, 8);
    fresh.w(cs_limit, 0xffff_ffff);
    fresh.w(cs_ar, 0xa09b);
    for i in [0, 2, 3] {
        let (s, _, a, _) = segment(i);
        fresh.w(s, 0x10);
        fresh.w(a, 0xc093);
    }
    fresh.w(segment(7).2, 0x8b);
    fresh.load("nop\n", true);
    let why = guest_state_failure(&mut fresh);
    assert!(
        why.contains("never written") && why.contains("ES limit"),
        "{why}"
    );
}

#[test]
fn g_set_with_a_limit_below_4k_granularity_fails_entry() {
    let mut g = ready(config(&Process::new()), "nop\n");
    // SS with G = 1 and limit 0xffff (HVF's reset value, if it has the x86
    // one): fine, limit[11:0] are all ones. Limit 0xff00 is not.
    g.w(segment(2).1, 0xff00);
    let why = guest_state_failure(&mut g);
    assert!(
        why.contains("guest SS") && why.contains("G must be 0"),
        "{why}"
    );
    g.w(segment(2).1, 0xffff_ffff);
    g.w(segment(2).2, 0x4093); // G = 0 with limit[31:20] set
    assert!(guest_state_failure(&mut g).contains("G must be 1"));
}

#[test]
fn segment_types_of_fs_ldtr_tr_and_cs_are_checked() {
    let mut g = ready(config(&Process::new()), "nop\n");
    let ar = |i| segment(i).2;
    g.w(ar(4), 0xc092); // FS data, not accessed
    assert!(guest_state_failure(&mut g).contains("guest FS"));
    g.w(ar(4), 0xc093);
    g.w(ar(6), 0x80); // LDTR usable with type 0
    assert!(guest_state_failure(&mut g).contains("type must be 2"));
    g.w(ar(6), 1 << 16);
    g.w(ar(7), 0x89); // an available, not busy, TSS
    assert!(guest_state_failure(&mut g).contains("busy TSS"));
    g.w(ar(7), 0x8b);
    g.w(ar(1), 0xe09b); // CS with L and D both set
    assert!(guest_state_failure(&mut g).contains("D/B must be 0"));
}

#[test]
fn cr0_and_cr4_must_respect_the_fixed_bits() {
    let mut g = ready(config(&Process::new()), "nop\n");
    g.w(VMCS_GUEST_CR0, CR0 & !0x20); // NE is fixed to 1
    assert!(guest_state_failure(&mut g).contains("CR0_FIXED0 0x80000021"));
    g.w(VMCS_GUEST_CR0, CR0);
    g.w(VMCS_GUEST_CR4, 0x20); // VMXE is fixed to 1 in VMX operation
    assert!(guest_state_failure(&mut g).contains("CR4_FIXED0 0x2000"));
}

#[test]
fn efer_must_match_the_ia32e_entry_control() {
    let mut g = ready(config(&Process::new()), "nop\n");
    g.w(VMCS_GUEST_IA32_EFER, 0x100); // LME without LMA
    assert!(guest_state_failure(&mut g).contains("LMA is 0"));
}

/// Tripped the loop before issue 18: it writes no CR0/CR4 mask or shadow.
#[test]
fn missing_cr_masks_and_shadows_are_refused() {
    let mut g = Guest::new(config(&Process::new()));
    g.controls();
    g.long_mode();
    g.load("nop\n", true);
    assert!(control_failure(&mut g).contains("VMCS_CTRL_CR0_MASK"));
    g.masks();
    assert!(g.hv.run_forever(g.vcpu).is_ok());
}

#[test]
fn rflags_bit_1_and_reserved_bits_are_checked() {
    let mut g = ready(config(&Process::new()), "nop\n");
    g.hv.write_register(g.vcpu, hv::HV_X86_RFLAGS, 0x200)
        .unwrap();
    assert!(guest_state_failure(&mut g).contains("RFLAGS 0x200"));
}

// ---- (4) a halted vCPU blocks in the kernel ----

/// Tripped the loop before issue 18: it polls with a 3 ms deadline and no watchdog, so a
/// hung guest never returns (here: the double's 300 ms report).
#[test]
fn a_halted_vcpu_ignores_the_deadline_until_hv_vcpu_interrupt() {
    let mut g = ready(config(&Process::new()), "cli\nhlt\n");
    let v = g.vcpu;
    let started = std::time::Instant::now();
    let e = loop {
        match g.hv.run_until(v, Duration::from_millis(3)) {
            Ok(RunEnd::Deadline) => panic!("a blocked HLT returned at its deadline"),
            Ok(RunEnd::Exit) => {
                let port_exit = g.r(VMCS_RO_EXIT_REASON) == hv::VMX_REASON_IO as u64;
                if port_exit || g.hv.exit_info(v).unwrap() == hv::HV_VM_EXITINFO_APIC_ACCESS_READ {
                    g.advance();
                } else {
                    let offset = g.r(VMCS_RO_EXIT_QUALIFIC) as u32 & 0xfff;
                    let value = g.reg(hv::HV_X86_RAX) as u32;
                    g.hv.apic_write(v, offset, value).unwrap();
                    g.advance();
                }
            }
            Err(e) => break e,
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(e.code, hv::HV_ERROR);
    assert!(g
        .hv
        .fault()
        .unwrap()
        .contains("nothing called hv_vcpu_interrupt"));
}

#[test]
fn hv_vcpu_interrupt_ends_a_blocked_hlt_with_the_activity_state_hlt() {
    let mut g = ready(config(&Process::new()), "cli\nhlt\n");
    let outcome = g.run();
    assert!(
        matches!(outcome, Outcome::Hang { op: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(g.r(VMCS_GUEST_ACTIVITY_STATE), 1);
}

// ---- (5) host-side exits ----

/// Tripped the loop before issue 18: `VMX_REASON_IRQ` and `HV_VM_EXITINFO_SMI` end its
/// run as "unexpected exit".
#[test]
fn host_irq_and_smi_exits_arrive_and_leave_rip_alone() {
    let config = StrictConfig {
        host_exit_one_in: 2,
        ..config(&Process::new())
    };
    let mut g = ready(config, "nop\nnop\nnop\nnop\nnop\nnop\n");
    let v = g.vcpu;
    let mut seen = (0, 0);
    for _ in 0..64 {
        let rip = g.reg(hv::HV_X86_RIP);
        assert_eq!(g.hv.run_forever(v).unwrap(), RunEnd::Exit);
        let info = g.hv.exit_info(v).unwrap();
        let reason = g.r(VMCS_RO_EXIT_REASON) as u32;
        if info == hv::HV_VM_EXITINFO_SMI {
            seen.1 += 1;
        } else if reason == hv::VMX_REASON_IRQ {
            seen.0 += 1;
        } else {
            break;
        }
        assert_eq!(g.reg(hv::HV_X86_RIP), rip, "a host exit moves no RIP");
    }
    assert!(seen.0 + seen.1 > 0, "{seen:?}");
    // Resuming on them, the stub still completes; advancing RIP on one is a
    // fault the double reports.
    let mut g = ready(
        StrictConfig {
            host_exit_one_in: 2,
            ..self::config(&Process::new())
        },
        "nop\n",
    );
    let outcome = g.run();
    assert!(
        matches!(outcome, Outcome::End { code: EndCode::Completed, host_exits } if host_exits > 0),
        "{outcome:?}"
    );
}

#[test]
fn advancing_rip_on_a_host_exit_is_a_fault() {
    let config = StrictConfig {
        host_exit_one_in: 2,
        ..config(&Process::new())
    };
    let mut g = ready(config, "nop\n");
    let v = g.vcpu;
    let mut advanced_on_host_exit = false;
    for _ in 0..32 {
        match g.hv.run_forever(v) {
            Ok(_) => {
                let host = g.hv.exit_info(v).unwrap() == hv::HV_VM_EXITINFO_SMI
                    || g.r(VMCS_RO_EXIT_REASON) == hv::VMX_REASON_IRQ as u64;
                // Wrong on a host exit: it moves RIP by a stale length.
                advanced_on_host_exit |= host && g.r(hv::VMCS_RO_VMEXIT_INSTR_LEN) != 0;
                g.advance();
            }
            Err(_) => break,
        }
    }
    assert!(advanced_on_host_exit);
    assert!(g
        .hv
        .fault()
        .unwrap()
        .contains("not past the exiting instruction"));
    // The run stays failed until the VMM starts over.
    assert!(g.hv.run_forever(v).is_err());
    g.load("nop\n", true);
    assert!(matches!(g.run(), Outcome::End { .. }));
}

// ---- (6) the APIC base ----

/// Tripped the loop before issue 18: it forwards the guest's WRMSR to
/// `hv_vcpu_write_msr(0x1b)`.
#[test]
fn apic_base_msr_writes_are_refused_and_the_window_moves_instead() {
    let mut g = Guest::new(config(&Process::new()));
    let v = g.vcpu;
    let e = g.hv.write_msr(v, 0x1b, 0xfed0_0900).unwrap_err();
    assert_eq!((e.call, e.code), ("hv_vcpu_write_msr", hv::HV_ERROR));
    assert!(g
        .hv
        .fault()
        .unwrap()
        .contains("hv_vmx_vcpu_set_apic_address"));
    g.hv.set_apic_address(v, 0xfed0_0000).unwrap();
    assert_eq!(g.hv.read_msr(v, 0x1b).unwrap(), 0xfed0_0900);
}

// ---- (7) the in-kernel IOAPIC's identity ----

/// The loop before issue 18 assumed version 0x20 with an EOI register and 24 pins: on
/// bhyve's identity an IOAPIC-EOI op has no effect, a false HVF finding.
#[test]
fn the_in_kernel_ioapic_is_version_0x11_with_32_pins_and_no_eoi_register() {
    let remote_irr_after_eoi_register_write = |identity: IoapicIdentity| {
        let mut g = Guest::new(StrictConfig {
            ioapic: identity,
            ..config(&Process::new())
        });
        let v = g.vcpu;
        g.hv.apic_write(v, 0xf0, 0x1ff).unwrap();
        g.hv.ioapic_write(IOAPIC_BASE, 1).unwrap();
        let version = g.hv.ioapic_read(IOAPIC_BASE + 0x10).unwrap();
        // Pin 3: level, vector 0x40, to APIC 0.
        g.hv.ioapic_write(IOAPIC_BASE, 0x17).unwrap();
        g.hv.ioapic_write(IOAPIC_BASE + 0x10, 0).unwrap();
        g.hv.ioapic_write(IOAPIC_BASE, 0x16).unwrap();
        g.hv.ioapic_write(IOAPIC_BASE + 0x10, 0x8040).unwrap();
        g.hv.ioapic_assert_irq(3).unwrap();
        g.hv.ioapic_deassert_irq(3).unwrap();
        g.hv.ioapic_write(IOAPIC_BASE + 0x40, 0x40).unwrap();
        let low = g.hv.ioapic_read(IOAPIC_BASE + 0x10).unwrap();
        (version, low & (1 << 14) != 0)
    };
    assert_eq!(
        remote_irr_after_eoi_register_write(IoapicIdentity::BHYVE),
        (0x1f_0011, true)
    );
    assert_eq!(
        remote_irr_after_eoi_register_write(IoapicIdentity::ICH),
        (0x17_0020, false)
    );
    // Pins 24-31 exist on the identity but not in the model (24 pins).
    let mut g = Guest::new(config(&Process::new()));
    assert_eq!(
        g.hv.ioapic_assert_irq(31).unwrap_err().code,
        hv::HV_UNSUPPORTED
    );
    assert_eq!(
        g.hv.ioapic_assert_irq(32).unwrap_err().code,
        hv::HV_BAD_ARGUMENT
    );
}

// ---- (8) vCPU state between scenarios ----

/// Tripped the loop before issue 18: after a hang the activity state stays HLT, so the
/// next scenario starts halted and never runs its first op.
#[test]
fn a_stale_hlt_activity_state_stops_the_next_scenario() {
    let mut g = ready(config(&Process::new()), "cli\nhlt\n");
    assert!(matches!(g.run(), Outcome::Hang { .. }));
    g.load("self-ipi 0x41\n", false);
    let outcome = g.run();
    assert!(
        matches!(outcome, Outcome::Hang { op: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(g.count(0x41), 0);
    g.load("self-ipi 0x41\n", true);
    assert!(matches!(
        g.run(),
        Outcome::End {
            code: EndCode::Completed,
            ..
        }
    ));
    assert_eq!(g.count(0x41), 1);
}

#[test]
fn sti_blocking_needs_if_and_the_active_state() {
    let mut g = ready(config(&Process::new()), "nop\n");
    let v = g.vcpu;
    g.w(VMCS_GUEST_INTERRUPTIBILITY, 1);
    g.hv.write_register(v, hv::HV_X86_RFLAGS, 0x2).unwrap();
    assert!(guest_state_failure(&mut g).contains("RFLAGS.IF = 0"));
    g.hv.write_register(v, hv::HV_X86_RFLAGS, 0x202).unwrap();
    g.w(VMCS_GUEST_ACTIVITY_STATE, 1);
    assert!(guest_state_failure(&mut g).contains("it must be active"));
}

#[test]
fn a_left_over_event_injection_is_refused() {
    let mut g = ready(config(&Process::new()), "nop\n");
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, 1 << 31 | 0x41);
    assert!(control_failure(&mut g).contains("pending event injection"));
}

/// `hv_vcpu_apic_read`/`write` take a byte offset into the APIC page of a
/// 32-bit access: beyond the last dword, or unaligned, is refused.
#[test]
fn apic_offsets_outside_the_page_or_unaligned_are_refused() {
    let mut g = ready(config(&Process::new()), "nop\n");
    let v = g.vcpu;
    for offset in [0x1000, 0xffd, 0x302] {
        let e = g.hv.apic_write(v, offset, 0).unwrap_err();
        assert_eq!(
            (e.call, e.code),
            ("hv_vcpu_apic_write", hv::HV_BAD_ARGUMENT)
        );
        let e = g.hv.apic_read(v, offset).unwrap_err();
        assert_eq!((e.call, e.code), ("hv_vcpu_apic_read", hv::HV_BAD_ARGUMENT));
    }
    assert_eq!(g.hv.apic_read(v, 0xffc).unwrap(), 0);
    assert_eq!(g.hv.apic_read(v, 0x30).unwrap(), 0x0005_0014);
}

// ---- event injection (SDM vol. 3C 26.2.1.3, 26.6) ----

/// #GP(0) as a VMM injects it: valid, hardware exception, error code.
const GP: u64 = 1 << 31 | 1 << 11 | 3 << 8 | 13;

/// The stub's log record at `index` (four words).
fn record(g: &Guest, index: usize) -> [u32; 4] {
    let at = layout::LOG as usize + 16 * index;
    std::array::from_fn(|i| {
        u32::from_le_bytes(g.ram[at + 4 * i..at + 4 * i + 4].try_into().unwrap())
    })
}

/// Each malformed injection is a VM entry with invalid control fields
/// (VMfailValid, VM-instruction error 7) and names the rule it breaks.
#[test]
fn a_malformed_event_injection_fails_entry_with_error_7() {
    let cases: [(u64, Option<u64>, &str); 8] = [
        // #GP without its error code, and a #UD (vector 6) with one.
        (
            GP & !(1 << 11),
            None,
            "deliver-error-code is 0 but type 3 vector 13 pushes an error code",
        ),
        (
            1 << 31 | 1 << 11 | 3 << 8 | 6,
            Some(0),
            "deliver-error-code is 1 but type 3 vector 6 pushes no error code",
        ),
        // An error code with bits 31:16 set.
        (GP, Some(0x1_0000), "error code 0x10000 has bits 31:16 set"),
        // The error code field never written.
        (
            GP,
            None,
            "VM-entry exception error code (0x4018) was never written",
        ),
        // Type 1 is reserved; an NMI has vector 2; an exception vector is below 32.
        (1 << 31 | 1 << 8 | 13, None, "reserved type 1"),
        (1 << 31 | 2 << 8 | 3, None, "an NMI must have vector 2"),
        (1 << 31 | 3 << 8 | 32, None, "at most 31"),
        // Reserved bits 30:12.
        (GP | 1 << 12, Some(0), "reserved bits 30:12"),
    ];
    for (info, code, why) in cases {
        let mut g = ready(config(&Process::new()), "nop\n");
        if let Some(code) = code {
            g.w(VMCS_CTRL_VMENTRY_EXC_ERROR, code);
        }
        g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, info);
        let failure = control_failure(&mut g);
        assert!(failure.contains(why), "{info:#x}: {failure}");
    }
}

/// A well-formed injection of another exception passes the processor's
/// checks but is beyond what the double delivers: refused as such.
#[test]
fn a_well_formed_injection_other_than_gp_is_refused_as_not_modelled() {
    let mut g = ready(config(&Process::new()), "nop\n");
    g.w(VMCS_CTRL_VMENTRY_EXC_ERROR, 0);
    g.w(VMCS_CTRL_VMENTRY_IRQ_INFO, 1 << 31 | 1 << 11 | 3 << 8 | 14);
    assert!(control_failure(&mut g).contains("the double delivers #GP only"));
}

/// #GP(0) injected at the guest's faulting WRMSR with RIP left on it: the
/// stub's handler logs (EXCEPTION, op, 13, 0), skips the WRMSR and the run
/// goes on; the valid bit is clear after the next exit (SDM 24.8.3).
#[test]
fn an_injected_gp_at_the_wrmsr_reaches_the_stubs_handler() {
    let mut g = ready(config(&Process::new()), "apic-base 0xfee00901\nnop\n");
    g.wrmsr = Some((GP, 0, false));
    assert!(matches!(
        g.run(),
        Outcome::End {
            code: EndCode::Completed,
            ..
        }
    ));
    assert_eq!(record(&g, 0), [5, 0, 13, 0]);
    assert_eq!(g.r(VMCS_CTRL_VMENTRY_IRQ_INFO) & 1 << 31, 0);
    let flag = layout::GP_FAULTED as usize;
    assert_eq!(g.ram[flag], 1);
}

/// The same #GP with RIP advanced past the WRMSR: the handler finds no
/// RDMSR or WRMSR at the saved RIP and the stub ends the run (end code 3).
#[test]
fn an_injected_gp_past_the_instruction_is_an_unexpected_fault() {
    let mut g = ready(config(&Process::new()), "apic-base 0xfee00901\nnop\n");
    g.wrmsr = Some((GP, 0, true));
    assert!(matches!(
        g.run(),
        Outcome::End {
            code: EndCode::UnexpectedFault,
            ..
        }
    ));
}

// ---- the correct sequence ----

#[test]
fn a_correct_bring_up_runs_the_stub_through_hangs_and_host_exits() {
    let process = Process::new();
    let config = StrictConfig {
        host_exit_one_in: 4,
        ..config(&process)
    };
    let mut g = ready(config, "self-ipi 0x41\nnop\n");
    let outcome = g.run();
    assert!(
        matches!(outcome, Outcome::End { code: EndCode::Completed, host_exits } if host_exits > 0),
        "{outcome:?}"
    );
    assert_eq!(g.count(0x41), 1);
    for (text, want_hang) in [("nop\ncli\nhlt\n", true), ("self-ipi 0x42\n", false)] {
        g.load(text, true);
        match g.run() {
            Outcome::Hang { op, .. } => assert!(want_hang && op == 2, "{text}"),
            Outcome::End { code, .. } => assert!(!want_hang && code == EndCode::Completed),
        }
    }
    assert_eq!(g.count(0x42), 1);
    let v = g.vcpu;
    g.hv.destroy_vcpu(v).unwrap();
    g.hv.destroy_vm().unwrap();
    assert!(!process.has_vm());
}

// ---- several vCPUs (issue 13) ----

/// An ICR write of INIT or STARTUP is `no_side_effect = false` with
/// `HV_VM_EXITINFO_INIT_AP` or `STARTUP_AP` on the *sender*, whose
/// `hv_vcpu_exit_init_ap`/`startup_ap` name the targets by vCPU ID (and
/// `ap_rip`, the vector << 12); a STARTUP to a vCPU that does not wait for
/// SIPI reaches nobody and is no exit; an array too short for the targets
/// is refused; after a plain ICR write (a fixed IPI) neither call answers.
#[test]
fn an_init_or_startup_ipi_is_an_exit_of_the_sender_naming_its_targets() {
    let mut g = Guest::new(config(&Process::new()));
    std::thread::scope(|scope| {
        scope
            .spawn(|| assert_eq!(g.hv.create_vcpu().unwrap(), 1))
            .join()
            .unwrap();
    });
    let v = g.vcpu;
    let code = |e: irqdiff::backend::hvf::api::HvError| (e.call, e.code);
    g.hv.apic_write(v, 0xf0, 0x1ff).unwrap();
    g.hv.apic_write(v, 0x310, 1 << 24).unwrap();
    // A fixed IPI to vCPU 1: no exit.
    assert!(g.hv.apic_write(v, 0x300, 0x40f1).unwrap());
    assert_eq!(
        code(g.hv.exit_init_ap(v, 2).unwrap_err()),
        ("hv_vcpu_exit_init_ap", hv::HV_ERROR)
    );
    // INIT, level assert, to vCPU 1 (SDM §11.6.1: delivery mode 101).
    assert!(!g.hv.apic_write(v, 0x300, 0x4500).unwrap());
    assert_eq!(g.hv.exit_info(v).unwrap(), hv::HV_VM_EXITINFO_INIT_AP);
    assert_eq!(g.hv.exit_init_ap(v, 2).unwrap(), vec![false, true]);
    assert_eq!(
        g.hv.exit_init_ap(v, 4).unwrap(),
        vec![false, true, false, false]
    );
    assert_eq!(
        code(g.hv.exit_init_ap(v, 1).unwrap_err()),
        ("hv_vcpu_exit_init_ap", hv::HV_BAD_ARGUMENT),
        "vCPU 1 does not fit in one entry"
    );
    assert_eq!(
        code(g.hv.exit_startup_ap(v, 2).unwrap_err()),
        ("hv_vcpu_exit_startup_ap", hv::HV_ERROR),
        "the exit was INIT_AP"
    );
    // STARTUP, vector 0x08, to vCPU 1, which waits for it now.
    assert!(!g.hv.apic_write(v, 0x300, 0x4608).unwrap());
    assert_eq!(g.hv.exit_info(v).unwrap(), hv::HV_VM_EXITINFO_STARTUP_AP);
    assert_eq!(
        g.hv.exit_startup_ap(v, 2).unwrap(),
        (vec![false, true], 0x8000)
    );
    // A second STARTUP: vCPU 1 waits no more, nothing is started.
    assert!(g.hv.apic_write(v, 0x300, 0x4608).unwrap());
    // INIT to all but self: vCPU 1 only.
    assert!(!g.hv.apic_write(v, 0x300, 0xc4500).unwrap());
    assert_eq!(g.hv.exit_init_ap(v, 2).unwrap(), vec![false, true]);
}

/// A vCPU an INIT reached waits for SIPI (SDM §11.4.7.3): the double
/// refuses resuming it where it stopped, starting it before a STARTUP IPI,
/// and starting it after one anywhere but the stub's SIPI entry; started
/// there with EDI = its index, it runs the SIPI entry (its SVR write is the
/// first exit). An AP started at `ap_entry` before any INIT runs to the
/// mailbox loop's idle `out`.
#[test]
fn a_vcpu_an_init_reached_runs_only_after_a_startup_ipi_and_at_sipi_entry() {
    use std::sync::{Barrier, Mutex};
    let mut g = Guest::new(config(&Process::new()));
    g.bring_up();
    let (ap_entry, sipi_entry) = (g.image.stub.ap_entry, g.image.stub.sipi_entry);
    let g = Mutex::new(g);
    let barrier = Barrier::new(2);
    let start = |g: &mut Guest, rip: u64| {
        for (reg, value) in [
            (hv::HV_X86_RIP, rip),
            (hv::HV_X86_RDI, 1),
            (hv::HV_X86_RSP, layout::cpu_stack_top(1)),
            (hv::HV_X86_RFLAGS, 0x2),
        ] {
            g.hv.write_register(1, reg, value).unwrap();
        }
    };
    let run_fault = |g: &mut Guest| {
        g.hv.run_forever(1).unwrap_err();
        g.hv.fault().unwrap_or_default()
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            {
                let mut g = g.lock().unwrap();
                assert_eq!(g.hv.create_vcpu().unwrap(), 1);
                g.vcpu = 1;
                g.bring_up();
                for field in [
                    VMCS_GUEST_ACTIVITY_STATE,
                    VMCS_GUEST_INTERRUPTIBILITY,
                    VMCS_CTRL_VMENTRY_IRQ_INFO,
                ] {
                    g.w(field, 0);
                }
                start(&mut g, ap_entry);
                assert_eq!(g.hv.run_forever(1).unwrap(), RunEnd::Exit);
                assert_eq!(g.r(VMCS_RO_EXIT_REASON), hv::VMX_REASON_IO as u64);
                let port = g.r(VMCS_RO_EXIT_QUALIFIC) >> 16;
                assert_eq!(
                    port,
                    layout::IDLE_PORT as u64,
                    "the mailbox loop's idle out"
                );
                g.vcpu = 0;
            }
            barrier.wait(); // vCPU 0 sends INIT
            barrier.wait();
            {
                let mut g = g.lock().unwrap();
                let why = run_fault(&mut g);
                assert!(why.contains("resumed after an INIT"), "{why}");
                start(&mut g, ap_entry);
                let why = run_fault(&mut g);
                assert!(why.contains("before a STARTUP IPI"), "{why}");
            }
            barrier.wait(); // vCPU 0 sends STARTUP
            barrier.wait();
            let mut g = g.lock().unwrap();
            start(&mut g, ap_entry);
            let why = run_fault(&mut g);
            assert!(why.contains("not at the stub's SIPI entry"), "{why}");
            start(&mut g, sipi_entry);
            g.vcpu = 1;
            assert_eq!(g.hv.run_forever(1).unwrap(), RunEnd::Exit);
            assert_eq!(g.r(VMCS_RO_EXIT_REASON), hv::VMX_REASON_APIC_ACCESS as u64);
            assert_eq!(g.r(VMCS_RO_EXIT_QUALIFIC) & 0xfff, 0xf0, "SVR first");
            assert_eq!(g.reg(hv::HV_X86_RAX), 0x1ff);
            g.vcpu = 0;
        });
        barrier.wait();
        {
            let mut g = g.lock().unwrap();
            g.hv.apic_write(0, 0xf0, 0x1ff).unwrap();
            g.hv.apic_write(0, 0x310, 1 << 24).unwrap();
            assert!(!g.hv.apic_write(0, 0x300, 0x4500).unwrap());
        }
        barrier.wait();
        barrier.wait();
        assert!(!g.lock().unwrap().hv.apic_write(0, 0x300, 0x4608).unwrap());
        barrier.wait();
    });
}
