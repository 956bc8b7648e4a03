//! Bring your own IOAPIC: a property test of a VMM's userspace IOAPIC
//! against irqdiff's model (docs/byo-irqchip.md).
//!
//! ```ignore
//! #[test]
//! fn my_ioapic_follows_the_spec() {
//!     irqdiff_check::check_ioapic(|sink| MyIoapic::new(sink));
//! }
//! ```
//!
//! Each case is a random scenario (a program of IOAPIC and local APIC
//! operations, printed in irqdiff's `.irq` format) run twice in process:
//! on the model's CPU, local APIC and IOAPIC, and on the model's CPU and
//! local APIC with the device's IOAPIC ([`irqdiff_model::Machine::with_device`]).
//! The two traces must be equal. On a divergence proptest shrinks the
//! scenario, persists it in the caller's `*.proptest-regressions` file, and
//! the test fails with the minimal scenario, the trace diff and the rule of
//! the spec the device breaks. Scenarios needing what the device declares
//! [`irqdiff_model::Unsupported`] are skipped and counted.
//!
//! A userspace local APIC ([`irqdiff_model::LapicDevice`]) has its own
//! harness, [`check_lapic`]: `irqdiff_check::check_lapic(|| MyLapic::new())`.
//!
//! [`check_pic`] does the same for an 8259A PIC pair behind
//! [`irqdiff_model::PicDevice`] (module [`pic`]).

mod lapic;
pub mod pic;
mod scenario;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;

use irqdiff_model::{IoapicDevice, MessageQueue, Rule};
use proptest::test_runner::{
    Config as PtConfig, FileFailurePersistence, RngAlgorithm, TestError, TestRng, TestRunner,
};

pub use lapic::{
    check_lapic, check_lapic_with, compare_lapic, lapic_needs, run_lapic, LapicEvent, LapicFailure,
    LapicOp, LapicScenario, LapicVerdict, RETRIGGERED,
};
pub use pic::{
    check_pic, check_pic_with, compare_pic, PicFailure, PicScenario, PicVerdict,
    INTA_WITHOUT_REQUEST, PIC_UNMODELLED,
};
pub use scenario::{run, Event, Op, Route, Scenario, UNMODELLED};

/// How many scenarios, and where regressions go.
#[derive(Clone, Debug)]
pub struct Config {
    /// Random scenarios to run (the `PROPTEST_CASES` environment variable
    /// overrides it).
    pub cases: u32,
    /// Persist failing scenarios next to the calling test's source
    /// (`<test>.proptest-regressions`), and replay them first.
    pub persist: bool,
    /// A fixed seed for the scenarios (same run every time); `None`: a
    /// random one, as proptest does.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000),
            persist: true,
            seed: None,
        }
    }
}

/// What a run found: scenarios compared, and scenarios skipped by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub compared: u32,
    pub skipped: BTreeMap<&'static str, u32>,
}

/// A divergence between the device and the model, minimised.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The scenario, in `.irq` text.
    pub scenario: String,
    /// The two traces, event by event, the first difference marked.
    pub diff: String,
    /// The rule of the spec the device breaks at the first difference.
    pub rule: Rule,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the device diverges from the model: rule {} ({})",
            self.rule.name(),
            self.rule.citation()
        )?;
        writeln!(f, "\nminimal scenario (.irq):\n{}", self.scenario)?;
        write!(f, "trace (model | device):\n{}", self.diff)
    }
}

