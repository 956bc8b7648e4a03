//! QEMU as a backend (`qemu:accel=tcg|kvm|hvf,irqchip=...,machine=...`).
//! Under TCG (`qemu-tcg`) it is QEMU's emulated irqchip, `hw/intc/apic.c`
//! and `hw/intc/ioapic.c`: a second real implementation that runs
//! everywhere, for three-way triage with the model and a hypervisor. Under
//! KVM or HVF it is QEMU as the VMM under test: its integration of the
//! accelerator's irqchip (`kernel-irqchip=on`: KVM's APIC and IOAPIC;
//! `split`: KVM's APIC, QEMU's IOAPIC, the seed's shape).
//!
//! The same guest stub runs as it does under KVM, but QEMU cannot perform
//! host ops for us, so the stub does them itself: lines through
//! `pc-testdev` (a byte to port 0x2000+N sets ISA IRQ N, as kvm-unit-tests
//! does), MSIs by writing the data to the MSI address (QEMU's APIC page
//! turns such writes into messages). Guest RAM is a shared memory file that
//! the host fills before QEMU starts (page tables, GDT, IDT, the stub, the
//! scenario) and reads after it exits; the firmware is a 64 KiB image whose
//! reset vector jumps to a real-mode trampoline that enters long mode. The
//! run ends through `isa-debug-exit`; a run that does not end in time is a
//! hang. One QEMU process per scenario, or one for a batch.

mod features;
mod options;
pub mod smp;

pub use features::{describe, probe, Features};
pub use options::{binary, Accel, KernelIrqchip, Machine, Options, QEMU_ENV};

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

use super::{Availability, Backend, BackendError, BackendKind, Result};
use crate::guest::layout::*;
use crate::guest::{log, table, Image};
use crate::model::lapic::reg;
use crate::scenario::{ApicMode, HostOp, Op, Scenario};
use crate::trace::{Outcome, Trace};

/// Guest RAM of the QEMU machine.
const QEMU_RAM: usize = 16 << 20;
/// A run whose stub has made no progress (no op started, nothing logged)
/// for this long is a hang (TCG runs a scenario in well under a millisecond
/// once booted; the margin is for a loaded host).
const HANG_AFTER: Duration = Duration::from_millis(300);
/// In a batch, a scenario still running this long is a hang (TCG runs one
/// in well under a millisecond; QEMU's monitor does not say whether a TCG
/// vCPU is halted). The process stays; the machine is reset through the
/// monitor.
const BATCH_HANG_AFTER: Duration = Duration::from_millis(25);
/// A batch scenario that neither ends nor halts within this is an error.
const RUN_LIMIT: Duration = Duration::from_secs(2);
/// The same for several CPUs: each op's settling needs every vCPU thread
/// to run (two passes of each mailbox loop), which on a loaded host takes
/// far longer than one CPU's op (`irqdiff bench qemu-tcg`, `cpus`).
const SMP_RUN_LIMIT: Duration = Duration::from_secs(20);
/// The in-guest watchdog's period: a batch scenario halted this long with
/// nothing to wake it is a hang (the KVM backend's kick period).
const WATCHDOG: Duration = Duration::from_millis(3);
/// With the watchdog armed, the host steps in only if it failed.
const WATCHDOG_FALLBACK: Duration = Duration::from_millis(500);

/// Local APIC timer registers (SDM Table 11-1): the watchdog's. A scenario
/// that reads or writes one runs without the watchdog, so that it sees
/// the timer as the model has it.
const TIMER_REGISTERS: [u16; 4] = [
    reg::LVT_TIMER,
    reg::TIMER_INITIAL,
    reg::TIMER_CURRENT,
    reg::TIMER_DIVIDE,
];

/// Whether `scenario` leaves the local APIC timer to the watchdog. An
/// IA32_APIC_BASE write may disable the APIC or switch it to x2APIC mode
/// (where the watchdog's xAPIC page reads no longer reach it, SDM
/// §11.12.1), so such a scenario runs without it too, and so does one that
/// sends an NMI: the watchdog's is an NMI as well, and an NMI raised while
/// another is pending is lost with it (SDM §6.7.1: NMIs are not queued
/// beyond one), so on a loaded host, where the period can run out at any
/// instruction, the scenario's NMI could be taken as the watchdog's.
fn watchdog_allowed(scenario: &Scenario) -> bool {
    use crate::scenario::{DeliveryMode, MsiDelivery};
    !scenario.all_ops().any(|op| {
        matches!(op, Op::ApicBase(_))
            || matches!(op, Op::Host(HostOp::Msi(m)) if m.delivery == MsiDelivery::Nmi)
            // `ipi nmi` (before this, its NMI was taken for the watchdog's
            // once the one-shot had run out, and lost:
            // tests/qemu_smp.rs, nmi_ipis_reach_every_cpu).
            || matches!(op, Op::Ipi(i) if i.delivery == crate::scenario::IpiDelivery::Nmi)
            || matches!(op, Op::Route { route, .. } if route.delivery == DeliveryMode::Nmi)
            // ICR or an LVT with delivery mode 100b (SDM §11.6.1, §11.5.1).
            || matches!(op, Op::LapicWrite { offset, value } | Op::LapicMmioWrite { offset, value }
                if (*offset == reg::ICR_LOW || (reg::LVT_TIMER..=reg::LVT_ERROR).contains(offset))
                    && (value >> 8) & 7 == 4)
            || matches!(op, Op::LapicRead(o) | Op::LapicWrite { offset: o, .. } | Op::LapicMmioRead(o) | Op::LapicMmioWrite { offset: o, .. } if TIMER_REGISTERS.contains(o))
            // The LAPIC timer ops program the watchdog's timer.
            || op.is_timer_op()
    })
}

/// QEMU's human monitor on a Unix socket.
struct Monitor {
    stream: std::os::unix::net::UnixStream,
}

impl Monitor {
    fn connect(path: &std::path::Path) -> Option<Monitor> {
        let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let mut m = Monitor { stream };
        m.until_prompt()?;
        Some(m)
    }

    /// Reads up to the next `(qemu) ` prompt.
    fn until_prompt(&mut self) -> Option<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = std::io::Read::read(&mut self.stream, &mut buf).ok()?;
            if n == 0 {
                return None;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    fn command(&mut self, command: &str) -> Option<String> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .ok()?;
        self.until_prompt()
    }
}
/// QEMU taking longer than this to reach the stub is an error.
const BOOT_LIMIT: Duration = Duration::from_secs(10);
/// `wait`'s status for a QEMU that never reached the stub.
const NEVER_BOOTED: i32 = -2;

pub const TCG: BackendKind = BackendKind {
    name: "qemu-tcg",
    description: "QEMU's emulated APIC and IOAPIC under TCG (= qemu:accel=tcg)",
    takes_options: false,
    probe,
    open: |name, _| Ok(Box::new(QemuBackend::open_with(name, Options::TCG)?)),
};

pub const KVM_USERSPACE: BackendKind = BackendKind {
    name: "qemu-kvm-userspace",
    description: "QEMU's APIC and IOAPIC on KVM's CPU (= qemu:accel=kvm,irqchip=off; QEMU < 8.0)",
    takes_options: false,
    probe: || probe_options(Options::KVM_USERSPACE),
    open: |name, _| {
        Ok(Box::new(QemuBackend::open_with(
            name,
            Options::KVM_USERSPACE,
        )?))
    },
};

pub const KIND: BackendKind = BackendKind {
    name: "qemu:OPTIONS",
    description: "QEMU as the VMM: accel=tcg|kvm|hvf, irqchip=on|split|off (KVM's kernel-irqchip), machine=pc|q35",
    takes_options: true,
    probe,
    open: |name, options| {
        let options = Options::parse(options).map_err(|why| super::OpenError::Invalid {
            name: name.into(),
            why,
        })?;
        Ok(Box::new(QemuBackend::open_with(name, options)?))
    },
};

/// The firmware: 64 KiB whose reset vector (at 0xFFFF0) jumps to the
/// trampoline in RAM: jmp far 0000:TRAMPOLINE.
fn firmware_rom() -> Vec<u8> {
    let mut rom = vec![0xf4u8; 0x1_0000];
    rom[0xfff0..0xfff5].copy_from_slice(&[0xea, TRAMPOLINE as u8, (TRAMPOLINE >> 8) as u8, 0, 0]);
    rom
}

/// Whether QEMU with KVM accepts `kernel-irqchip=off` (QEMU 8.0 does not:
/// commit eaaaf8abdc9a), once per process: it starts QEMU.
fn kvm_userspace_apic() -> std::result::Result<(), String> {
    static PROBED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    PROBED
        .get_or_init(|| {
            let firmware =
                std::env::temp_dir().join(format!("irqdiff-qemu-probe-{}.bin", std::process::id()));
            std::fs::write(&firmware, firmware_rom())
                .map_err(|e| format!("{}: {e}", firmware.display()))?;
            let options = Options::KVM_USERSPACE;
            let accel = options.accel_arg();
            let args = [
                "-accel",
                &accel,
                "-machine",
                options.machine_arg(),
                "-cpu",
                "qemu64",
            ];
            let accepted = features::accepts(&args, &firmware);
            let _ = std::fs::remove_file(&firmware);
            accepted.map_err(|why| {
                format!(
                    "QEMU refuses kernel-irqchip=off with KVM ({why}): QEMU 8.0 removed the \
                     userspace local APIC under KVM (commit eaaaf8abdc9a); use irqchip=split or on"
                )
            })
        })
        .clone()
}

/// Whether QEMU can run with `options` here: the binary runs, and the
/// accelerator exists on this host (for `kernel-irqchip=off` under KVM,
/// whether this QEMU still has it).
pub fn probe_options(options: Options) -> Availability {
    if let Availability::Unavailable(why) = probe() {
        return Availability::Unavailable(why);
    }
    match options.accel {
        Accel::Tcg => Availability::Available,
        Accel::Kvm if !std::path::Path::new("/dev/kvm").exists() => {
            Availability::Unavailable("accel=kvm needs /dev/kvm".into())
        }
        Accel::Kvm if options.irqchip() == KernelIrqchip::Off => match kvm_userspace_apic() {
            Ok(()) => Availability::Available,
            Err(why) => Availability::Unavailable(why),
        },
        Accel::Kvm => Availability::Available,
        Accel::Hvf if cfg!(target_os = "macos") => Availability::Available,
        Accel::Hvf => Availability::Unavailable(
            "accel=hvf is QEMU's Hypervisor.framework accelerator: it runs on macOS only (docs/hvf.md)"
                .into(),
        ),
    }
}

pub struct QemuBackend {
    /// The name it was opened with (`qemu-tcg`, `qemu:accel=kvm,...`).
    name: String,
    options: Options,
    features: Features,
    image: Image,
    dir: PathBuf,
    firmware: PathBuf,
    trampoline: Vec<u8>,
    /// Whether batches detect hangs in the guest (see [`batch::watchdog`]);
    /// without it the host waits [`BATCH_HANG_AFTER`] for each.
    watchdog: bool,
}

impl QemuBackend {
    /// `kvm`: `qemu-kvm-userspace` (`-accel kvm,kernel-irqchip=off`)
    /// instead of `qemu-tcg`.
    pub fn open(kvm: bool) -> std::result::Result<QemuBackend, super::OpenError> {
        if kvm {
            QemuBackend::open_with("qemu-kvm-userspace", Options::KVM_USERSPACE)
        } else {
            QemuBackend::open_with("qemu-tcg", Options::TCG)
        }
    }

