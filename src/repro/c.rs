//! Standalone C programs that reproduce a scenario without irqdiff:
//!
//! - KVM (`cc -O2 repro.c -o repro`): the VM the `kvm` backend creates,
//!   libc and the kernel headers only; the in-kernel irqchip, or the split
//!   one with a minimal IOAPIC in C when the scenario says `irqchip=split`;
//!   a multi-CPU scenario on N vCPUs, one thread each ([`super::c_smp`]).
//! - Hypervisor.framework (`cc repro.c -framework Hypervisor`, then
//!   codesign): the bring-up the strict test double accepts (controls from
//!   the capability MSRs, all eight segments, CR0/CR4 masks and shadows,
//!   `HV_DEADLINE_FOREVER` with a watchdog calling `hv_vcpu_interrupt`,
//!   resume on host exits, the vCPU destroyed before the VM), full or split
//!   shape. On Linux it builds against `hypervisor-framework-double` (its
//!   `include/` and `libhypervisor_framework_double.so`) and runs there. A
//!   multi-CPU scenario runs on N vCPUs, one thread each, INIT and STARTUP
//!   IPIs as the `hvf` backend handles them ([`super::c_smp`]).
//!
//! Each embeds the guest stub's code and the scenario's op table, prints the
//! observed events next to the expected ones (the model's), and exits 1 if
//! they differ, 0 if they match, 2 if it could not run.

use std::fmt::Write;

use super::c_smp;
use crate::guest::layout::*;
use crate::guest::{table, Image};
use crate::scenario::{print::print, HostOp, Scenario};
use crate::trace::{EventKind, Outcome, Trace};

/// One line per event, the format both the C program and irqdiff print.
pub fn event_lines(trace: &Trace) -> Vec<String> {
    let mut lines: Vec<String> = trace
        .events
        .iter()
        .map(|e| format!("op {} {}", e.op, event_body(e)))
        .collect();
    lines.push(outcome_line(trace));
    lines
}

/// An event as the C programs print it, after its `op N`.
pub(super) fn event_body(e: &crate::trace::Event) -> String {
    match &e.kind {
        EventKind::Deliver { vector } => format!("deliver 0x{vector:02x}"),
        EventKind::Snapshot(s) => {
            let mut line = "snapshot".to_string();
            for (name, words) in [("irr", &s.irr), ("isr", &s.isr), ("tmr", &s.tmr)] {
                line += &format!(" {name}=");
                for w in words.iter().rev() {
                    line += &format!("{w:08x}");
                }
            }
            let mask = |b: &[bool; 24]| (0..24).fold(0u32, |m, i| m | (u32::from(b[i]) << i));
            line + &format!(
                " tpr={:02x} ppr={:02x} remote_irr={:06x} delivery_status={:06x}",
                s.tpr,
                s.ppr,
                mask(&s.remote_irr),
                mask(&s.delivery_status)
            )
        }
        EventKind::Read { space, reg, value } => {
            let space = match space {
                crate::trace::Space::Ioapic => "ioapic",
                crate::trace::Space::Lapic => "lapic",
                crate::trace::Space::LapicMmio => "lapic-mmio",
                crate::trace::Space::Pic => "pic",
                crate::trace::Space::Msr => "msr",
            };
            format!("read {space}[0x{reg:x}] = 0x{value:x}")
        }
        EventKind::Exception { vector } => format!("exception {vector}"),
    }
}

/// How a run ended, as the C programs print it.
pub(super) fn outcome_line(trace: &Trace) -> String {
    match trace.outcome {
        Outcome::Completed => "completed".into(),
        Outcome::Hang => format!("hang at op {}", trace.hang_op.unwrap_or(0)),
        Outcome::Storm => "storm".into(),
        Outcome::Error => format!("error: {}", trace.error.as_deref().unwrap_or("")),
    }
}

pub(super) fn c_bytes(out: &mut String, name: &str, bytes: &[u8]) {
    let _ = writeln!(
        out,
        "static const unsigned char {name}[{}] = {{",
        bytes.len().max(1)
    );
    for chunk in bytes.chunks(20) {
        out.push_str("    ");
        for b in chunk {
            let _ = write!(out, "0x{b:02x},");
        }
        out.push('\n');
    }
    if bytes.is_empty() {
        out.push_str("    0\n");
    }
    out.push_str("};\n");
}

