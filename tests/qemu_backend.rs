//! `qemu-tcg`: QEMU's emulated APIC and IOAPIC under TCG, the second real
//! implementation. Every test prints a SKIPPED line when QEMU is missing (fails under CI=true).

mod common;

use common::*;
use irqdiff::backend::{self, Backend, BackendError};
use irqdiff::oracle::Triage;

/// `qemu-tcg`, opened, when QEMU is there (see `common::qemu_or_skip`).
fn open_qemu_or_skip(test: &str) -> Option<Box<dyn Backend>> {
    qemu_or_skip(test).then(|| backend::open("qemu-tcg").unwrap())
}

/// The x2APIC scenarios among the committed ones: x2APIC from the start,
/// or entering it by an IA32_APIC_BASE write with EXTD.
fn x2apic_stems() -> Vec<String> {
    committed_scenarios()
        .iter()
        .filter(|p| {
            let s = load(p);
            s.config.apic == irqdiff::scenario::ApicMode::X2apic
                || s.all_ops().any(
                    |op| matches!(op, irqdiff::scenario::Op::ApicBase(v) if v & (1 << 10) != 0),
                )
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Whether `s` programs or reads the LAPIC timer (its ops, or raw accesses
/// to 0x320, 0x380, 0x390, 0x3E0): such a scenario runs without the
/// watchdog, and its current count is the host's timing.
fn touches_the_timer(s: &irqdiff::scenario::Scenario) -> bool {
    use irqdiff::scenario::Op;
    s.all_ops().any(|op| {
        op.is_timer_op()
            || matches!(op, Op::LapicRead(o) | Op::LapicWrite { offset: o, .. }
                | Op::LapicMmioRead(o) | Op::LapicMmioWrite { offset: o, .. }
                if [0x320, 0x380, 0x390, 0x3e0].contains(o))
    })
}

/// The committed scenarios that use the TSC-deadline timer.
fn tsc_deadline_stems() -> Vec<String> {
    committed_scenarios()
        .iter()
        .filter(|p| load(p).uses_tsc_deadline())
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Every committed scenario on `qemu-tcg`, in batches: it agrees with the
/// model or carries exactly its documented QEMU label; none is refused
/// where TCG has x2APIC (QEMU 9.0+), and only the x2APIC ones before.
#[test]
fn qemu_tcg_runs_every_committed_scenario_as_the_model_or_documented() {
    let test = "qemu_tcg_runs_every_committed_scenario_as_the_model_or_documented";
    if !qemu_or_skip(test) {
        return;
    }
    let tally = every_scenario_agrees_or_is_documented("qemu-tcg", true);
    let x2apic = x2apic_stems();
    let mut labelled = vec![
        ("lapic-disabled-accepts", "qemu-lapic-accepts"),
        ("lapic-illegal-vector", "qemu-lapic-accepts"),
        ("edge-repeated-assert", "qemu-edge-every-assert"),
        ("latch-reroute-to-edge", "qemu-ioapic-latch"),
        ("latch-reroute-to-level", "qemu-ioapic-latch"),
        ("5-apic-base-move-and-enable", "qemu-apic-page-fixed"),
    ];
    // QEMU's TCG has no TSC-deadline timer: it refuses those scenarios.
    let (tsc_deadline, refused): (Vec<_>, Vec<_>) = tally
        .refused
        .iter()
        .cloned()
        .partition(|(_, why)| why.contains("has no TSC-deadline timer"));
    let tsc_deadline_refused = tsc_deadline.len();
    assert_eq!(
        tsc_deadline
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        tsc_deadline_stems()
    );
    let tally = Tally { refused, ..tally };
    if qemu_batch(true).features().tcg_x2apic {
        assert_eq!(tally.refused, [], "QEMU with TCG x2APIC refused some");
        // docs/known-divergences.md#qemu-x2apic-msr
        labelled.insert(0, ("msr_x2apic_regs", "qemu-x2apic-msr"));
    } else {
        assert_eq!(tally.refused_stems(), x2apic, "before QEMU 9.0");
        assert!(tally
            .refused
            .iter()
            .all(|(_, why)| why.contains("has no x2APIC")));
    }
    let got: Vec<(&str, &str)> = tally
        .labelled
        .iter()
        .map(|(s, l)| (s.as_str(), *l))
        .collect();
    let mut want = labelled;
    want.sort_by_key(|(s, _)| {
        committed_scenarios()
            .iter()
            .position(|p| p.file_stem().unwrap() == *s)
    });
    assert_eq!(got, want);
    assert_eq!(
        tally.agreed.len() + tally.labelled.len() + tally.refused.len() + tsc_deadline_refused,
        committed_scenarios().len()
    );
}

#[test]
fn qemu_delivers_every_assert_of_an_edge_pin_documented() {
    let Some(mut qemu) = open_qemu_or_skip("qemu_delivers_every_assert_of_an_edge_pin_documented")
    else {
        return;
    };
    // docs/known-divergences.md#qemu-edge-every-assert
    let path = root().join("scenarios/qemu-divergences/edge-repeated-assert.irq");
    let scenario = load(&path);
    assert_eq!(
        deliveries(&qemu.run(&scenario).unwrap()),
        [(1, 0x40), (2, 0x40)]
    );
    let mut differ = irqdiff::differ::Differ::open("qemu-tcg").unwrap();
    let judgement = differ.diff(&scenario);
    let observed = judgement.observed.clone();
    let sig = judgement.into_signature().expect("diverges");
    assert_eq!(
        irqdiff::known::label("qemu-tcg", &sig, &scenario, &observed),
        Some(irqdiff::known::QEMU_EDGE_EVERY_ASSERT)
    );
    // The label needs the quirk to reproduce QEMU's trace exactly: the
    // same signature with a different trace is not explained.
    let mut other = observed.clone();
    other.events.push(other.events[1].clone());
    assert_eq!(
        irqdiff::known::label("qemu-tcg", &sig, &scenario, &other),
        None
    );
}

#[test]
fn qemu_detects_hang_and_storm() {
    let Some(mut qemu) = open_qemu_or_skip("qemu_detects_hang_and_storm") else {
        return;
    };
    let t = qemu
        .run(&irqdiff::scenario::parse("nop\ncli\nhlt\n").unwrap())
        .unwrap();
    assert_eq!(
        (t.outcome, t.hang_op),
        (irqdiff::trace::Outcome::Hang, Some(2))
    );
    let t = qemu
        .run(&irqdiff::scenario::parse("route 3 vector=0x40 level\nassert 3\nnop\n").unwrap())
        .unwrap();
    assert_eq!(t.outcome, irqdiff::trace::Outcome::Storm);
    assert_eq!(deliveries(&t).len(), irqdiff::trace::STORM_LIMIT);
}

#[test]
fn three_way_triage_blames_this_kvm_for_its_divergences() {
    let Some(mut qemu) = open_qemu_or_skip("three_way_triage_blames_this_kvm_for_its_divergences")
    else {
        return;
    };
    if !kvm_or_skip("three_way_triage_blames_this_kvm_for_its_divergences") {
        return;
    }
    // The verdict on this host's KVM (docs/known-divergences.md): where it
    // differs from the model, QEMU's irqchip sides with the model.
    let mut differ = irqdiff::differ::Differ::open("kvm").unwrap();
    for path in scenario_files("kvm-divergences") {
        let scenario = load(&path);
        let judgement = differ.diff(&scenario);
        let (expected, observed) = (&judgement.expected, &judgement.observed);
        assert!(judgement.signature().is_some(), "{}", path.display());
        let third = qemu.run_to_trace(&scenario);
        assert!(
            matches!(
                Triage::of(expected, observed, &third),
                Triage::LikelyBackendBug { .. }
            ),
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_batch_gives_the_same_traces_as_single_runs() {
    let Some(mut qemu) = open_qemu_or_skip("a_batch_gives_the_same_traces_as_single_runs") else {
        return;
    };
    let mut scenarios: Vec<_> = scenario_files("kvm-unit-tests")
        .iter()
        .map(|p| load(p))
        .collect();
    // A hang and a storm inside the batch, and a scenario it cannot run.
    scenarios.insert(3, irqdiff::scenario::parse("nop\ncli\nhlt\n").unwrap());
    scenarios.insert(
        7,
        irqdiff::scenario::parse("route 3 vector=0x40 level\nassert 3\nnop\n").unwrap(),
    );
    let batch = qemu.run_batch(&scenarios);
    assert_eq!(batch.len(), scenarios.len());
    for (s, b) in scenarios.iter().zip(&batch) {
        let single = qemu.run_to_trace(s);
        if s.uses_timer_ops() && b.outcome != irqdiff::trace::Outcome::Error {
            // The current count's value is the host's timing: the oracle
            // compares it as zero or not.
            assert_eq!(
                irqdiff::oracle::compare(b, &single),
                irqdiff::oracle::Verdict::Agree,
                "{s}"
            );
        } else {
            assert_eq!(*b, single, "{s}");
        }
    }
    assert_eq!(batch[3].outcome, irqdiff::trace::Outcome::Hang);
    assert_eq!(batch[7].outcome, irqdiff::trace::Outcome::Storm);
}

/// A batch backend with the in-guest watchdog on or off.
fn qemu_batch(watchdog: bool) -> backend::qemu::QemuBackend {
    let mut q = backend::qemu::QemuBackend::open(false).unwrap();
    q.set_watchdog(watchdog);
    q
}

#[test]
fn the_guest_watchdog_reports_the_hangs_the_host_would() {
    if !qemu_or_skip("the_guest_watchdog_reports_the_hangs_the_host_would") {
        return;
    }
    // Random scenarios fitted to QEMU, and hangs in every place the
    // interpreter halts: `hlt` with IF = 0, `hlt` with nothing pending,
    // `sti-hlt`, and a `hlt` inside a handler body.
    let cfg = irqdiff::scenario::generate::GenConfig {
        max_ops: 24,
        ..Default::default()
    };
    let fitter = qemu_batch(true);
    let mut scenarios: Vec<_> = (0..200)
        .map(|i| {
            let mut s = irqdiff::scenario::generate::random(
                irqdiff::scenario::generate::case_seed(5, i),
                &cfg,
            );
            fitter.fit(&mut s);
            s
        })
        .collect();
    for text in [
        "cli\nhlt\n",
        "nop\nhlt\n",
        "sti-hlt\n",
        "handler 0x40: hlt\nroute 3 vector=0x40\npulse 3\nnop\n",
    ] {
        scenarios.push(irqdiff::scenario::parse(text).unwrap());
    }
    let by_guest = qemu_batch(true).run_batch(&scenarios);
    let by_host = qemu_batch(false).run_batch(&scenarios);
    for (s, (g, h)) in scenarios.iter().zip(by_guest.iter().zip(&by_host)) {
        if touches_the_timer(s) {
            // These run without the watchdog in both batches; the current
            // count is the host's timing (compared as zero or not).
            assert_eq!(
                irqdiff::oracle::compare(g, h),
                irqdiff::oracle::Verdict::Agree,
                "{s}"
            );
        } else {
            assert_eq!(g, h, "{s}");
        }
    }
    let hangs = by_guest.iter().filter(|t| t.outcome == Hang).count();
    assert!(hangs >= 20, "only {hangs} hangs among the random scenarios");
    let tail: Vec<_> = by_guest[200..]
        .iter()
        .map(|t| (t.outcome, t.hang_op))
        .collect();
    use irqdiff::trace::Outcome::Hang;
    // The handler halts inside op 1, the pulse that delivered it.
    assert_eq!(
        tail,
        [
            (Hang, Some(1)),
            (Hang, Some(1)),
            (Hang, Some(0)),
            (Hang, Some(1))
        ]
    );
}

#[test]
fn a_scenario_that_uses_the_timer_runs_without_the_watchdog() {
    if !qemu_or_skip("a_scenario_that_uses_the_timer_runs_without_the_watchdog") {
        return;
    }
    // The watchdog's LVT and counts would show; this scenario sees the
    // reset values the model has, and its hang is timed by the host.
    let s = irqdiff::scenario::parse(
        "lapic-read 0x320\nlapic-read 0x380\nlapic-read 0x3e0\ncli\nhlt\n",
    )
    .unwrap();
    let mut expected = backend::model::ModelBackend::new().run(&s).unwrap();
    expected.backend = "qemu-tcg".into();
    let batch = qemu_batch(true).run_batch(&[s.clone(), s]);
    assert_eq!(batch, [expected.clone(), expected]);
}

#[test]
fn a_scenarios_own_nmi_is_delivered_and_its_hang_found_in_a_watchdog_batch() {
    if !qemu_or_skip("a_scenarios_own_nmi_is_delivered_and_its_hang_found_in_a_watchdog_batch") {
        return;
    }
    // A scenario that sends an NMI runs without the NMI watchdog (an NMI
    // raised while the watchdog's is pending would be lost with it): its
    // NMI is delivered and its hang timed by the host, in a batch that has
    // the watchdog on.
    let s = irqdiff::scenario::parse(
        "msi vector=0x40 dest=0 nmi\nnop\nmsi vector=0x41 dest=0\ncli\nhlt\n",
    )
    .unwrap();
    // Between armed scenarios, and one that is unarmed for another reason
    // (it reads the timer): the NMI handler passes its NMI on too.
    let armed = irqdiff::scenario::parse("nop\ncli\nhlt\n").unwrap();
    let timer = irqdiff::scenario::parse(
        "lapic-read 0x320\nself-ipi 0x42\nmsi vector=0x40 dest=0 nmi\nnop\n",
    )
    .unwrap();
    let batch = qemu_batch(true).run_batch(&[armed.clone(), s, armed.clone(), timer, armed]);
    assert_eq!(deliveries(&batch[1]), [(0, 0x02), (2, 0x41)]);
    assert_eq!(
        (batch[1].outcome, batch[1].hang_op),
        (irqdiff::trace::Outcome::Hang, Some(4))
    );
    assert_eq!(deliveries(&batch[3]), [(1, 0x42), (2, 0x02)]);
    for i in [0, 2, 4] {
        assert_eq!(
            (batch[i].outcome, batch[i].hang_op),
            (irqdiff::trace::Outcome::Hang, Some(2))
        );
    }
}

#[test]
fn the_qemu_profile_of_the_model_reproduces_qemu_exactly() {
    if !qemu_or_skip("the_qemu_profile_of_the_model_reproduces_qemu_exactly") {
        return;
    }
    // `sim:qemu` is the model with QEMU's documented behaviours
    // (quirks QEMU_IOAPIC and QEMU_LAPIC). That it gives QEMU's trace on
    // every random scenario is what lets the campaign label a QEMU
    // divergence as documented only when that quirk explains it exactly.
    let cfg = irqdiff::scenario::generate::GenConfig::default();
    let fitter = qemu_batch(true);
    // Without the LAPIC timer ops: whether a periodic expiry lands inside a
    // handler is the loaded host's timing, not QEMU's profile (the timer
    // has its committed scenarios, which hold it).
    let scenarios: Vec<_> = (0..600)
        .map(|i| {
            let mut s = irqdiff::scenario::generate::random(
                irqdiff::scenario::generate::case_seed(77, i),
                &cfg,
            );
            fitter.fit(&mut s);
            s.retain_ops(|op| !op.is_timer_op());
            s
        })
        .collect();
    let observed = qemu_batch(true).run_batch(&scenarios);
    let mut sim = backend::open("sim:qemu").unwrap();
    let mut model = backend::open("model").unwrap();
    let mut differ_from_model = 0;
    for (s, o) in scenarios.iter().zip(&observed) {
        let expected = sim.run_to_trace(s);
        assert_eq!(
            irqdiff::oracle::compare(&expected, o),
            irqdiff::oracle::Verdict::Agree,
            "{s}\nqemu-tcg: {}",
            o.to_json()
        );
        let plain = model.run_to_trace(s);
        differ_from_model +=
            usize::from(irqdiff::oracle::compare(&plain, o) != irqdiff::oracle::Verdict::Agree);
    }
    // And those behaviours are not rare: without them many scenarios differ.
    assert!(differ_from_model >= 30, "{differ_from_model}");
}

#[test]
fn every_qemu_divergence_repro_diverges_with_its_documented_label() {
    if !qemu_or_skip("every_qemu_divergence_repro_diverges_with_its_documented_label") {
        return;
    }
    let mut differ = irqdiff::differ::Differ::open("qemu-tcg").unwrap();
    let files = scenario_files("qemu-divergences");
    assert!(files.len() >= 5);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Each repro's comment names its section: known-divergences.md#ID.
        let id = text
            .split("known-divergences.md#")
            .nth(1)
            .map(|rest| {
                rest.split(|c: char| c == ':' || c.is_whitespace())
                    .next()
                    .unwrap()
            })
            .or_else(|| {
                text.contains("ioapic_set_irq")
                    .then_some("qemu-edge-every-assert")
            })
            .unwrap_or_else(|| panic!("{}: names no documented behaviour", path.display()));
        let scenario = load(&path);
        let judgement = differ.diff(&scenario);
        let sig = judgement
            .signature()
            .unwrap_or_else(|| panic!("{}: no divergence", path.display()));
        let label = irqdiff::known::label("qemu-tcg", sig, &scenario, &judgement.observed);
        assert_eq!(label.map(|k| k.id), Some(id), "{}", path.display());
    }
}

#[test]
fn x2apic_scenarios_agree_in_batches_where_tcg_has_x2apic() {
    if !qemu_or_skip("x2apic_scenarios_agree_in_batches_where_tcg_has_x2apic") {
        return;
    }
    let q = qemu_batch(true);
    if !q.features().tcg_x2apic {
        // QEMU before 9.0: TCG has no x2APIC, and the backend says so.
        let (a, b, c) = q.features().version;
        assert!((a, b) < (9, 0), "QEMU {a}.{b}.{c} should have TCG x2APIC");
        eprintln!("SKIPPED x2apic_scenarios_agree_in_batches_where_tcg_has_x2apic: QEMU {a}.{b}.{c}'s TCG has no x2APIC");
        return;
    }
    // Every committed x2APIC scenario (docs/qemu-versions.md), each
    // followed by an xAPIC one so that the batch switches modes across
    // resets.
    let x2apic = x2apic_stems();
    assert!(x2apic.len() >= 28, "{x2apic:?}");
    let xapic = load(&root().join("scenarios/kvm-unit-tests/edge_intr.irq"));
    let paths: Vec<_> = committed_scenarios()
        .into_iter()
        .filter(|p| x2apic.iter().any(|s| p.file_stem().unwrap() == s.as_str()))
        .collect();
    let mut batch = Vec::new();
    for p in &paths {
        batch.push(load(p));
        batch.push(xapic.clone());
    }
    let observed = qemu_batch(true).run_batch(&batch);
    let mut differ = irqdiff::differ::Differ::open("qemu-tcg").unwrap();
    for (i, (s, o)) in batch.iter().zip(observed).enumerate() {
        let name = if i % 2 == 0 {
            paths[i / 2].display().to_string()
        } else {
            "edge_intr".into()
        };
        let judgement = differ.judge(s, o);
        match judgement.ruling {
            irqdiff::oracle::Ruling::Agree => {}
            // The one x2APIC register sweep: QEMU's apic_register_write/read.
            irqdiff::oracle::Ruling::Diverge { signature, .. } => assert_eq!(
                irqdiff::known::label("qemu-tcg", &signature, s, &judgement.observed)
                    .map(|k| (name.ends_with("msr_x2apic_regs.irq"), k.id)),
                Some((true, "qemu-x2apic-msr")),
                "{name}"
            ),
            irqdiff::oracle::Ruling::Inconclusive(why) => panic!("{name}: {why}"),
        }
    }
}

/// `qemu:accel=kvm,irqchip=CHIP`, opened, when QEMU and /dev/kvm are there.
fn open_qemu_kvm_or_skip(test: &str, chip: &str) -> Option<backend::qemu::QemuBackend> {
    if !(kvm_or_skip(test) && qemu_or_skip(test)) {
        return None;
    }
    let name = format!("qemu:accel=kvm,irqchip={chip}");
    let options = backend::qemu::Options::from_name(&name).unwrap();
    Some(backend::qemu::QemuBackend::open_with(&name, options).unwrap())
}

/// Every committed scenario on QEMU's KVM integration, in batches: it
/// agrees with the model, or its divergence carries a documented label
/// (this host's KVM local APIC, as on `kvm`/`kvm-split`; QEMU's IOAPIC
/// under split). None is refused: a split-shape scenario on `irqchip=on`
/// runs with `kernel-irqchip=split`, as `kvm` runs it split.
fn qemu_kvm_runs_every_scenario_as_the_model_or_documented(chip: &str) {
    let test = format!("qemu_kvm_{chip}_runs_every_scenario_as_the_model_or_documented");
    if open_qemu_kvm_or_skip(&test, chip).is_none() {
        return;
    }
    let name = format!("qemu:accel=kvm,irqchip={chip}");
    let tally = every_scenario_agrees_or_is_documented(&name, true);
    // Its CPU model has no TSC-deadline timer: only those are refused.
    assert_eq!(
        tally.refused_stems(),
        tsc_deadline_stems()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "{name}"
    );
    assert!(
        tally.agreed.len() >= 10,
        "only {} agreed on {name}",
        tally.agreed.len()
    );
    // Only this host's KVM behaviours and QEMU's IOAPIC's.
    let allowed: &[&str] = if chip == "split" {
        &[
            "kvm-isr-not-set",
            "kvm-deferred-injection",
            "qemu-edge-every-assert",
            "qemu-ioapic-latch",
        ]
    } else {
        &[
            "kvm-isr-not-set",
            "kvm-deferred-injection",
            "kvm-ioapic-latch",
            "qemu-edge-every-assert",
            "qemu-ioapic-latch",
        ]
    };
    for (stem, label) in &tally.labelled {
        assert!(allowed.contains(label), "{name}: {stem}: {label}");
    }
}

#[test]
fn qemu_kvm_on_runs_every_scenario_as_the_model_or_documented() {
    qemu_kvm_runs_every_scenario_as_the_model_or_documented("on");
}

#[test]
fn qemu_kvm_split_runs_every_scenario_as_the_model_or_documented() {
    qemu_kvm_runs_every_scenario_as_the_model_or_documented("split");
}

#[test]
fn qemu_kvm_sends_msis_to_apic_id_0_and_times_hangs_out_from_the_host() {
    for chip in ["on", "split"] {
        let test = "qemu_kvm_sends_msis_to_apic_id_0_and_times_hangs_out_from_the_host";
        let Some(mut qemu) = open_qemu_kvm_or_skip(test, chip) else {
            return;
        };
        // The guest's MSI write exits to QEMU (it is sent as a broadcast,
        // outside the vCPU's APIC page), which injects it during its op.
        let msi = irqdiff::scenario::parse("msi vector=0x41 dest=0\nnop\n").unwrap();
        let hangs: Vec<_> = ["cli\nhlt\n", "nop\nhlt\n", "sti-hlt\n"]
            .iter()
            .map(|t| irqdiff::scenario::parse(t).unwrap())
            .collect();
        let single = qemu.run(&msi).unwrap();
        assert_eq!(deliveries(&single), [(0, 0x41)], "{chip}");
        let batch = qemu.run_batch(&[hangs.clone(), vec![msi]].concat());
        let outcomes: Vec<_> = batch.iter().map(|t| (t.outcome, t.hang_op)).collect();
        use irqdiff::trace::Outcome::{Completed, Hang};
        assert_eq!(
            outcomes,
            [
                (Hang, Some(1)),
                (Hang, Some(1)),
                (Hang, Some(0)),
                (Completed, None)
            ],
            "{chip}"
        );
        // A changed APIC ID would tell the broadcast apart: refused.
        let moved =
            irqdiff::scenario::parse("lapic-write 0x020 0x5000000\nmsi vector=0x41\n").unwrap();
        assert!(
            matches!(qemu.run(&moved), Err(BackendError::Unsupported(why)) if why.contains("APIC ID"))
        );
    }
}

#[test]
fn qemu_options_are_checked_at_open() {
    let err = |name: &str| backend::open(name).err().map(|e| e.to_string());
    assert_eq!(
        err("qemu:accel=xen"),
        Some("backend `qemu:accel=xen`: `accel=xen`: accel is one of tcg, kvm, hvf".into())
    );
    assert!(err("qemu:accel=tcg,irqchip=on")
        .unwrap()
        .contains("not to TCG"));
    if cfg!(not(target_os = "macos")) {
        let hvf = err("qemu:accel=hvf").unwrap();
        assert!(
            hvf.contains("unavailable here") && hvf.contains("macOS"),
            "{hvf}"
        );
    }
    // The aliases are the same configurations.
    assert_eq!(
        backend::qemu::Options::from_name("qemu-tcg"),
        backend::qemu::Options::from_name("qemu:accel=tcg,machine=pc")
    );
    assert_eq!(
        backend::qemu::Options::from_name("qemu-kvm-userspace"),
        backend::qemu::Options::from_name("qemu:accel=kvm,irqchip=off")
    );
}

#[test]
fn q35_runs_as_pc_does() {
    let Some(mut pc) = open_qemu_or_skip("q35_runs_as_pc_does") else {
        return;
    };
    let mut q35 = backend::open("qemu:accel=tcg,machine=q35").unwrap();
    for path in scenario_files("kvm-unit-tests").iter().take(12) {
        let s = load(path);
        let (a, mut b) = (pc.run_to_trace(&s), q35.run_to_trace(&s));
        b.backend = a.backend.clone();
        if s.uses_timer_ops() {
            // The current count is the host's timing.
            assert_eq!(
                irqdiff::oracle::compare(&a, &b),
                irqdiff::oracle::Verdict::Agree,
                "{}",
                path.display()
            );
        } else {
            assert_eq!(a, b, "{}", path.display());
        }
    }
}

#[test]
fn the_qemu_option_selects_the_binary_of_every_invocation() {
    let irqdiff = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_irqdiff"))
            .args(args)
            .env_remove("IRQDIFF_QEMU")
            .output()
            .unwrap()
    };
    let file = root().join("scenarios/kvm-unit-tests/edge_intr.irq");
    let file = file.to_str().unwrap();
    // A QEMU that is not there: the backend is unavailable, naming it.
    let out = irqdiff(&[
        "--qemu",
        "/nonexistent/qemu",
        "run",
        file,
        "--backend",
        "qemu-tcg",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/qemu"), "{stderr}");
    let out = irqdiff(&["backends", "--qemu", "/nonexistent/qemu"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("QEMU (--qemu PATH or IRQDIFF_QEMU): /nonexistent/qemu: "),
        "{stdout}"
    );
    if !qemu_or_skip("the_qemu_option_selects_the_binary_of_every_invocation") {
        return;
    }
    let out = irqdiff(&["backends"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .contains("QEMU emulator version"),
        "{stdout}"
    );
}
