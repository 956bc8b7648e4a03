//! What the supervisor and a worker process say to each other: one JSON
//! object per line, orders on the worker's stdin, reports on its stdout.
//!
//! ```text
//! worker  -> {"ready":{"pid":4242,"batch_size":1}}
//! parent  -> {"run":{"first":0,"end":16}}          (up to two ranges queued)
//! worker  -> {"progress":{"next":1,"tally":{"cases":1,...}}}   after each batch
//! worker  -> {"claim":{"signature":{...}}}          a divergence not known locally
//! parent  -> {"claimed":{"granted":true}}           the only order a worker waits for
//! worker  -> "alive"                                while minimising (at most every 200 ms)
//! worker  -> {"found":{"finding":{...}}}            minimised; the parent writes it
//! parent  -> {"render":{"index":17}}                after a stall: the fitted case 17
//! worker  -> {"scenario":{"index":17,"text":"..."}}
//! ```
//!
//! The worker exits when its stdin closes. A progress report's `next` is
//! exact (the first case of the range not finished), so when a worker
//! stalls the parent knows which case it was running.

use serde::{Deserialize, Serialize};

use crate::differ::Finding;
use crate::oracle::Signature;

use super::Tally;

/// Parent to worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Run cases `first..end`.
    Run { first: u64, end: u64 },
    /// The answer to the worker's last [`Report::Claim`].
    Claimed { granted: bool },
    /// Generate and fit case `index`, and send its text (nothing runs).
    Render { index: u64 },
}

/// Worker to parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    /// The backend is open.
    Ready {
        pid: u32,
        batch_size: u64,
    },
    /// Every case of the current range before `next` is done; `tally`
    /// counts them (since the last progress report).
    Progress {
        next: u64,
        tally: Tally,
    },
    /// Still running (between the runs of a minimisation).
    Alive,
    /// May I minimise a divergence with this signature?
    Claim {
        signature: Signature,
    },
    /// A claimed divergence did not reproduce.
    Release {
        signature: Signature,
    },
    /// Keep a claimed signature known; its finding has another root cause.
    Settle {
        signature: Signature,
    },
    Found {
        finding: Box<Finding>,
    },
    /// The answer to [`Order::Render`].
    Scenario {
        index: u64,
        text: String,
    },
    /// The worker cannot go on (e.g. the backend would not open).
    Failed {
        error: String,
    },
}

/// One message as a line (without the newline).
pub fn encode<T: Serialize>(message: &T) -> String {
    serde_json::to_string(message).expect("protocol messages serialise")
}
