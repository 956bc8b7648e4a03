//! The harness against the model's own IOAPIC behind the device trait: it
//! must find nothing.

use irqdiff_check::{check_ioapic_with, Config};

use irqdiff_model::device::ModelIoapic;
use irqdiff_model::IoapicVersion;

#[test]
fn the_models_ioapic_behind_the_trait_finds_nothing() {
    for version in [IoapicVersion::V20, IoapicVersion::V11] {
        let config = Config {
            cases: 3000,
            persist: false,
            seed: None,
        };
        let summary = check_ioapic_with(&config, None, |sink| ModelIoapic::new(version, sink))
            .unwrap_or_else(|f| panic!("{f}"));
        let skipped: u32 = summary.skipped.values().sum();
        assert_eq!(summary.compared + skipped, 3000);
        assert!(summary.compared > 2000, "{summary:?}");
        // Nothing is declared unsupported: only the two skips of the
        // harness itself remain.
        for why in summary.skipped.keys() {
            assert!(
                [irqdiff_check::REFUSED_LEVEL, irqdiff_check::UNMODELLED].contains(why),
                "{why}"
            );
        }
    }
}

#[test]
fn the_two_line_use_runs_and_counts() {
    let summary = irqdiff_check::check_ioapic(|sink| ModelIoapic::new(IoapicVersion::V20, sink));
    assert!(summary.compared > 0);
}

#[test]
fn the_lapic_harness_against_the_models_own_lapic_finds_nothing() {
    let config = Config {
        cases: 3000,
        persist: false,
        seed: None,
    };
    let summary = irqdiff_check::check_lapic_with(&config, None, || {
        irqdiff_model::Lapic::new(false, false, irqdiff_model::Quirks::empty())
    })
    .unwrap_or_else(|f| panic!("{f}"));
    // Nothing declared unsupported: only the harness's own skip remains.
    let skipped: u32 = summary.skipped.values().sum();
    assert_eq!(summary.compared + skipped, 3000);
    assert!(summary.compared > 2500, "{summary:?}");
    assert!(
        summary
            .skipped
            .keys()
            .all(|why| *why == irqdiff_check::RETRIGGERED),
        "{summary:?}"
    );
}
