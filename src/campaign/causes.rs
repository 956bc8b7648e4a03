//! Causes: findings grouped by the deviation set that explains them
//! ([`crate::diagnose`]), as `OUT/causes.json` lists them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diagnose::{cause_slug, NamedDeviation};
use crate::differ::Finding;
use crate::findings::Findings;
use crate::model::Deviation;
use crate::scenario::print::print;

/// The file of a finding with the backend's trace of its snapshot probe.
pub const PROBE_FILE: &str = "probe.json";

/// The file of a finding with the backend's trace of the re-run whose
/// explanation is the finding's cause (its first trace varied with the
/// host's timing).
pub const RERUN_FILE: &str = "rerun.json";

/// The file, at the top of the findings directory, listing the causes.
pub const CAUSES_FILE: &str = "causes.json";

/// One cause: one bug, whatever number of symptoms (signatures) it shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// Its directory under `OUT/`.
    pub name: String,
    /// The deviations under which the model reproduces every finding of the
    /// cause; empty: unexplained.
    pub explained_by: Vec<NamedDeviation>,
    /// Signature slugs of its findings (each a sub-directory).
    pub signatures: Vec<String>,
    /// Divergences counted with one of its signatures.
    pub divergences: u64,
    /// The documented behaviour of the backend this cause is, if any.
    pub documented: Option<String>,
    /// The smallest repro of the cause (`.irq` text), also `OUT/NAME/min.irq`.
    pub minimal_scenario: String,
    /// Its number of top-level ops.
    pub minimal_ops: usize,
    /// Signatures explained on a re-run: their first trace varied with
    /// the host's timing (`OUT/NAME/SIG/rerun.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub varying: Vec<String>,
}

impl Cause {
    pub fn is_explained(&self) -> bool {
        !self.explained_by.is_empty()
    }

    /// The deviations of [`Cause::explained_by`].
    pub fn deviations(&self) -> Vec<Deviation> {
        self.explained_by
            .iter()
            .filter_map(NamedDeviation::deviation)
            .collect()
    }
}

/// The causes of one findings directory, by name.
#[derive(Debug, Default)]
pub struct Causes {
    pub by_name: BTreeMap<String, Cause>,
}

