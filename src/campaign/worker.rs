//! A campaign job as a process of its own (`irqdiff worker`, hidden): one
//! VM, orders on stdin, reports on stdout ([`super::protocol`]). The
//! supervisor starts it, kills it when a run passes its wall-clock bound,
//! and starts another.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::backend::{self, Backend, OpenError};
use crate::differ::Finding;
use crate::oracle::Signature;
use crate::scenario::generate::GenConfig;
use crate::scenario::print::print;
use crate::scenario::Scenario;
use crate::trace::Trace;

use super::job::{Job, Side};
use super::protocol::{encode, Order, Report};
use super::Tally;

/// Test only: a worker given this variable (a case index) wedges, as a
/// backend stuck in a run would, when it reaches that case. The tests of
/// the supervisor's wall-clock bound set it; nothing else should.
pub const STALL_AT_VAR: &str = "IRQDIFF_TEST_WORKER_STALL_AT";

/// How often a worker busy minimising says it is alive.
const ALIVE_EVERY: Duration = Duration::from_millis(200);

/// What a worker runs: the campaign's backend, generator and seed.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub backend: String,
    pub against: Option<String>,
    pub seed: u64,
    pub generator: GenConfig,
}

impl WorkerConfig {
    /// The command-line arguments of `irqdiff worker` for this config.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "worker".to_string(),
            "--backend".into(),
            self.backend.clone(),
            "--seed".into(),
            self.seed.to_string(),
            "--max-ops".into(),
            self.generator.max_ops.to_string(),
            "--wild-percent".into(),
            self.generator.wild_percent.to_string(),
            "--max-cpus".into(),
            self.generator.max_cpus.to_string(),
            "--pic-percent".into(),
            self.generator.pic_percent.to_string(),
        ];
        if let Some(third) = &self.against {
            args.extend(["--against".into(), third.clone()]);
        }
        args
    }
}

/// `irqdiff worker`: serves orders until stdin closes.
pub fn main(config: WorkerConfig) -> ExitCode {
    die_with_parent();
    let wire = Rc::new(RefCell::new(Wire {
        out: protocol_out(),
        last: Instant::now(),
    }));
    let opened = backend::open(&config.backend).and_then(|target| {
        let third = config.against.as_deref().map(backend::open).transpose()?;
        Ok((target, third))
    });
    let (target, third) = match opened {
        Ok(x) => x,
        Err(e) => {
            wire.borrow_mut().send(&Report::Failed {
                error: e.to_string(),
            });
            return ExitCode::from(match e {
                OpenError::Unavailable { .. } => crate::cli::EXIT_UNAVAILABLE,
                _ => crate::cli::EXIT_BAD_INPUT,
            });
        }
    };
    let heartbeat = Heartbeat {
        inner: target,
        wire: Rc::clone(&wire),
    };
    let mut job = Job::with_target(
        Box::new(heartbeat),
        third,
        &config.backend,
        config.seed,
        &config.generator,
    );
    let stall_at = std::env::var(STALL_AT_VAR)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let mut side = WorkerSide {
        wire: Rc::clone(&wire),
        inbox: Inbox {
            lines: Box::new(io::stdin().lock()),
            pending: VecDeque::new(),
        },
        known: BTreeSet::new(),
    };
    wire.borrow_mut().send(&Report::Ready {
        pid: std::process::id(),
        batch_size: job.batch_size(),
    });
    loop {
        let order = match side.inbox.next() {
            Ok(Some(order)) => order,
            Ok(None) => return ExitCode::SUCCESS, // the supervisor is done
            Err(e) => {
                eprintln!("irqdiff worker: {e}");
                return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
            }
        };
        match order {
            Order::Run { first, end } => {
                if let Some(stall) = stall_at.filter(|s| (first..end).contains(s)) {
                    job.run_range(first, stall, &mut side);
                    wedge();
                }
                job.run_range(first, end, &mut side);
            }
            Order::Render { index } => wire.borrow_mut().send(&Report::Scenario {
                index,
                text: print(&job.scenario(index)),
            }),
            Order::Claimed { .. } => {
                eprintln!("irqdiff worker: an answer to no claim; ignored");
            }
        }
    }
}

/// Stops here for good, as a run stuck in the hypervisor would (test only,
/// see [`STALL_AT_VAR`]).
fn wedge() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A worker must not outlive its supervisor (a wedged one would never
/// notice its stdin closing).
#[cfg(target_os = "linux")]
fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number by value and touches
    // no memory of ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent() {}

/// Where the reports go: the worker's stdout as it started. On Linux the
/// protocol moves to a duplicate of fd 1 and fd 1 itself goes to
/// /dev/null, so that whatever a backend's library prints to stdout (v86
/// logs every register access with `println!`) cannot corrupt it.
fn protocol_out() -> Box<dyn Write> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{AsRawFd, FromRawFd};
        let _ = io::stdout().flush();
        let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
            return Box::new(io::stdout().lock());
        };
        // SAFETY: dup(2) of this process's fd 1; the result, if valid, is a
        // new descriptor nothing else owns, handed to a File once.
        let fd = unsafe { libc::dup(1) };
        // SAFETY: dup2(2) onto fd 1 from an open descriptor of ours.
        if fd >= 0 && unsafe { libc::dup2(null.as_raw_fd(), 1) } >= 0 {
            // SAFETY: `fd` is a fresh descriptor from dup(2), owned by
            // nothing else (above).
            return Box::new(unsafe { std::fs::File::from_raw_fd(fd) });
        }
    }
    Box::new(io::stdout().lock())
}