    /// Opens QEMU with `options` under the backend name `name`: probes the
    /// binary's features, then the exact accelerator and machine options.
    pub fn open_with(
        name: &str,
        options: Options,
    ) -> std::result::Result<QemuBackend, super::OpenError> {
        let fail = |why: String| super::OpenError::Unavailable {
            name: name.into(),
            why,
        };
        if let Availability::Unavailable(why) = probe_options(options) {
            return Err(fail(why));
        }
        let dir =
            std::env::temp_dir().join(format!("irqdiff-qemu-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let image = Image::build();
        let firmware = dir.join("firmware.bin");
        let opened = (|| {
            std::fs::write(&firmware, firmware_rom())
                .map_err(|e| format!("{}: {e}", firmware.display()))?;
            let trampoline = trampoline(image.stub.entry)
                .map_err(|e| format!("assembling the trampoline: {e}"))?;
            let features = Features::get(&firmware)?;
            if options.accel != Accel::Tcg {
                let accel = options.accel_arg();
                let cpu = cpu_model(&options, &features);
                features::accepts(
                    &[
                        "-accel",
                        &accel,
                        "-machine",
                        options.machine_arg(),
                        "-cpu",
                        cpu,
                    ],
                    &firmware,
                )
                .map_err(|why| refusal(&options, &features, &why))?;
            }
            Ok((trampoline, features))
        })();
        let (trampoline, features) = match opened {
            Ok(v) => v,
            Err(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(fail(why));
            }
        };
        Ok(QemuBackend {
            name: name.to_string(),
            options,
            features,
            image,
            dir,
            firmware,
            trampoline,
            // The in-guest watchdog is the LAPIC timer in NMI mode; under
            // KVM's LAPIC on this host it is not reliable (see
            // `watchdog_works`), so the host times hangs out there.
            watchdog: watchdog_works(&options),
        })
    }

    /// How this backend runs QEMU.
    pub fn options(&self) -> Options {
        self.options
    }

    /// What the installed QEMU offers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether batches arm the in-guest hang watchdog.
    pub fn watchdog(&self) -> bool {
        self.watchdog
    }

    /// Turns the in-guest hang watchdog on or off (on by default where
    /// the local APIC is QEMU's); the benchmark measures what it saves.
    pub fn set_watchdog(&mut self, on: bool) {
        self.watchdog = on;
    }

    /// Guest RAM for one scenario.
    fn ram(&self, table: &table::Table, scenario: &Scenario) -> Vec<u8> {
        let mut ram = vec![0u8; QEMU_RAM];
        self.image.install(&mut ram);
        self.image
            .load(&mut ram, table, scenario.config.apic == ApicMode::X2apic);
        // A 32-bit code segment (0x18) for the trampoline.
        ram[GDT as usize + 0x18..GDT as usize + 0x20]
            .copy_from_slice(&0x00cf_9a00_0000_ffffu64.to_le_bytes());
        let t = TRAMPOLINE as usize;
        ram[t..t + self.trampoline.len()].copy_from_slice(&self.trampoline);
        // Descriptors: GDTR (limit, base) at +0x100, IDTR at +0x110.
        ram[t + 0x100..t + 0x102].copy_from_slice(&31u16.to_le_bytes());
        ram[t + 0x102..t + 0x106].copy_from_slice(&(GDT as u32).to_le_bytes());
        ram[t + 0x110..t + 0x112].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
        ram[t + 0x112..t + 0x11a].copy_from_slice(&IDT.to_le_bytes());
        ram[END_PORT_VAR as usize..END_PORT_VAR as usize + 4]
            .copy_from_slice(&(QEMU_EXIT_PORT as u32).to_le_bytes());
        ram
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for QemuBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Real mode at TRAMPOLINE -> protected mode (GDT 0x18) -> long mode, then
/// the stub's start state: the local APIC software-enabled, RFLAGS.IF = 1.
fn trampoline(entry: u64) -> std::result::Result<Vec<u8>, IcedError> {
    trampoline_at(TRAMPOLINE, |l| {
        l.mov(rsp, STACK_TOP)?;
        l.lidt(ptr(TRAMPOLINE + 0x110))?;
        // SVR = 0x1FF: the scenario's start state (QEMU's APIC comes out of
        // reset software-disabled).
        l.mov(rax, LAPIC_BASE + reg::SVR as u64)?;
        l.mov(dword_ptr(rax), 0x1ff)?;
        l.mov(dword_ptr(BOOTED), 1)?;
        l.push(0x202)?;
        l.popfq()?;
        l.mov(rax, entry)?;
        l.jmp(rax)
    })
}

/// Real mode at `base` (a page: CS 0 from the firmware's far jump, or
/// CS = base >> 4 from a start-up IPI; the code only uses absolute
/// addresses, so both run it) -> protected mode (GDT 0x18) -> long mode
/// with the stub's page tables, then `long` (at most 0x100 bytes). The
/// descriptors are at `base` + 0x100 (GDTR) and + 0x110 (IDTR).
fn trampoline_at(
    base: u64,
    long: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
) -> std::result::Result<Vec<u8>, IcedError> {
    let mut r = CodeAssembler::new(16)?;
    r.cli()?;
    r.xor(ax, ax)?;
    r.mov(ds, ax)?;
    r.lgdt(ptr(base + 0x100))?;
    r.mov(eax, cr0)?;
    r.or(eax, 1)?;
    r.mov(cr0, eax)?;
    let mut real = r.assemble(base)?;
    // jmp far 0x18:base+0x200 (ptr16:16).
    real.extend_from_slice(&[
        0xea,
        (base + 0x200) as u8,
        ((base + 0x200) >> 8) as u8,
        0x18,
        0x00,
    ]);

    let mut p = CodeAssembler::new(32)?;
    p.mov(ax, 0x10)?;
    p.mov(ds, ax)?;
    p.mov(es, ax)?;
    p.mov(ss, ax)?;
    p.mov(eax, cr4)?;
    p.or(eax, 0x20)?; // PAE
    p.mov(cr4, eax)?;
    p.mov(eax, PML4 as u32)?;
    p.mov(cr3, eax)?;
    p.mov(ecx, 0xc000_0080u32)?; // EFER
    p.rdmsr()?;
    p.or(eax, 0x100)?; // LME
    p.wrmsr()?;
    p.mov(eax, cr0)?;
    p.or(eax, 0x8000_0000u32 as i32)?; // PG
    p.mov(cr0, eax)?;
    let mut protected = p.assemble(base + 0x200)?;
    // jmp far 0x08:base+0x300 (ptr16:32).
    let target = (base + 0x300) as u32;
    protected.push(0xea);
    protected.extend_from_slice(&target.to_le_bytes());
    protected.extend_from_slice(&0x08u16.to_le_bytes());

    let mut l = CodeAssembler::new(64)?;
    long(&mut l)?;
    let long = l.assemble(base + 0x300)?;

    let mut out = vec![0x90u8; 0x400];
    out[..real.len()].copy_from_slice(&real);
    out[0x200..0x200 + protected.len()].copy_from_slice(&protected);
    out[0x300..0x300 + long.len()].copy_from_slice(&long);
    // Keep the descriptor area (0x100-0x11f) free of code.
    debug_assert!(real.len() < 0x100 && protected.len() < 0x100 && long.len() < 0x100);
    for b in &mut out[0x100..0x120] {
        *b = 0;
    }
    Ok(out)
}

/// The APs' trampoline (`ap-start=host`: the loader's start-up IPI lands
/// here): long mode as the BSP's, then the AP finds its CPU index from its
/// initial APIC ID (CPUID.01H:EBX[31:24], which QEMU fills with the CPU's
/// `apic_id` whatever the ID register holds) through [`batch::AP_INDEX`],
/// counts itself in [`batch::AP_ONLINE`] and goes on with `tail` (RCX =
/// its index).
fn ap_trampoline(
    tail: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
) -> std::result::Result<Vec<u8>, IcedError> {
    trampoline_at(batch::AP_TRAMPOLINE, |l| {
        l.mov(eax, 1)?;
        l.cpuid()?;
        l.shr(ebx, 24)?;
        l.mov(rax, batch::AP_INDEX)?;
        l.movzx(ecx, byte_ptr(rax + rbx))?;
        // Its xAPIC ID (smp::Plan; the same as the initial one unless the
        // scenario's apic-ids need the write).
        l.mov(rax, batch::AP_IDS)?;
        l.movzx(eax, byte_ptr(rax + rcx))?;
        l.shl(eax, 24)?;
        l.mov(rdx, LAPIC_BASE)?;
        l.mov(dword_ptr(rdx + 0x20), eax)?;
        l.lock().inc(dword_ptr(batch::AP_ONLINE))?;
        tail(l)
    })
}

/// The AP trampoline's end: its own watchdog when the scenario has one
/// (each CPU's LAPIC timer, so a `hlt` on any CPU is found where it
/// halts), the IDT, then the stub's `sipi_entry` with EDI = its index
/// (the stub contract; `sipi_entry` gives the local APIC SVR 0x1FF and TPR
/// 0, which QEMU's reset left software-disabled).
fn ap_enter(
    sipi_entry: u64,
) -> impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError> {
    move |l| {
        let mut unarmed = l.create_label();
        l.cmp(dword_ptr(batch::ARMED), 0)?;
        l.je(unarmed)?;
        l.mov(rdx, LAPIC_BASE)?;
        l.mov(dword_ptr(rdx + 0x3e0), 0xb)?;
        l.mov(dword_ptr(rdx + 0x320), 0x402)?;
        l.mov(eax, dword_ptr(batch::WATCHDOG_COUNT))?;
        l.mov(dword_ptr(rdx + 0x380), eax)?;
        l.set_label(&mut unarmed)?;
        l.lidt(ptr(batch::AP_TRAMPOLINE + 0x110))?;
        l.mov(edi, ecx)?;
        l.mov(rax, sipi_entry)?;
        l.jmp(rax)
    }
}

/// Delivery modes 010 (SMI), 101 (INIT), 110 (start-up) and 111 (ExtINT)
/// in an ICR or LVT value (SDM §11.5.1, §11.6.1). ExtINT in LVT LINT0 or
/// LINT1 is the 8259 pair's path (issue 15): QEMU has the pair, and an
/// ExtINT there is an INTA to it (`apic_local_deliver`, `pic_read_irq`).
fn dangerous_mode(offset: u16, value: u32) -> bool {
    match (value >> 8) & 7 {
        2 | 5 | 6 => true,
        7 => !matches!(offset, reg::LVT_LINT0 | reg::LVT_LINT1),
        _ => false,
    }
}

/// An op that would send this CPU an SMI, INIT, start-up or ExtINT: the
/// model does not run them, and under QEMU an SMI enters SMM with no
/// handler in RAM and an INIT restarts the firmware, so the guest runs
/// astray (and may overwrite the batch).
fn dangerous_delivery(op: &Op) -> Option<String> {
    use crate::scenario::DeliveryMode as D;
    match *op {
        // ExtINT is an INTA to QEMU's 8259 pair (`ioapic_service`).
        Op::Route { route, .. } if matches!(route.delivery, D::Smi | D::Init) => Some(
            format!("route with {:?} delivery: not run on QEMU", route.delivery),
        ),
        Op::LapicWrite { offset, value } | Op::LapicMmioWrite { offset, value }
            if (offset == reg::ICR_LOW || (reg::LVT_TIMER..=reg::LVT_ERROR).contains(&offset))
                && dangerous_mode(offset, value) =>
        {
            Some(format!(
                "lapic-write {offset:#05x} {value:#x}: an SMI, INIT, start-up or ExtINT delivery mode is not run on QEMU"
            ))
        }
        _ => None,
    }
}

fn assemble(what: &'static str) -> impl FnOnce(IcedError) -> BackendError {
    move |source| BackendError::Assemble { what, source }
}

/// The pin a host op drives, if `op` is one that drives a pin.
fn host_pin(op: &Op) -> Option<crate::scenario::Pin> {
    match op {
        Op::Host(host) => host.pin(),
        _ => None,
    }
}

/// The `-cpu` model: x2APIC in CPUID where the accelerator emulates it.
/// The APIC stays in xAPIC mode until the stub sets IA32_APIC_BASE.EXTD
/// (SDM §11.12.1).
fn cpu_model(options: &Options, features: &Features) -> &'static str {
    let x2apic = match options.accel {
        Accel::Tcg => features.tcg_x2apic,
        // KVM's in-kernel local APIC emulates x2APIC; QEMU's userspace one
        // under KVM cannot (KVM does not forward x2APIC MSRs).
        Accel::Kvm => !options.qemu_lapic(),
        Accel::Hvf => false,
    };
    if x2apic {
        "qemu64,+x2apic"
    } else {
        "qemu64"
    }
}

/// QEMU's refusal of the accelerator options (`kernel-irqchip=off` is
/// refused earlier, by [`probe_options`], with its history).
fn refusal(options: &Options, features: &Features, why: &str) -> String {
    format!(
        "QEMU {} refuses -accel {} -machine {}: {why}",
        features.version_string(),
        options.accel_arg(),
        options.machine_arg()
    )
}

/// Whether the in-guest hang watchdog (the LAPIC timer in NMI mode, see
/// [`batch::watchdog`]) can be trusted with `options`' local APIC.
fn watchdog_works(options: &Options) -> bool {
    options.qemu_lapic()
}

/// Whether `op` is an MSI the guest would send to 0xFEE00000, its own
/// local APIC's page (physical destination 0, the vCPU's APIC ID).
fn msi_to_apic_page(op: &Op) -> bool {
    matches!(op, Op::Host(HostOp::Msi(m)) if m.dest == 0 && m.dest_mode == crate::scenario::DestMode::Physical)
}

/// The op table the guest runs, host ops done by the guest itself.
///
/// Under KVM's local APIC (`irqchip=on|split`) a guest write to its own
/// APIC page is a register write that KVM handles in the kernel
/// (`apic_mmio_write`, offset 0 is reserved: dropped), so an MSI to
/// physical destination 0 never reaches QEMU's `kvm-apic-msi` region
/// (`hw/i386/kvm/apic.c`, `kvm_apic_mem_write` -> `kvm_send_msi`). The
/// guest sends it to destination 0xFF instead: in xAPIC mode the physical
/// broadcast (SDM §11.6.2.1), which for this one-CPU machine whose APIC ID
/// stays 0 (see [`unsupported`]) accepts exactly what destination 0 does.
fn guest_table(scenario: &Scenario, options: &Options) -> Result<table::Table> {
    let rewrite = !options.qemu_lapic() && scenario.all_ops().any(msi_to_apic_page);
    let encoded = if rewrite {
        let mut s = scenario.clone();
        let broadcast = |op: &mut Op| {
            if msi_to_apic_page(op) {
                if let Op::Host(HostOp::Msi(m)) = op {
                    m.dest = 0xff;
                }
            }
        };
        s.ops.iter_mut().for_each(broadcast);
        s.handlers.values_mut().flatten().for_each(broadcast);
        table::encode_for(&s, table::HostOps::Guest)
    } else {
        table::encode_for(scenario, table::HostOps::Guest)
    };
    encoded.map_err(|e| BackendError::Unsupported(e.to_string()))
}

/// Why a scenario cannot run on QEMU with `options`.
fn unsupported(scenario: &Scenario, features: &Features, options: &Options) -> Option<String> {
    let options = &options.for_scenario(scenario);
    let version = features.version_string();
    let c = &scenario.config;
    let inits = scenario
        .all_ops()
        .any(|op| matches!(op, Op::Ipi(i) if i.delivery == crate::scenario::IpiDelivery::Init));
    if scenario.is_multi_cpu() || inits {
        match smp::Plan::of(scenario) {
            Err(why) => return Some(why.to_string()),
            Ok(plan) => {
                if let Err(why) = smp::Running::of(scenario, &plan) {
                    return Some(why);
                }
            }
        }
    }
    // SDM §11.5.4.1: the TSC-deadline timer is CPUID.01H:ECX[24]. QEMU's
    // TCG has none (it does not offer the feature), and the CPU model the
    // backend runs (`cpu_model`: qemu64) does not give it under KVM either,
    // so KVM's local APIC ignores the mode and the MSR there.
    if scenario.uses_tsc_deadline() {
        return Some(match options.accel {
            Accel::Tcg => format!(
                "QEMU {version}'s TCG has no TSC-deadline timer (CPUID.01H:ECX[24] clear): the scenario uses `timer tsc-deadline`, `tsc-deadline` or `tsc-deadline-read`"
            ),
            _ => format!(
                "the CPU model QEMU runs here ({}) has no TSC-deadline timer (CPUID.01H:ECX[24] clear): the scenario uses `timer tsc-deadline`, `tsc-deadline` or `tsc-deadline-read`",
                cpu_model(options, features)
            ),
        });
    }
    if scenario.uses_timer_ops() && scenario.uses_smp() {
        return Some("the LAPIC timer ops run on one CPU only".into());
    }
    // An IA32_APIC_BASE write with EXTD (bit 10) enters x2APIC mode too.
    let enters_x2apic = scenario
        .all_ops()
        .any(|op| matches!(op, Op::ApicBase(v) if v & (1 << 10) != 0));
    if (c.apic == ApicMode::X2apic || enters_x2apic) && cpu_model(options, features) == "qemu64" {
        return Some(match options.accel {
            Accel::Tcg => format!("QEMU {version}'s TCG has no x2APIC (QEMU 9.0 added it)"),
            Accel::Kvm => {
                "KVM does not emulate x2APIC in userspace: its x2APIC MSRs never reach QEMU's APIC"
                    .into()
            }
            Accel::Hvf => "x2APIC under QEMU's HVF accelerator is not run (unverified)".into(),
        });
    }
    // A split scenario needs the split shape where the accelerator's
    // irqchip has a choice of shapes (`kernel-irqchip`; `accel=kvm,
    // irqchip=on` switches, see `Options::for_scenario`); any other runs on
    // the shape the backend has (as on `kvm-split`). With QEMU's own APIC
    // (TCG, mainline HVF) there is one shape, APIC and IOAPIC both QEMU's, and
    // `irqchip` picks "where the IOAPIC lives on backends that can do
    // both" (docs/scenario-format.md): it runs there as it is.
    if c.irqchip == crate::scenario::Irqchip::Split
        && !options.qemu_lapic()
        && options.irqchip() != KernelIrqchip::Split
    {
        return Some("the scenario asks for the split shape: run it with irqchip=split".into());
    }
    if c.directed_eoi {
        return Some(if options.qemu_lapic() {
            "QEMU's local APIC does not advertise EOI-broadcast suppression".into()
        } else {
            "directed EOI is not run on QEMU's KVM integration (not verified)".into()
        });
    }
    // KVM's in-kernel IOAPIC is version 0x11 (virt/kvm/ioapic.h,
    // IOAPIC_VERSION_ID): no EOI register (82093AA has none; ICH's 0x20 does).
    if !options.qemu_ioapic()
        && c.ioapic == crate::scenario::IoapicVersion::V20
        && scenario
            .all_ops()
            .any(|op| matches!(op, Op::IoapicEoi(_) | Op::IoapicRead(1)))
    {
        return Some(
            "KVM's in-kernel IOAPIC is version 0x11 (no EOI register), and this scenario depends \
             on version 0x20 (ioapic-eoi or ioapic-read 1); use irqchip=split or ioapic=0x11"
                .into(),
        );
    }
    // IA32_APIC_BASE writes run: under TCG through `helper_wrmsr` ->
    // `cpu_set_apic_base` -> `apic_set_base` (hw/intc/apic.c), whose page
    // does not move (known-divergences.md#qemu-apic-page-fixed); under
    // KVM's local APIC, the kernel's.
    let moves_base = scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_)));
    for op in scenario.all_ops() {
        if let Some(p) = host_pin(op) {
            if p.get() >= 16 {
                return Some(format!("pin {p}: pc-testdev drives ISA IRQs 0-15 only"));
            }
            // hw/intc/ioapic.c, ioapic_set_irq: "ISA IRQs map to GSI 1-1
            // except for IRQ0 which maps to GSI 2" (and QEMU's KVM routing
            // table, hw/i386/kvm/ioapic.c kvm_pc_setup_irq_routing, the same).
            if p.get() == 0 {
                return Some("pin 0: QEMU routes ISA IRQ 0 to IOAPIC pin 2".into());
            }
        }
        if let Some(why) = dangerous_delivery(op) {
            return Some(why);
        }
        // hw/intc/apic.c, apic_mem_write: "MSI and MMIO APIC are at the
        // same memory location": a write to register index 0 is an MSI
        // with the value as its data, not a reserved-register write.
        // In x2APIC mode a `lapic-write` is a WRMSR (MSR 0x800, reserved),
        // which never reaches the APIC page: run it where the scenario
        // cannot be in xAPIC mode at that op.
        let by_mmio = match op {
            Op::LapicMmioWrite { offset: 0, .. } => true,
            Op::LapicWrite { offset: 0, .. } => c.apic == ApicMode::Xapic || moves_base,
            _ => false,
        };
        if options.qemu_lapic() && by_mmio {
            return Some("lapic-write 0x000: QEMU sends it as an MSI".into());
        }
    }
    // See [`guest_table`]: an MSI to APIC ID 0 goes out as a broadcast.
    if !options.qemu_lapic() && scenario.all_ops().any(msi_to_apic_page) {
        if c.apic == ApicMode::X2apic {
            return Some(
                "an MSI to APIC ID 0 in x2APIC mode: under KVM's local APIC the guest's write to \
                 0xFEE00000 is dropped by KVM (its MMIO hole), and 0xFF is no x2APIC broadcast"
                    .into(),
            );
        }
        if scenario
            .all_ops()
            .any(|op| matches!(op, Op::LapicWrite { offset, .. } if *offset == reg::ID))
        {
            return Some(
                "an MSI to APIC ID 0 in a scenario that writes the APIC ID: under KVM's local \
                 APIC the guest sends it as a broadcast, which a changed ID would tell apart"
                    .into(),
            );
        }
    }
    None
}

