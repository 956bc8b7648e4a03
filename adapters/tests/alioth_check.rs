//! The harness against alioth's IoApic: it must find the bugs, each
//! under its exact rule (docs/byo-alioth-ioapic.md).
#![cfg(target_os = "linux")]

use irqdiff_adapters::alioth::AliothIoapic;
use irqdiff_check::{check_ioapic_with, Config};
use irqdiff_model::Rule;

#[test]
fn the_harness_finds_alioths_unmasked_reset_entries() {
    let config = Config {
        cases: 2000,
        persist: false,
    };
    let failure = check_ioapic_with(&config, None, AliothIoapic::new)
        .expect_err("alioth's IoApic diverges");
    eprintln!("{failure}");
    assert!(
        [Rule::IoapicResetMasked, Rule::IoapicReadOnlyBits].contains(&failure.rule),
        "{failure}"
    );
}
