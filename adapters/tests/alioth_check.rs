//! The harness against alioth's IoApic: it finds each bug under its exact
//! rule, one after the other as the previous one is worked around, and
//! nothing once both are (docs/byo-findings.md).
#![cfg(target_os = "linux")]

use irqdiff_adapters::alioth::AliothIoapic;
use irqdiff_check::{check_ioapic_with, Config};
use irqdiff_model::{IoapicDevice, MessageQueue, MsiSink, Rule, Unsupported};

const CASES: Config = Config {
    cases: 3000,
    persist: false,
    seed: Some(14),
};

/// alioth's IoApic with its entries masked first (bug 1 worked around)
/// and, if `read_only`, bits 12 and 14 of a guest write kept as they were
/// (bug 2 worked around).
struct Fixed<S: MsiSink> {
    inner: AliothIoapic<S>,
    read_only: bool,
    select: u32,
}

impl<S: MsiSink> Fixed<S> {
    fn new(sink: S, read_only: bool) -> Fixed<S> {
        let mut inner = AliothIoapic::new(sink);
        for pin in 0..24 {
            inner.mmio_write(0x00, 0x10 + 2 * pin);
            inner.mmio_write(0x10, 1 << 16);
        }
        Fixed {
            inner,
            read_only,
            select: 0,
        }
    }
}

impl<S: MsiSink> IoapicDevice for Fixed<S> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        self.inner.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u64, mut value: u32) {
        if offset == 0x00 {
            self.select = value & 0xff;
        }
        let low = (0x10..0x40).contains(&self.select) && self.select % 2 == 0;
        if offset == 0x10 && low && self.read_only {
            let old = self.inner.mmio_read(0x10);
            value = value & !(1 << 12 | 1 << 14) | old & (1 << 12 | 1 << 14);
        }
        self.inner.mmio_write(offset, value)
    }
    fn set_irq(&mut self, pin: usize, level: bool) {
        self.inner.set_irq(pin, level)
    }
    fn end_of_interrupt(&mut self, vector: u8) {
        self.inner.end_of_interrupt(vector)
    }
    fn unsupported(&self) -> Unsupported {
        self.inner.unsupported()
    }
}

#[test]
fn the_harness_finds_alioths_entries_unmasked_at_reset() {
    let failure = check_ioapic_with(&CASES, None, AliothIoapic::new).expect_err("diverges");
    assert_eq!(failure.rule, Rule::IoapicResetMasked, "{failure}");
}

#[test]
fn then_its_writable_read_only_bits() {
    let failure = check_ioapic_with(&CASES, None, |q: MessageQueue| Fixed::new(q, false))
        .expect_err("diverges");
    assert_eq!(failure.rule, Rule::IoapicReadOnlyBits, "{failure}");
}

#[test]
fn then_nothing_and_the_skips_are_counted() {
    let summary = check_ioapic_with(&CASES, None, |q: MessageQueue| Fixed::new(q, true))
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(summary.compared > 1000, "{summary:?}");
    assert!(
        summary.skipped["level-triggered entries"] > 0,
        "{summary:?}"
    );
    assert!(
        summary.skipped.contains_key("logical destinations"),
        "{summary:?}"
    );
}