impl Backend for QemuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    /// A generated scenario gets what QEMU can offer: xAPIC, the full
    /// irqchip, pins 1-15 (and under KVM's irqchips, IOAPIC version 0x11
    /// and a fixed APIC ID).
    fn fit(&self, scenario: &mut Scenario) {
        // No TSC-deadline timer (see `unsupported`).
        scenario.retain_ops(|op| !op.uses_tsc_deadline());
        let c = scenario.config;
        scenario.config = crate::scenario::Config {
            // KVM's in-kernel IOAPIC is version 0x11 (see `unsupported`).
            ioapic: if self.options.qemu_ioapic() {
                c.ioapic
            } else {
                crate::scenario::IoapicVersion::V11
            },
            // The CPUs stay (TCG runs up to 8, `max_cpus`), with APIC IDs
            // QEMU can give (smp::Plan; else the indexes).
            cpus: c.cpus.min(self.max_cpus() as u8),
            ap_start: c.ap_start,
            apic_ids: c.apic_ids,
            ..Default::default()
        };
        if smp::Plan::of(scenario).is_err() {
            scenario.config.apic_ids = crate::scenario::INDEX_APIC_IDS;
        }
        // Under KVM's local APIC an MSI to APIC ID 0 is sent as a
        // broadcast (see `guest_table`), so the ID stays 0.
        let kvm_lapic = !self.options.qemu_lapic();
        // Pins 1-15: the ISA IRQs pc-testdev drives, less IRQ 0 (pin 2).
        let fit_pin = |p: crate::scenario::Pin| {
            crate::scenario::Pin::new(1 + (p.get() + 14) % 15).expect("1-15")
        };
        let fit = |op: &mut Op| {
            // xAPIC only: the MMIO ops are the register ops.
            match *op {
                Op::LapicMmioRead(o) => *op = Op::LapicRead(o),
                Op::LapicMmioWrite { offset, value } => *op = Op::LapicWrite { offset, value },
                _ => {}
            }
            let dangerous = dangerous_delivery(op).is_some();
            match op {
                Op::Route { pin, route } => {
                    *pin = fit_pin(*pin);
                    if dangerous {
                        route.delivery = crate::scenario::DeliveryMode::Fixed;
                    }
                }
                Op::Mask(pin)
                | Op::Unmask(pin)
                | Op::Host(HostOp::Assert(pin) | HostOp::Deassert(pin) | HostOp::Pulse(pin)) => {
                    *pin = fit_pin(*pin)
                }
                Op::ApicBase(_) | Op::LapicWrite { offset: 0, .. } => *op = Op::Nop,
                Op::LapicWrite { offset, .. } if kvm_lapic && *offset == reg::ID => *op = Op::Nop,
                // Fixed delivery instead.
                Op::LapicWrite { value, .. } if dangerous => *value &= !0x700,
                _ => {}
            }
        };
        scenario.ops.iter_mut().for_each(fit);
        scenario.handlers.values_mut().flatten().for_each(fit);
    }

    /// A QEMU process costs about as much as 20 batched scenarios; 64 per
    /// batch keeps a campaign's stop and progress responsive.
    fn batch_size(&self) -> usize {
        64
    }

    fn run_batch(&mut self, scenarios: &[Scenario]) -> Vec<Trace> {
        let mut out: Vec<Option<Trace>> = vec![None; scenarios.len()];
        let mut runnable: Vec<(usize, &Scenario)> = Vec::new();
        for (i, s) in scenarios.iter().enumerate() {
            match unsupported(s, &self.features, &self.options) {
                Some(why) => {
                    out[i] = Some(Trace::error(
                        &self.name,
                        BackendError::Unsupported(why).to_string(),
                    ))
                }
                None => runnable.push((i, s)),
            }
        }
        // One process per IOAPIC version (QEMU sets it per machine) and
        // per kernel-irqchip shape (`Options::for_scenario`).
        let options = self.options;
        let key = |s: &Scenario| {
            (
                s.config.ioapic == crate::scenario::IoapicVersion::V11,
                options.for_scenario(s) != options,
                // One process per -smp topology: QEMU's CPUs are fixed at
                // start-up, and a CPU the scenario does not have would take
                // its broadcasts.
                smp::Plan::of(s).ok().map(|p| {
                    let t = p.topology;
                    (t.sockets, t.cores, t.threads)
                }),
            )
        };
        runnable.sort_by_key(|(_, s)| key(s));
        let mut rest = &runnable[..];
        while let Some((_, first)) = rest.first() {
            let same = rest
                .iter()
                .take(batch::MAX)
                .take_while(|(_, s)| key(s) == key(first))
                .count();
            let (group, tail) = rest.split_at(same);
            self.options = options.for_scenario(first);
            let ran = self.run_group(group, &mut out);
            self.options = options;
            if let Err(e) = ran {
                // A scenario a batch cannot hold runs on its own.
                for (i, s) in group {
                    if out[*i].is_none() {
                        out[*i] = Some(match e {
                            // Several CPUs run in batches only (the loader
                            // starts the APs).
                            BackendError::Unsupported(_) if !s.is_multi_cpu() => {
                                self.run_to_trace(s)
                            }
                            _ => Trace::error(&self.name, e.to_string()),
                        });
                    }
                }
            }
            rest = tail;
        }
        out.into_iter()
            .map(|t| t.unwrap_or_else(|| Trace::error(&self.name, "not run")))
            .collect()
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        unsupported(scenario, &self.features, &self.options)
    }

    /// TCG runs `-smp N` (QEMU's APIC on every CPU); under KVM or HVF the
    /// local APICs are the accelerator's, not run with several CPUs here.
    fn max_cpus(&self) -> usize {
        if self.options.accel == Accel::Tcg {
            crate::scenario::MAX_CPUS
        } else {
            1
        }
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        if scenario.is_multi_cpu() {
            // The batch loader starts the APs: a batch of one.
            let mut traces = self.run_batch(std::slice::from_ref(scenario));
            return Ok(traces.remove(0));
        }
        let options = self.options;
        self.options = options.for_scenario(scenario);
        let trace = self.execute_with_options(scenario);
        self.options = options;
        trace
    }
}

