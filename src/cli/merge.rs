//! `irqdiff merge DIR... --out DIR`: the findings of campaigns run on many
//! machines (libFuzzer `-fork` jobs, ClusterFuzzLite batches, several Macs)
//! in one directory, deduplicated by cause. A cause's name is its deviation
//! set, the same on every machine; within a cause, a signature already
//! present is not copied again. Divergence counts add up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::campaign::causes::{Causes, CAUSES_FILE};
use crate::findings::{Findings, SIGNATURE_FILE};

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Findings directories written by `irqdiff fuzz --out`.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The merged findings directory (created; merging into it again adds).
    #[arg(long)]
    pub out: PathBuf,
}

/// What a merge did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub copied: usize,
    pub duplicates: usize,
    pub causes: usize,
}

/// Merges `dirs` into `out`.
pub fn merge(dirs: &[PathBuf], out: &Path) -> std::io::Result<Merged> {
    let target = Findings::open(out)?;
    let mut causes = Causes::load(out)?;
    let mut known = target.known()?;
    let mut merged = Merged::default();
    for dir in dirs {
        if !dir.join(CAUSES_FILE).is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{}: no {CAUSES_FILE}: not a findings directory of `irqdiff fuzz`",
                    dir.display()
                ),
            ));
        }
        let source = Findings::open(dir)?;
        let theirs = Causes::load(dir)?;
        for (cause, signature, path) in source.recorded()? {
            if !known.insert(signature.clone()) {
                merged.duplicates += 1;
                continue;
            }
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name != SIGNATURE_FILE && entry.path().is_file() {
                    files.push((name, std::fs::read_to_string(entry.path())?));
                }
            }
            let files: Vec<(&str, String)> =
                files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
            target.write(&cause, &signature, &files)?;
            merged.copied += 1;
        }
        for cause in theirs.by_name.values() {
            causes.absorb(cause);
        }
    }
    for cause in causes.by_name.values() {
        target.write_file(
            &Path::new(&cause.name).join("min.irq"),
            &cause.minimal_scenario,
        )?;
    }
    causes.save(&target)?;
    merged.causes = causes.by_name.len();
    Ok(merged)
}

pub fn main(args: MergeArgs) -> ExitCode {
    match merge(&args.dirs, &args.out) {
        Ok(m) => {
            println!(
                "{} causes in {}: {} findings copied, {} duplicate signatures skipped",
                m.causes,
                args.out.display(),
                m.copied,
                m.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("irqdiff merge: {e}");
            ExitCode::from(super::EXIT_BAD_INPUT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn campaign(name: &str, seed: u64) -> PathBuf {
        let out = std::env::temp_dir().join(format!("irqdiff-merge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let options = crate::campaign::Options {
            cases: Some(4000),
            seed,
            ..crate::campaign::Options::new("sim:level-eoi-no-redeliver,split-eoi-lost", &out)
        };
        crate::campaign::run(
            &options,
            &crate::campaign::Stats::default(),
            &AtomicBool::new(false),
            &|_| {},
        )
        .unwrap();
        out
    }

    #[test]
    fn two_machines_merge_into_one_directory_per_cause_without_duplicates() {
        let (a, b) = (campaign("a", 1), campaign("b", 2));
        let out = std::env::temp_dir().join(format!("irqdiff-merge-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let ca = Causes::load(&a).unwrap();
        let cb = Causes::load(&b).unwrap();
        let m = merge(&[a.clone(), b.clone()], &out).unwrap();
        let merged = Causes::load(&out).unwrap();
        let mut names: Vec<&String> = ca.by_name.keys().chain(cb.by_name.keys()).collect();
        names.sort();
        names.dedup();
        assert_eq!(merged.by_name.keys().collect::<Vec<_>>(), names);
        assert_eq!(m.causes, names.len());
        for (name, cause) in &merged.by_name {
            let sum = ca.by_name.get(name).map_or(0, |c| c.divergences)
                + cb.by_name.get(name).map_or(0, |c| c.divergences);
            assert_eq!(cause.divergences, sum, "{name}");
            assert!(out.join(name).join("min.irq").is_file());
        }
        let signatures = Findings::open(&out).unwrap().known().unwrap().len();
        assert_eq!(m.copied, signatures);
        // Merging the same directories again copies nothing.
        let again = merge(&[a.clone(), b.clone()], &out).unwrap();
        assert_eq!(again.copied, 0);
        assert_eq!(again.duplicates, m.copied + m.duplicates);
        let e = merge(&[out.join("nope")], &out).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        for d in [a, b, out] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
