//! Worker processes, supervised: the parent hands out ranges of case
//! indices, answers claims, writes what workers find, and bounds every run.
//!
//! - A worker that says nothing for longer than the run timeout (times its
//!   batch size) while it has work is killed (SIGKILL); the case(s) of the
//!   batch it was running are recorded as `error` outcomes ("backend
//!   stalled") and their scenarios saved as `OUT/stalled/case-I.irq`
//!   (rendered by the replacement worker); the rest of its work is handed
//!   out again.
//! - A worker that exits or is killed by someone else is replaced; its
//!   unfinished cases are re-run (a case is counted only once its batch is
//!   reported done, so nothing is counted twice). A case at which two
//!   workers died is recorded as an `error` and saved, like a stall.
//! - Everything a worker reported (findings, counts) is the parent's as
//!   soon as it is read: a finding is on disk before it is announced.
//! - `--time` and Ctrl-C: no more work is handed out, stdins are closed,
//!   and workers still running after a short grace are killed.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::oracle::Signature;

use super::protocol::{encode, Order, Report};
use super::worker::WorkerConfig;
use super::{CampaignError, Ledger};

/// Ranges handed to a worker are this many batches long.
const RANGE_BATCHES: u64 = 16;
/// Ranges queued at a worker (one running, one waiting in its pipe).
const QUEUED_RANGES: usize = 2;
/// How long workers may take to finish when the campaign stops.
const GRACE: Duration = Duration::from_millis(300);
/// How often the supervisor looks at the clock with nothing to read.
const TICK: Duration = Duration::from_millis(20);
/// Workers that die before they are ready, in a row, before giving up.
const MAX_FAILED_STARTS: usize = 3;

/// What the reader threads pass on.
enum Event {
    Report {
        slot: usize,
        generation: u64,
        report: Report,
    },
    Gone {
        slot: usize,
        generation: u64,
    },
}

/// One worker process and what it has been given.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Tells this process's reports from those of the one it replaced.
    generation: u64,
    ready: bool,
    batch_size: u64,
    last_heard: Instant,
    /// The ranges it was given and has not finished, the running one first.
    ranges: VecDeque<Range<u64>>,
    /// Signatures it claimed and has not yet reported on.
    claims: BTreeSet<Signature>,
    /// Stalled cases whose scenarios it was asked to render.
    renders: BTreeSet<u64>,
}

impl Worker {
    fn busy(&self) -> bool {
        !self.ready || !self.ranges.is_empty() || !self.renders.is_empty()
    }

    fn send(&mut self, order: &Order) {
        if let Some(stdin) = self.stdin.as_mut() {
            // A worker that is gone is noticed by its reader or try_wait.
            let _ = writeln!(stdin, "{}", encode(order));
        }
    }
}

struct Pool<'l, 'a> {
    ledger: &'l Ledger<'a>,
    config: WorkerConfig,
    exe: PathBuf,
    events: Sender<Event>,
    workers: Vec<Worker>,
    /// Unfinished work of workers that died, handed out first.
    requeued: VecDeque<Range<u64>>,
    next_fresh: u64,
    next_generation: u64,
    /// Cases at which a worker died once (a second death records them).
    died_at: BTreeSet<u64>,
    failed_starts: usize,
    last_failure: Option<String>,
    stopping: bool,
}

pub(super) fn run(ledger: &Ledger<'_>, deadline: Option<Instant>) -> Result<(), CampaignError> {
    let options = ledger.options;
    let exe = options
        .worker_exe
        .clone()
        .ok_or_else(|| CampaignError::NoWorkerExecutable {
            backend: options.backend.clone(),
        })?;
    let (events, inbox) = mpsc::channel();
    let mut pool = Pool {
        ledger,
        config: WorkerConfig {
            backend: options.backend.clone(),
            against: options.against.clone(),
            seed: options.seed,
            generator: options.generator.clone(),
        },
        exe,
        events,
        workers: Vec::new(),
        requeued: VecDeque::new(),
        next_fresh: 0,
        next_generation: 0,
        died_at: BTreeSet::new(),
        failed_starts: 0,
        last_failure: None,
        stopping: false,
    };
    for slot in 0..options.jobs.max(1) {
        let worker = pool.spawn(slot)?;
        pool.workers.push(worker);
    }
    let result = pool.supervise(&inbox, deadline);
    pool.shut_down(&inbox);
    result
}

