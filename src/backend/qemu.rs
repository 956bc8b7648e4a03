//! QEMU's emulated irqchip under TCG (`qemu-tcg`): `hw/intc/apic.c` and
//! `hw/intc/ioapic.c`, a second real implementation that runs everywhere,
//! for three-way triage with the model and a hypervisor.
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
//! hang. One QEMU process per scenario.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

use super::{Availability, Backend, BackendError, Result};
use crate::guest::layout::*;
use crate::guest::{log, table, Image};
use crate::scenario::{ApicMode, Op, Scenario};
use crate::trace::{Outcome, Trace};

const QEMU: &str = "qemu-system-x86_64";
/// Guest RAM of the QEMU machine.
const QEMU_RAM: usize = 16 << 20;
/// A run still going this long after the stub started is a hang (TCG runs
/// a scenario in well under a millisecond once booted).
const HANG_AFTER: Duration = Duration::from_millis(100);
/// QEMU taking longer than this to reach the stub is an error.
const BOOT_LIMIT: Duration = Duration::from_secs(10);
/// `wait`'s status for a QEMU that never reached the stub.
const NEVER_BOOTED: i32 = -2;

/// Whether QEMU is installed and runs.
pub fn probe() -> Availability {
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => Availability::Available,
        Ok(out) => Availability::Unavailable(format!(
            "{QEMU} --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(_) => Availability::Unavailable(format!(
            "{QEMU} not found (install the qemu-system-x86 package)"
        )),
    }
}

pub struct QemuBackend {
    /// `qemu-tcg`, or `qemu-kvm-userspace` (KVM's CPU, QEMU's irqchip).
    name: &'static str,
    image: Image,
    dir: PathBuf,
    firmware: PathBuf,
    trampoline: Vec<u8>,
}

