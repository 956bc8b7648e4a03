//! `sim:QUIRKS`: the model with named deviations switched on.
//!
//! Each quirk reproduces a known real-world bug (see `irqdiff_model::quirks`
//! for the citations), so the fuzzer's power to find, minimise and report a
//! bug can be measured on bugs whose answer we know. `QUIRKS` is `none`, a
//! profile name, or a comma-separated list of quirk names in kebab case
//! (`sim:level-unmask-no-deliver,split-eoi-lost`). A part of the form
//! `rule/mode` switches on that deviation of the model
//! ([`crate::model::Deviation`], e.g. `sim:held-by-ppr/late`): how the
//! real-bug benchmark re-inserts a bug's shape.

use super::model::ModelBackend;
use super::{Availability, Backend, BackendKind, OpenError, Result};
use crate::model::quirks::Quirks;
use crate::scenario::Scenario;
use crate::trace::Trace;

/// Named sets of quirks.
pub const PROFILES: &[(&str, Quirks, &str)] = &[
    (
        "hvf-known",
        Quirks::LEVEL_UNMASK_NO_DELIVER
            .union(Quirks::LEVEL_EOI_NO_REDELIVER)
            .union(Quirks::LEVEL_COALESCE_REDELIVER)
            .union(Quirks::SPLIT_EOI_LOST)
            .union(Quirks::APIC_BASE_MOVE_AND_ENABLE_FAILS),
        "the HVF bugs of the seed report (FB14425412, FB14425590, FB14021745)",
    ),
    (
        "qemu",
        Quirks::QEMU_IOAPIC.union(Quirks::QEMU_LAPIC),
        "QEMU's emulated IOAPIC and local APIC as measured under TCG (docs/known-divergences.md)",
    ),
];

pub const KIND: BackendKind = BackendKind {
    name: "sim:QUIRKS",
    description: "the model with named bugs switched on (sim:hvf-known, sim:none, sim:QUIRK,QUIRK)",
    takes_options: true,
    probe: || Availability::Available,
    open: |_, spec| Ok(Box::new(SimBackend::open(spec)?)),
};

pub struct SimBackend {
    name: String,
    model: ModelBackend,
}

impl SimBackend {
    /// Opens `sim:SPEC`; `spec` is the part after the colon.
    pub fn open(spec: &str) -> std::result::Result<SimBackend, OpenError> {
        let (quirks, deviations) = parse_spec(spec).map_err(|why| OpenError::Invalid {
            name: format!("sim:{spec}"),
            why,
        })?;
        Ok(SimBackend {
            name: format!("sim:{spec}"),
            model: ModelBackend::with_quirks_and_deviations(
                quirks,
                crate::model::Deviations::of(&deviations),
            ),
        })
    }
}

/// The kebab-case name of a quirk flag (`LEVEL_EOI_NO_REDELIVER` → `level-eoi-no-redeliver`).
pub fn kebab(flag: &str) -> String {
    flag.to_ascii_lowercase().replace('_', "-")
}

/// Every quirk name and profile, for help texts and errors.
pub fn known_names() -> Vec<String> {
    let mut names: Vec<String> = vec!["none".into()];
    names.extend(PROFILES.iter().map(|(n, _, _)| n.to_string()));
    names.extend(Quirks::all().iter_names().map(|(n, _)| kebab(n)));
    names
}