pub(super) fn c_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Why a scenario cannot be written as a C repro.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(
        "the KVM C repro covers the full in-kernel irqchip; this scenario asks for irqchip=split"
    )]
    Split,
    #[error("{0}")]
    TooLarge(#[from] table::TooLarge),
    /// A multi-CPU scenario KVM cannot run as it is written.
    #[error("{0}")]
    KvmCannot(&'static str),
    /// A multi-CPU scenario Hypervisor.framework cannot run as it is written.
    #[error("{0}")]
    HvfCannot(&'static str),
}

/// Which hypervisor the program drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Kvm,
    Hvf,
}

/// The KVM program for `scenario`, with the model's `expected` trace.
pub fn emit(scenario: &Scenario, expected: &Trace) -> Result<String, EmitError> {
    emit_for(Target::Kvm, scenario, expected)
}

/// The Hypervisor.framework program (split shape when the scenario says
/// `irqchip=split`).
pub fn emit_hvf(scenario: &Scenario, expected: &Trace) -> Result<String, EmitError> {
    emit_for(Target::Hvf, scenario, expected)
}

fn emit_for(target: Target, scenario: &Scenario, expected: &Trace) -> Result<String, EmitError> {
    let smp = scenario.uses_smp();
    if smp {
        match (target, c_smp::unsupported(target, scenario)) {
            (_, None) => {}
            (Target::Kvm, Some(why)) => return Err(EmitError::KvmCannot(why)),
            (Target::Hvf, Some(why)) => return Err(EmitError::HvfCannot(why)),
        }
    }
    let split = scenario.config.irqchip == crate::scenario::Irqchip::Split;
    let image = Image::build();
    let t = table::encode(scenario)?;
    let mut c = String::from("/*\n");
    let format = match target {
        Target::Kvm => "c-kvm",
        Target::Hvf => "c-hvf",
    };
    let _ = writeln!(
        c,
        " * GENERATED FILE: `irqdiff emit SCENARIO.irq --as {format}` wrote it from the\n \
         * scenario quoted below. Do not edit: change the scenario and regenerate.\n *"
    );
    match target {
        Target::Kvm if smp => {
            let _ = writeln!(
                c,
                " * irqdiff repro for Linux KVM ({}), {} vCPUs, one thread\n \
                 * each; no dependency beyond libc and the kernel headers.\n *\n \
                 * The host drives the CPUs as irqdiff's kvm backend does: each op runs on\n \
                 * its CPU until that CPU is idle, then every CPU is resumed in index order\n \
                 * until a round changes nothing. Events are compared per op and per CPU.\n *\n \
                 *   cc -O2 -pthread repro.c -o repro && ./repro\n *",
                if split {
                    "split irqchip: KVM's local APICs, the IOAPIC here"
                } else {
                    "in-kernel irqchip"
                },
                scenario.cpus()
            );
        }
        Target::Kvm => {
            c += " * irqdiff repro for Linux KVM (in-kernel irqchip); no dependency\n";
            c += " * beyond libc and the kernel headers.\n *\n *   cc -O2 repro.c -o repro && ./repro\n *\n";
        }
        Target::Hvf => {
            c += " * irqdiff repro for macOS Hypervisor.framework (Intel, macOS 12+):\n";
            if smp {
                let _ = writeln!(
                    c,
                    " * {} vCPUs, one thread each (each vCPU created, run and destroyed on its\n \
                     * own thread, as hv.h requires). The host drives the CPUs as irqdiff's hvf\n \
                     * backend does: each op runs on its CPU until that CPU is idle, then every\n \
                     * CPU is resumed in index order until a round changes nothing; INIT and\n \
                     * STARTUP IPIs come back as HV_VM_EXITINFO_INIT_AP / STARTUP_AP exits.\n \
                     * Events are compared per op and per CPU.",
                    scenario.cpus()
                );
            }
            c += if split {
                " * the in-kernel APIC with a userspace IOAPIC (HV_APIC_CTRL_IOAPIC_EOI).\n"
            } else {
                " * the in-kernel APIC, IOAPIC and ATPIC (HV_VM_ACCEL_APIC).\n"
            };
            c +=
                " *\n * On an Intel Mac (scripts/hv.entitlements in the irqdiff repository):\n *\n";
            c += " *   cc -O2 repro.c -o repro -framework Hypervisor\n";
            c += " *   codesign --sign - --entitlements hv.entitlements --force repro && ./repro\n *\n";
            c += " * On Linux, against irqdiff's test double of the framework (in-kernel bugs\n";
            c += " * injected with IRQDIFF_HVF_DOUBLE_QUIRKS=hvf-known, for instance):\n *\n";
            c += " *   cargo build --release -p hypervisor-framework-double\n";
            c += " *   cc repro.c -o repro -I hypervisor-framework-double/include -L target/release \\\n";
            c += " *     -lhypervisor_framework_double && LD_LIBRARY_PATH=target/release ./repro\n *\n";
        }
    }
    c += " * Exit status: 0 the observed events match the expected ones (the model's),\n";
    c += " * 1 they differ, 2 the program could not run.\n *\n * Scenario (irqdiff .irq format):\n *\n";
    for line in print(scenario).lines() {
        let _ = writeln!(c, " *   {}", line.replace("*/", "* /"));
    }
    c += " */\n";
    c += match target {
        Target::Kvm => include_str!("c_kvm_prelude.c"),
        Target::Hvf => include_str!("c_hvf_prelude.c"),
    };
    c += include_str!("c_layout.c");
    if smp {
        c += &c_smp::declarations(target, scenario, &t, &image);
    }
    let _ = writeln!(c, "static const int SPLIT = {};", u8::from(split));
    let version = match scenario.config.ioapic {
        crate::scenario::IoapicVersion::V11 => 0x11,
        crate::scenario::IoapicVersion::V20 => 0x20,
    };
    let _ = writeln!(c, "#define IOAPIC_VERSION 0x{version:x}");
    if target == Target::Hvf {
        let _ = writeln!(
            c,
            "static const int VERSION_DEPENDENT = {};",
            u8::from(scenario.depends_on_ioapic_version())
        );
    }
    let _ = writeln!(
        c,
        "static const unsigned long long STUB_ENTRY = 0x{:x}ULL;",
        image.stub.entry
    );
    let _ = writeln!(
        c,
        "static const int X2APIC = {};",
        u8::from(scenario.config.apic == crate::scenario::ApicMode::X2apic)
    );
    c_bytes(&mut c, "STUB", &image.stub.code);
    c += "static const unsigned long long VECTORS[256] = {\n";
    for chunk in image.stub.vectors.chunks(8) {
        c += "    ";
        for v in chunk {
            let _ = write!(c, "0x{v:x}ULL,");
        }
        c += "\n";
    }
    c += "};\n";
    c_bytes(&mut c, "OPS_TABLE", &t.ops);
    c_bytes(&mut c, "BODY_DIR_TABLE", &t.body_dir);
    c_bytes(&mut c, "NTH_TABLE_BYTES", &t.nth);
    c += "/* Host ops by number: kind (0 assert, 1 deassert, 2 pulse, 3 msi), pin, MSI address, data. */\n";
    let _ = writeln!(
        c,
        "static const struct host_op HOST_OPS[{}] = {{",
        t.host_ops.len().max(1)
    );
    for op in &t.host_ops {
        let line = match *op {
            HostOp::Assert(p) => format!("{{0, {}, 0, 0}}", p.get()),
            HostOp::Deassert(p) => format!("{{1, {}, 0, 0}}", p.get()),
            HostOp::Pulse(p) => format!("{{2, {}, 0, 0}}", p.get()),
            HostOp::Msi(m) => {
                let (addr, data) = m.address_data();
                format!("{{3, 0, 0x{addr:x}, 0x{data:x}}}")
            }
            // Refused above (EmitError::Pic).
            HostOp::IsaAssert(_) | HostOp::IsaDeassert(_) | HostOp::IsaPulse(_) => continue,
        };
        let _ = writeln!(c, "    {line},");
    }
    if t.host_ops.is_empty() {
        c += "    {0, 0, 0, 0},\n";
    }
    c += "};\n";
    let lines = if smp {
        c_smp::event_lines(scenario, expected)
    } else {
        event_lines(expected)
    };
    let _ = writeln!(c, "static const char *EXPECTED[{}] = {{", lines.len());
    for l in &lines {
        let _ = writeln!(c, "    {},", c_string(l));
    }
    c += "};\n";
    let _ = writeln!(c, "#define N_EXPECTED {}", lines.len());
    c += include_str!("c_common.c");
    c += match target {
        Target::Kvm if smp => concat!(
            include_str!("c_kvm_vmm.c"),
            include_str!("c_smp.c"),
            include_str!("c_kvm_smp_main.c")
        ),
        Target::Kvm => concat!(include_str!("c_kvm_vmm.c"), include_str!("c_kvm_main.c")),
        Target::Hvf if smp => concat!(
            include_str!("c_hvf_vmm.c"),
            include_str!("c_smp.c"),
            include_str!("c_hvf_smp_main.c")
        ),
        Target::Hvf => concat!(include_str!("c_hvf_vmm.c"), include_str!("c_hvf_main.c")),
    };
    // Layout constants the C code relies on, checked here against the stub's.
    debug_assert_eq!(
        (CODE, DATA, OPS, LOG, LOG_END),
        (0x1_0000, 0x2_0000, 0x2_2000, 0x10_0000, 0x30_0000)
    );
    debug_assert_eq!((HYPERCALL_PORT, END_PORT), (0x510, 0x511));
    Ok(c)
}