impl QemuBackend {
    /// [`Backend::execute`] with `self.options` already those of the scenario.
    fn execute_with_options(&mut self, scenario: &Scenario) -> Result<Trace> {
        let table = guest_table(scenario, &self.options)?;
        let ram_path = self.dir.join(format!("ram-{}", unique()));
        let mut file =
            std::fs::File::create(&ram_path).map_err(BackendError::io(ram_path.display()))?;
        file.write_all(&self.ram(&table, scenario))
            .map_err(BackendError::io(ram_path.display()))?;
        drop(file);
        let mut child = self
            .command(&ram_path, scenario.config.ioapic, QEMU_RAM)
            .spawn()
            .map_err(BackendError::io(format_args!(
                "starting {}",
                binary().display()
            )))?;
        let status = wait(&mut child, &ram_path);
        let ram = std::fs::read(&ram_path).map_err(BackendError::io(ram_path.display()));
        let _ = std::fs::remove_file(&ram_path);
        let ram = ram?;
        let (cur_op, log_bytes) = self.image.read_back(&ram);
        let mut trace = Trace::new(&self.name);
        trace.events = log::decode(log_bytes)?;
        let booted = ram[BOOTED as usize..BOOTED as usize + 4] == 1u32.to_le_bytes();
        // isa-debug-exit's "completed" (status 1) is also QEMU's own exit
        // status for an error at start-up: only a stub that ran completed.
        let status = match status {
            Some(code) if !booted && code != NEVER_BOOTED => {
                let stderr = stderr_of(&mut child);
                return Ok(Trace::error(
                    &self.name,
                    format!(
                        "QEMU exited with status {code} before the guest stub ran: {}",
                        stderr.trim()
                    ),
                ));
            }
            s => s,
        };
        match status {
            // isa-debug-exit: status 2V+1.
            Some(code) if code == 2 * EndCode::Completed as i32 + 1 => {}
            Some(code) if code == 2 * EndCode::Storm as i32 + 1 => trace.outcome = Outcome::Storm,
            Some(NEVER_BOOTED) => {
                trace.outcome = Outcome::Error;
                trace.error = Some(format!(
                    "QEMU did not reach the guest stub within {BOOT_LIMIT:?}"
                ));
            }
            Some(code) => {
                let stderr = stderr_of(&mut child);
                trace.outcome = Outcome::Error;
                trace.error = Some(format!("QEMU exited with status {code}: {}", stderr.trim()));
            }
            None => {
                trace.outcome = Outcome::Hang;
                trace.hang_op = Some(cur_op);
            }
        }
        Ok(trace)
    }
}