/// A `sim:` spec: its quirks and the deviations its `rule/mode` parts name.
pub fn parse_spec(
    spec: &str,
) -> std::result::Result<(Quirks, Vec<crate::model::Deviation>), String> {
    let mut deviations = Vec::new();
    let mut rest = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if part.contains('/') {
            let d = crate::model::Deviation::parse(part)
                .filter(|d| d.description().is_some())
                .ok_or_else(|| {
                    format!(
                        "unknown deviation `{part}`; known: {}",
                        crate::model::Deviation::library()
                            .iter()
                            .map(|d| d.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            deviations.push(d);
        } else {
            rest.push(part);
        }
    }
    let quirks = if rest.is_empty() {
        Quirks::empty()
    } else {
        parse_quirks(&rest.join(","))?
    };
    Ok((quirks, deviations))
}

pub fn parse_quirks(spec: &str) -> std::result::Result<Quirks, String> {
    if spec.trim().is_empty() {
        return Err(format!(
            "no quirks named; use one of: {}",
            known_names().join(", ")
        ));
    }
    let mut quirks = Quirks::empty();
    for part in spec.split(',').map(str::trim) {
        if part == "none" {
            continue;
        }
        if let Some((_, q, _)) = PROFILES.iter().find(|(n, _, _)| *n == part) {
            quirks |= *q;
            continue;
        }
        let flag = part.to_ascii_uppercase().replace('-', "_");
        match Quirks::from_name(&flag) {
            Some(q) => quirks |= q,
            None => {
                return Err(format!(
                    "unknown quirk `{part}`; known: {}",
                    known_names().join(", ")
                ))
            }
        }
    }
    Ok(quirks)
}

impl Backend for SimBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_cpus(&self) -> usize {
        self.model.max_cpus()
    }

    fn execute(&mut self, scenario: &Scenario) -> Result<Trace> {
        let mut trace = self.model.execute(scenario)?;
        trace.backend = self.name.clone().into();
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_and_names_parse() {
        assert_eq!(parse_quirks("none").unwrap(), Quirks::empty());
        assert_eq!(parse_quirks("hvf-known").unwrap(), PROFILES[0].1);
        assert_eq!(
            parse_quirks("level-unmask-no-deliver,split-eoi-lost").unwrap(),
            Quirks::LEVEL_UNMASK_NO_DELIVER | Quirks::SPLIT_EOI_LOST
        );
    }

    #[test]
    fn deviations_are_named_by_rule_and_mode() {
        use crate::model::{Deviation, Mode, Rule};
        assert_eq!(
            parse_spec("held-by-ppr/late,split-eoi-lost").unwrap(),
            (
                Quirks::SPLIT_EOI_LOST,
                vec![Deviation::new(Rule::HeldByPpr, Mode::Late)]
            )
        );
        let e = parse_spec("held-by-ppr/sideways").unwrap_err();
        assert!(
            e.starts_with("unknown deviation `held-by-ppr/sideways`"),
            "{e}"
        );
        // A rule in a mode the model has no hook for is refused too.
        assert!(parse_spec("sti-shadow/late").is_err());
    }

    fn run(backend: &str, text: &str) -> Trace {
        let scenario = crate::scenario::parse(text).unwrap();
        crate::backend::open(backend)
            .unwrap()
            .run_to_trace(&scenario)
    }

    fn deliveries(t: &Trace) -> Vec<(usize, u8)> {
        t.deliveries().collect()
    }

    #[test]
    fn apic_base_late_keeps_the_state_of_a_disabled_apic() {
        // SDM §11.4.3: disabled and enabled again, the APIC is in its
        // power-up state (TPR 0); KVM keeps it until an INIT.
        let text = "tpr 0x30\napic-base 0xfee00000\napic-base 0xfee00800\nsnapshot\n";
        let tpr = |t: &Trace| {
            t.events.iter().find_map(|e| match &e.kind {
                crate::trace::EventKind::Snapshot(s) => Some(s.tpr),
                _ => None,
            })
        };
        assert_eq!(tpr(&run("model", text)), Some(0));
        assert_eq!(tpr(&run("sim:apic-base-transition/late", text)), Some(0x30));
    }

    #[test]
    fn suppression_inverted_advertises_bit_24_of_the_version_register() {
        let text = "lapic-read 0x030\n";
        let version = |t: &Trace| {
            t.events.iter().find_map(|e| match &e.kind {
                crate::trace::EventKind::Read { value, .. } => Some(*value),
                _ => None,
            })
        };
        assert_eq!(version(&run("model", text)), Some(0x50014));
        assert_eq!(
            version(&run("sim:eoi-broadcast-suppressed/inverted", text)),
            Some(0x0105_0014)
        );
    }

    #[test]
    fn late_dispatch_wakes_a_hlt_with_one_interrupt_and_split_ioapic_accesses_exit() {
        let stale = "sim:accepted-into-irr/inverted,dispatch-above-ppr/late";
        // The stale IRR vector wakes the HLT once, then waits for the MSI's exit.
        let t = run(
            stale,
            "handler 0x20:\nroute 0 vector=0x20 level\ncli\nassert 0\nsti-hlt\nmsi vector=0x20 logical\n",
        );
        assert_eq!(deliveries(&t), [(3, 0x20), (4, 0x20)]);
        // With the IOAPIC in userspace each of a mask's three accesses
        // (IOREGSEL write, IOWIN read, IOWIN write) is an exit: the stale
        // vector is taken at each, one per entry; with it in the kernel,
        // at none.
        let body = "handler 0x20: mask 1; eoi\nroute 1 vector=0x20 level\nassert 1\nmask 0\n";
        let split = run(stale, &format!("config irqchip=split\n{body}"));
        assert_eq!(
            deliveries(&split),
            [(1, 0x20), (2, 0x20), (2, 0x20), (2, 0x20)]
        );
        assert_eq!(deliveries(&run(stale, body)), [(1, 0x20)]);
    }

    #[test]
    fn unknown_quirk_is_named_in_the_error() {
        let e = parse_quirks("level-unmask,bogus").unwrap_err();
        assert!(e.starts_with("unknown quirk `level-unmask`"), "{e}");
        assert!(e.contains("level-unmask-no-deliver"), "{e}");
    }
}
