//! Campaigns with worker processes: a killed worker loses nothing, a
//! wedged one is bounded, and `--time` and Ctrl-C end a campaign on time
//! with the right exit code. Every campaign here is `irqdiff fuzz`, the
//! real executable.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use irqdiff::scenario::generate::{case_seed, random, GenConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irqdiff-workers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `irqdiff fuzz ARGS --quiet --out OUT`, its stderr lines sent to the
/// returned channel as they come.
fn fuzz(args: &[&str], out: &Path, env: &[(&str, &str)]) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_irqdiff"))
        .arg("fuzz")
        .args(args)
        .args(["--quiet", "--out"])
        .arg(out)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("fuzz: {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for the campaign to exit; its status, stdout, and how long it took.
fn finish(mut child: Child, started: Instant) -> (ExitStatus, String, Duration) {
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    (status, stdout, started.elapsed())
}

/// The directory of a `new finding: ... -> DIR` line.
fn finding_dir(line: &str) -> Option<PathBuf> {
    line.strip_prefix("new finding: ")
        .and_then(|rest| rest.split(" -> ").nth(1))
        .map(PathBuf::from)
}

fn assert_complete(dir: &Path) {
    // At the end a campaign may fold one cause into another, moving the
    // finding's directory (rename(2)) under the cause that explains it.
    let moved;
    let dir = if dir.is_dir() {
        dir
    } else {
        let (cause_dir, name) = (dir.parent().unwrap(), dir.file_name().unwrap());
        let out = cause_dir.parent().unwrap();
        moved = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path().join(name))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("{} is nowhere under {}", dir.display(), out.display()));
        &moved
    };
    for file in ["original.irq", "min.irq", "report.md", "signature.json"] {
        assert!(dir.join(file).is_file(), "{}/{file} missing", dir.display());
    }
    common::load(&dir.join("min.irq"));
}

/// The child processes of `pid` (every thread's children).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
        }
    }
    out
}

/// A count in the summary line: the number before `what`.
fn summary_count(stdout: &str, what: &str) -> u64 {
    let at = stdout
        .find(what)
        .unwrap_or_else(|| panic!("no `{what}` in the summary:\n{stdout}"));
    let number = stdout[..at]
        .trim_end()
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap();
    number
        .parse()
        .unwrap_or_else(|_| panic!("`{number}` before `{what}`"))
}

