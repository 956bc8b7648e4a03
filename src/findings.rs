//! The findings directory, laid out by cause: `OUT/<cause>/` holds the
//! cause's smallest repro (`min.irq`) and one sub-directory per signature of
//! that cause (`OUT/<cause>/<signature>/`), plus `OUT/causes.json` and
//! `OUT/stalled/`. Everything is written atomically so that a killed
//! campaign keeps every finding it reported.
//!
//! A finding is first written completely into a hidden temporary directory
//! beside its final place, each file flushed to disk, then renamed into
//! place in one step (rename(2) is atomic within a file system). A directory
//! without the leading dot is therefore always complete; leftovers of a
//! killed writer start with `.tmp-` and are ignored and cleaned up.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::oracle::Signature;

/// The file in each finding directory that records its signature.
pub const SIGNATURE_FILE: &str = "signature.json";

/// An opened findings directory.
#[derive(Debug)]
pub struct Findings {
    root: PathBuf,
}

impl Findings {
    /// Opens (creating it if needed) the findings directory, removing
    /// temporary directories a killed writer left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Findings> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| annotate(e, &root))?;
        for entry in fs::read_dir(&root).map_err(|e| annotate(e, &root))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(Findings { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The signatures already recorded (a resumed campaign skips them).
    pub fn known(&self) -> io::Result<BTreeSet<Signature>> {
        Ok(self
            .recorded()?
            .into_iter()
            .map(|(_, sig, _)| sig)
            .collect())
    }

    /// Every recorded finding: (cause, signature, directory).
    pub fn recorded(&self) -> io::Result<Vec<(String, Signature, PathBuf)>> {
        let mut found = Vec::new();
        for cause in visible_dirs(&self.root)? {
            let cause_name = cause
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            for dir in visible_dirs(&cause)? {
                let file = dir.join(SIGNATURE_FILE);
                if let Ok(text) = fs::read_to_string(&file) {
                    match serde_json::from_str::<Signature>(&text) {
                        Ok(sig) => found.push((cause_name.clone(), sig, dir)),
                        Err(e) => eprintln!("warning: ignoring {}: {e}", file.display()),
                    }
                }
            }
        }
        found.sort_by(|a, b| a.2.cmp(&b.2));
        Ok(found)
    }

    /// The directory of a signature's finding under its cause.
    pub fn dir_of(&self, cause: &str, signature: &Signature) -> PathBuf {
        self.root.join(cause).join(signature.slug())
    }

    /// Writes one finding of `cause` atomically. `files` are (name,
    /// contents) pairs. Returns the final directory, or `None` if the
    /// signature was already recorded (by this or another process).
    pub fn write(
        &self,
        cause: &str,
        signature: &Signature,
        files: &[(&str, String)],
    ) -> io::Result<Option<PathBuf>> {
        let dest = self.dir_of(cause, signature);
        if dest.exists() {
            return Ok(None);
        }
        let parent = self.root.join(cause);
        fs::create_dir_all(&parent).map_err(|e| annotate(e, &parent))?;
        let tmp = parent.join(format!(
            ".tmp-{}-{}-{}",
            signature.slug(),
            std::process::id(),
            unique_suffix()
        ));
        fs::create_dir(&tmp).map_err(|e| annotate(e, &tmp))?;
        let sig_json = serde_json::to_string_pretty(signature).expect("signature serialises");
        let all = files
            .iter()
            .map(|(n, c)| (*n, c.as_str()))
            .chain([(SIGNATURE_FILE, sig_json.as_str())]);
        for (name, contents) in all {
            let path = tmp.join(name);
            let mut f = fs::File::create(&path).map_err(|e| annotate(e, &path))?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
        }
        sync_dir(&tmp);
        match fs::rename(&tmp, &dest) {
            Ok(()) => {
                sync_dir(&parent);
                Ok(Some(dest))
            }
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(None)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(annotate(e, &dest))
            }
        }
    }
}

impl Findings {
    /// Writes one file below the findings directory atomically (a
    /// temporary file beside it, flushed, then renamed), creating its
    /// parent directories: e.g. `stalled/case-17.irq`.
    pub fn write_file(&self, relative: &Path, contents: &str) -> io::Result<PathBuf> {
        let dest = self.root.join(relative);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| annotate(e, &dir))?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            ".tmp-{name}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(annotate(e, &dest));
        }
        sync_dir(&dir);
        Ok(dest)
    }
}

/// The sub-directories of `dir` that are neither hidden (`.tmp-` leftovers)
/// nor `stalled/`; temporary leftovers are removed.
fn visible_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| annotate(e, dir))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            let _ = fs::remove_dir_all(entry.path());
            continue;
        }
        if name.starts_with('.') || name == "stalled" || !entry.path().is_dir() {
            continue;
        }
        dirs.push(entry.path());
    }
    Ok(dirs)
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 32)
}

/// Flush a directory's entries (so a rename survives a crash); best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Class;

    fn sig(rule: &str) -> Signature {
        Signature {
            class: Class::ExtraDelivery,
            op_kind: "assert".into(),
            rule: rule.into(),
            split: false,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("irqdiff-findings-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn write_then_known_round_trips() {
        let root = scratch("roundtrip");
        let f = Findings::open(&root).unwrap();
        let dir = f
            .write("cause-x", &sig("a"), &[("min.irq", "nop\n".into())])
            .unwrap()
            .unwrap();
        assert_eq!(dir, root.join("cause-x").join(sig("a").slug()));
        assert_eq!(fs::read_to_string(dir.join("min.irq")).unwrap(), "nop\n");
        assert_eq!(f.known().unwrap(), BTreeSet::from([sig("a")]));
        // A second write of the same signature is skipped.
        assert_eq!(f.write("cause-x", &sig("a"), &[]).unwrap(), None);
        f.write("cause-y", &sig("b"), &[]).unwrap().unwrap();
        let causes: Vec<String> = f.recorded().unwrap().into_iter().map(|r| r.0).collect();
        assert_eq!(causes, ["cause-x", "cause-y"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn write_file_creates_parents_and_replaces_atomically() {
        let root = scratch("file");
        let f = Findings::open(&root).unwrap();
        let rel = Path::new("stalled/case-3.irq");
        let path = f.write_file(rel, "nop\n").unwrap();
        assert_eq!(path, root.join(rel));
        f.write_file(rel, "hlt\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "hlt\n");
        let names: Vec<_> = fs::read_dir(root.join("stalled"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["case-3.irq"], "no temporary file is left");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn leftover_temporary_directories_are_ignored_and_removed() {
        let root = scratch("leftover");
        fs::create_dir_all(root.join(".tmp-half-written")).unwrap();
        fs::write(root.join(".tmp-half-written").join(SIGNATURE_FILE), "{}").unwrap();
        let nested = root.join("cause").join(".tmp-half");
        fs::create_dir_all(&nested).unwrap();
        fs::write(nested.join(SIGNATURE_FILE), "{}").unwrap();
        let f = Findings::open(&root).unwrap();
        assert!(f.known().unwrap().is_empty());
        assert!(!root.join(".tmp-half-written").exists());
        assert!(!nested.exists());
        fs::remove_dir_all(root).unwrap();
    }
}