impl QemuBackend {
    /// The QEMU command line for guest RAM in `ram` (a file of `size` bytes).
    fn command(
        &self,
        ram: &std::path::Path,
        ioapic: crate::scenario::IoapicVersion,
        size: usize,
    ) -> Command {
        let mut c = Command::new(binary());
        c.args(["-accel", &self.options.accel_arg()])
            .args(["-machine", self.options.machine_arg()])
            .args(["-cpu", cpu_model(&self.options, &self.features)])
            .arg("-m")
            .arg(format!("{}M", size >> 20))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share=on",
                size >> 20,
                ram.display()
            ))
            .args(["-machine", "memory-backend=ram0"])
            .arg("-bios")
            .arg(&self.firmware)
            .args([
                "-device",
                "pc-testdev",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
            ])
            // QEMU's IOAPIC is an ICH one (0x20) unless told to be an 82093AA.
            .args(match ioapic {
                crate::scenario::IoapicVersion::V11 => ["-global", "ioapic.version=0x11"],
                crate::scenario::IoapicVersion::V20 => ["-global", "ioapic.version=0x20"],
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

/// The RIP of every halted CPU in the monitor's `info registers -a`
/// (each CPU's `RIP=... HLT=1` line).
fn halted_cpus(info: &str) -> Vec<u64> {
    info.lines()
        .filter(|l| l.starts_with("RIP=") && l.contains("HLT=1"))
        .filter_map(|l| u64::from_str_radix(l[4..].split_whitespace().next()?, 16).ok())
        .collect()
}

/// What QEMU wrote to its stderr (piped by [`QemuBackend::command`]).
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    stderr
}

/// Waits for QEMU. `None` (and QEMU killed) when the stub has run for
/// [`HANG_AFTER`] without ending the run, or QEMU never reached it.
fn wait(child: &mut Child, ram: &std::path::Path) -> Option<i32> {
    use std::os::unix::fs::FileExt;
    let start = Instant::now();
    let file = std::fs::File::open(ram).ok();
    let mut booted_at = None;
    // The stub's progress (its current op and log pointer): a run counts
    // as hung only when it has stood still for HANG_AFTER, so a run that
    // a loaded host slows down is not mistaken for a hang.
    let progress = |f: &std::fs::File| {
        let (mut op, mut log) = ([0u8; 4], [0u8; 8]);
        let _ = f.read_exact_at(&mut op, CUR_OP);
        let _ = f.read_exact_at(&mut log, LOG_PTR);
        (u32::from_le_bytes(op), u64::from_le_bytes(log))
    };
    let mut last_progress = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        if booted_at.is_none() {
            let mut word = [0u8; 4];
            if file
                .as_ref()
                .is_some_and(|f| f.read_exact_at(&mut word, BOOTED).is_ok())
                && u32::from_le_bytes(word) == 1
            {
                booted_at = Some(Instant::now());
            }
        }
        if let (Some(_), Some(f)) = (booted_at, file.as_ref()) {
            let now = progress(f);
            if last_progress.is_none_or(|(p, _)| p != now) {
                last_progress = Some((now, Instant::now()));
            }
        }
        let hung =
            last_progress.is_some_and(|(_, since): (_, Instant)| since.elapsed() > HANG_AFTER);
        if hung || start.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            // Never booted: an error (status -2), not a hang.
            return if booted_at.is_some() {
                None
            } else {
                Some(NEVER_BOOTED)
            };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Batches: many scenarios in one QEMU process. Each scenario's tables are
/// staged in RAM; the trampoline loads scenario `i`, the stub's end handler
/// saves its outcome and log and resets the machine (port 0xCF9; RAM
/// survives a reset), and the trampoline loads `i + 1`, until `N`, when it
/// exits through isa-debug-exit.
mod batch {
    use super::*;

    pub const RAM: usize = 64 << 20;
    /// u32 N, u32 i, u32 "scenario i started" (i + 1).
    pub const CONTROL: u64 = TRAMPOLINE + 0x800;
    pub const SLOT: u64 = 0x1_0000;
    pub const STAGING: u64 = 0x40_0000;
    pub const RESULTS: u64 = 0x200_0000;
    pub const MAX: usize = 256;
    /// Offsets within a staging slot.
    pub const BODY_DIR_AT: u64 = 0x30;
    pub const NTH_AT: u64 = 0x830;
    pub const OPS_AT: u64 = 0x1830;
    /// Offset within a staging slot: u32, where the slot's multi-CPU area
    /// starts (0: one CPU). The area: u32 top-level ops, u32 the initial
    /// running mask, then the driver's table (2 bytes per op: CPU, running
    /// mask after it, [`smp::Running`]) padded to 16, then each AP's body
    /// directory (2 KiB), u32 length and `V#N` table, padded to 16.
    pub const SMP_AREA_AT: u64 = 32;
    /// Offset within a staging slot: u32, the scenario's CPU count.
    pub const CPUS_AT: u64 = 16;
    /// Offset within a staging slot: u32, 1 when the loader starts the
    /// APs (`ap-start=host`), 0 when they wait for the scenario's SIPI.
    pub const AP_HOST_AT: u64 = 20;
    /// Offset within a staging slot: u8 x 8, each CPU's xAPIC ID
    /// ([`smp::Plan::ids`]).
    pub const IDS_AT: u64 = 24;
    /// u8 x 8: the running scenario's xAPIC IDs, by CPU index (the
    /// loader copies them from the slot for the APs).
    pub const AP_IDS: u64 = CONTROL + 40;
    /// u32: APs that reached long mode since the loader's start-up IPI.
    pub const AP_ONLINE: u64 = CONTROL + 28;
    /// u32: set by an AP that found itself in the BSP's trampoline (woken
    /// from wait-for-SIPI by something else than a start-up IPI).
    pub const STRAY_AP: u64 = CONTROL + 32;
    /// The APs' trampoline: the SIPI page of the stub contract (vector
    /// 0x08), for the loader's start-up IPI and the scenario's alike.
    pub const AP_TRAMPOLINE: u64 = SIPI_PAGE;
    /// The driver's per-op table (2 bytes per op, up to [`MAX_OPS`]).
    pub const DRV_TABLE: u64 = TRAMPOLINE + 0x1000;
    pub const MAX_OPS: usize = 0x400;
    /// 256 bytes: the CPU index of each initial APIC ID (0xff: none),
    /// [`smp::index_table`].
    pub const AP_INDEX: u64 = TRAMPOLINE + 0x1800;
    /// The in-guest driver of the per-op protocol ([`driver`]), the
    /// loader's multi-CPU set-up and the multi-CPU end handler, in the free
    /// page below the stub's code.
    pub const DRIVER: u64 = 0xf000;
    pub const SMP_SETUP: u64 = 0xf600;
    pub const SMP_END: u64 = 0xfb00;
    /// The driver's state (u32s): next op, phase, the op's CPU, its
    /// ops-done before, the progress snapshot (u64 log sum, u32
    /// deliveries), op count, initial running mask; then the idle passes
    /// snapshot (u32 x 8) at +0x40.
    pub const DRV: u64 = CONTROL + 0x40;
    pub const DRV_K: u64 = DRV;
    pub const DRV_PHASE: u64 = DRV + 4;
    pub const DRV_CPU: u64 = DRV + 8;
    pub const DRV_DONE0: u64 = DRV + 12;
    pub const DRV_LOGSUM: u64 = DRV + 16;
    pub const DRV_DELIV: u64 = DRV + 24;
    pub const DRV_NOPS: u64 = DRV + 28;
    pub const DRV_INIT_RUNNING: u64 = DRV + 32;
    /// u32: taken by the first CPU that ends the run.
    pub const END_LOCK: u64 = DRV + 36;
    pub const DRV_PASSES0: u64 = DRV + 0x40;
    /// End code: the driver was to post an op to a CPU that waits for a
    /// SIPI (the format's `error`).
    pub const WAITING_CPU: u32 = 0x10;
    /// Offset of the logs in a multi-CPU result slot: code, op, total
    /// length, CPU count, then each CPU's log length (u32 x 8).
    pub const SMP_LOGS_AT: u64 = 48;
    pub const HANDLER: u64 = TRAMPOLINE + 0x500;
    pub const LOADER: u64 = TRAMPOLINE + 0x600;
    /// The NMI handler: the watchdog's, or the scenario's own NMI.
    pub const WATCHDOG_HANDLER: u64 = TRAMPOLINE + 0xa00;
    /// u32: the watchdog's period in LAPIC timer counts.
    pub const WATCHDOG_COUNT: u64 = CONTROL + 12;
    /// u64: the stub's own vector-2 entry.
    pub const VECTOR2: u64 = CONTROL + 16;
    /// u32: 1 while the running scenario has the watchdog armed (the NMI
    /// handler passes every NMI of an unarmed one to the stub).
    pub const ARMED: u64 = CONTROL + 24;
    /// Offset within a staging slot: u32, 1 when the watchdog is armed.
    pub const WATCHDOG_AT: u64 = 8;
    /// Offset within a staging slot: u32, 1 for an x2APIC scenario.
    pub const X2APIC_AT: u64 = 12;
    /// Result code of a scenario the watchdog found halted for good. The
    /// batch's result word carries the stub's own end codes too, so it
    /// must be none of them (3 once was, and an unexpected #GP read as a
    /// hang).
    pub const HANG: u32 = 0x11;
    const _: () = {
        use crate::guest::layout::EndCode;
        let ends = [
            EndCode::Completed,
            EndCode::Storm,
            EndCode::LogFull,
            EndCode::UnexpectedFault,
        ];
        let mut i = 0;
        while i < ends.len() {
            assert!(ends[i] as u32 != HANG && ends[i] as u32 != WAITING_CPU);
            i += 1;
        }
        assert!(HANG != WAITING_CPU);
    };

    /// The loader (entered from the long-mode trampoline instead of the
    /// stub) and the end handler.
    pub fn code(entry: u64) -> std::result::Result<(Vec<u8>, Vec<u8>), IcedError> {
        let mut h = CodeAssembler::new(64)?;
        // eax = end code. Several CPUs: every CPU's log (smp_code).
        let mut one_cpu = h.create_label();
        h.cmp(dword_ptr(SMP), 0)?;
        h.je(one_cpu)?;
        h.mov(rdx, SMP_END)?;
        h.jmp(rdx)?;
        h.set_label(&mut one_cpu)?;
        h.mov(r8d, eax)?;
        h.mov(eax, dword_ptr(CONTROL + 4))?;
        h.mov(edi, eax)?;
        h.shl(rdi, 16)?;
        h.mov(rax, RESULTS)?;
        h.add(rdi, rax)?;
        h.mov(dword_ptr(rdi), r8d)?;
        h.mov(ecx, dword_ptr(CUR_OP))?;
        h.mov(dword_ptr(rdi + 4), ecx)?;
        h.mov(rcx, qword_ptr(LOG_PTR))?;
        h.mov(rax, LOG)?;
        h.sub(rcx, rax)?;
        let mut fits = h.create_label();
        h.cmp(rcx, (SLOT - 16) as i32)?;
        h.jbe(fits)?;
        h.mov(dword_ptr(rdi), EndCode::LogFull as u32)?;
        h.mov(ecx, (SLOT - 16) as u32)?;
        h.set_label(&mut fits)?;
        h.mov(dword_ptr(rdi + 8), ecx)?;
        h.add(rdi, 16)?;
        h.mov(rsi, LOG)?;
        h.rep().movsb()?;
        h.inc(dword_ptr(CONTROL + 4))?;
        h.mov(al, 6)?;
        h.mov(dx, 0xcf9)?;
        h.out(dx, al)?;
        let mut spin = h.create_label();
        h.set_label(&mut spin)?;
        h.hlt()?;
        h.jmp(spin)?;
        let handler = h.assemble(HANDLER)?;

        let mut l = CodeAssembler::new(64)?;
        let mut run = l.create_label();
        let mut bsp = l.create_label();
        // Only the BSP loads scenarios: an AP that reset into the firmware
        // (QEMU un-halts a CPU in wait-for-SIPI on an NMI or INIT, then
        // it runs from the reset vector) records it and parks.
        l.mov(ecx, 0x1b)?; // IA32_APIC_BASE: bit 8 is BSP
        l.rdmsr()?;
        l.test(eax, 0x100)?;
        l.jnz(bsp)?;
        l.mov(dword_ptr(STRAY_AP), 1)?;
        let mut park = l.create_label();
        l.set_label(&mut park)?;
        l.cli()?;
        l.hlt()?;
        l.jmp(park)?;
        l.set_label(&mut bsp)?;
        l.mov(eax, dword_ptr(CONTROL + 4))?;
        l.cmp(eax, dword_ptr(CONTROL))?;
        l.jb(run)?;
        l.mov(dx, QEMU_EXIT_PORT as u32)?;
        l.xor(eax, eax)?;
        l.out(dx, eax)?;
        l.hlt()?;
        l.set_label(&mut run)?;
        l.lea(ecx, dword_ptr(rax + 1))?;
        l.mov(dword_ptr(CONTROL + 8), ecx)?;
        // rbx = the staging slot of scenario i.
        l.mov(ebx, eax)?;
        l.shl(rbx, 16)?;
        l.mov(rax, STAGING)?;
        l.add(rbx, rax)?;
        let copy = |l: &mut CodeAssembler,
                    from: u64,
                    to: u64,
                    len: Option<u64>|
         -> std::result::Result<(), IcedError> {
            l.lea(rsi, qword_ptr(rbx + from as i32))?;
            l.mov(rdi, to)?;
            match len {
                Some(n) => l.mov(ecx, n as u32)?,
                None => l.mov(
                    ecx,
                    dword_ptr(rsi - (from as i32) + if to == OPS { 0 } else { 4 }),
                )?,
            }
            l.rep().movsb()
        };
        copy(&mut l, BODY_DIR_AT, BODY_DIR, Some(256 * 8))?;
        copy(&mut l, NTH_AT, NTH_TABLE, None)?;
        copy(&mut l, OPS_AT, OPS, None)?;
        // The stub's variables, as Image::load sets them.
        l.xor(eax, eax)?;
        l.mov(dword_ptr(CUR_OP), eax)?;
        l.mov(dword_ptr(DELIVERIES), eax)?;
        l.mov(ecx, dword_ptr(rbx + X2APIC_AT as i32))?;
        l.mov(dword_ptr(X2APIC), ecx)?;
        l.mov(rdi, COUNTS)?;
        l.mov(ecx, 1024)?;
        l.rep().stosb()?;
        l.mov(rax, LOG)?;
        l.mov(qword_ptr(LOG_PTR), rax)?;
        l.mov(rax, HANDLER)?;
        l.mov(qword_ptr(END_HANDLER), rax)?;
        // The watchdog: the LAPIC timer, one-shot, divide by 1, NMI
        // delivery (LVT bits 10:8 = 100b; SDM §11.5.1, §11.5.4). QEMU
        // honours the delivery mode of every LVT, the timer's included
        // (hw/intc/apic.c, apic_local_deliver), and an NMI touches
        // neither IRR, ISR nor TMR.
        // ap-start=host: the APs wait for SIPI after the reset (QEMU's
        // `apic_init_reset`: wait_for_sipi for every CPU but the BSP);
        // INIT, then one start-up IPI, to all but self (SDM §9.4.4.1's
        // INIT-SIPI; QEMU needs one SIPI, `apic_sipi` ignores a second),
        // then wait for each AP in long mode.
        let mut no_aps = l.create_label();
        // ARMED before the APs start: each arms its own watchdog from it.
        l.mov(ecx, dword_ptr(rbx + WATCHDOG_AT as i32))?;
        l.mov(dword_ptr(ARMED), ecx)?;
        l.xor(eax, eax)?;
        l.mov(dword_ptr(SMP), eax)?;
        l.mov(qword_ptr(IDLE_HOOK), rax)?;
        l.mov(ecx, dword_ptr(rbx + CPUS_AT as i32))?;
        l.cmp(ecx, 1)?;
        l.jbe(no_aps)?;
        l.mov(rax, SMP_SETUP)?;
        l.call(rax)?;
        l.mov(ecx, dword_ptr(rbx + CPUS_AT as i32))?;
        // Each CPU's xAPIC ID (smp::Plan): the APs' by their trampoline,
        // the BSP's once they run (QEMU's all-but-self shorthand leaves
        // out the APIC whose *initial* ID is the sender's current one,
        // `apic_deliver`, so the start-up IPIs go out with the BSP's
        // initial ID).
        l.mov(rax, qword_ptr(rbx + IDS_AT as i32))?;
        l.mov(qword_ptr(AP_IDS), rax)?;
        l.cmp(dword_ptr(rbx + AP_HOST_AT as i32), 0)?;
        l.je(no_aps)?;
        l.mov(dword_ptr(AP_ONLINE), 0)?;
        l.mov(rdi, LAPIC_BASE)?;
        l.mov(dword_ptr(rdi + 0x310), 0)?;
        l.mov(dword_ptr(rdi + 0x300), 0x000c_4500)?;
        l.mov(
            dword_ptr(rdi + 0x300),
            0x000c_4600 | (AP_TRAMPOLINE >> 12) as u32,
        )?;
        l.dec(ecx)?;
        let mut wait = l.create_label();
        l.set_label(&mut wait)?;
        l.pause()?;
        l.cmp(dword_ptr(AP_ONLINE), ecx)?;
        l.jb(wait)?;
        l.movzx(eax, byte_ptr(AP_IDS))?;
        l.shl(eax, 24)?;
        l.mov(dword_ptr(rdi + 0x20), eax)?;
        l.set_label(&mut no_aps)?;
        let mut unarmed = l.create_label();
        l.mov(ecx, dword_ptr(rbx + WATCHDOG_AT as i32))?;
        l.mov(dword_ptr(ARMED), ecx)?;
        l.cmp(ecx, 0)?;
        l.je(unarmed)?;
        l.mov(rdi, LAPIC_BASE)?;
        l.mov(dword_ptr(rdi + 0x3e0), 0xb)?;
        l.mov(dword_ptr(rdi + 0x320), 0x402)?;
        l.mov(eax, dword_ptr(WATCHDOG_COUNT))?;
        l.mov(dword_ptr(rdi + 0x380), eax)?;
        l.set_label(&mut unarmed)?;
        l.mov(rax, entry)?;
        l.jmp(rax)?;
        Ok((handler, l.assemble(LOADER)?))
    }

    /// `rsi` = the per-CPU block of CPU `ebx` (keeps every other register).
    fn block_of(a: &mut CodeAssembler) -> std::result::Result<(), IcedError> {
        let mut ap = a.create_label();
        let mut done = a.create_label();
        a.test(ebx, ebx)?;
        a.jnz(ap)?;
        a.mov(esi, DATA as u32)?;
        a.jmp(done)?;
        a.set_label(&mut ap)?;
        a.lea(esi, dword_ptr(rbx - 1))?;
        a.shl(esi, AP_STRIDE.trailing_zeros())?;
        a.add(esi, AP_BLOCKS as i32)?;
        a.set_label(&mut done)?;
        Ok(())
    }

    /// The in-guest driver of the stub contract's per-op protocol
    /// (docs/guest-stub.md, "Several CPUs"), what a VMM does from its
    /// exits elsewhere: called on every pass of every CPU's mailbox loop
    /// (`IDLE_HOOK`), it acts on CPU 0 only, one step per call, so CPU 0
    /// stays an idle CPU of the quiescence rule between steps (its IF as
    /// its last op left it). Phase 0 posts op k to its CPU (an `error`
    /// end when that CPU waits for a SIPI); phase 1 waits for that CPU's
    /// ops-done count to move; phase 2 settles: it snapshots the progress
    /// (every CPU's log pointer and the delivery count) and every CPU's
    /// idle passes, waits until each CPU running after op k has passed
    /// twice (so it has been at an instruction boundary of its loop, where
    /// TCG takes a pending interrupt, since the snapshot), and starts over
    /// until a round changed nothing; then op k + 1. After the last op the
    /// run ends (completed).
    pub fn driver() -> std::result::Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut ret_only = a.create_label();
        let mut out = a.create_label();
        let mut wait_done = a.create_label();
        let mut settle = a.create_label();
        let mut completed = a.create_label();
        let mut waiting = a.create_label();
        let mut have = a.create_label();
        let mut progress = a.create_label();
        let mut snapshot = a.create_label();
        let mut block = a.create_label();
        a.cmp(rbp, DATA as i32)?;
        a.jne(ret_only)?;
        a.push(rbx)?;
        a.push(rsi)?;
        a.push(rdi)?;
        a.mov(eax, dword_ptr(DRV_PHASE))?;
        a.cmp(eax, 1)?;
        a.je(wait_done)?;
        a.cmp(eax, 2)?;
        a.je(settle)?;
        // Phase 0: post op k.
        a.mov(eax, dword_ptr(DRV_K))?;
        a.cmp(eax, dword_ptr(DRV_NOPS))?;
        a.jae(completed)?;
        a.mov(ecx, dword_ptr(DRV_INIT_RUNNING))?;
        a.mov(rdx, DRV_TABLE)?;
        a.test(eax, eax)?;
        a.jz(have)?;
        a.movzx(ecx, byte_ptr(rdx + rax * 2 - 1))?;
        a.set_label(&mut have)?;
        a.movzx(ebx, byte_ptr(rdx + rax * 2))?;
        a.mov(dword_ptr(CUR_OP), eax)?;
        a.bt(ecx, ebx)?;
        a.jnc(waiting)?;
        a.mov(dword_ptr(DRV_CPU), ebx)?;
        a.call(block)?;
        a.mov(edx, dword_ptr(rsi + PCPU_OPS_DONE as i32))?;
        a.mov(dword_ptr(DRV_DONE0), edx)?;
        a.mov(dword_ptr(CUR_OP), eax)?;
        a.lea(edx, dword_ptr(rax + 1))?;
        a.mov(dword_ptr(rsi + PCPU_MAILBOX as i32), edx)?;
        a.mov(dword_ptr(DRV_PHASE), 1)?;
        a.jmp(out)?;
        // Phase 1: the op is done when its CPU's count moves.
        a.set_label(&mut wait_done)?;
        a.mov(ebx, dword_ptr(DRV_CPU))?;
        a.call(block)?;
        a.mov(edx, dword_ptr(rsi + PCPU_OPS_DONE as i32))?;
        a.cmp(edx, dword_ptr(DRV_DONE0))?;
        a.je(out)?;
        a.call(snapshot)?;
        a.mov(dword_ptr(DRV_PHASE), 2)?;
        a.jmp(out)?;
        // Phase 2: settling rounds.
        a.set_label(&mut settle)?;
        a.mov(eax, dword_ptr(DRV_K))?;
        a.mov(rdx, DRV_TABLE)?;
        a.movzx(ecx, byte_ptr(rdx + rax * 2 + 1))?;
        a.xor(ebx, ebx)?;
        let mut each = a.create_label();
        let mut skip = a.create_label();
        let mut all_passed = a.create_label();
        let mut changed = a.create_label();
        a.set_label(&mut each)?;
        a.cmp(ebx, dword_ptr(CPUS))?;
        a.jae(all_passed)?;
        a.bt(ecx, ebx)?;
        a.jnc(skip)?;
        a.call(block)?;
        a.mov(edx, dword_ptr(rsi + PCPU_IDLE_PASSES as i32))?;
        a.mov(rdi, DRV_PASSES0)?;
        a.sub(edx, dword_ptr(rdi + rbx * 4))?;
        a.cmp(edx, 2)?;
        a.jb(out)?;
        a.set_label(&mut skip)?;
        a.inc(ebx)?;
        a.jmp(each)?;
        a.set_label(&mut all_passed)?;
        a.call(progress)?;
        a.cmp(rdi, qword_ptr(DRV_LOGSUM))?;
        a.jne(changed)?;
        a.cmp(edx, dword_ptr(DRV_DELIV))?;
        a.jne(changed)?;
        a.inc(dword_ptr(DRV_K))?;
        a.mov(dword_ptr(DRV_PHASE), 0)?;
        a.jmp(out)?;
        a.set_label(&mut changed)?;
        a.call(snapshot)?;
        a.set_label(&mut out)?;
        a.pop(rdi)?;
        a.pop(rsi)?;
        a.pop(rbx)?;
        a.set_label(&mut ret_only)?;
        a.ret()?;
        a.set_label(&mut completed)?;
        a.mov(eax, EndCode::Completed as u32)?;
        a.mov(rdx, qword_ptr(END_HANDLER))?;
        a.jmp(rdx)?;
        a.set_label(&mut waiting)?;
        a.mov(eax, WAITING_CPU)?;
        a.mov(rdx, qword_ptr(END_HANDLER))?;
        a.jmp(rdx)?;
        // progress: rdi = the sum of every CPU's log pointer, edx = the
        // delivery count (clobbers rsi).
        a.set_label(&mut progress)?;
        a.push(rbx)?;
        a.xor(edi, edi)?;
        a.xor(ebx, ebx)?;
        let mut p_each = a.create_label();
        let mut p_done = a.create_label();
        a.set_label(&mut p_each)?;
        a.cmp(ebx, dword_ptr(CPUS))?;
        a.jae(p_done)?;
        a.call(block)?;
        a.add(rdi, qword_ptr(rsi + PCPU_LOG_PTR as i32))?;
        a.inc(ebx)?;
        a.jmp(p_each)?;
        a.set_label(&mut p_done)?;
        a.mov(edx, dword_ptr(DELIVERIES))?;
        a.pop(rbx)?;
        a.ret()?;
        // snapshot: the progress and every CPU's idle passes.
        a.set_label(&mut snapshot)?;
        a.push(rbx)?;
        a.call(progress)?;
        a.mov(qword_ptr(DRV_LOGSUM), rdi)?;
        a.mov(dword_ptr(DRV_DELIV), edx)?;
        a.xor(ebx, ebx)?;
        let mut s_each = a.create_label();
        let mut s_done = a.create_label();
        a.set_label(&mut s_each)?;
        a.cmp(ebx, dword_ptr(CPUS))?;
        a.jae(s_done)?;
        a.call(block)?;
        a.mov(edx, dword_ptr(rsi + PCPU_IDLE_PASSES as i32))?;
        a.mov(rdi, DRV_PASSES0)?;
        a.mov(dword_ptr(rdi + rbx * 4), edx)?;
        a.inc(ebx)?;
        a.jmp(s_each)?;
        a.set_label(&mut s_done)?;
        a.pop(rbx)?;
        a.ret()?;
        a.set_label(&mut block)?;
        block_of(&mut a)?;
        a.ret()?;
        a.assemble(DRIVER)
    }

    /// The loader's multi-CPU set-up (rbx = the scenario's staging slot),
    /// what `Image::load_smp` does on a VMM: the globals (SMP, CPUS, the
    /// driver as IDLE_HOOK and its state), CPU 0's mailbox, and each AP's
    /// block (mailbox, counts, index, x2APIC flag, log pointer, its body
    /// directory and `V#N` table from the slot).
    pub fn smp_setup() -> std::result::Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        a.mov(dword_ptr(SMP), 1)?;
        a.mov(eax, dword_ptr(rbx + CPUS_AT as i32))?;
        a.mov(dword_ptr(CPUS), eax)?;
        a.mov(rax, DRIVER)?;
        a.mov(qword_ptr(IDLE_HOOK), rax)?;
        a.xor(eax, eax)?;
        a.mov(dword_ptr(DRV_K), eax)?;
        a.mov(dword_ptr(DRV_PHASE), eax)?;
        a.mov(dword_ptr(END_LOCK), eax)?;
        a.mov(dword_ptr(DATA + PCPU_MAILBOX), eax)?;
        a.mov(dword_ptr(DATA + PCPU_OPS_DONE), eax)?;
        a.mov(esi, dword_ptr(rbx + SMP_AREA_AT as i32))?;
        a.add(rsi, rbx)?;
        a.mov(eax, dword_ptr(rsi))?;
        a.mov(dword_ptr(DRV_NOPS), eax)?;
        a.mov(ecx, dword_ptr(rsi + 4))?;
        a.mov(dword_ptr(DRV_INIT_RUNNING), ecx)?;
        a.add(rsi, 8)?;
        a.mov(rdi, DRV_TABLE)?;
        a.lea(ecx, dword_ptr(rax * 2))?;
        a.rep().movsb()?;
        a.add(rsi, 15)?;
        a.and(rsi, -16)?;
        a.mov(r8d, 1)?;
        let mut each = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut each)?;
        a.cmp(r8d, dword_ptr(CPUS))?;
        a.jae(done)?;
        a.lea(eax, dword_ptr(r8 - 1))?;
        a.shl(eax, AP_STRIDE.trailing_zeros())?;
        a.add(eax, AP_BLOCKS as i32)?;
        a.mov(r9, rax)?;
        a.xor(eax, eax)?;
        a.mov(dword_ptr(r9 + PCPU_MAILBOX as i32), eax)?;
        a.mov(dword_ptr(r9 + PCPU_OPS_DONE as i32), eax)?;
        a.mov(dword_ptr(r9 + PCPU_GP_FAULTED as i32), eax)?;
        a.mov(dword_ptr(r9 + PCPU_INDEX as i32), r8d)?;
        a.mov(eax, dword_ptr(rbx + X2APIC_AT as i32))?;
        a.mov(dword_ptr(r9 + PCPU_X2APIC as i32), eax)?;
        a.lea(rax, qword_ptr(r9 + AP_LOG as i32))?;
        a.mov(qword_ptr(r9 + PCPU_LOG_PTR as i32), rax)?;
        a.lea(rdi, qword_ptr(r9 + PCPU_COUNTS as i32))?;
        a.xor(eax, eax)?;
        a.mov(ecx, 1024)?;
        a.rep().stosb()?;
        a.lea(rdi, qword_ptr(r9 + PCPU_BODY_DIR as i32))?;
        a.mov(ecx, 2048)?;
        a.rep().movsb()?;
        a.mov(ecx, dword_ptr(rsi))?;
        a.add(rsi, 4)?;
        a.lea(rdi, qword_ptr(r9 + PCPU_NTH_TABLE as i32))?;
        a.rep().movsb()?;
        a.add(rsi, 15)?;
        a.and(rsi, -16)?;
        a.inc(r8d)?;
        a.jmp(each)?;
        a.set_label(&mut done)?;
        a.ret()?;
        a.assemble(SMP_SETUP)
    }

    /// The multi-CPU end handler (eax = end code, from any CPU): the first
    /// CPU to get here saves the code, the current op and every CPU's log
    /// into the result slot (lengths at +16, logs from [`SMP_LOGS_AT`]),
    /// then resets the machine as the single-CPU handler does.
    pub fn smp_end() -> std::result::Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut park = a.create_label();
        a.mov(r8d, eax)?;
        a.lock().bts(dword_ptr(END_LOCK), 0)?;
        a.jc(park)?;
        a.mov(eax, dword_ptr(CONTROL + 4))?;
        a.mov(edi, eax)?;
        a.shl(rdi, 16)?;
        a.mov(rax, RESULTS)?;
        a.add(rdi, rax)?;
        a.mov(r10, rdi)?;
        a.mov(dword_ptr(r10), r8d)?;
        a.mov(ecx, dword_ptr(CUR_OP))?;
        a.mov(dword_ptr(r10 + 4), ecx)?;
        a.mov(ecx, dword_ptr(CPUS))?;
        a.mov(dword_ptr(r10 + 12), ecx)?;
        a.lea(rdi, qword_ptr(r10 + SMP_LOGS_AT as i32))?;
        a.xor(r11d, r11d)?;
        a.xor(ebx, ebx)?;
        let mut each = a.create_label();
        let mut fin = a.create_label();
        let mut ap = a.create_label();
        let mut have_start = a.create_label();
        let mut nonneg = a.create_label();
        let mut fits = a.create_label();
        a.set_label(&mut each)?;
        a.cmp(ebx, dword_ptr(CPUS))?;
        a.jae(fin)?;
        block_of(&mut a)?;
        a.mov(r9, rsi)?;
        a.test(ebx, ebx)?;
        a.jnz(ap)?;
        a.mov(rsi, LOG)?;
        a.jmp(have_start)?;
        a.set_label(&mut ap)?;
        a.lea(rsi, qword_ptr(r9 + AP_LOG as i32))?;
        a.set_label(&mut have_start)?;
        a.mov(rcx, qword_ptr(r9 + PCPU_LOG_PTR as i32))?;
        a.sub(rcx, rsi)?;
        a.jae(nonneg)?;
        a.xor(ecx, ecx)?;
        a.set_label(&mut nonneg)?;
        a.mov(eax, (SLOT - SMP_LOGS_AT) as u32)?;
        a.sub(eax, r11d)?;
        a.cmp(rcx, rax)?;
        a.jbe(fits)?;
        a.mov(rcx, rax)?;
        a.mov(dword_ptr(r10), EndCode::LogFull as u32)?;
        a.set_label(&mut fits)?;
        a.mov(dword_ptr(r10 + rbx * 4 + 16), ecx)?;
        a.add(r11d, ecx)?;
        a.rep().movsb()?;
        a.inc(ebx)?;
        a.jmp(each)?;
        a.set_label(&mut fin)?;
        a.mov(dword_ptr(r10 + 8), r11d)?;
        a.inc(dword_ptr(CONTROL + 4))?;
        a.mov(al, 6)?;
        a.mov(dx, 0xcf9)?;
        a.out(dx, al)?;
        a.set_label(&mut park)?;
        a.hlt()?;
        a.jmp(park)?;
        a.assemble(SMP_END)
    }

    /// The NMI handler. Once the one-shot has fired (current count 0), an
    /// NMI whose saved RIP follows one of the interpreter's `hlt`s found
    /// the guest halted for the whole period: a hang, which ends the run
    /// through the end handler. Anywhere else the run is still going and
    /// the timer is re-armed. While the timer still counts, the NMI is
    /// the scenario's own and goes to the stub's vector-2 entry.
    pub fn watchdog(after_hlt: [u64; 2]) -> std::result::Result<Vec<u8>, IcedError> {
        let mut w = CodeAssembler::new(64)?;
        let mut hang = w.create_label();
        let mut own = w.create_label();
        let mut unarmed = w.create_label();
        // No watchdog for this scenario: every NMI is its own (without
        // this, a stopped timer's count of 0 read as "the period ran
        // out" and the scenario's NMI was dropped).
        w.cmp(dword_ptr(ARMED), 0)?;
        w.je(unarmed)?;
        w.push(rax)?;
        w.push(rcx)?;
        w.mov(rax, LAPIC_BASE)?;
        w.mov(ecx, dword_ptr(rax + 0x390))?;
        w.test(ecx, ecx)?;
        w.jnz(own)?;
        w.mov(rcx, qword_ptr(rsp + 16))?; // the interrupted RIP
        for after in after_hlt {
            w.mov(rax, after)?;
            w.cmp(rcx, rax)?;
            w.je(hang)?;
        }
        w.mov(rax, LAPIC_BASE)?;
        w.mov(ecx, dword_ptr(WATCHDOG_COUNT))?;
        w.mov(dword_ptr(rax + 0x380), ecx)?;
        w.pop(rcx)?;
        w.pop(rax)?;
        w.iretq()?;
        w.set_label(&mut hang)?;
        w.mov(eax, HANG)?;
        w.mov(rcx, HANDLER)?;
        w.jmp(rcx)?;
        w.set_label(&mut own)?;
        w.pop(rcx)?;
        w.pop(rax)?;
        w.set_label(&mut unarmed)?;
        w.jmp(qword_ptr(VECTOR2))?;
        w.assemble(WATCHDOG_HANDLER)
    }
}

