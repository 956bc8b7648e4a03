//! Properties of the rule catalogue and the deviation library that the
//! tests next to them leave open.

use super::*;

#[test]
fn every_rule_cites_its_own_section() {
    // Each rule names the passage of the SDM vol. 3A, the 82093AA, the
    // 8259A or the ICH datasheet it follows (or, for Quirk, the quirk
    // list): no two rules
    // share a citation, and each cites a document.
    let mut citations: Vec<&str> = Rule::ALL.iter().map(|r| r.citation()).collect();
    for (rule, citation) in Rule::ALL.iter().zip(&citations) {
        assert!(
            ["§", "SDM", "IOAPIC", "8259A", "quirk"]
                .iter()
                .any(|source| citation.contains(source)),
            "{rule:?}: {citation}"
        );
    }
    citations.sort_unstable();
    citations.dedup();
    assert_eq!(citations.len(), Rule::ALL.len());
}

#[test]
fn the_library_is_every_deviation_the_model_has_a_hook_for() {
    // Diagnosis tries exactly these (docs/causes.md): each is a rule broken
    // in one mode at a hook of the model, with a description of what the
    // model then does. A hook without a description would never be tried.
    let names: Vec<String> = Deviation::library().iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        [
            "edge-masked-lost/skipped",
            "edge-no-new-edge/skipped",
            "level-delivers/skipped",
            "level-remote-irr-blocks/late",
            "level-unmask-delivers/skipped",
            "eoi-clears-remote-irr/skipped",
            "eoi-clears-remote-irr/inverted",
            "eoi-redelivers/skipped",
            "edge-retype-clears-remote-irr/skipped",
            "accepted-into-irr/skipped",
            "accepted-into-irr/inverted",
            "accepted-into-irr/late",
            "illegal-vector/skipped",
            "apic-software-disabled/skipped",
            "no-destination-match/inverted",
            "dispatch-above-ppr/skipped",
            "dispatch-above-ppr/late",
            "held-by-ppr/skipped",
            "held-by-ppr/inverted",
            "held-by-ppr/late",
            "eoi-broadcast/skipped",
            "eoi-broadcast/inverted",
            "eoi-broadcast-suppressed/skipped",
            "eoi-broadcast-suppressed/inverted",
            "eoi-edge-not-broadcast/inverted",
            "self-ipi/skipped",
            "apic-base-transition/skipped",
            "apic-base-transition/inverted",
            "apic-base-transition/late",
            "x2apic-msr-gp/skipped",
            "x2apic-msr-gp/inverted",
            "ioapic-reset-masked/skipped",
            "ioapic-read-only-bits/skipped",
            "x2apic-cluster-match/skipped",
            "x2apic-cluster-match/inverted",
            "timer-tsc-deadline/late",
        ]
    );
    for d in Deviation::library() {
        assert!(!d.description().unwrap().is_empty(), "{}", d.name());
    }
    assert_eq!(
        Deviation::new(Rule::Quirk, Mode::Skipped).description(),
        None
    );
}

#[test]
fn a_set_with_a_deviation_is_not_empty() {
    assert!(Deviations::of(&[]).is_empty());
    let d = Deviation::new(Rule::EoiBroadcast, Mode::Skipped);
    assert!(!Deviations::of(&[d]).is_empty());
    assert!(!Deviations::of(&[d]).breaks(Rule::EoiBroadcast, Mode::Late));
}
