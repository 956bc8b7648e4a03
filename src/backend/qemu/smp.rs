//! Several CPUs under QEMU (`-smp`): which topology gives a scenario's
//! APIC IDs, and the table the APs' trampoline finds its CPU index in.
//!
//! QEMU gives each CPU its initial APIC ID from the `-smp` topology
//! (`include/hw/i386/topology.h`: `x86_topo_ids_from_idx` splits CPU index
//! `i` into thread, core and package; `x86_apicid_from_topo_ids` packs them
//! into fields of `ceil(log2(count))` bits each), and `-device` cannot
//! change it: `x86_cpu_pre_plug` (`hw/i386/x86-common.c`) accepts an
//! `apic-id` only if it is one of the topology's. The x2APIC ID is always
//! that initial ID (`hw/intc/apic.c`, `apic_register_read`: case 0x02 reads
//! `initial_apic_id` in x2APIC mode, a write faults). So a scenario's
//! `apic-ids` run under QEMU when some topology yields exactly them, CPU
//! index order (CPU index `i` is `possible_cpus[i]`, built from index `i` by
//! `x86_possible_cpu_arch_ids`); otherwise the scenario is refused.

use std::fmt;

use crate::model::lapic::reg;
use crate::scenario::{ApStart, ApicMode, Op, Scenario, MAX_CPUS};

/// A `-smp` topology: sockets x cores x threads CPUs (one die, one module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Topology {
    pub sockets: u8,
    pub cores: u8,
    pub threads: u8,
}

/// Bits QEMU gives a topology level of `count` items: `apicid_bitwidth_for_count`.
fn width(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::from(count - 1).ilog2() + 1
    }
}

impl Topology {
    /// One CPU.
    pub const ONE: Topology = Topology {
        sockets: 1,
        cores: 1,
        threads: 1,
    };

    pub fn cpus(&self) -> usize {
        self.sockets as usize * self.cores as usize * self.threads as usize
    }

    /// The initial APIC ID QEMU gives CPU index `i`.
    pub fn apic_id(&self, i: usize) -> u32 {
        let (threads, cores) = (self.threads as usize, self.cores as usize);
        let thread = i % threads;
        let core = i / threads % cores;
        let package = i / (threads * cores);
        let core_offset = width(self.threads);
        let package_offset = core_offset + width(self.cores);
        ((package << package_offset) | (core << core_offset) | thread) as u32
    }

    /// The initial APIC IDs of all CPUs, in index order.
    pub fn apic_ids(&self) -> Vec<u32> {
        (0..self.cpus()).map(|i| self.apic_id(i)).collect()
    }

    /// `-smp`'s argument.
    pub fn smp_arg(&self) -> String {
        format!(
            "{},sockets={},cores={},threads={}",
            self.cpus(),
            self.sockets,
            self.cores,
            self.threads
        )
    }

    /// The topology whose APIC IDs are `ids` (CPU index order): one socket
    /// of cores when the IDs are the indexes; otherwise the first of the
    /// factorisations sockets x cores x threads (fewest threads first: the
    /// `qemu64` model is an AMD one, which warns about threads) that
    /// yields them.
    pub fn for_ids(ids: &[u8]) -> Result<Topology, Refusal> {
        let n = ids.len();
        if n == 0 || n > u8::MAX as usize {
            return Err(Refusal::Count(n));
        }
        let n8 = n as u8;
        let mut found = None;
        'search: for threads in (1..=n8).filter(|t| n8 % t == 0) {
            for cores in (1..=n8 / threads).filter(|c| (n8 / threads) % c == 0) {
                let sockets = n8 / threads / cores;
                // One socket of cores first: what `-smp N` gives.
                let t = Topology {
                    sockets,
                    cores,
                    threads,
                };
                if t.apic_ids()
                    .iter()
                    .zip(ids)
                    .all(|(&a, &b)| a == u32::from(b))
                {
                    found = Some(t);
                    break 'search;
                }
            }
        }
        // The loop tries sockets = n first (cores = 1); prefer one socket
        // of n cores when both give the same IDs (the index IDs).
        match found {
            Some(t) if t.threads == 1 && t.apic_ids() == Topology::cores(n8).apic_ids() => {
                Ok(Topology::cores(n8))
            }
            Some(t) => Ok(t),
            None => Err(Refusal::NoTopology(ids.to_vec())),
        }
    }

    /// One socket of `n` cores.
    pub fn cores(n: u8) -> Topology {
        Topology {
            sockets: 1,
            cores: n,
            threads: 1,
        }
    }
}