/// Writes scenario `i` of a batch into its staging slot.
fn stage(
    ram: &mut [u8],
    i: usize,
    tab: &table::Table,
    scenario: &Scenario,
    armed: bool,
) -> Result<()> {
    let slot = (batch::STAGING + i as u64 * batch::SLOT) as usize;
    if batch::OPS_AT as usize + tab.ops.len() > batch::SLOT as usize || tab.nth.len() > 0x1000 {
        return Err(BackendError::Unsupported(
            "scenario too large for a batch slot".into(),
        ));
    }
    ram[slot..slot + 4].copy_from_slice(&(tab.ops.len() as u32).to_le_bytes());
    ram[slot + 4..slot + 8].copy_from_slice(&(tab.nth.len() as u32).to_le_bytes());
    ram[slot + 8..slot + 12].copy_from_slice(&u32::from(armed).to_le_bytes());
    let cpus = scenario.cpus() as u32;
    let ap_host = u32::from(scenario.config.ap_start == crate::scenario::ApStart::Host);
    let word = |o: u64| slot + o as usize..slot + o as usize + 4;
    ram[word(batch::CPUS_AT)].copy_from_slice(&cpus.to_le_bytes());
    ram[word(batch::AP_HOST_AT)].copy_from_slice(&ap_host.to_le_bytes());
    if let Ok(plan) = smp::Plan::of(scenario) {
        let ids = slot + batch::IDS_AT as usize;
        ram[ids..ids + plan.ids.len()].copy_from_slice(&plan.ids);
    }
    let x2apic = u32::from(scenario.config.apic == ApicMode::X2apic);
    ram[slot + batch::X2APIC_AT as usize..slot + batch::X2APIC_AT as usize + 4]
        .copy_from_slice(&x2apic.to_le_bytes());
    let at = |o: u64| slot + o as usize;
    ram[at(batch::BODY_DIR_AT)..at(batch::BODY_DIR_AT) + tab.body_dir.len()]
        .copy_from_slice(&tab.body_dir);
    ram[at(batch::NTH_AT)..at(batch::NTH_AT) + tab.nth.len()].copy_from_slice(&tab.nth);
    ram[at(batch::OPS_AT)..at(batch::OPS_AT) + tab.ops.len()].copy_from_slice(&tab.ops);
    if scenario.is_multi_cpu() {
        let area = smp_area(scenario, tab)?;
        let start = (batch::OPS_AT as usize + tab.ops.len()).next_multiple_of(16);
        if start + area.len() > batch::SLOT as usize {
            return Err(BackendError::Unsupported(
                "scenario too large for a batch slot".into(),
            ));
        }
        ram[slot + start..slot + start + area.len()].copy_from_slice(&area);
        ram[word(batch::SMP_AREA_AT)].copy_from_slice(&(start as u32).to_le_bytes());
    } else {
        ram[word(batch::SMP_AREA_AT)].copy_from_slice(&0u32.to_le_bytes());
    }
    Ok(())
}

