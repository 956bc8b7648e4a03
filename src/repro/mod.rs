//! Turning a finding into artefacts a maintainer can use without irqdiff.

use crate::campaign::Finding;
use crate::scenario::print::print;
use crate::trace::Trace;

/// The files of a finding's directory, as (name, contents).
pub fn finding_files(finding: &Finding, backend: &str) -> Vec<(&'static str, String)> {
    vec![
        ("original.irq", print(&finding.original)),
        ("min.irq", print(&finding.minimized)),
        ("trace-diff.txt", trace_diff(finding, backend)),
        ("expected.json", finding.expected.to_json() + "\n"),
        ("observed.json", finding.observed.to_json() + "\n"),
        ("report.md", report(finding, backend)),
    ]
}

/// Expected and observed events side by side, the first difference marked.
pub fn trace_diff(finding: &Finding, backend: &str) -> String {
    let mut out = format!(
        "divergence: {}\nsignature:  {}\n",
        finding.divergence, finding.signature
    );
    if let Some(k) = finding.known {
        out += &format!("known:      {} ({}, {})\n", k.title, k.id, k.doc);
    }
    out += "\n";
    out += &side_by_side(
        &finding.expected,
        &finding.observed,
        backend,
        Some(finding.divergence.event_index),
    );
    out
}

/// A two-column rendering of two traces of the same scenario.
pub fn side_by_side(
    expected: &Trace,
    observed: &Trace,
    backend: &str,
    mark: Option<usize>,
) -> String {
    let mut out = format!(
        "{:>3}  {:<44} {}\n",
        "#",
        "expected (model)",
        format!("observed ({backend})")
    );
    let n = expected.events.len().max(observed.events.len());
    let cell = |t: &Trace, i: usize| {
        t.events
            .get(i)
            .map_or("-".to_string(), |e| format!("op {:<3} {}", e.op, e.kind))
    };
    for i in 0..n {
        let arrow = if mark == Some(i) {
            "   <== first difference"
        } else {
            ""
        };
        out += &format!(
            "{i:>3}  {:<44} {}{arrow}\n",
            cell(expected, i),
            cell(observed, i)
        );
    }
    out += &format!("end  {:<44} {}\n", outcome(expected), outcome(observed));
    out
}

fn outcome(t: &Trace) -> String {
    match (t.outcome, t.hang_op, &t.error) {
        (crate::trace::Outcome::Hang, Some(op), _) => format!("hang at op {op}"),
        (crate::trace::Outcome::Error, _, Some(e)) => format!("error: {e}"),
        (o, _, _) => format!("{o:?}").to_lowercase(),
    }
}

/// A short Markdown report of a finding.
pub fn report(finding: &Finding, backend: &str) -> String {
    format!(
        "# {backend}: {}\n\n{}\n\n## Minimal scenario\n\n```\n{}```\n\n## Expected (model) vs observed ({backend})\n\n```\n{}```\n",
        finding.signature,
        finding.divergence,
        print(&finding.minimized),
        side_by_side(&finding.expected, &finding.observed, backend, Some(finding.divergence.event_index)),
    )
}