/// How a scenario's CPUs get their APIC IDs under QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `-smp`.
    pub topology: Topology,
    /// The xAPIC ID each CPU writes to its ID register before the stub
    /// starts (the scenario's `apic-ids`; where the topology gives them,
    /// the write changes nothing).
    pub ids: [u8; MAX_CPUS],
    /// Whether the IDs differ from the topology's, so that the writes
    /// matter.
    pub written: bool,
}

impl Plan {
    /// The plan for `scenario`: the topology that gives its IDs; else, in
    /// xAPIC mode, the index topology with the IDs written to the ID
    /// registers. QEMU's xAPIC ID register is writable (`hw/intc/apic.c`,
    /// `apic_register_write` case 0x02: `s->id = val >> 24`) and physical
    /// destinations match that ID on every APIC (`apic_find_dest` sets
    /// each match, so aliased IDs all accept); the CPU's index still comes
    /// from its initial APIC ID (CPUID), which the write leaves alone. This
    /// needs the APs started by the loader (`ap-start=host`: one waiting
    /// for the scenario's SIPI cannot write), xAPIC mode throughout (an
    /// x2APIC ID is the initial one and cannot be written: no
    /// `apic=x2apic`, no IA32_APIC_BASE write), and no `lapic-write` of the
    /// ID register (it would undo the plan's ID mid-run, where the model's
    /// ID stays the configured one).
    pub fn of(scenario: &Scenario) -> Result<Plan, Refusal> {
        let c = &scenario.config;
        let n = scenario.cpus();
        let ids = &c.apic_ids[..n];
        let mut plan_ids = crate::scenario::INDEX_APIC_IDS;
        plan_ids[..n].copy_from_slice(ids);
        let topology = match Topology::for_ids(ids) {
            Ok(topology) => {
                return Ok(Plan {
                    topology,
                    ids: plan_ids,
                    written: false,
                })
            }
            Err(Refusal::NoTopology(_)) => Topology::cores(n as u8),
            Err(e) => return Err(e),
        };
        let why = if c.apic == ApicMode::X2apic {
            Some("x2APIC IDs are the initial ones (the ID MSR is read-only)")
        } else if c.ap_start != ApStart::Host {
            Some("the APs wait for the scenario's SIPI, so they cannot write their IDs first")
        } else if scenario.all_ops().any(|op| matches!(op, Op::ApicBase(_))) {
            Some("an IA32_APIC_BASE write may enter x2APIC mode, where the IDs are the initial ones")
        } else if scenario.all_ops().any(|op| {
            matches!(op, Op::LapicWrite { offset, .. } | Op::LapicMmioWrite { offset, .. } if *offset == reg::ID)
        }) {
            Some("the scenario writes the ID register itself")
        } else {
            None
        };
        match why {
            None => Ok(Plan {
                topology,
                ids: plan_ids,
                written: true,
            }),
            Some(why) => Err(Refusal::Unwritable(ids.to_vec(), why)),
        }
    }
}

/// Why QEMU cannot give a scenario its APIC IDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Count(usize),
    NoTopology(Vec<u8>),
    /// No topology gives the IDs, and they cannot be written: why.
    Unwritable(Vec<u8>, &'static str),
}