/// The skip reason of a scenario where the model refuses a level message.
/// Remote IRR is set when a local APIC *accepts* the message (82093AA
/// §3.2.4 bit 14); a device behind an MSI sink (alioth's `MsiSender`,
/// crosvm's irq events) cannot learn that, so the outcome is not the
/// device's to get right.
pub const REFUSED_LEVEL: &str = "a level message no local APIC accepts (an MSI sink cannot tell)";

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub enum Verdict {
    Same,
    Skipped(&'static str),
    Diverged(Failure),
}

/// Runs [`Config::default`] random scenarios against the device `make`
/// builds from the sink it is given; panics with the minimised
/// [`Failure`] on a divergence. Prints the summary (skips by reason).
#[track_caller]
pub fn check_ioapic<D, F>(make: F) -> Summary
where
    D: IoapicDevice + 'static,
    F: Fn(MessageQueue) -> D,
{
    let source = std::panic::Location::caller().file();
    match check_ioapic_with(&Config::default(), Some(source), make) {
        Ok(summary) => {
            eprintln!("irqdiff-check: {summary:?}");
            summary
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// [`check_ioapic`] with a [`Config`]; `source` is the calling test's file
/// (for the regressions file). Returns the minimised failure instead of
/// panicking.
pub fn check_ioapic_with<D, F>(
    config: &Config,
    source: Option<&'static str>,
    make: F,
) -> Result<Summary, Failure>
where
    D: IoapicDevice + 'static,
    F: Fn(MessageQueue) -> D,
{
    let version = scenario::version_of(&mut make(MessageQueue::new()));
    let mut runner = runner(config, source);
    let summary = RefCell::new(Summary::default());
    let result = runner.run(&scenario::strategy(version), |s| {
        match compare(&s, &make) {
            Verdict::Same => summary.borrow_mut().compared += 1,
            Verdict::Skipped(why) => *summary.borrow_mut().skipped.entry(why).or_default() += 1,
            Verdict::Diverged(f) => {
                return Err(proptest::test_runner::TestCaseError::fail(f.to_string()))
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(summary.into_inner()),
        Err(TestError::Fail(_, minimal)) => match compare(&minimal, &make) {
            Verdict::Diverged(f) => Err(f),
            _ => unreachable!("a failing scenario fails again"),
        },
        Err(TestError::Abort(why)) => panic!("irqdiff-check: proptest aborted: {why}"),
    }
}

/// Runs one scenario on the model and on the device and compares them.
pub fn compare<D, F>(s: &Scenario, make: &F) -> Verdict
where
    D: IoapicDevice + 'static,
    F: Fn(MessageQueue) -> D,
{
    let probe = make(MessageQueue::new());
    let unsupported = probe.unsupported();
    drop(probe);
    if let Some(why) = s.needs(&unsupported) {
        return Verdict::Skipped(why);
    }
    let model = run(s, None::<&F>);
    if s.refused_level(&model) {
        return Verdict::Skipped(REFUSED_LEVEL);
    }
    let device = run(s, Some(make));
    let Some(first) = (0..model.events.len().max(device.events.len()))
        .find(|&i| model.events.get(i) != device.events.get(i))
    else {
        return Verdict::Same;
    };
    let rule = scenario::rule_at(s, &model, &device, first);
    let mut diff = String::new();
    let len = model.events.len().max(device.events.len());
    for i in 0..len {
        if i > first + 8 {
            let _ = writeln!(diff, "   ... {} more events", len - i);
            break;
        }
        let show = |e: Option<&Event>| e.map_or("-".to_string(), |e| e.to_string());
        let (a, b) = (show(model.events.get(i)), show(device.events.get(i)));
        let mark = if i == first {
            ">>"
        } else if a != b {
            " !"
        } else {
            "  "
        };
        let _ = writeln!(diff, "{mark} {a:<44} | {b}");
    }
    Verdict::Diverged(Failure {
        scenario: s.to_string(),
        diff,
        rule,
    })
}

/// The proptest runner of a [`Config`]: its cases, seed and regressions
/// file (next to `source`).
fn runner(config: &Config, source: Option<&'static str>) -> TestRunner {
    let mut pt = PtConfig {
        cases: config.cases,
        source_file: source,
        failure_persistence: None,
        ..PtConfig::default()
    };
    if config.persist && source.is_some() {
        pt.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        )));
    }
    match config.seed {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRunner::new_with_rng(pt, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
        }
        None => TestRunner::new(pt),
    }
}
