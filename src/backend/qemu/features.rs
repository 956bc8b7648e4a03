//! What the QEMU binary offers, probed at start-up (docs/qemu-versions.md).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::options::binary;
use super::Availability;

/// Whether the QEMU binary ([`binary`]) is there and runs.
pub fn probe() -> Availability {
    match version_line() {
        Ok(_) => Availability::Available,
        Err(why) => Availability::Unavailable(why),
    }
}

/// The first line of `QEMU --version`, or why it could not be read.
fn version_line() -> Result<String, String> {
    let qemu = binary();
    match Command::new(&qemu).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        Ok(out) => Err(format!(
            "{} --version failed: {}",
            qemu.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "{}: {e} (install the qemu-system-x86 package, or name a QEMU with --qemu PATH or {})",
            qemu.display(),
            super::options::QEMU_ENV
        )),
    }
}

/// Which QEMU the backends run and its version, for `irqdiff backends`.
pub fn describe() -> String {
    let qemu = binary();
    match version_line() {
        Ok(line) => format!("{}: {line}", qemu.display()),
        Err(why) => why,
    }
}

/// What the QEMU binary offers, probed once at open (docs/qemu-versions.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// `QEMU emulator version X.Y.Z` of `--version`.
    pub version: (u32, u32, u32),
    /// TCG emulates x2APIC (QEMU 9.0, commit b5ee0468e9d2 "apic: add
    /// support for x2APIC mode"): `-cpu qemu64,+x2apic,enforce` is accepted.
    pub tcg_x2apic: bool,
}

impl Features {
    /// Probes the QEMU binary once per process (it does not change while
    /// irqdiff runs; each probe starts QEMU). `firmware` is the backend's,
    /// so that no probe depends on QEMU finding its own BIOS.
    pub(super) fn get(firmware: &Path) -> Result<Features, String> {
        static PROBED: std::sync::OnceLock<Result<Features, String>> = std::sync::OnceLock::new();
        PROBED.get_or_init(|| Features::probe(firmware)).clone()
    }

    fn probe(firmware: &Path) -> Result<Features, String> {
        let line = version_line()?;
        let version = parse_version(&line)
            .ok_or_else(|| format!("{} --version: no version in {line:?}", binary().display()))?;
        for device in ["pc-testdev", "isa-debug-exit"] {
            // `-device NAME,help`, not `-device help`: the latter loads every
            // module and aborts when QEMU's modules are from another build.
            accepts(&["-device", &format!("{device},help")], firmware)
                .map_err(|why| format!("{} has no {device}: {why}", binary().display()))?;
        }
        let tcg_x2apic = accepts(
            &[
                "-accel",
                "tcg",
                "-machine",
                "pc",
                "-cpu",
                "qemu64,+x2apic,enforce",
            ],
            firmware,
        )
        .is_ok();
        Ok(Features {
            version,
            tcg_x2apic,
        })
    }

    /// `X.Y.Z`.
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

/// `X.Y.Z` from `QEMU emulator version X.Y.Z (...)`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut n = v.split('.').map(|x| x.parse::<u32>().ok());
    Some((
        n.next()??,
        n.next().flatten().unwrap_or(0),
        n.next().flatten().unwrap_or(0),
    ))
}

/// Whether QEMU starts with `args` (`-S`, stopped, then `quit` on the
/// monitor); `Err` is QEMU's error message. The backend probes the exact
/// accelerator and machine options it will run with this, at open.
pub(super) fn accepts(args: &[&str], firmware: &Path) -> Result<(), String> {
    let qemu = binary();
    let mut child = Command::new(&qemu)
        .args(args)
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .args(["-monitor", "stdio", "-serial", "none"])
        .arg("-bios")
        .arg(firmware)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n");
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The last line is the error; the ones before it are warnings.
        Err(stderr.trim().lines().last().unwrap_or("").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn the_version_is_read_from_qemu_version_output() {
        let v10 = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_version(v10), Some((10, 0, 2)));
        let v72 = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)";
        assert_eq!(parse_version(v72), Some((7, 2, 22)));
        // A source build: "version 9.2.50 (v9.2.0-1234-gabcdef)".
        assert_eq!(
            parse_version("QEMU emulator version 9.2.50 (v9.2.0-1-g1)"),
            Some((9, 2, 50))
        );
        assert_eq!(parse_version("qemu-system-x86_64: not a version"), None);
    }
}