impl Causes {
    /// The causes recorded in `OUT/causes.json`, if any (a resumed campaign
    /// adds to them).
    pub fn load(out: &Path) -> std::io::Result<Causes> {
        let path = out.join(CAUSES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Causes::default()),
            Err(e) => return Err(e),
        };
        let list: Vec<Cause> = serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Causes {
            by_name: list.into_iter().map(|c| (c.name.clone(), c)).collect(),
        })
    }

    /// The explained deviation sets, to confirm on the next findings.
    pub fn confirmed(&self) -> Vec<Vec<Deviation>> {
        self.by_name
            .values()
            .filter(|c| c.is_explained())
            .map(Cause::deviations)
            .collect()
    }

    /// The cause a finding belongs to (by its `explained_by`), created if
    /// new; returns its name and whether the finding is its smallest repro.
    pub fn add(&mut self, finding: &Finding, backend: &str) -> (String, bool) {
        let deviations: Vec<Deviation> = finding
            .explained_by
            .iter()
            .filter_map(|n| Deviation::parse(n))
            .collect();
        // A finding that needs a known cause and another deviation besides
        // (two bugs in one minimised program) is filed under the known one.
        let name = self
            .covering(&deviations)
            .unwrap_or_else(|| cause_slug(&deviations, &finding.signature.slug()));
        let ops = finding.minimized.ops.len();
        let cause = self.by_name.entry(name.clone()).or_insert_with(|| Cause {
            name: name.clone(),
            explained_by: deviations.iter().map(|d| NamedDeviation::of(*d)).collect(),
            signatures: Vec::new(),
            divergences: 0,
            documented: crate::known::documented(backend, &deviations)
                .or(finding.known)
                .map(|k| k.id.to_string()),
            minimal_scenario: String::new(),
            minimal_ops: usize::MAX,
            varying: Vec::new(),
        });
        let slug = finding.signature.slug();
        if finding.rerun.is_some() && !cause.varying.contains(&slug) {
            cause.varying.push(slug.clone());
        }
        if !cause.signatures.contains(&slug) {
            cause.signatures.push(slug);
        }
        let smallest = ops < cause.minimal_ops;
        if smallest {
            cause.minimal_ops = ops;
            cause.minimal_scenario = print(&finding.minimized);
        }
        (name, smallest)
    }

    /// An explained cause, other than `deviations` itself, whose deviations
    /// are a strict subset of `deviations`: the largest such, provided every
    /// other deviation of the set is also one of another explained cause
    /// (two known bugs in one program). A set that needs a deviation no
    /// other cause has is evidence of that bug too (one hidden by the other,
    /// say an EOI bug behind an ISR that is never set): it stays its own
    /// cause, so that the rule it names is reported.
    fn covering(&self, deviations: &[Deviation]) -> Option<String> {
        let singles: Vec<Vec<Deviation>> = self
            .by_name
            .values()
            .filter(|c| c.is_explained())
            .map(Cause::deviations)
            .filter(|set| set.len() < deviations.len())
            .collect();
        // The same rule broken (in whatever mode a program showed it).
        let known = |d: &Deviation| singles.iter().flatten().any(|k| k.rule == d.rule);
        if !deviations.iter().all(known) {
            return None;
        }
        self.by_name
            .values()
            .filter(|c| c.is_explained())
            .map(|c| (c.deviations(), &c.name))
            .filter(|(set, _)| {
                set.len() < deviations.len()
                    && set
                        .iter()
                        .all(|d| deviations.iter().any(|o| o.rule == d.rule))
            })
            .max_by_key(|(set, _)| set.len())
            .map(|(_, name)| name.clone())
    }

    /// Folds every composite cause into a cause that covers it (see
    /// [`Causes::add`]; the covering cause may have been found later),
    /// moving its signature directories with rename(2).
    pub fn fold_composites(&mut self, findings: &Findings) -> std::io::Result<()> {
        let composites: Vec<(String, String)> = self
            .by_name
            .values()
            .filter(|c| c.explained_by.len() > 1)
            .filter_map(|c| Some((c.name.clone(), self.covering(&c.deviations())?)))
            .collect();
        for (from, into) in composites {
            self.merge_into(findings, &from, &into)?;
        }
        Ok(())
    }

    /// Confirms each explanation on the other causes' findings: a cause
    /// whose every finding another cause's deviations also reproduce (its
    /// `min.irq` with a snapshot after every op, against the backend's
    /// `probe.json`) is folded into that cause, the one
    /// with the most divergences first. One bug then is one cause even when
    /// a narrower deviation happened to fit some of its symptoms.
    pub fn fold_confirmed(
        &mut self,
        findings: &Findings,
        by_signature: &BTreeMap<String, u64>,
    ) -> std::io::Result<()> {
        self.count(by_signature);
        loop {
            let list = self.list();
            let evidence =
                |cause: &Cause| -> Vec<(crate::scenario::Scenario, crate::trace::Trace)> {
                    cause
                        .signatures
                        .iter()
                        .filter_map(|sig| {
                            let dir = findings.root().join(&cause.name).join(sig);
                            let min = std::fs::read_to_string(dir.join("min.irq")).ok()?;
                            let probe = std::fs::read_to_string(dir.join(PROBE_FILE)).ok()?;
                            let min = crate::scenario::parse(&min).ok()?;
                            Some((
                                crate::diagnose::with_snapshots(&min),
                                serde_json::from_str(&probe).ok()?,
                            ))
                        })
                        .collect()
                };
            let fold = list.iter().rev().find_map(|small| {
                if !small.is_explained() {
                    return None;
                }
                let cases = evidence(small);
                if cases.is_empty() {
                    return None;
                }
                list.iter()
                    .filter(|big| big.name != small.name && big.is_explained())
                    .find(|big| {
                        let set = big.deviations();
                        cases
                            .iter()
                            .all(|(s, t)| crate::diagnose::reproduces(s, t, &set))
                    })
                    .map(|big| (small.name.clone(), big.name.clone()))
            });
            let Some((from, into)) = fold else {
                return Ok(());
            };
            self.merge_into(findings, &from, &into)?;
            self.count(by_signature);
        }
    }

    /// Moves cause `from`'s signature directories under `into` (rename(2))
    /// and forgets `from`.
    fn merge_into(&mut self, findings: &Findings, from: &str, into: &str) -> std::io::Result<()> {
        let Some(gone) = self.by_name.remove(from) else {
            return Ok(());
        };
        let root = findings.root();
        for sig in &gone.signatures {
            let dest = root.join(into).join(sig);
            if !dest.exists() {
                std::fs::rename(root.join(from).join(sig), &dest)?;
            }
        }
        let target = self
            .by_name
            .get_mut(into)
            .expect("the cause folded into exists");
        for sig in gone.signatures {
            if !target.signatures.contains(&sig) {
                target.signatures.push(sig);
            }
        }
        for sig in gone.varying {
            if !target.varying.contains(&sig) {
                target.varying.push(sig);
            }
        }
        if gone.minimal_ops < target.minimal_ops {
            target.minimal_ops = gone.minimal_ops;
            target.minimal_scenario = gone.minimal_scenario.clone();
            findings.write_file(&Path::new(into).join("min.irq"), &gone.minimal_scenario)?;
        }
        let _ = std::fs::remove_dir_all(root.join(from));
        Ok(())
    }

    /// Adds another machine's cause (same name: same deviations): its
    /// signatures, its divergences, its repro if smaller.
    pub fn absorb(&mut self, other: &Cause) {
        let cause = self
            .by_name
            .entry(other.name.clone())
            .or_insert_with(|| Cause {
                signatures: Vec::new(),
                divergences: 0,
                minimal_ops: usize::MAX,
                varying: Vec::new(),
                ..other.clone()
            });
        for sig in &other.signatures {
            if !cause.signatures.contains(sig) {
                cause.signatures.push(sig.clone());
            }
        }
        for sig in &other.varying {
            if !cause.varying.contains(sig) {
                cause.varying.push(sig.clone());
            }
        }
        cause.divergences += other.divergences;
        if other.minimal_ops < cause.minimal_ops {
            cause.minimal_ops = other.minimal_ops;
            cause.minimal_scenario = other.minimal_scenario.clone();
        }
    }

    /// Sets each cause's divergence count from the counts by signature.
    pub fn count(&mut self, by_signature: &BTreeMap<String, u64>) {
        for cause in self.by_name.values_mut() {
            cause.divergences = cause
                .signatures
                .iter()
                .filter_map(|s| by_signature.get(s))
                .sum();
        }
    }

    /// The causes, the most divergences first.
    pub fn list(&self) -> Vec<Cause> {
        let mut list: Vec<Cause> = self.by_name.values().cloned().collect();
        list.sort_by(|a, b| b.divergences.cmp(&a.divergences).then(a.name.cmp(&b.name)));
        list
    }

    /// Writes `OUT/causes.json` atomically.
    pub fn save(&self, findings: &Findings) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(&self.list()).expect("causes serialise") + "\n";
        findings.write_file(Path::new(CAUSES_FILE), &json)?;
        Ok(())
    }

    /// One line for the summary: how many causes explain how many
    /// divergences, which are documented, how many are unexplained.
    pub fn headline(&self, divergences: u64) -> String {
        let list = self.list();
        let explained: Vec<&Cause> = list.iter().filter(|c| c.is_explained()).collect();
        let unexplained = list.len() - explained.len();
        let documented: Vec<&str> = explained
            .iter()
            .filter_map(|c| c.documented.as_deref())
            .collect();
        let of_causes: u64 = list.iter().map(|c| c.divergences).sum();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let doc = match documented.len() {
            0 => String::new(),
            n if n == explained.len() && n > 1 => {
                format!(" (all documented: {})", documented.join(", "))
            }
            n if n == explained.len() => format!(" (documented: {})", documented.join(", ")),
            n => format!(" ({n} documented: {})", documented.join(", ")),
        };
        let named: Vec<&str> = list
            .iter()
            .filter(|c| !c.is_explained())
            .filter_map(|c| c.documented.as_deref())
            .collect();
        let named = if named.is_empty() {
            String::new()
        } else {
            let mut ids = named.clone();
            ids.sort_unstable();
            ids.dedup();
            format!(
                " ({} of them named as documented host behaviours: {})",
                named.len(),
                ids.join(", ")
            )
        };
        let other = divergences.saturating_sub(of_causes);
        let rest = if other > 0 {
            format!("; {other} more divergences with a signature settled into another's root cause")
        } else {
            String::new()
        };
        format!(
            "{} cause{} explain{} {} divergences{doc}; {unexplained} unexplained{named}{rest}",
            explained.len(),
            plural(explained.len()),
            if explained.len() == 1 { "s" } else { "" },
            list.iter()
                .filter(|c| c.is_explained())
                .map(|c| c.divergences)
                .sum::<u64>(),
        )
    }
}
