//! The multi-CPU part of the C repros, shared by KVM and
//! Hypervisor.framework: a scenario of the multi-CPU extension
//! (`Scenario::uses_smp`) runs on N vCPUs, one thread each, under the
//! host-driven protocol of the `kvm` and `hvf` backends
//! (src/backend/kvm/smp.rs, src/backend/hvf/vmm/smp.rs, docs/guest-stub.md
//! "Several CPUs"), and its events are compared per op and per CPU, as the
//! oracle does (docs/scenario-format.md "Several CPUs"). The lowering
//! (layout, tables, expected lines) is here and the C side common to both
//! (per-CPU blocks, mailboxes, settling test, merged logs) is `c_smp.c`;
//! each VMM's thread and exit handling is its own (`c_kvm_smp_main.c`,
//! `c_hvf_smp_main.c`).

use std::fmt::Write;

use super::c::{c_bytes, c_string, event_body, outcome_line, Target};
use crate::guest::layout::*;
use crate::guest::{table, Image, VMM_ASSISTED_SIPI_PAGE};
use crate::scenario::{ApStart, ApicMode, Scenario};
use crate::trace::Trace;

/// Why a multi-CPU scenario cannot be a C repro for `target`, as the
/// backend refuses it: KVM's x2APIC ID is the vCPU id, so two CPUs cannot
/// share one (`backend::kvm::smp::unsupported`); Hypervisor.framework's
/// in-kernel APIC ID is the vCPU ID, given in creation order and read-only,
/// so the APIC IDs must be the CPU indexes (`HvfVmm::unsupported`).
pub fn unsupported(target: Target, scenario: &Scenario) -> Option<&'static str> {
    match target {
        Target::Kvm => (aliased(scenario) && scenario.config.apic == ApicMode::X2apic).then_some(
            "KVM's x2APIC ID is the vCPU id: two CPUs cannot share an x2APIC ID (apic-ids repeats one)",
        ),
        Target::Hvf => (!scenario.config.default_apic_ids()).then_some(
            "the in-kernel APIC's ID is the vCPU ID (given in creation order, read-only): apic-ids other than the CPU indexes cannot be given to Hypervisor.framework",
        ),
    }
}

fn apic_ids(scenario: &Scenario) -> Vec<u32> {
    (0..scenario.cpus())
        .map(|cpu| u32::from(scenario.config.apic_id(cpu)))
        .collect()
}

fn aliased(scenario: &Scenario) -> bool {
    let ids = apic_ids(scenario);
    ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id))
}

/// The vCPU ids, as the `kvm` backend chooses them: the APIC IDs, or the
/// CPU indexes when xAPIC IDs are aliased (then written into each ID
/// register).
fn vcpu_ids(scenario: &Scenario) -> Vec<u32> {
    if aliased(scenario) {
        (0..scenario.cpus() as u32).collect()
    } else {
        apic_ids(scenario)
    }
}

/// Whether the events' CPUs are compared: not in a scenario with a
/// lowest-priority message, whose target is model-specific (SDM vol. 3A
/// §11.6.2.4; `oracle::canonical`).
fn cpus_compared(scenario: &Scenario) -> bool {
    !crate::oracle::has_lowest_priority(scenario)
}

/// One line per event of a multi-CPU trace, in the order the C program
/// prints them: by op, then by CPU (each CPU's events in the order it
/// observed them), each tagged `[cpu K]`; where the CPUs are not compared,
/// untagged and sorted within each op. The outcome last.
pub fn event_lines(scenario: &Scenario, trace: &Trace) -> Vec<String> {
    let tagged = cpus_compared(scenario);
    let mut events: Vec<(usize, u8, String)> = trace
        .events
        .iter()
        .map(|e| (e.op, if tagged { e.cpu } else { 0 }, event_body(e)))
        .collect();
    if tagged {
        events.sort_by_key(|(op, cpu, _)| (*op, *cpu));
    } else {
        events.sort();
    }
    let mut lines: Vec<String> = events
        .into_iter()
        .map(|(op, cpu, body)| {
            if tagged {
                format!("op {op} [cpu {cpu}] {body}")
            } else {
                format!("op {op} {body}")
            }
        })
        .collect();
    lines.push(outcome_line(trace));
    lines
}

/// Most settling rounds after one op, as `backend::kvm::smp` bounds them.
const MAX_SETTLE_ROUNDS: usize = 4 * crate::trace::STORM_LIMIT + 8;