/// The worker's stdout: one report per line, flushed at once (a report
/// still in a buffer when the worker is killed would be lost).
struct Wire {
    out: Box<dyn Write>,
    last: Instant,
}

impl Wire {
    fn send(&mut self, report: &Report) {
        let line = encode(report);
        if writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .is_err()
        {
            // The supervisor is gone: nobody to work for.
            std::process::exit(0);
        }
        self.last = Instant::now();
    }

    fn alive(&mut self) {
        if self.last.elapsed() >= ALIVE_EVERY {
            self.send(&Report::Alive);
        }
    }
}

/// The worker's stdin, with orders that arrived while it waited for the
/// answer to a claim.
struct Inbox {
    lines: Box<dyn BufRead>,
    pending: VecDeque<Order>,
}

impl Inbox {
    fn next(&mut self) -> io::Result<Option<Order>> {
        if let Some(order) = self.pending.pop_front() {
            return Ok(Some(order));
        }
        self.read()
    }

    fn read(&mut self) -> io::Result<Option<Order>> {
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad order `{}`: {e}", line.trim_end()),
            )
        })
    }
}

/// The campaign, from inside a worker: the supervisor at the other end.
struct WorkerSide {
    wire: Rc<RefCell<Wire>>,
    inbox: Inbox,
    /// Signatures this worker knows are taken (a cache of the supervisor's
    /// answers: each is asked once).
    known: BTreeSet<Signature>,
}

impl Side for WorkerSide {
    fn claim(&mut self, signature: &Signature) -> bool {
        if self.known.contains(signature) {
            return false;
        }
        self.wire.borrow_mut().send(&Report::Claim {
            signature: signature.clone(),
        });
        loop {
            match self.inbox.read() {
                Ok(Some(Order::Claimed { granted })) => {
                    self.known.insert(signature.clone());
                    return granted;
                }
                Ok(Some(other)) => self.inbox.pending.push_back(other),
                Ok(None) => std::process::exit(0),
                Err(e) => {
                    eprintln!("irqdiff worker: {e}");
                    std::process::exit(i32::from(crate::cli::EXIT_BAD_INPUT));
                }
            }
        }
    }

    fn release(&mut self, signature: &Signature) {
        self.known.remove(signature);
        self.wire.borrow_mut().send(&Report::Release {
            signature: signature.clone(),
        });
    }

    fn settle(&mut self, signature: &Signature) {
        self.wire.borrow_mut().send(&Report::Settle {
            signature: signature.clone(),
        });
    }

    fn found(&mut self, finding: Finding) {
        self.known.insert(finding.signature.clone());
        self.wire.borrow_mut().send(&Report::Found {
            finding: Box::new(finding),
        });
    }

    fn progress(&mut self, next: u64, tally: &mut Tally) {
        self.wire.borrow_mut().send(&Report::Progress {
            next,
            tally: std::mem::take(tally),
        });
    }
}

/// The worker's backend: the real one, saying it is alive after each run
/// (the minimiser's runs report no progress otherwise).
struct Heartbeat {
    inner: Box<dyn Backend>,
    wire: Rc<RefCell<Wire>>,
}

impl Backend for Heartbeat {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        self.inner.unsupported(scenario)
    }

    fn execute(&mut self, scenario: &Scenario) -> backend::Result<Trace> {
        let result = self.inner.execute(scenario);
        self.wire.borrow_mut().alive();
        result
    }

    fn run(&mut self, scenario: &Scenario) -> backend::Result<Trace> {
        let result = self.inner.run(scenario);
        self.wire.borrow_mut().alive();
        result
    }

    fn fit(&self, scenario: &mut Scenario) {
        self.inner.fit(scenario)
    }

    fn calls(&self) -> Vec<String> {
        self.inner.calls()
    }

    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }

    fn run_batch(&mut self, scenarios: &[Scenario]) -> Vec<Trace> {
        let traces = self.inner.run_batch(scenarios);
        self.wire.borrow_mut().alive();
        traces
    }

    fn run_to_trace(&mut self, scenario: &Scenario) -> Trace {
        let trace = self.inner.run_to_trace(scenario);
        self.wire.borrow_mut().alive();
        trace
    }
}