impl QemuBackend {
    /// `kvm`: `-accel kvm -machine kernel-irqchip=off` (the optional
    /// `qemu-kvm-userspace`) instead of TCG.
    pub fn open(kvm: bool) -> std::result::Result<QemuBackend, super::OpenError> {
        let name = if kvm {
            "qemu-kvm-userspace"
        } else {
            "qemu-tcg"
        };
        if let Availability::Unavailable(why) = probe() {
            return Err(super::OpenError::Unavailable {
                name: name.into(),
                why,
            });
        }
        let fail = |why: String| super::OpenError::Unavailable {
            name: name.into(),
            why,
        };
        let dir =
            std::env::temp_dir().join(format!("irqdiff-qemu-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let image = Image::build();
        // The firmware: 64 KiB whose reset vector (at 0xFFFF0) jumps to the
        // trampoline in RAM: jmp far 0000:TRAMPOLINE.
        let mut rom = vec![0xf4u8; 0x1_0000];
        rom[0xfff0..0xfff5].copy_from_slice(&[
            0xea,
            TRAMPOLINE as u8,
            (TRAMPOLINE >> 8) as u8,
            0,
            0,
        ]);
        let firmware = dir.join("firmware.bin");
        std::fs::write(&firmware, &rom)
            .map_err(|e| fail(format!("{}: {e}", firmware.display())))?;
        let trampoline = trampoline(image.stub.entry)
            .map_err(|e| fail(format!("assembling the trampoline: {e}")))?;
        Ok(QemuBackend {
            name,
            image,
            dir,
            firmware,
            trampoline,
        })
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
fn trampoline(entry: u64) -> std::result::Result<Vec<u8>, iced_x86::IcedError> {
    let base = TRAMPOLINE;
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
    l.mov(rsp, STACK_TOP)?;
    l.lidt(ptr(base + 0x110))?;
    // SVR = 0x1FF: the scenario's start state (QEMU's APIC comes out of
    // reset software-disabled).
    l.mov(rax, LAPIC_BASE + 0xf0)?;
    l.mov(dword_ptr(rax), 0x1ff)?;
    l.mov(dword_ptr(BOOTED), 1)?;
    l.push(0x202)?;
    l.popfq()?;
    l.mov(rax, entry)?;
    l.jmp(rax)?;
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

/// Why a scenario cannot run on QEMU here.
fn unsupported(scenario: &Scenario) -> Option<String> {
    if scenario.config.apic == ApicMode::X2apic {
        return Some("QEMU 7.2's TCG has no x2APIC".into());
    }
    if scenario.config.irqchip == crate::scenario::Irqchip::Split {
        return Some("QEMU's irqchip is all userspace: there is no split shape".into());
    }
    if scenario.config.directed_eoi {
        return Some("QEMU's TCG local APIC does not advertise EOI-broadcast suppression".into());
    }
    for op in scenario.all_ops() {
        if let Op::Assert(p) | Op::Deassert(p) | Op::Pulse(p) = op {
            if p.get() >= 16 {
                return Some(format!("pin {p}: pc-testdev drives ISA IRQs 0-15 only"));
            }
        }
        if matches!(op, Op::ApicBase(_)) {
            return Some("APIC base moves are not run on QEMU".into());
        }
    }
    None
}

impl Backend for QemuBackend {
    fn name(&self) -> &str {
        self.name
    }

    /// A generated scenario gets what QEMU can offer: xAPIC, the full
    /// irqchip, pins below 16.
    fn fit(&self, scenario: &mut Scenario) {
        scenario.config = crate::scenario::Config {
            ioapic: scenario.config.ioapic,
            ..Default::default()
        };
        let fit_pin =
            |p: crate::scenario::Pin| crate::scenario::Pin::new(p.get() % 16).expect("below 16");
        let fit = |op: &mut Op| match op {
            Op::Route { pin, .. }
            | Op::Mask(pin)
            | Op::Unmask(pin)
            | Op::Assert(pin)
            | Op::Deassert(pin)
            | Op::Pulse(pin) => *pin = fit_pin(*pin),
            Op::ApicBase(_) => *op = Op::Nop,
            _ => {}
        };
        scenario.ops.iter_mut().for_each(fit);
        scenario.handlers.values_mut().flatten().for_each(fit);
    }

    fn run(&mut self, scenario: &Scenario) -> Result<Trace> {
        if let Some(why) = unsupported(scenario) {
            return Err(BackendError::Unsupported(why));
        }
        let table = table::encode_for(scenario, table::HostOps::Guest)
            .map_err(|e| BackendError::Unsupported(e.to_string()))?;
        let ram_path = self.dir.join(format!("ram-{}", unique()));
        let mut file = std::fs::File::create(&ram_path)
            .map_err(|e| BackendError::Failed(format!("{}: {e}", ram_path.display())))?;
        file.write_all(&self.ram(&table, scenario))
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        drop(file);
        let mut child = Command::new(QEMU)
            .args(if self.name == "qemu-tcg" {
                ["-accel", "tcg", "-machine", "pc", "-cpu", "qemu64"]
            } else {
                [
                    "-accel",
                    "kvm",
                    "-machine",
                    "pc,kernel-irqchip=off",
                    "-cpu",
                    "qemu64",
                ]
            })
            .args(["-m", "16M"])
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
                "memory-backend-file,id=ram0,size=16M,mem-path={},share=on",
                ram_path.display()
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
            .args(match scenario.config.ioapic {
                crate::scenario::IoapicVersion::V11 => ["-global", "ioapic.version=0x11"],
                crate::scenario::IoapicVersion::V20 => ["-global", "ioapic.version=0x20"],
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BackendError::Failed(format!("starting {QEMU}: {e}")))?;
        let status = wait(&mut child, &ram_path);
        let ram = std::fs::read(&ram_path).map_err(|e| BackendError::Failed(e.to_string()));
        let _ = std::fs::remove_file(&ram_path);
        let ram = ram?;
        let (cur_op, log_bytes) = self.image.read_back(&ram);
        let mut trace = Trace::new(self.name);
        trace.events = log::decode(log_bytes).map_err(|e| BackendError::Failed(e.to_string()))?;
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
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
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

/// Waits for QEMU. `None` (and QEMU killed) when the stub has run for
/// [`HANG_AFTER`] without ending the run, or QEMU never reached it.
fn wait(child: &mut Child, ram: &std::path::Path) -> Option<i32> {
    use std::os::unix::fs::FileExt;
    let start = Instant::now();
    let file = std::fs::File::open(ram).ok();
    let mut booted_at = None;
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
        let hung = booted_at.is_some_and(|t| t.elapsed() > HANG_AFTER);
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