impl Pool<'_, '_> {
    fn spawn(&mut self, slot: usize) -> Result<Worker, CampaignError> {
        let mut command = Command::new(&self.exe);
        command
            .args(self.config.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Ctrl-C at the terminal is the supervisor's to handle: workers
        // are stopped by it, not by the signal.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|source| CampaignError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let stdout = child.stdout.take().expect("stdout is piped");
        let events = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Report>(&line) {
                    Ok(report) => {
                        let event = Event::Report {
                            slot,
                            generation,
                            report,
                        };
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("irqdiff: worker {slot}: not a report ({e}): {line}"),
                }
            }
            let _ = events.send(Event::Gone { slot, generation });
        });
        Ok(Worker {
            stdin: child.stdin.take(),
            child,
            generation,
            ready: false,
            batch_size: 1,
            last_heard: Instant::now(),
            ranges: VecDeque::new(),
            claims: BTreeSet::new(),
            renders: BTreeSet::new(),
        })
    }

    fn supervise(
        &mut self,
        inbox: &Receiver<Event>,
        deadline: Option<Instant>,
    ) -> Result<(), CampaignError> {
        let mut checked = Instant::now();
        loop {
            if self.ledger.should_stop(deadline) {
                return Ok(());
            }
            match inbox.recv_timeout(TICK) {
                Ok(event) => self.handle(event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the pool holds a sender"),
            }
            // The clocks and exit statuses once a tick, not once a report.
            if checked.elapsed() >= TICK {
                checked = Instant::now();
                for slot in 0..self.workers.len() {
                    self.check(slot)?;
                }
            }
            for slot in 0..self.workers.len() {
                self.hand_out(slot);
            }
            let work_left = !self.requeued.is_empty() || self.fresh_left();
            if !work_left && self.workers.iter().all(|w| w.ready && !w.busy()) {
                return Ok(());
            }
        }
    }

    fn fresh_left(&self) -> bool {
        self.ledger
            .options
            .cases
            .is_none_or(|cases| self.next_fresh < cases)
    }

    /// The next range of work for a worker with this batch size.
    fn next_range(&mut self, batch_size: u64) -> Option<Range<u64>> {
        if let Some(range) = self.requeued.pop_front() {
            return Some(range);
        }
        if !self.fresh_left() {
            return None;
        }
        let first = self.next_fresh;
        let end =
            (first + RANGE_BATCHES * batch_size).min(self.ledger.options.cases.unwrap_or(u64::MAX));
        self.next_fresh = end;
        Some(first..end)
    }

    fn hand_out(&mut self, slot: usize) {
        if self.stopping || !self.workers[slot].ready {
            return;
        }
        while self.workers[slot].ranges.len() < QUEUED_RANGES {
            let Some(range) = self.next_range(self.workers[slot].batch_size) else {
                return;
            };
            let worker = &mut self.workers[slot];
            if !worker.busy() {
                worker.last_heard = Instant::now(); // idle time is no stall
            }
            worker.send(&Order::Run {
                first: range.start,
                end: range.end,
            });
            worker.ranges.push_back(range);
        }
    }

    /// The run timeout applied to a worker: per case of its batch.
    fn limit(&self, worker: &Worker) -> Duration {
        let runs = if worker.ready { worker.batch_size } else { 1 };
        self.ledger.options.run_timeout * u32::try_from(runs).unwrap_or(u32::MAX)
    }

    /// Replaces a worker that exited or passed its bound.
    fn check(&mut self, slot: usize) -> Result<(), CampaignError> {
        let worker = &mut self.workers[slot];
        if let Ok(Some(status)) = worker.child.try_wait() {
            return self.replace(slot, &format!("worker exited ({status})"), false);
        }
        let limit = self.limit(&self.workers[slot]);
        let worker = &self.workers[slot];
        if worker.busy() && worker.last_heard.elapsed() > limit {
            let why = format!("backend stalled (no answer in {:.0?})", limit);
            return self.replace(slot, &why, true);
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), CampaignError> {
        let (slot, generation, report) = match event {
            Event::Gone { slot, generation } => {
                if self.workers[slot].generation == generation {
                    // Its stdout closed: it is exiting; reap it.
                    let status = self.workers[slot].child.wait();
                    let why = match status {
                        Ok(s) => format!("worker exited ({s})"),
                        Err(e) => format!("worker lost ({e})"),
                    };
                    return self.replace(slot, &why, false);
                }
                return Ok(());
            }
            Event::Report {
                slot,
                generation,
                report,
            } => (slot, generation, report),
        };
        if self.workers[slot].generation != generation {
            return Ok(()); // from a worker already replaced
        }
        let ledger = self.ledger;
        let stopping = self.stopping;
        let worker = &mut self.workers[slot];
        worker.last_heard = Instant::now();
        match report {
            Report::Ready { batch_size, .. } => {
                worker.ready = true;
                worker.batch_size = batch_size.max(1);
                self.failed_starts = 0;
            }
            Report::Progress { next, tally } => {
                ledger.count(tally);
                if let Some(front) = worker.ranges.front_mut() {
                    front.start = next.clamp(front.start, front.end);
                    if front.is_empty() {
                        worker.ranges.pop_front();
                    }
                }
            }
            Report::Alive => {}
            Report::Claim { signature } => {
                // No new minimisation once the campaign is stopping.
                let granted = !stopping && ledger.claim(&signature);
                if granted {
                    worker.claims.insert(signature);
                }
                worker.send(&Order::Claimed { granted });
            }
            Report::Release { signature } => {
                worker.claims.remove(&signature);
                ledger.release(&signature);
            }
            Report::Settle { signature } => {
                worker.claims.remove(&signature);
            }
            Report::Found { finding } => {
                worker.claims.remove(&finding.signature);
                ledger.record(*finding);
            }
            Report::Scenario { index, text } => {
                worker.renders.remove(&index);
                ledger.save_stalled(index, &text);
            }
            Report::Failed { error } => {
                ledger.note_error(error.clone());
                self.last_failure = Some(error);
            }
        }
        Ok(())
    }

    /// Kills (if need be) and replaces the worker in `slot`. `stalled`: it
    /// passed its bound, so the batch it was running is recorded, not re-run.
    fn replace(&mut self, slot: usize, why: &str, stalled: bool) -> Result<(), CampaignError> {
        let mut dead = {
            let worker = &mut self.workers[slot];
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            worker.stdin = None;
            // Its reports still in the pipe are ignored from here on.
            worker.generation = u64::MAX;
            std::mem::take(&mut worker.ranges)
        };
        let worker = &mut self.workers[slot];
        for signature in std::mem::take(&mut worker.claims) {
            self.ledger.release(&signature);
        }
        let mut renders = std::mem::take(&mut worker.renders);
        let (ready, batch_size) = (worker.ready, worker.batch_size);
        if !ready {
            self.failed_starts += 1;
            let failure = self.last_failure.clone().unwrap_or_else(|| why.to_string());
            if self.failed_starts >= MAX_FAILED_STARTS {
                return Err(CampaignError::Worker(format!(
                    "{MAX_FAILED_STARTS} workers in a row failed to start: {failure}"
                )));
            }
        }
        if let Some(front) = dead.front_mut() {
            let running = front.start;
            // A stall: its batch. A death: the case, if one died there before.
            let recorded = if stalled {
                running..front.end.min(running + batch_size)
            } else if !self.died_at.insert(running) {
                running..running + 1
            } else {
                running..running
            };
            for index in recorded.clone() {
                let what = if stalled {
                    why.to_string()
                } else {
                    format!("{why} twice at this case")
                };
                self.ledger.record_stalled(index, &what);
                renders.insert(index);
            }
            front.start = recorded.end;
        }
        for range in dead.into_iter().rev().filter(|r| !r.is_empty()) {
            self.requeued.push_front(range);
        }
        if self.stopping {
            return Ok(());
        }
        eprintln!(
            "irqdiff: worker {slot}: {why} after {} cases; starting another",
            self.ledger.stats.cases.load(Ordering::Relaxed)
        );
        self.ledger.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let mut worker = self.spawn(slot)?;
        for &index in &renders {
            worker.send(&Order::Render { index });
        }
        worker.renders = renders;
        self.workers[slot] = worker;
        Ok(())
    }

    /// Closes every worker's stdin, lets them finish for a short grace
    /// (reading what they still report), then kills the rest.
    fn shut_down(&mut self, inbox: &Receiver<Event>) {
        self.stopping = true;
        for worker in &mut self.workers {
            worker.stdin = None;
        }
        let until = Instant::now() + GRACE;
        while Instant::now() < until {
            let all_gone = self
                .workers
                .iter_mut()
                .all(|w| w.generation == u64::MAX || matches!(w.child.try_wait(), Ok(Some(_))));
            if all_gone {
                break;
            }
            if let Ok(Event::Report {
                slot,
                generation,
                report,
            }) = inbox.recv_timeout(TICK)
            {
                let _ = self.handle(Event::Report {
                    slot,
                    generation,
                    report,
                });
            }
        }
        // Reports already in the pipes (a finding announced before exit).
        while let Ok(event) = inbox.try_recv() {
            if let Event::Report { .. } = event {
                let _ = self.handle(event);
            }
        }
        // All killed first: their VMs are torn down side by side.
        for worker in &mut self.workers {
            let _ = worker.child.kill();
        }
        for worker in &mut self.workers {
            let _ = worker.child.wait();
        }
    }
}
