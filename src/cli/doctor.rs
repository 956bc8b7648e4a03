//! `irqdiff doctor`: a first-run check of this host, written as a Markdown
//! report a user can attach to a Feedback Assistant report or a qemu-devel
//! post: versions, CPU, each check with pass/fail and why, and the
//! kvm-unit-tests scenarios on this host's hypervisor backends.
//!
//! Linux: KVM (`/dev/kvm`, the capabilities the `kvm` and `kvm-split`
//! backends need, `KVM_CAP_IMMEDIATE_EXIT`) and QEMU (version, x2APIC under
//! TCG, `pc-testdev`). macOS, in this order: the macOS version, whether the
//! APIC functions resolve, Rosetta and Apple silicon, the CPU model, the
//! hypervisor entitlement, a guest bring-up, the scenarios on `hvf` and
//! `hvf-split`. Every scenario and the bring-up run in a child process
//! (`irqdiff diff`, `irqdiff run`): Hypervisor.framework allows one VM per
//! process. Exit status: 0 no check failed, 1 one did, 2 the report could
//! not be written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Also write the report to FILE.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip running the kvm-unit-tests scenarios.
    #[arg(long)]
    pub no_scenarios: bool,
    /// The kvm-unit-tests scenarios (default: scenarios/kvm-unit-tests of
    /// the irqdiff checkout this binary was built from).
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Works, with a caveat the reader should know.
    Warn,
    Fail,
    /// Not applicable here, or not reached after an earlier failure.
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report's checks table.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub why: String,
}

fn check(name: &str, status: Status, why: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        why: why.into(),
    }
}

/// The whole report.
#[derive(Debug, Default)]
pub struct Report {
    /// (what, value): versions, OS, CPU.
    pub facts: Vec<(String, String)>,
    pub checks: Vec<Check>,
    /// (scenario, backend, result).
    pub scenarios: Vec<(String, String, String)>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut md = String::from("# irqdiff doctor\n\n");
        for (what, value) in &self.facts {
            let _ = writeln!(md, "- **{what}**: {}", cell(value));
        }
        md += "\n## Checks\n\n| check | result | why |\n|---|---|---|\n";
        for c in &self.checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(&c.name),
                c.status.word(),
                cell(&c.why)
            );
        }
        if !self.scenarios.is_empty() {
            md +=
                "\n## kvm-unit-tests scenarios\n\n| scenario | backend | result |\n|---|---|---|\n";
            for (scenario, backend, result) in &self.scenarios {
                let _ = writeln!(md, "| {} | {backend} | {} |", cell(scenario), cell(result));
            }
        }
        md += "\n## What to send\n\nThis report, and for each divergence the `findings/<signature>/` directory of \
               `irqdiff fuzz` (or `irqdiff emit FILE --as report --backend B`).\n";
        md
    }
}

pub fn main(args: DoctorArgs) -> ExitCode {
    let report = run(&args);
    let md = report.markdown();
    print!("{md}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, &md) {
            eprintln!("irqdiff doctor: {}: {e}", out.display());
            return ExitCode::from(super::EXIT_BAD_INPUT);
        }
    }
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check for this OS, then the scenarios on the backends that passed.
pub fn run(args: &DoctorArgs) -> Report {
    let mut report = Report::default();
    report.facts.push((
        "irqdiff".into(),
        format!(
            "{} ({} {})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    ));
    let backends = platform_checks(&mut report);
    bring_up(&mut report, backends.first().copied());
    if args.no_scenarios {
        report.checks.push(check(
            "kvm-unit-tests scenarios",
            Status::Skip,
            "--no-scenarios",
        ));
    } else {
        scenarios(&mut report, args, &backends);
    }
    report
}

/// The output of `cmd`, trimmed, if it ran and succeeded.
fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(target_os = "linux")]
fn platform_checks(report: &mut Report) -> Vec<&'static str> {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown distribution".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    report
        .facts
        .push(("OS".into(), format!("{os}, Linux {kernel}")));
    report.facts.push(("CPU".into(), linux_cpu()));
    let mut backends = Vec::new();
    for (check, usable) in kvm_checks() {
        if usable.is_some() {
            backends.extend(usable);
        }
        report.checks.push(check);
    }
    report.checks.extend(qemu_checks());
    backends
}

/// `model name`, family and model of the first CPU in /proc/cpuinfo.
#[cfg(target_os = "linux")]
fn linux_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} (family {}, model {})",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}

