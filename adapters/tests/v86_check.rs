//! The harness against v86's IOAPIC: it finds its two latch bugs under
//! their exact rules, the second once the first is worked around
//! (docs/byo-findings.md).
#![cfg(target_os = "linux")]

use irqdiff_adapters::v86::V86Ioapic;
use irqdiff_check::{check_ioapic_with, Config};
use irqdiff_model::{IoapicDevice, MessageQueue, MsiSink, Rule, Unsupported};

const CASES: Config = Config {
    cases: 3000,
    persist: false,
    seed: Some(14),
};

/// v86's IOAPIC with its first bug worked around: after a write of a
/// level entry, an asserted line is driven low and high again so that v86
/// latches it.
struct Redrive<S: MsiSink> {
    inner: V86Ioapic<S>,
    levels: u32,
    select: u32,
}

impl<S: MsiSink> IoapicDevice for Redrive<S> {
    fn mmio_read(&mut self, offset: u64) -> u32 {
        self.inner.mmio_read(offset)
    }
    fn mmio_write(&mut self, offset: u64, value: u32) {
        if offset == 0 {
            self.select = value;
        }
        self.inner.mmio_write(offset, value);
        if offset == 0x10 && (0x10..0x40).contains(&self.select) && self.select % 2 == 0 {
            let pin = ((self.select - 0x10) / 2) as usize;
            if self.levels & 1 << pin != 0 && value & 1 << 15 != 0 {
                self.inner.set_irq(pin, false);
                self.inner.set_irq(pin, true);
            }
        }
    }
    fn set_irq(&mut self, pin: usize, level: bool) {
        if level {
            self.levels |= 1 << pin;
        } else {
            self.levels &= !(1 << pin);
        }
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
fn the_harness_finds_v86s_lost_level_and_then_its_edge_without_an_edge() {
    // One test: v86's IOAPIC is a process-wide singleton.
    let failure = check_ioapic_with(&CASES, None, V86Ioapic::new).expect_err("diverges");
    assert_eq!(failure.rule, Rule::LevelUnmaskDelivers, "{failure}");
    let failure = check_ioapic_with(&CASES, None, |q: MessageQueue| Redrive {
        inner: V86Ioapic::new(q),
        levels: 0,
        select: 0,
    })
    .expect_err("diverges");
    assert_eq!(failure.rule, Rule::EdgeNoNewEdge, "{failure}");
}