#[test]
fn a_worker_killed_mid_campaign_is_replaced_and_nothing_it_reported_is_lost() {
    let out = scratch("kill9");
    let started = Instant::now();
    let args = [
        "--backend",
        "sim:hvf-known",
        "--isolation",
        "processes",
        "--jobs",
        "2",
        "--time",
        "4s",
    ];
    let (child, lines) = fuzz(&args, &out, &[]);
    // Two findings reported: both workers are running.
    let mut before = Vec::new();
    while before.len() < 2 {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("findings");
        before.extend(finding_dir(&line));
    }
    let workers = children(child.id());
    assert_eq!(workers.len(), 2, "two worker processes: {workers:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &workers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, stdout, _) = finish(child, started);
    let rest: Vec<String> = lines.iter().collect();
    // The supervisor noticed, said how far the campaign was, and went on.
    let restart = rest
        .iter()
        .find(|l| l.contains("signal: 9") && l.contains("starting another"))
        .unwrap_or_else(|| panic!("no restart reported: {rest:?}"));
    let at_kill: u64 = restart
        .split("after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no case count in `{restart}`"));
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(summary_count(&stdout, "cases in") > at_kill, "{stdout}");
    assert_eq!(summary_count(&stdout, "worker restarts"), 1, "{stdout}");
    for dir in before.iter().chain(
        rest.iter()
            .filter_map(|l| finding_dir(l))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert_complete(dir);
    }
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_wedged_worker_is_killed_its_case_recorded_as_stalled_and_saved() {
    let out = scratch("stall");
    let started = Instant::now();
    let args = [
        "--backend",
        "sim:hvf-known",
        "--isolation",
        "processes",
        "--jobs",
        "1",
        "--time",
        "4s",
        "--run-timeout",
        "1s",
    ];
    let (child, lines) = fuzz(
        &args,
        &out,
        &[(irqdiff::campaign::worker::STALL_AT_VAR, "5")],
    );
    let (status, stdout, took) = finish(child, started);
    let stderr: Vec<String> = lines.iter().collect();
    assert!(
        stderr.iter().any(|l| l.contains("case 5: backend stalled")),
        "{stderr:?}"
    );
    assert_eq!(summary_count(&stdout, "stalled runs"), 1, "{stdout}");
    assert_eq!(summary_count(&stdout, "worker restarts"), 1, "{stdout}");
    assert!(summary_count(&stdout, "cases in") > 100, "{stdout}");
    // The scenario that wedged, exactly (sim: fitting changes nothing).
    let saved = common::load(&out.join("stalled").join("case-5.irq"));
    assert_eq!(saved, random(case_seed(0, 5), &GenConfig::default()));
    assert_eq!(status.code(), Some(1));
    assert!(took < Duration::from_secs(9), "took {took:?}");
    std::fs::remove_dir_all(out).unwrap();
}

/// `--time 2s` on `backend`: the exit code, and that it ended in time.
fn timed_campaign(backend: &str, isolation: &str) -> i32 {
    let out = scratch(&format!("time-{}", backend.replace(':', "-")));
    let started = Instant::now();
    let args = [
        "--backend",
        backend,
        "--isolation",
        isolation,
        "--jobs",
        "2",
        "--time",
        "2s",
    ];
    let (child, _lines) = fuzz(&args, &out, &[]);
    let (status, stdout, took) = finish(child, started);
    // 2 s, at most 1 s to stop, and the start and the summary of a debug
    // build on a loaded machine.
    assert!(
        took < Duration::from_secs(6),
        "{backend}: took {took:?}\n{stdout}"
    );
    std::fs::remove_dir_all(out).unwrap();
    status.code().expect("exited")
}

#[test]
fn time_ends_the_campaign_with_1_for_divergences_and_0_for_none() {
    assert_eq!(timed_campaign("model", "processes"), 0);
    assert_eq!(timed_campaign("model", "threads"), 0);
    assert_eq!(timed_campaign("sim:hvf-known", "processes"), 1);
    assert_eq!(timed_campaign("sim:hvf-known", "threads"), 1);
}

#[test]
fn time_ends_a_kvm_campaign_with_1() {
    if !common::kvm_or_skip("time_ends_a_kvm_campaign_with_1") {
        return;
    }
    // This host's KVM has documented divergences: any campaign finds them.
    assert_eq!(timed_campaign("kvm", "auto"), 1);
}

#[test]
fn ctrl_c_stops_the_campaign_within_a_second_with_the_exit_code_of_its_results() {
    let out = scratch("sigint");
    let args = [
        "--backend",
        "sim:hvf-known",
        "--isolation",
        "processes",
        "--jobs",
        "2",
    ];
    let (child, lines) = fuzz(&args, &out, &[]);
    while finding_dir(&lines.recv_timeout(Duration::from_secs(30)).unwrap()).is_none() {}
    let workers = children(child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let interrupted = Instant::now();
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, stdout, took) = finish(child, interrupted);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // No worker outlives the campaign.
    for pid in workers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} still runs"
        );
    }
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn threads_are_refused_for_a_backend_with_a_vm() {
    let out = scratch("threads-vm");
    let args = ["--backend", "kvm", "--isolation", "threads", "--cases", "1"];
    let (child, lines) = fuzz(&args, &out, &[]);
    let (status, _, _) = finish(child, Instant::now());
    assert_eq!(status.code(), Some(2));
    let stderr: Vec<String> = lines.iter().collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("`kvm` runs a VM: its jobs must be worker processes")),
        "{stderr:?}"
    );
    let _ = std::fs::remove_dir_all(out);
}
