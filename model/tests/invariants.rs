//! Invariants of the machine on random op streams (proptest): properties the
//! spec implies for every reachable state, checked after every step.

use irqdiff_model::ioapic::{DeliveryMode, InterruptMessage, IOEOI, IOREGSEL, IOWIN, PINS};
use irqdiff_model::lapic::reg;
use irqdiff_model::{IoapicVersion, Machine, MachineConfig, Rule};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    Route {
        pin: u8,
        vector: u8,
        level: bool,
        masked: bool,
    },
    Mask(u8, bool),
    Line(u8, bool),
    Msi {
        vector: u8,
        level: bool,
    },
    Eoi,
    IoapicEoi(u8),
    SelfIpi(u8),
    Tpr(u8),
    Svr(bool),
    Cli,
    Sti,
    /// Take whatever is deliverable; the handler EOIs or not.
    Run {
        eoi: bool,
    },
}

fn vector() -> impl Strategy<Value = u8> {
    // Mostly a few shared vectors (so pins, MSIs and IPIs collide), some
    // illegal ones, some anywhere.
    prop_oneof![
        6 => prop::sample::select(vec![0x40u8, 0x41, 0x50, 0x80]),
        1 => 0u8..16,
        1 => any::<u8>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let pin = 0u8..4;
    prop_oneof![
        1 => (pin.clone(), vector(), any::<bool>(), any::<bool>())
            .prop_map(|(pin, vector, level, masked)| Op::Route { pin, vector, level, masked }),
        1 => (pin.clone(), any::<bool>()).prop_map(|(p, m)| Op::Mask(p, m)),
        3 => (pin, any::<bool>()).prop_map(|(p, l)| Op::Line(p, l)),
        1 => (vector(), any::<bool>()).prop_map(|(vector, level)| Op::Msi { vector, level }),
        1 => Just(Op::Eoi),
        1 => vector().prop_map(Op::IoapicEoi),
        1 => vector().prop_map(Op::SelfIpi),
        1 => (0u8..16).prop_map(|c| Op::Tpr(c << 4)),
        1 => any::<bool>().prop_map(Op::Svr),
        1 => Just(Op::Cli),
        1 => Just(Op::Sti),
        3 => any::<bool>().prop_map(|eoi| Op::Run { eoi }),
    ]
}

fn write_register(m: &mut Machine, index: u32, value: u32) {
    m.ioapic_mmio_write(IOREGSEL, index);
    m.ioapic_mmio_write(IOWIN, value);
}

fn step(m: &mut Machine, op: Op) {
    match op {
        Op::Route {
            pin,
            vector,
            level,
            masked,
        } => {
            let low = vector as u32 | u32::from(level) << 15 | u32::from(masked) << 16;
            write_register(m, 0x11 + 2 * pin as u32, 0);
            write_register(m, 0x10 + 2 * pin as u32, low);
        }
        Op::Mask(pin, masked) => {
            let index = 0x10 + 2 * pin as u32;
            m.ioapic_mmio_write(IOREGSEL, index);
            let low = m.ioapic_mmio_read(IOWIN) & !(1 << 16);
            m.ioapic_mmio_write(IOWIN, low | u32::from(masked) << 16);
        }
        Op::Line(pin, level) => m.set_irq(pin as usize, level),
        Op::Msi { vector, level } => {
            m.message(&InterruptMessage {
                vector,
                delivery: DeliveryMode::Fixed,
                logical: false,
                dest: 0,
                level,
                rule: Rule::MsiDelivers,
            });
        }
        Op::Eoi => m.lapic_write(reg::EOI, 0).unwrap(),
        Op::IoapicEoi(v) => m.ioapic_mmio_write(IOEOI, v as u32),
        Op::SelfIpi(v) => {
            m.lapic_write(reg::ICR_HIGH, 0).unwrap();
            m.lapic_write(reg::ICR_LOW, 1 << 18 | v as u32).unwrap();
        }
        Op::Tpr(v) => m.lapic_write(reg::TPR, v as u32).unwrap(),
        Op::Svr(enabled) => m
            .lapic_write(reg::SVR, 0xff | u32::from(enabled) << 8)
            .unwrap(),
        Op::Cli => m.cpu.cli(),
        Op::Sti => {
            m.cpu.sti();
            m.cpu.end_of_instruction();
        }
        Op::Run { eoi } => {
            // A bounded burst, as a run stops at a storm.
            for _ in 0..8 {
                let Some(interrupt) = m.pending() else { break };
                let (_, saved) = m.take(interrupt);
                if eoi {
                    m.lapic_write(reg::EOI, 0).unwrap();
                }
                m.iret(saved);
            }
        }
    }
    m.clear_decisions();
}

fn bits(words: [u32; 8]) -> impl Iterator<Item = u8> {
    (0..=255u8).filter(move |&v| words[v as usize / 32] & (1 << (v % 32)) != 0)
}

fn check(m: &Machine) -> Result<(), TestCaseError> {
    let (irr, isr) = (m.lapic.irr(), m.lapic.isr());
    // SDM §11.5.3 / §11.8.4: vectors 0-15 never enter the IRR, so never ISR.
    prop_assert!(
        bits(irr).chain(bits(isr)).all(|v| v >= 16),
        "irr {irr:x?} isr {isr:x?}"
    );
    // §11.8.3.1: a vector is dispatched only above the PPR class, which is at
    // least every in-service class: at most one in-service vector per class.
    let mut classes = [false; 16];
    for v in bits(isr) {
        prop_assert!(
            !classes[(v >> 4) as usize],
            "two in-service vectors in class {:x}",
            v >> 4
        );
        classes[(v >> 4) as usize] = true;
    }
    // §11.8.3.1: the PPR formula.
    let isrv = bits(isr).last().unwrap_or(0) as u32;
    let tpr = m.lapic.tpr();
    let ppr = if tpr & 0xf0 >= isrv & 0xf0 {
        tpr
    } else {
        isrv & 0xf0
    };
    prop_assert_eq!(m.lapic.ppr(), ppr);
    // §11.8.3: what is deliverable is the highest IRR vector, above the PPR class.
    let expected = bits(irr)
        .last()
        .filter(|&v| (v as u32 & 0xf0) > (ppr & 0xf0));
    prop_assert_eq!(m.lapic.deliverable(), expected);
    for pin in 0..PINS {
        let e = m.ioapic.entry(pin);
        // 82093AA §3.2.4 bit 14: remote IRR belongs to level entries only (the
        // model clears it when an entry becomes edge) and delivery is
        // instantaneous (bit 12 never pending).
        prop_assert!(
            !e.remote_irr() || e.level(),
            "pin {pin}: remote IRR on an edge entry"
        );
        prop_assert!(!e.delivery_status());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(
        ops in prop::collection::vec(op(), 1..64),
        v11 in any::<bool>(),
    ) {
        let mut m = Machine::new(MachineConfig {
            ioapic: if v11 { IoapicVersion::V11 } else { IoapicVersion::V20 },
            ..MachineConfig::default()
        });
        check(&m)?;
        for op in ops {
            step(&mut m, op);
            check(&m)?;
        }
    }

    #[test]
    fn a_level_pin_held_high_is_never_lost(
        noise in prop::collection::vec(op(), 0..48),
        vector in 0xc0u8..=0xcf,
    ) {
        // 82093AA §3.2.4 bits 14 and 16 with SDM §11.8.4 and §11.8.5: pin 7
        // routed level, unmasked, its line held high, is requested, in
        // service, or sent again at the EOI that retires it. Whatever the
        // noise (other pins, MSIs, IPIs, TPR, IF, handlers with and without
        // EOI) does, once every in-service vector is EOId its vector is in
        // the IRR. The noise keeps away from pin 7's vector (an edge source
        // sharing it would clear its TMR bit, and the EOI would then rightly
        // not be broadcast) and never software-disables the APIC (a refused
        // message is not retried: a documented choice).
        let mut m = Machine::new(MachineConfig::default());
        write_register(&mut m, 0x11 + 14, 0);
        write_register(&mut m, 0x10 + 14, vector as u32 | 1 << 15);
        m.set_irq(7, true);
        for op in noise {
            let touches_vector = match op {
                Op::Route { vector: v, .. }
                | Op::Msi { vector: v, .. }
                | Op::IoapicEoi(v)
                | Op::SelfIpi(v) => (v & 0xf0) == 0xc0,
                Op::Svr(false) => true,
                _ => false,
            };
            if !touches_vector {
                step(&mut m, op);
                check(&m)?;
            }
        }
        step(&mut m, Op::Cli);
        step(&mut m, Op::Tpr(0));
        for _ in 0..16 {
            step(&mut m, Op::Eoi);
        }
        prop_assert_eq!(m.lapic.isr(), [0; 8]);
        let requested = m.lapic.irr()[vector as usize / 32] & (1 << (vector % 32)) != 0;
        prop_assert!(requested, "pin 7 (vector {:#x}) lost; remote IRR {}", vector, m.ioapic.entry(7).remote_irr());
        prop_assert!(m.ioapic.entry(7).remote_irr());
    }
}