/// A multi-CPU scenario's area of its staging slot (see
/// [`batch::SMP_AREA_AT`]).
fn smp_area(scenario: &Scenario, tab: &table::Table) -> Result<Vec<u8>> {
    let unsupported = |why: String| BackendError::Unsupported(why);
    let plan = smp::Plan::of(scenario).map_err(|e| unsupported(e.to_string()))?;
    let running = smp::Running::of(scenario, &plan).map_err(unsupported)?;
    let n = scenario.ops.len();
    if n > batch::MAX_OPS {
        return Err(unsupported(format!(
            "{n} top-level ops: QEMU's in-guest driver takes up to {}",
            batch::MAX_OPS
        )));
    }
    let mut area = Vec::new();
    area.extend_from_slice(&(n as u32).to_le_bytes());
    area.extend_from_slice(&u32::from(running.initial).to_le_bytes());
    for (k, after) in running.after.iter().enumerate() {
        area.extend_from_slice(&[scenario.cpu_of(k), *after]);
    }
    area.resize(area.len().next_multiple_of(16), 0);
    for (body_dir, nth) in &tab.ap_tables {
        let mut dir = body_dir.clone();
        dir.resize(2048, 0);
        area.extend_from_slice(&dir);
        area.extend_from_slice(&(nth.len() as u32).to_le_bytes());
        area.extend_from_slice(nth);
        area.resize(area.len().next_multiple_of(16), 0);
    }
    Ok(area)
}

/// A batch's guest RAM as a file shared with QEMU: the host reads the
/// loader's progress from it and says which scenario runs next.
struct BatchFile {
    file: std::fs::File,
    path: PathBuf,
}

impl BatchFile {
    fn create(path: PathBuf, ram: &[u8]) -> Result<BatchFile> {
        std::fs::write(&path, ram).map_err(BackendError::io(path.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(BackendError::io(path.display()))?;
        Ok(BatchFile { file, path })
    }

    fn read32(&self, at: u64) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut w = [0u8; 4];
        self.file
            .read_exact_at(&mut w, at)
            .map(|_| u32::from_le_bytes(w))
            .unwrap_or(0)
    }

    /// The scenario the loader runs next (or runs now).
    fn next(&self) -> usize {
        self.read32(batch::CONTROL + 4) as usize
    }

    /// One more than the scenario that is running, 0 between scenarios.
    fn running(&self) -> usize {
        self.read32(batch::CONTROL + 8) as usize
    }

    /// Makes the loader go on with scenario `i`.
    fn set_next(&self, i: usize) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&(i as u32).to_le_bytes(), batch::CONTROL + 4)
            .map_err(BackendError::io(self.path.display()))
    }
}

/// The traces of a batch, by the scenario's index in the group.
struct BatchResults<'a, 'b> {
    group: &'a [(usize, &'a Scenario)],
    out: &'b mut [Option<Trace>],
}

impl BatchResults<'_, '_> {
    fn is_open(&self, i: usize) -> bool {
        self.out[self.group[i].0].is_none()
    }

    fn set(&mut self, i: usize, trace: Trace) {
        self.out[self.group[i].0] = Some(trace);
    }
}

/// Which scenario the host last saw, whether it was running, and since when.
#[derive(Clone, Copy)]
struct Progress {
    index: usize,
    running: bool,
    since: Instant,
}

impl Progress {
    fn at(index: usize, running: bool) -> Progress {
        Progress {
            index,
            running,
            since: Instant::now(),
        }
    }
}

/// One QEMU process running a batch.
struct Process {
    child: Child,
    monitor_path: PathBuf,
    /// Connected the first time a hang check needs it.
    monitor: Option<Monitor>,
    progress: Progress,
    last_check: Instant,
}