/// /dev/kvm, the capabilities each KVM backend needs, and which backends
/// can run (the second of each pair).
#[cfg(target_os = "linux")]
fn kvm_checks() -> Vec<(Check, Option<&'static str>)> {
    use kvm_ioctls::{Cap, Kvm};
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            let why = match crate::backend::kvm::probe(false) {
                crate::backend::Availability::Unavailable(why) => why,
                crate::backend::Availability::Available => e.to_string(),
            };
            return vec![(
                check(
                    "KVM (/dev/kvm)",
                    Status::Fail,
                    format!("unavailable: {why}"),
                ),
                None,
            )];
        }
    };
    let caps = |list: &[(Cap, &'static str)]| -> Vec<&'static str> {
        list.iter()
            .filter(|(cap, _)| !kvm.check_extension(*cap))
            .map(|(_, name)| *name)
            .collect()
    };
    let mut out = vec![(
        check(
            "KVM (/dev/kvm)",
            Status::Pass,
            format!("available: KVM API version {}", kvm.get_api_version()),
        ),
        None,
    )];
    for (name, backend, needed) in [
        (
            "KVM in-kernel irqchip (backend kvm)",
            "kvm",
            &[
                (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
                (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
                (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            ][..],
        ),
        (
            "KVM split irqchip (backend kvm-split)",
            "kvm-split",
            &[
                (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
                (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
                (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            ][..],
        ),
    ] {
        let missing = caps(needed);
        let names: Vec<&str> = needed.iter().map(|(_, n)| *n).collect();
        out.push(if missing.is_empty() {
            (check(name, Status::Pass, names.join(", ")), Some(backend))
        } else {
            (
                check(
                    name,
                    Status::Fail,
                    format!("missing {}", missing.join(", ")),
                ),
                None,
            )
        });
    }
    out.push((
        if kvm.check_extension(Cap::ImmediateExit) {
            check(
                "KVM_CAP_IMMEDIATE_EXIT",
                Status::Pass,
                "a hang kick cannot be lost between the check and KVM_RUN",
            )
        } else {
            check(
                "KVM_CAP_IMMEDIATE_EXIT",
                Status::Warn,
                "missing: a kick that lands just before KVM_RUN is lost; hangs are found one kick later",
            )
        },
        None,
    ));
    out
}

/// QEMU's version, x2APIC under TCG (QEMU 8.1 and later) and pc-testdev.
#[cfg(target_os = "linux")]
fn qemu_checks() -> Vec<Check> {
    const QEMU: &str = "qemu-system-x86_64";
    let Some(version_line) = output(QEMU, &["--version"]) else {
        return vec![check(
            "QEMU (backend qemu-tcg)",
            Status::Fail,
            format!("{QEMU} not found (install the qemu-system-x86 package)"),
        )];
    };
    let first = version_line.lines().next().unwrap_or("").to_string();
    let version = parse_qemu_version(&first);
    let mut out = vec![check(
        "QEMU (backend qemu-tcg)",
        Status::Pass,
        first.clone(),
    )];
    out.push(match version {
        Some(v) if v >= (8, 1) => check("QEMU x2APIC under TCG", Status::Pass, "QEMU 8.1 or later"),
        Some((major, minor)) => check(
            "QEMU x2APIC under TCG",
            Status::Warn,
            format!("QEMU {major}.{minor}: TCG emulates x2APIC from 8.1 on; x2APIC scenarios cannot run on qemu-tcg"),
        ),
        None => check("QEMU x2APIC under TCG", Status::Warn, format!("version not understood: {first}")),
    });
    let devices = output(QEMU, &["-machine", "none", "-device", "help"]).unwrap_or_default();
    out.push(if devices.contains("\"pc-testdev\"") {
        check(
            "QEMU pc-testdev",
            Status::Pass,
            "drives ISA IRQs 0-15 for the qemu backends",
        )
    } else {
        check(
            "QEMU pc-testdev",
            Status::Fail,
            "not in `-device help`: the qemu backends cannot drive IOAPIC pins",
        )
    });
    out
}

/// (major, minor) of "QEMU emulator version 7.2.0 (...)".
pub fn parse_qemu_version(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Family 6 models before Skylake that shipped in Intel Macs (Intel's SDM
/// vol. 4 table 2-1 names them): OrbStack's issues report
/// Hypervisor.framework's accelerated APIC unreliable on them.
pub fn pre_skylake(family: u32, model: u32) -> Option<&'static str> {
    if family != 6 {
        return None;
    }
    Some(match model {
        0x17 | 0x1d => "Penryn",
        0x1a | 0x1e | 0x1f | 0x2e => "Nehalem",
        0x25 | 0x2c | 0x2f => "Westmere",
        0x2a | 0x2d => "Sandy Bridge",
        0x3a | 0x3e => "Ivy Bridge",
        0x3c | 0x3f | 0x45 | 0x46 => "Haswell",
        0x3d | 0x47 | 0x4f | 0x56 => "Broadwell",
        _ => return None,
    })
}

/// What a framework error code means, for the report.
pub fn hv_error_meaning(code: i32) -> &'static str {
    use hypervisor_framework_sys as hv;
    match code {
        hv::HV_DENIED => {
            "HV_DENIED: the process lacks the com.apple.security.hypervisor entitlement"
        }
        hv::HV_BUSY => "HV_BUSY: a VM exists in this process already (one VM per process)",
        hv::HV_UNSUPPORTED => "HV_UNSUPPORTED: not supported on this Mac or macOS",
        hv::HV_NO_DEVICE => "HV_NO_DEVICE: no VMX (virtualisation disabled or not an Intel Mac)",
        hv::HV_NO_RESOURCES => "HV_NO_RESOURCES",
        hv::HV_BAD_ARGUMENT => "HV_BAD_ARGUMENT",
        hv::HV_ERROR => "HV_ERROR",
        _ => "an undocumented code",
    }
}

/// The command that gives `exe` the hypervisor entitlement, with the
/// entitlements file of the checkout this irqdiff was built from.
pub fn codesign_command(exe: &Path) -> String {
    let entitlements = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hv.entitlements");
    format!(
        "codesign --sign - --entitlements {} --force {}",
        entitlements.display(),
        exe.display()
    )
}

/// Adds `c`; whether it did not fail.
#[cfg(target_os = "macos")]
fn add(report: &mut Report, c: Check) -> bool {
    let passed = c.status != Status::Fail;
    report.checks.push(c);
    passed
}

#[cfg(target_os = "macos")]
fn sysctl(name: &str) -> Option<String> {
    output("sysctl", &["-n", name])
}

#[cfg(target_os = "macos")]
fn platform_checks(report: &mut Report) -> Vec<&'static str> {
    let version = sysctl("kern.osproductversion")
        .or_else(|| output("sw_vers", &["-productVersion"]))
        .unwrap_or_default();
    let build = sysctl("kern.osversion").unwrap_or_default();
    report
        .facts
        .push(("macOS".into(), format!("{version} ({build})")));
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let mut ok = true;
    ok &= add(
        report,
        if major >= 12 {
            check("macOS 12 or later", Status::Pass, version.clone())
        } else {
            check(
                "macOS 12 or later",
                Status::Fail,
                format!("macOS {version}: the in-kernel APIC API (HV_VM_ACCEL_APIC) arrived in macOS 12"),
            )
        },
    );
    let missing = hypervisor_framework_sys::missing_functions();
    ok &= add(
        report,
        if missing.is_empty() {
            check(
                "APIC functions resolve",
                Status::Pass,
                "every macOS 12 function of Hypervisor.framework irqdiff calls is exported",
            )
        } else {
            check(
                "APIC functions resolve",
                Status::Fail,
                format!(
                    "missing from this Hypervisor.framework: {}",
                    missing.join(", ")
                ),
            )
        },
    );
    let translated = sysctl("sysctl.proc_translated").as_deref() == Some("1");
    let arm64 = sysctl("hw.optional.arm64").as_deref() == Some("1");
    ok &= add(
        report,
        match (translated, arm64) {
            (true, _) => check(
                "Intel Mac, native",
                Status::Fail,
                "running under Rosetta on Apple silicon: Hypervisor.framework's x86 API is not there",
            ),
            (false, true) => check(
                "Intel Mac, native",
                Status::Fail,
                "Apple silicon: the x86 APIC API exists on Intel Macs only",
            ),
            (false, false) => check("Intel Mac, native", Status::Pass, "x86_64, not translated"),
        },
    );
    let brand = sysctl("machdep.cpu.brand_string").unwrap_or_default();
    let family: u32 = sysctl("machdep.cpu.family")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let model: u32 = sysctl("machdep.cpu.model")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    report.facts.push((
        "CPU".into(),
        format!("{brand} (family {family}, model {model:#x})"),
    ));
    ok &= add(
        report,
        match pre_skylake(family, model) {
            Some(name) => check(
                "CPU Skylake or later",
                Status::Warn,
                format!("{name}: OrbStack's issues report the accelerated APIC unreliable before Skylake; findings here may be the CPU's"),
            ),
            None => check("CPU Skylake or later", Status::Pass, brand.clone()),
        },
    );
    ok &= add(
        report,
        if ok {
            entitlement_check()
        } else {
            check(
                "hypervisor entitlement",
                Status::Skip,
                "an earlier check failed",
            )
        },
    );
    if ok {
        vec!["hvf", "hvf-split"]
    } else {
        Vec::new()
    }
}

/// `hv_vm_create` (then `hv_vm_destroy`): the entitlement.
#[cfg(all(target_os = "macos", target_arch = "x86_64"))]
fn entitlement_check() -> Check {
    use hypervisor_framework_sys as hv;
    // SAFETY: a plain call; the VM has no vCPU and is destroyed below.
    let r = unsafe { hv::hv_vm_create(hv::HV_VM_ACCEL_APIC) };
    if r != hv::HV_SUCCESS {
        let exe = std::env::current_exe().unwrap_or_default();
        let fix = if r == hv::HV_DENIED {
            format!(
                "; fix: `{}` (cargo run does it: .cargo/config.toml)",
                codesign_command(&exe)
            )
        } else {
            String::new()
        };
        return check(
            "hypervisor entitlement",
            Status::Fail,
            format!(
                "hv_vm_create(HV_VM_ACCEL_APIC) = {:#x}, {}{fix}",
                r as u32,
                hv_error_meaning(r)
            ),
        );
    }
    // SAFETY: destroys the VM just created, which has no vCPU.
    let d = unsafe { hv::hv_vm_destroy() };
    if d != hv::HV_SUCCESS {
        return check(
            "hypervisor entitlement",
            Status::Fail,
            format!("hv_vm_destroy = {:#x}, {}", d as u32, hv_error_meaning(d)),
        );
    }
    check(
        "hypervisor entitlement",
        Status::Pass,
        "hv_vm_create(HV_VM_ACCEL_APIC) and hv_vm_destroy succeed",
    )
}

#[cfg(all(target_os = "macos", not(target_arch = "x86_64")))]
fn entitlement_check() -> Check {
    check(
        "hypervisor entitlement",
        Status::Skip,
        "this irqdiff is not an x86_64 build",
    )
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn platform_checks(report: &mut Report) -> Vec<&'static str> {
    report.checks.push(check(
        "hypervisor",
        Status::Skip,
        "irqdiff drives KVM (Linux) and Hypervisor.framework (Intel macOS); here only the model and QEMU",
    ));
    Vec::new()
}

/// The guest stub with one op (its `out`s to the PIC and the end port) on
/// the first usable backend, in a child process.
fn bring_up(report: &mut Report, backend: Option<&str>) {
    let Some(backend) = backend else {
        report.checks.push(check(
            "guest bring-up",
            Status::Skip,
            "no hypervisor backend is usable here",
        ));
        return;
    };
    let name = format!("guest bring-up ({backend})");
    let file = std::env::temp_dir().join(format!("irqdiff-doctor-{}.irq", std::process::id()));
    if let Err(e) = std::fs::write(&file, "nop\n") {
        report.checks.push(check(
            &name,
            Status::Fail,
            format!("{}: {e}", file.display()),
        ));
        return;
    }
    let result = child(&["run", &file.to_string_lossy(), "--backend", backend]);
    let _ = std::fs::remove_file(&file);
    report.checks.push(match result {
        Ok((0, out, _)) if out.lines().any(|l| l == "completed") => {
            check(&name, Status::Pass, "the stub ran one op to its end port")
        }
        Ok((code, out, err)) => check(
            &name,
            Status::Fail,
            format!(
                "exit {code}: {}",
                first_line(&err).unwrap_or(first_line(&out).unwrap_or(""))
            ),
        ),
        Err(e) => check(&name, Status::Fail, e),
    });
}

fn first_line(s: &str) -> Option<&str> {
    s.lines().find(|l| !l.trim().is_empty())
}

/// Runs this irqdiff with `args`: (exit code, stdout, stderr).
fn child(args: &[&str]) -> Result<(i32, String, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this irqdiff: {e}"))?;
    let out = Command::new(exe)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run irqdiff {}: {e}", args.join(" ")))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Every kvm-unit-tests scenario on each backend, each in its own process
/// (`irqdiff diff`, so a Hypervisor.framework VM per process).
fn scenarios(report: &mut Report, args: &DoctorArgs, backends: &[&str]) {
    let dir = args
        .scenarios
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/kvm-unit-tests"));
    if backends.is_empty() {
        report.checks.push(check(
            "kvm-unit-tests scenarios",
            Status::Skip,
            "no hypervisor backend is usable here",
        ));
        return;
    }
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "irq"))
            .collect(),
        Err(e) => {
            report.checks.push(check(
                "kvm-unit-tests scenarios",
                Status::Skip,
                format!("{}: {e} (pass --scenarios DIR)", dir.display()),
            ));
            return;
        }
    };
    files.sort();
    for backend in backends {
        let (mut agree, mut diverge, mut errors) = (0, 0, 0);
        for file in &files {
            let result = match child(&["diff", &file.to_string_lossy(), "--backend", backend]) {
                Ok((0, _, _)) => {
                    agree += 1;
                    "agrees with the model".to_string()
                }
                Ok((1, out, _)) => {
                    diverge += 1;
                    let line = |prefix: &str| {
                        out.lines()
                            .find_map(|l| l.strip_prefix(prefix))
                            .map(str::trim)
                            .unwrap_or("")
                            .to_string()
                    };
                    let known = line("known:");
                    let mut r = format!("diverges: {}", line("signature:"));
                    if !known.is_empty() {
                        r += &format!(" (known: {known})");
                    }
                    r
                }
                Ok((code, out, err)) => {
                    errors += 1;
                    format!(
                        "error (exit {code}): {}",
                        first_line(&err).or(first_line(&out)).unwrap_or("")
                    )
                }
                Err(e) => {
                    errors += 1;
                    e
                }
            };
            let name = file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            report.scenarios.push((name, backend.to_string(), result));
        }
        report.checks.push(check(
            &format!("kvm-unit-tests on {backend}"),
            if errors > 0 {
                Status::Fail
            } else if diverge > 0 {
                Status::Warn
            } else {
                Status::Pass
            },
            format!(
                "{agree} agree, {diverge} diverge, {errors} could not run (of {})",
                files.len()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_parse() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)"),
            Some((7, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 8.1.3"),
            Some((8, 1))
        );
        assert_eq!(parse_qemu_version("something else"), None);
    }

    #[test]
    fn cpus_before_skylake_are_named_and_later_ones_not() {
        assert_eq!(pre_skylake(6, 0x3c), Some("Haswell"));
        assert_eq!(pre_skylake(6, 0x3d), Some("Broadwell"));
        assert_eq!(pre_skylake(6, 0x2a), Some("Sandy Bridge"));
        // Skylake (0x5e), Kaby/Coffee Lake (0x8e, 0x9e), Comet Lake (0xa5),
        // Ice Lake (0x7e), Skylake-SP Xeon W (0x55).
        for model in [0x5e, 0x4e, 0x8e, 0x9e, 0xa5, 0x7e, 0x55] {
            assert_eq!(pre_skylake(6, model), None, "{model:#x}");
        }
        assert_eq!(pre_skylake(15, 0x3c), None);
    }

    #[test]
    fn hv_denied_is_explained_with_the_fix() {
        assert!(hv_error_meaning(0xfae9_4007_u32 as i32).contains("com.apple.security.hypervisor"));
        assert_eq!(
            codesign_command(Path::new("/x/irqdiff")),
            format!(
                "codesign --sign - --entitlements {}/scripts/hv.entitlements --force /x/irqdiff",
                env!("CARGO_MANIFEST_DIR")
            )
        );
        assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/hv.entitlements")
            .exists());
    }

    #[test]
    fn the_report_is_markdown_with_escaped_cells() {
        let report = Report {
            facts: vec![("CPU".into(), "a|b".into())],
            checks: vec![check("x", Status::Fail, "why")],
            scenarios: vec![("s.irq".into(), "kvm".into(), "agrees with the model".into())],
        };
        let md = report.markdown();
        assert!(md.contains("- **CPU**: a\\|b\n"));
        assert!(md.contains("| x | FAIL | why |\n"));
        assert!(md.contains("| s.irq | kvm | agrees with the model |\n"));
        assert!(report.failed());
    }
}