fn list(ids: &[u8]) -> String {
    ids.iter()
        .map(|i| format!("{i:#x}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Count(n) => write!(f, "{n} CPUs: QEMU's -smp is run with 1 to 255"),
            Refusal::NoTopology(ids) => write!(
                f,
                "apic-ids={}: QEMU derives each CPU's initial APIC ID from the -smp topology \
                 (sockets, cores, threads; hw/i386/x86-common.c accepts no other apic-id), and no \
                 topology of {} CPUs gives these IDs in CPU order (aliased or decreasing IDs never do)",
                list(ids),
                ids.len()
            ),
            Refusal::Unwritable(ids, why) => write!(
                f,
                "apic-ids={}: no -smp topology gives these initial APIC IDs (QEMU derives them from \
                 sockets, cores and threads), and the xAPIC ID registers cannot be set instead: {why}",
                list(ids)
            ),
        }
    }
}

/// Which CPUs run (are not waiting for a SIPI) at the first op and after
/// each top-level op, as bitmasks: what QEMU's in-guest driver waits on
/// when it settles an op, and where it may post one. No VMM sees an INIT
/// or SIPI land under TCG, so the host works them out from the program:
/// each `ipi init` or `ipi startup` must name its targets by a shorthand
/// or a physical destination (the plan's IDs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub initial: u8,
    pub after: Vec<u8>,
}

fn is_nmi_op(op: &Op) -> bool {
    use crate::scenario::{DeliveryMode, HostOp, IpiDelivery, MsiDelivery};
    match op {
        Op::Ipi(ipi) => ipi.delivery == IpiDelivery::Nmi,
        Op::Host(HostOp::Msi(m)) => m.delivery == MsiDelivery::Nmi,
        Op::Route { route, .. } => route.delivery == DeliveryMode::Nmi,
        Op::LapicWrite { offset, value } | Op::LapicMmioWrite { offset, value } => {
            (*offset == reg::ICR_LOW || (reg::LVT_TIMER..=reg::LVT_ERROR).contains(offset))
                && (value >> 8) & 7 == 4
        }
        _ => false,
    }
}

impl Running {
    /// The masks of `scenario` under `plan`, or why they cannot be known
    /// (or why QEMU cannot run the INIT).
    pub fn of(scenario: &Scenario, plan: &Plan) -> Result<Running, String> {
        use crate::scenario::{DestMode, IpiDelivery, Shorthand};
        let n = scenario.cpus();
        let all: u8 = if n >= 8 { 0xff } else { (1u8 << n) - 1 };
        let initial = if scenario.config.ap_start == ApStart::Host {
            all
        } else {
            1
        };
        let x2apic = scenario.config.apic == ApicMode::X2apic;
        let targets = |ipi: &crate::scenario::Ipi, cpu: usize| -> Result<u8, String> {
            Ok(match ipi.shorthand {
                Shorthand::SelfOnly => 1 << cpu,
                Shorthand::All => all,
                Shorthand::AllButSelf => all & !(1 << cpu),
                Shorthand::None if ipi.dest_mode == DestMode::Logical => {
                    return Err(format!(
                        "ipi {:?} with a logical destination: QEMU's in-guest driver must know \
                         which CPUs it stops or starts, and a logical match depends on LDR/DFR at \
                         run time (use a shorthand or a physical destination)",
                        ipi.delivery
                    ))
                }
                Shorthand::None
                    if (!x2apic && ipi.dest == 0xff) || (x2apic && ipi.dest == u32::MAX) =>
                {
                    all
                }
                Shorthand::None => (0..n)
                    .filter(|&k| u32::from(plan.ids[k]) == ipi.dest)
                    .fold(0, |m, k| m | 1 << k),
            })
        };
        let sends = |op: &Op| matches!(op, Op::Ipi(i) if matches!(i.delivery, IpiDelivery::Init | IpiDelivery::Startup));
        if scenario.handlers.values().flatten().any(sends) {
            return Err(
                "an INIT or STARTUP IPI in a handler body: QEMU's in-guest driver works out \
                        from the program which CPUs wait for a SIPI, and a handler's CPU is known \
                        only at run time"
                    .into(),
            );
        }
        let ever_waiting = initial != all || scenario.ops.iter().any(sends);
        if ever_waiting && scenario.handlers.values().flatten().any(is_nmi_op) {
            return Err(NMI_TO_WAITING.into());
        }
        let mut mask = initial;
        let mut after = Vec::with_capacity(scenario.ops.len());
        for (k, op) in scenario.ops.iter().enumerate() {
            let cpu = scenario.cpu_of(k) as usize;
            if ever_waiting && is_nmi_op(op) {
                let reach = match op {
                    Op::Ipi(ipi) => targets(ipi, cpu).unwrap_or(all),
                    _ => all,
                };
                if reach & !mask != 0 {
                    return Err(format!("op {k}: {NMI_TO_WAITING}"));
                }
            }
            if let Op::Ipi(ipi) = op {
                match ipi.delivery {
                    IpiDelivery::Init => {
                        let t = targets(ipi, cpu)?;
                        if t & 1 != 0 {
                            return Err(format!(
                                "op {k}: an INIT that reaches CPU 0: QEMU restarts the bootstrap \
                                 processor at the reset vector (apic_init_reset: only APs wait \
                                 for a SIPI), which would restart the batch's loader"
                            ));
                        }
                        if t & 1 << cpu != 0 {
                            return Err(format!(
                                "op {k}: an INIT that reaches the CPU sending it (the model ends \
                                 the run with an error; QEMU's CPU would stop mid-op)"
                            ));
                        }
                        mask &= !t;
                    }
                    IpiDelivery::Startup => mask |= targets(ipi, cpu)?,
                    _ => {}
                }
            }
            after.push(mask);
        }
        Ok(Running { initial, after })
    }
}