/// The C declarations of the multi-CPU program: the per-CPU layout, the
/// CPUs and their IDs, the per-CPU handler tables and the op-to-CPU table.
pub fn declarations(
    target: Target,
    scenario: &Scenario,
    t: &table::Table,
    image: &Image,
) -> String {
    let mut c = String::from("#include <pthread.h>\n");
    c += "/* Several CPUs (docs/guest-stub.md \"Several CPUs\", src/guest/layout.rs). */\n";
    for (name, value) in [
        ("SIPI_PAGE", SIPI_PAGE),
        ("AP_BLOCKS", AP_BLOCKS),
        ("AP_STRIDE", AP_STRIDE),
        ("AP_STACK_TOP", AP_STACK_TOP),
        ("AP_LOG", AP_LOG),
        ("LOG_END", LOG_END),
        ("SMP_FLAG", SMP),
        ("CPUS_VAR", CPUS),
        ("PCPU_X2APIC", PCPU_X2APIC),
        ("PCPU_LOG_PTR", PCPU_LOG_PTR),
        ("PCPU_GP_FAULTED", PCPU_GP_FAULTED),
        ("PCPU_INDEX", PCPU_INDEX),
        ("PCPU_MAILBOX", PCPU_MAILBOX),
        ("PCPU_OPS_DONE", PCPU_OPS_DONE),
        ("PCPU_COUNTS", PCPU_COUNTS),
        ("PCPU_BODY_DIR", PCPU_BODY_DIR),
        ("PCPU_NTH_TABLE", PCPU_NTH_TABLE),
    ] {
        let _ = writeln!(c, "#define {name} 0x{value:x}ULL");
    }
    for (name, port) in [
        ("AP_START_PORT", AP_START_PORT),
        ("IDLE_PORT", IDLE_PORT),
        ("PING_PORT", PING_PORT),
    ] {
        let _ = writeln!(c, "#define {name} 0x{port:x}");
    }
    let cpus = scenario.cpus();
    let _ = writeln!(c, "#define N_CPUS {cpus}");
    let _ = writeln!(c, "#define MAX_SETTLE_ROUNDS {MAX_SETTLE_ROUNDS}");
    let list = |ids: Vec<u32>| {
        ids.iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if target == Target::Kvm {
        c += "/* KVM's vCPU ids (its x2APIC IDs) and the scenario's APIC IDs, by CPU. */\n";
        let _ = writeln!(
            c,
            "static const unsigned VCPU_IDS[N_CPUS] = {{{}}};",
            list(vcpu_ids(scenario))
        );
        let _ = writeln!(
            c,
            "static const unsigned APIC_IDS[N_CPUS] = {{{}}};",
            list(apic_ids(scenario))
        );
        let _ = writeln!(
            c,
            "static const int ALIASED = {};",
            u8::from(aliased(scenario))
        );
    }
    let _ = writeln!(
        c,
        "static const int AP_START_SIPI = {};",
        u8::from(scenario.config.ap_start == ApStart::Sipi)
    );
    let _ = writeln!(
        c,
        "/* 0: a lowest-priority message may reach any CPU (SDM §11.6.2.4), so the\n * events' CPUs are not compared. */\nstatic const int CPUS_COMPARED = {};",
        u8::from(cpus_compared(scenario))
    );
    let _ = writeln!(
        c,
        "static const unsigned long long AP_ENTRY = 0x{:x}ULL, SIPI_ENTRY = 0x{:x}ULL;",
        image.stub.ap_entry, image.stub.sipi_entry
    );
    c_bytes(&mut c, "SIPI_PAGE_CODE", &VMM_ASSISTED_SIPI_PAGE);
    let mut dirs = vec!["0".to_string()];
    let mut nths = vec!["0".to_string()];
    let mut sizes = vec!["0".to_string()];
    for (i, (body_dir, nth)) in t.ap_tables.iter().enumerate() {
        let cpu = i + 1;
        c_bytes(&mut c, &format!("AP_BODY_DIR_{cpu}"), body_dir);
        c_bytes(&mut c, &format!("AP_NTH_{cpu}"), nth);
        dirs.push(format!("AP_BODY_DIR_{cpu}"));
        nths.push(format!("AP_NTH_{cpu}"));
        sizes.push(format!("{{sizeof AP_BODY_DIR_{cpu}, sizeof AP_NTH_{cpu}}}"));
    }
    while dirs.len() < cpus {
        dirs.push("0".into());
        nths.push("0".into());
    }
    sizes[0] = "{0, 0}".into();
    while sizes.len() < cpus {
        sizes.push("{0, 0}".into());
    }
    let _ = writeln!(
        c,
        "/* CPU K's handler tables (K >= 1; CPU 0's are BODY_DIR_TABLE and NTH_TABLE_BYTES). */\n\
         static const unsigned char *const AP_BODY_DIRS[N_CPUS] = {{{}}};\n\
         static const unsigned char *const AP_NTHS[N_CPUS] = {{{}}};\n\
         static const unsigned long AP_TABLE_SIZES[N_CPUS][2] = {{{}}};",
        dirs.join(", "),
        nths.join(", "),
        sizes.join(", ")
    );
    let ops = scenario.ops.len();
    let _ = writeln!(c, "#define N_OPS {ops}");
    let _ = writeln!(
        c,
        "/* The CPU and the keyword of each top-level op. */\nstatic const int OP_CPU[{}] = {{{}}};",
        ops.max(1),
        if ops == 0 {
            "0".into()
        } else {
            (0..ops)
                .map(|k| scenario.cpu_of(k).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        c,
        "static const char *const OP_KEYWORD[{}] = {{{}}};",
        ops.max(1),
        if ops == 0 {
            "\"\"".into()
        } else {
            scenario
                .ops
                .iter()
                .map(|op| c_string(op.keyword()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    c
}
