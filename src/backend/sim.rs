//! `sim:QUIRKS`: the model with named deviations switched on.
//!
//! Each quirk reproduces a known real-world bug (see `irqdiff_model::quirks`
//! for the citations), so the fuzzer's power to find, minimise and report a
//! bug can be measured on bugs whose answer we know. `QUIRKS` is `none`, a
//! profile name, or a comma-separated list of quirk names in kebab case
//! (`sim:level-unmask-no-deliver,split-eoi-lost`).

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
        let quirks = parse_quirks(spec).map_err(|why| OpenError::Invalid {
            name: format!("sim:{spec}"),
            why,
        })?;
        Ok(SimBackend {
            name: format!("sim:{spec}"),
            model: ModelBackend::with_quirks(quirks),
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
    fn unknown_quirk_is_named_in_the_error() {
        let e = parse_quirks("level-unmask,bogus").unwrap_err();
        assert!(e.starts_with("unknown quirk `level-unmask`"), "{e}");
        assert!(e.contains("level-unmask-no-deliver"), "{e}");
    }
}
