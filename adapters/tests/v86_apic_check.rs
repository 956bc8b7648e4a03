//! The LAPIC harness (`irqdiff_check::check_lapic`) against v86's local
//! APIC: it finds its three bugs under their rules, each once the one
//! before it is declared or worked around (docs/byo-findings.md V3-V5).
#![cfg(target_os = "linux")]

use irqdiff_adapters::v86_apic::V86Lapic;
use irqdiff_check::{check_lapic_with, Config, RETRIGGERED};
use irqdiff_model::{ApicBusMessage, InterruptMessage, LapicDevice, LapicUnsupported, Rule};

const CASES: Config = Config {
    cases: 3000,
    persist: false,
    seed: Some(14),
};

/// v86's APIC with more declared unsupported and, with `class_priority`,
/// its in-service priority worked around (V5: a vector of the in-service
/// class waits).
struct Wrapped {
    inner: V86Lapic,
    unsupported: LapicUnsupported,
    class_priority: bool,
}

impl Wrapped {
    fn highest(&mut self, base: u16) -> Option<u8> {
        (0..8u16).rev().find_map(|i| {
            let word = self.inner.mmio_read(base + 0x10 * i);
            (word != 0).then(|| (i * 32 + 31 - word.leading_zeros() as u16) as u8)
        })
    }
}

impl LapicDevice for Wrapped {
    fn mmio_read(&mut self, offset: u16) -> u32 {
        self.inner.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u16, value: u32) -> Option<ApicBusMessage> {
        self.inner.mmio_write(offset, value)
    }
    fn accept_interrupt(&mut self, message: &InterruptMessage) {
        self.inner.accept_interrupt(message)
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        if self.class_priority {
            if let (Some(irr), Some(isr)) = (self.highest(0x200), self.highest(0x100)) {
                if irr & 0xf0 <= isr & 0xf0 {
                    return None;
                }
            }
        }
        self.inner.acknowledge_interrupt()
    }
    fn unsupported(&self) -> LapicUnsupported {
        self.unsupported
    }
}

#[test]
fn the_harness_finds_v86s_apic_bugs_one_after_the_other() {
    // One test: v86's APIC is a process-wide singleton.
    let declared = V86Lapic::new().unsupported();
    assert!(declared.illegal_vectors && declared.special_delivery);
    let run = |unsupported: LapicUnsupported, class_priority: bool| {
        check_lapic_with(&CASES, None, || Wrapped {
            inner: V86Lapic::new(),
            unsupported,
            class_priority,
        })
    };
    // V3: a software-disabled APIC takes a fixed interrupt.
    let f = run(declared, false).expect_err("V3");
    assert_eq!(f.rule, Rule::ApicSoftwareDisabled, "{f}");
    assert!(f.scenario.contains("lapic-write 0x0f0 0xff"), "{f}");
    // V4: PPR reads 0.
    let no_disable = LapicUnsupported {
        software_disable: true,
        ..declared
    };
    let f = run(no_disable, false).expect_err("V4");
    assert_eq!(f.rule, Rule::HeldByPpr, "{f}");
    assert!(f.scenario.contains("lapic-read 0x0a0"), "{f}");
    // V5: a vector of the in-service class is taken.
    let no_ppr = LapicUnsupported {
        registers: &[0xa0],
        ..no_disable
    };
    let f = run(no_ppr, false).expect_err("V5");
    assert_eq!(f.rule, Rule::HeldByPpr, "{f}");
    assert!(f.diff.contains("took nothing"), "{f}");
    // With the three out of the way, nothing; the skips are counted.
    let summary = run(no_ppr, true).unwrap_or_else(|f| panic!("{f}"));
    assert!(summary.compared > 1000, "{summary:?}");
    assert!(summary.skipped.contains_key(RETRIGGERED), "{summary:?}");
    let skipped: u32 = summary.skipped.values().sum();
    assert_eq!(summary.compared + skipped, CASES.cases);
}