impl Process {
    fn monitor_command(&mut self, command: &str) -> Option<String> {
        self.monitor.as_mut()?.command(command)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a QEMU process of a batch ended.
enum ProcessEnd {
    /// QEMU exited: the loader ran out of scenarios (or QEMU died).
    Exited,
    /// The monitor could not skip a hung scenario: QEMU restarts.
    Restart,
    /// QEMU never reached the stub of scenario `i`.
    NeverBooted(usize),
}

/// What a hang check on a stalled scenario found.
enum HangCheck {
    /// It ended meanwhile, or is slow but not halted: watch on.
    RunsOn,
    /// It hung: its trace is recorded and the machine reset for the next.
    Skipped,
    /// It hung or ended, and QEMU must restart.
    Restart,
}

impl QemuBackend {
    /// Runs `group` (same IOAPIC version, all runnable here) in one QEMU
    /// process per stretch without a hang.
    fn run_group(&mut self, group: &[(usize, &Scenario)], out: &mut [Option<Trace>]) -> Result<()> {
        let armed: Vec<bool> = group
            .iter()
            .map(|(_, s)| self.watchdog && watchdog_allowed(s) && s.config.apic == ApicMode::Xapic)
            .collect();
        let ram = self.batch_ram(group, &armed)?;
        let batch = BatchFile::create(self.dir.join(format!("batch-{}", unique())), &ram)?;
        drop(ram);
        let mut results = BatchResults { group, out };
        loop {
            let start = batch.next();
            if start >= group.len() {
                break;
            }
            let mut process = self.spawn_batch(&batch, group[0].1, start)?;
            let end = self.watch(&mut process, &batch, &armed, &mut results);
            let _ = std::fs::remove_file(&process.monitor_path);
            let end = end?;
            let ran = start..batch.next().min(group.len());
            for (i, (_, s)) in group.iter().enumerate().take(ran.end).skip(ran.start) {
                if results.is_open(i) {
                    results.set(i, self.result(&batch.file, i, s.cpus())?);
                }
            }
            match end {
                // QEMU exited before the batch's end: at start-up (an
                // option it refuses) or part-way. Its stderr says why.
                ProcessEnd::Exited if batch.next() < group.len() => {
                    let stderr = stderr_of(&mut process.child);
                    let status = process
                        .child
                        .try_wait()
                        .ok()
                        .flatten()
                        .and_then(|s| s.code());
                    for i in batch.next()..group.len() {
                        if results.is_open(i) {
                            results.set(
                                i,
                                Trace::error(
                                    &self.name,
                                    format!(
                                        "QEMU exited (status {status:?}) with the batch unfinished: {}",
                                        stderr.trim()
                                    ),
                                ),
                            );
                        }
                    }
                    break;
                }
                ProcessEnd::Exited => break,
                ProcessEnd::Restart => {}
                ProcessEnd::NeverBooted(i) if i >= group.len() => break,
                ProcessEnd::NeverBooted(i) => {
                    results.set(
                        i,
                        Trace::error(
                            &self.name,
                            format!("QEMU did not reach the guest stub within {BOOT_LIMIT:?}"),
                        ),
                    );
                    batch.set_next(i + 1)?;
                }
            }
        }
        let _ = std::fs::remove_file(&batch.path);
        Ok(())
    }

    /// The batch's guest RAM: the first scenario's machine, the batch code
    /// (loader, NMI watchdog) and every scenario staged in its slot.
    fn batch_ram(&self, group: &[(usize, &Scenario)], armed: &[bool]) -> Result<Vec<u8>> {
        let mut ram = vec![0u8; batch::RAM];
        self.image.install(&mut ram);
        let first = guest_table(group[0].1, &self.options)?;
        let base = self.ram(&first, group[0].1);
        ram[..base.len()].copy_from_slice(&base);
        // The long-mode trampoline enters the loader, not the stub.
        let (handler, loader) =
            batch::code(self.image.stub.entry).map_err(assemble("batch loader"))?;
        let t = TRAMPOLINE as usize;
        let entry_patch = trampoline(batch::LOADER).map_err(assemble("batch trampoline"))?;
        ram[t + 0x300..t + 0x400].copy_from_slice(&entry_patch[0x300..0x400]);
        ram[batch::HANDLER as usize..batch::HANDLER as usize + handler.len()]
            .copy_from_slice(&handler);
        ram[batch::LOADER as usize..batch::LOADER as usize + loader.len()].copy_from_slice(&loader);
        let watchdog = batch::watchdog(self.image.stub.after_hlt).map_err(assemble("watchdog"))?;
        debug_assert!(
            handler.len() <= 0x100 && loader.len() <= 0x200 && watchdog.len() <= 0x100,
            "the batch code outgrew its areas"
        );
        let w = batch::WATCHDOG_HANDLER as usize;
        ram[w..w + watchdog.len()].copy_from_slice(&watchdog);
        let topology = smp::Plan::of(group[0].1).map_or(smp::Topology::ONE, |p| p.topology);
        if topology.cpus() > 1 {
            let ap = ap_trampoline(ap_enter(self.image.stub.sipi_entry))
                .map_err(assemble("AP trampoline"))?;
            let a = batch::AP_TRAMPOLINE as usize;
            ram[a..a + ap.len()].copy_from_slice(&ap);
            // The BSP trampoline's descriptors, for the APs' own.
            let t = TRAMPOLINE as usize;
            let descriptors = ram[t + 0x100..t + 0x120].to_vec();
            ram[a + 0x100..a + 0x120].copy_from_slice(&descriptors);
            let i = batch::AP_INDEX as usize;
            ram[i..i + 256].copy_from_slice(&smp::index_table(&topology));
            for (at, code) in [
                (batch::DRIVER, batch::driver().map_err(assemble("driver"))?),
                (
                    batch::SMP_SETUP,
                    batch::smp_setup().map_err(assemble("SMP set-up"))?,
                ),
                (
                    batch::SMP_END,
                    batch::smp_end().map_err(assemble("SMP end"))?,
                ),
            ] {
                ram[at as usize..at as usize + code.len()].copy_from_slice(&code);
            }
        }
        // NMI (vector 2) enters the watchdog, which passes the scenario's
        // own NMIs on to the stub's entry.
        crate::guest::set_gate(&mut ram, 2, batch::WATCHDOG_HANDLER);
        let v2 = batch::VECTOR2 as usize;
        ram[v2..v2 + 8].copy_from_slice(&self.image.stub.vectors[2].to_le_bytes());
        let count = WATCHDOG.as_nanos() as u32; // 1 ns per count at divide by 1
        let wc = batch::WATCHDOG_COUNT as usize;
        ram[wc..wc + 4].copy_from_slice(&count.to_le_bytes());
        for (i, (_, s)) in group.iter().enumerate() {
            stage(&mut ram, i, &guest_table(s, &self.options)?, s, armed[i])?;
        }
        let control = batch::CONTROL as usize;
        ram[control..control + 4].copy_from_slice(&(group.len() as u32).to_le_bytes());
        Ok(ram)
    }

    /// Starts QEMU on the batch file, the loader going on from `start`.
    fn spawn_batch(&self, batch: &BatchFile, first: &Scenario, start: usize) -> Result<Process> {
        let monitor_path = self.dir.join(format!("monitor-{}", unique()));
        let mut command = self.command(&batch.path, first.config.ioapic, batch::RAM);
        // Every scenario of the group has the same CPUs (`run_batch`).
        let topology = smp::Plan::of(first).map_or(smp::Topology::ONE, |p| p.topology);
        if topology.cpus() > 1 {
            command.args(["-smp", &topology.smp_arg()]);
        }
        command.arg("-monitor").arg(format!(
            "unix:{},server=on,wait=off",
            monitor_path.display()
        ));
        let child = command.spawn().map_err(BackendError::io(format_args!(
            "starting {}",
            binary().display()
        )))?;
        Ok(Process {
            child,
            monitor_path,
            monitor: None,
            progress: Progress::at(start, false),
            last_check: Instant::now(),
        })
    }

    /// Watches a QEMU process until it exits, must restart, or never boots;
    /// a scenario that stalls is checked for a hang and skipped.
    fn watch(
        &self,
        process: &mut Process,
        batch: &BatchFile,
        armed: &[bool],
        results: &mut BatchResults<'_, '_>,
    ) -> Result<ProcessEnd> {
        let len = armed.len();
        loop {
            if let Ok(Some(_)) = process.child.try_wait() {
                return Ok(ProcessEnd::Exited);
            }
            // Guest memory is the guest's: never trust an index in it.
            let i = batch.next().min(len);
            let running = batch.running() == i + 1;
            if i != process.progress.index || running != process.progress.running {
                process.progress = Progress::at(i, running);
            }
            let progress = process.progress;
            let limit = if armed[progress.index.min(len - 1)] {
                WATCHDOG_FALLBACK
            } else {
                BATCH_HANG_AFTER
            };
            if progress.running
                && progress.index < len
                && progress.since.elapsed() > limit
                && process.last_check.elapsed() > limit
            {
                process.last_check = Instant::now();
                match self.check_hang(process, batch, results)? {
                    HangCheck::RunsOn => {}
                    HangCheck::Skipped => {
                        process.progress = Progress::at(progress.index + 1, false)
                    }
                    HangCheck::Restart => return Ok(ProcessEnd::Restart),
                }
                continue;
            }
            if !progress.running && progress.since.elapsed() > BOOT_LIMIT {
                process.kill();
                return Ok(ProcessEnd::NeverBooted(progress.index));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The scenario the process runs has stalled: pause the guest, and if
    /// it is halted (or cannot be paused) record a hang and reset the
    /// machine for the next scenario.
    fn check_hang(
        &self,
        process: &mut Process,
        batch: &BatchFile,
        results: &mut BatchResults<'_, '_>,
    ) -> Result<HangCheck> {
        let Progress {
            index: i, since, ..
        } = process.progress;
        if process.monitor.is_none() {
            process.monitor = Monitor::connect(&process.monitor_path);
        }
        // Pause the guest, so that what is read and written below cannot
        // race the end of the run.
        let paused = process.monitor_command("stop").is_some();
        if !paused {
            process.kill();
        }
        if batch.next() != i || batch.running() != i + 1 {
            // The run ended meanwhile.
            if paused {
                process.monitor_command("cont");
                return Ok(HangCheck::RunsOn);
            }
            return Ok(HangCheck::Restart);
        }
        // A hang is a halted guest; one that is merely slow (a loaded
        // host) gets more time, up to RUN_LIMIT.
        let cpus = results.group[i].1.cpus();
        let halted = paused
            && if cpus == 1 {
                process
                    .monitor_command("info registers")
                    .is_some_and(|r| r.contains("HLT=1"))
            } else {
                // `info registers` shows the monitor's current CPU only;
                // `-a` every one. A hang is some CPU halted at one of
                // the interpreter's `hlt`s (the watchdog's rule): the
                // others wait for it.
                process
                    .monitor_command("info registers -a")
                    .is_some_and(|r| {
                        halted_cpus(&r)
                            .iter()
                            .any(|rip| self.image.stub.after_hlt.contains(rip))
                    })
            };
        let limit = if cpus > 1 { SMP_RUN_LIMIT } else { RUN_LIMIT };
        if paused && !halted && since.elapsed() < limit {
            process.monitor_command("cont");
            return Ok(HangCheck::RunsOn);
        }
        results.set(
            i,
            if halted || !paused {
                self.hang_trace(&batch.path, cpus)?
            } else {
                Trace::error(
                    &self.name,
                    format!("the guest neither ended nor halted within {limit:?}"),
                )
            },
        );
        batch.set_next(i + 1)?;
        // Reset the machine through the monitor instead of restarting QEMU.
        let reset = paused
            && process.monitor_command("system_reset").is_some()
            && process.monitor_command("cont").is_some();
        if !reset {
            process.kill();
            return Ok(HangCheck::Restart);
        }
        Ok(HangCheck::Skipped)
    }

    /// A hung batch scenario, read from guest RAM where it stopped.
    fn hang_trace(&self, ram_path: &std::path::Path, cpus: usize) -> Result<Trace> {
        use std::os::unix::fs::FileExt;
        let fail = |e| BackendError::io(ram_path.display())(e);
        if cpus > 1 {
            let file = std::fs::File::open(ram_path).map_err(fail)?;
            let mut word = [0u8; 8];
            file.read_exact_at(&mut word[..4], CUR_OP).map_err(fail)?;
            let cur_op = u32::from_le_bytes(word[..4].try_into().expect("4 bytes")) as usize;
            let mut logs = Vec::new();
            for cpu in 0..cpus {
                let (start, end) = cpu_log(cpu);
                file.read_exact_at(&mut word, cpu_block(cpu) + PCPU_LOG_PTR)
                    .map_err(fail)?;
                let ptr = u64::from_le_bytes(word).clamp(start, end);
                let mut bytes = vec![0u8; (ptr - start) as usize];
                file.read_exact_at(&mut bytes, start).map_err(fail)?;
                logs.push(bytes);
            }
            let mut trace = Trace::new(&self.name);
            trace.events = log::decode_cpus(logs.iter().map(Vec::as_slice))?;
            trace.outcome = Outcome::Hang;
            trace.hang_op = Some(cur_op);
            return Ok(trace);
        }
        // Only what a hang needs: the current op and the log so far.
        let file = std::fs::File::open(ram_path).map_err(fail)?;
        let mut head = [0u8; 0x18];
        file.read_exact_at(&mut head, DATA).map_err(fail)?;
        let cur_op = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let ptr =
            u64::from_le_bytes(head[0x10..0x18].try_into().expect("8 bytes")).clamp(LOG, LOG_END);
        let mut log_bytes = vec![0u8; (ptr - LOG) as usize];
        file.read_exact_at(&mut log_bytes, LOG).map_err(fail)?;
        let mut trace = Trace::new(&self.name);
        trace.events = log::decode(&log_bytes)?;
        trace.outcome = Outcome::Hang;
        trace.hang_op = Some(cur_op);
        Ok(trace)
    }

    /// The saved outcome and log of batch scenario `i`.
    fn result(&self, file: &std::fs::File, i: usize, cpus: usize) -> Result<Trace> {
        use std::os::unix::fs::FileExt;
        let at = batch::RESULTS + i as u64 * batch::SLOT;
        let mut head = [0u8; batch::SMP_LOGS_AT as usize];
        file.read_exact_at(&mut head, at)
            .map_err(BackendError::io("the batch results"))?;
        let word =
            |k: usize| u32::from_le_bytes(head[4 * k..4 * k + 4].try_into().expect("4 bytes"));
        let mut trace = Trace::new(&self.name);
        let code = word(0);
        if cpus > 1 {
            // Each CPU's log, lengths at +16 (batch::smp_end).
            let mut logs = Vec::new();
            let mut from = at + batch::SMP_LOGS_AT;
            let mut room = batch::SLOT - batch::SMP_LOGS_AT;
            for cpu in 0..cpus.min(MAX_CPUS) {
                let len = u64::from(word(4 + cpu)).min(room);
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(&mut bytes, from)
                    .map_err(BackendError::io("the batch results"))?;
                logs.push(bytes);
                from += len;
                room -= len;
            }
            trace.events = log::decode_cpus(logs.iter().map(Vec::as_slice))?;
            if code == batch::WAITING_CPU {
                trace.outcome = Outcome::Error;
                trace.error = Some(format!(
                    "op {}: posted to a CPU that waits for a SIPI",
                    word(1)
                ));
                return Ok(trace);
            }
        } else {
            let len = (word(2) as u64).min(batch::SLOT - 16) as usize;
            let mut log_bytes = vec![0u8; len];
            file.read_exact_at(&mut log_bytes, at + 16)
                .map_err(BackendError::io("the batch results"))?;
            trace.events = log::decode(&log_bytes)?;
        }
        if code == batch::HANG {
            trace.outcome = Outcome::Hang;
            trace.hang_op = Some(word(1) as usize);
            return Ok(trace);
        }
        match EndCode::from_u32(code) {
            Some(EndCode::Completed) => {}
            Some(EndCode::Storm) => trace.outcome = Outcome::Storm,
            Some(EndCode::UnexpectedFault) => {
                trace.outcome = Outcome::Error;
                trace.error = Some("the guest took a #GP outside the stub's RDMSR/WRMSR".into());
            }
            _ => return Err(BackendError::LogFull),
        }
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `info registers -a` of two long-mode CPUs (QEMU 10's layout, CRLF
    /// as the monitor sends it): CPU 1 is halted, CPU 0 runs.
    #[test]
    fn halted_cpus_reads_each_cpus_rip_line() {
        let info = "CPU#0\r\nRAX=0000000000000000 RBX=0000000000000000\r\n\
                    RIP=0000000000010234 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n\
                    CPU#1\r\n\
                    RIP=00000000000102a1 RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n\
                    EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n";
        // The real-mode EIP line (a CPU waiting for SIPI) is no stub hlt.
        assert_eq!(halted_cpus(info), [0x102a1]);
    }
}