const NMI_TO_WAITING: &str = "an NMI that may reach a CPU waiting for a SIPI: QEMU's TCG un-halts \
     such a CPU on an NMI (x86_cpu_has_work counts it) and it runs from its reset state, where the \
     model's waiting CPU takes nothing";

/// The 256-byte table the APs' trampoline reads: entry `id` is the CPU
/// index of the CPU whose initial APIC ID is `id`, 0xff for none.
pub fn index_table(topology: &Topology) -> [u8; 256] {
    let mut table = [0xffu8; 256];
    for (i, id) in topology.apic_ids().into_iter().enumerate() {
        if let Some(slot) = table.get_mut(id as usize) {
            *slot = i as u8;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_ids_are_one_socket_of_cores() {
        for n in 1..=8u8 {
            let ids: Vec<u8> = (0..n).collect();
            let t = Topology::for_ids(&ids).unwrap();
            assert_eq!(t, Topology::cores(n), "{n} CPUs");
            assert_eq!(t.smp_arg(), format!("{n},sockets=1,cores={n},threads=1"));
        }
    }

    /// `x86_apicid_from_topo_ids`: 2 sockets of 3 cores leave a hole (core
    /// field 2 bits wide), so package 1 starts at 4.
    #[test]
    fn two_sockets_of_three_cores_skip_id_3() {
        let t = Topology {
            sockets: 2,
            cores: 3,
            threads: 1,
        };
        assert_eq!(t.apic_ids(), [0, 1, 2, 4, 5, 6]);
        assert_eq!(Topology::for_ids(&[0, 1, 2, 4, 5, 6]), Ok(t));
        let t = Topology {
            sockets: 2,
            cores: 1,
            threads: 3,
        };
        assert_eq!(t.apic_ids(), [0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn sparse_ids_by_sockets() {
        // 3 sockets of one core: IDs 0, 1, 2 as well; 2 sockets x 2 cores: 0-3.
        assert_eq!(
            Topology::for_ids(&[0, 2]),
            Err(Refusal::NoTopology(vec![0, 2]))
        );
        // Four CPUs in power-of-two fields are always contiguous.
        assert!(Topology::for_ids(&[0, 1, 4, 5]).is_err());
    }

    #[test]
    fn aliased_or_offset_ids_are_refused_with_the_reason() {
        let e = Topology::for_ids(&[0, 0]).unwrap_err();
        assert_eq!(e, Refusal::NoTopology(vec![0, 0]));
        assert!(e.to_string().starts_with("apic-ids=0x0,0x0: QEMU derives"));
        assert!(Topology::for_ids(&[0x10, 0x11]).is_err());
        assert!(Topology::for_ids(&[1, 0]).is_err());
    }

    fn scenario(text: &str) -> Scenario {
        crate::scenario::parse(text).unwrap()
    }

    #[test]
    fn a_plan_writes_xapic_ids_no_topology_gives() {
        let p = Plan::of(&scenario("config cpus=2 apic-ids=0,0\nnop\n")).unwrap();
        assert_eq!(p.topology, Topology::cores(2));
        assert_eq!(&p.ids[..2], &[0, 0]);
        assert!(p.written);
        let p = Plan::of(&scenario("config cpus=3\nnop\n")).unwrap();
        assert_eq!((p.topology, p.written), (Topology::cores(3), false));
        assert_eq!(&p.ids[..3], &[0, 1, 2]);
    }

    #[test]
    fn a_plan_refuses_ids_it_cannot_write_with_the_reason() {
        for (text, why) in [
            (
                "config apic=x2apic cpus=2 apic-ids=0x10,0x11\nnop\n",
                "read-only",
            ),
            (
                "config cpus=2 apic-ids=0,0 ap-start=sipi\nnop\n",
                "wait for the scenario's SIPI",
            ),
            (
                "config cpus=2 apic-ids=1,0\napic-base 0xfee00900\n",
                "IA32_APIC_BASE",
            ),
            (
                "config cpus=2 apic-ids=1,0\nlapic-write 0x020 0\n",
                "writes the ID register",
            ),
        ] {
            let e = Plan::of(&scenario(text)).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("no -smp topology gives"), "{e}");
        }
    }

    #[test]
    fn running_masks_follow_init_and_startup() {
        let s = scenario(
            "config cpus=3 ap-start=sipi\nipi vector=0x20 dest=1\nipi init all-but-self\n\
             ipi startup dest=2\nipi startup all-but-self\nipi init dest=1\n",
        );
        let plan = Plan::of(&s).unwrap();
        let r = Running::of(&s, &plan).unwrap();
        assert_eq!(r.initial, 0b001);
        assert_eq!(r.after, [0b001, 0b001, 0b101, 0b111, 0b101]);
        let host = scenario("config cpus=2\nnop\n");
        let r = Running::of(&host, &Plan::of(&host).unwrap()).unwrap();
        assert_eq!((r.initial, r.after), (0b11, vec![0b11]));
    }

    #[test]
    fn running_masks_refuse_what_qemu_cannot_follow() {
        for (text, why) in [
            ("config cpus=2\nipi init all\n", "reaches CPU 0"),
            ("config cpus=2\nipi init dest=0\n", "reaches CPU 0"),
            (
                "config cpus=2\ncpu 1: ipi init self\n",
                "the CPU sending it",
            ),
            (
                "config cpus=2\nipi init logical dest=2\n",
                "logical destination",
            ),
            (
                "config cpus=2\nhandler 0x40: ipi startup all-but-self\nnop\n",
                "handler body",
            ),
            (
                "config cpus=2 ap-start=sipi\nipi nmi dest=1\n",
                "NMI that may reach",
            ),
            (
                "config cpus=2 ap-start=sipi\nhandler 0x40: ipi nmi all\nnop\n",
                "NMI that may reach",
            ),
        ] {
            let s = scenario(text);
            let e = Running::of(&s, &Plan::of(&s).unwrap()).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        // An NMI to a running CPU of an ap-start=sipi scenario runs.
        let s = scenario(
            "config cpus=2 ap-start=sipi\nipi nmi dest=0\nipi startup dest=1\nipi nmi dest=1\n",
        );
        assert!(Running::of(&s, &Plan::of(&s).unwrap()).is_ok());
    }

    #[test]
    fn the_index_table_maps_ids_back() {
        let t = Topology {
            sockets: 2,
            cores: 3,
            threads: 1,
        };
        let table = index_table(&t);
        assert_eq!(&table[..8], &[0, 1, 2, 0xff, 3, 4, 5, 0xff]);
        assert!(table[8..].iter().all(|&b| b == 0xff));
    }
}
