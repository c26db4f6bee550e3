//! The agent's record of every allocation it started, so that no (job,
//! attempt) ever runs twice on this node, even across agent restarts.
//!
//! `<state-dir>/allocations.jsonl`: one JSON object per line, appended and
//! flushed before a process starts (`start`), when it ends (`end`) and when the
//! control plane released it (`release`). Compacted at start-up.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Released keys remembered after compaction, to refuse late resends.
const REMEMBER_RELEASED: usize = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Entry {
    Start {
        job: String,
        attempt: u32,
    },
    End {
        job: String,
        attempt: u32,
        code: i32,
        error: String,
        /// Given up without a result (fenced); counted as lost.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lost: bool,
    },
    /// The control plane stored the outcome; it is kept, should the control
    /// plane ever ask again (it answers a resent assignment).
    Release {
        job: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<Outcome>,
    },
}

/// How an allocation ended on this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub error: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

impl Outcome {
    pub fn to_domain(&self) -> tether_types::Outcome {
        tether_types::Outcome { exit_code: self.code, error: self.error.clone(), lost: self.lost }
    }
}

/// What the journal says about one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Past {
    /// Started and not ended: the agent died while it ran.
    Interrupted,
    Ended(Outcome),
    /// Released, with its outcome when the journal kept it.
    Released(Option<Outcome>),
}

/// What the journal recorded, by (job id, attempt).
pub type History = BTreeMap<(String, u32), Past>;

pub struct Journal {
    file: std::fs::File,
}

impl Journal {
    /// Opens the journal, returning what it recorded, and rewrites it compactly.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, History)> {
        let path = dir.join("allocations.jsonl");
        let mut past = History::new();
        let mut released: VecDeque<(String, u32)> = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A torn last line (crash mid-write) is skipped.
                let Ok(e) = serde_json::from_str::<Entry>(line) else { continue };
                match e {
                    Entry::Start { job, attempt } => {
                        past.entry((job, attempt)).or_insert(Past::Interrupted);
                    }
                    Entry::End { job, attempt, code, error, lost } => {
                        past.insert((job, attempt), Past::Ended(Outcome { code, error, lost }));
                    }
                    Entry::Release { job, attempt, outcome } => {
                        past.insert((job.clone(), attempt), Past::Released(outcome));
                        released.push_back((job, attempt));
                    }
                }
            }
        }
        while released.len() > REMEMBER_RELEASED {
            if let Some(k) = released.pop_front() {
                past.remove(&k);
            }
        }
        // Compact: one line per remembered allocation.
        let tmp = dir.join("allocations.jsonl.tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for ((job, attempt), p) in &past {
                let (job, attempt) = (job.clone(), *attempt);
                let e = match p {
                    Past::Interrupted => Entry::Start { job, attempt },
                    Past::Ended(o) => Entry::End { job, attempt, code: o.code, error: o.error.clone(), lost: o.lost },
                    Past::Released(outcome) => Entry::Release { job, attempt, outcome: outcome.clone() },
                };
                serde_json::to_writer(&mut f, &e)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok((Journal { file }, past))
    }

    /// Appends one entry. The write reaches the kernel before this returns, so
    /// it survives the agent's death (not the machine's).
    pub fn record(&mut self, e: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_compacts() {
        let dir = std::env::temp_dir().join(format!("tether-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let (mut j, past) = Journal::open(&dir).unwrap();
            assert!(past.is_empty());
            j.record(&Entry::Start { job: "job-a".into(), attempt: 1 }).unwrap();
            j.record(&Entry::Start { job: "job-b".into(), attempt: 1 }).unwrap();
            j.record(&Entry::End { job: "job-b".into(), attempt: 1, code: 0, error: String::new(), lost: false })
                .unwrap();
            j.record(&Entry::Start { job: "job-c".into(), attempt: 2 }).unwrap();
            j.record(&Entry::End { job: "job-c".into(), attempt: 2, code: 1, error: String::new(), lost: false })
                .unwrap();
            let outcome = Outcome { code: 1, error: String::new(), lost: false };
            j.record(&Entry::Release { job: "job-c".into(), attempt: 2, outcome: Some(outcome) }).unwrap();
            // A line from before outcomes were kept.
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("allocations.jsonl"))
                .unwrap()
                .write_all(b"{\"ev\":\"release\",\"job\":\"job-d\",\"attempt\":1}\n")
                .unwrap();
            // A torn line.
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("allocations.jsonl"))
                .unwrap()
                .write_all(b"{\"ev\":\"sta")
                .unwrap();
        }
        let (_, past) = Journal::open(&dir).unwrap();
        assert_eq!(past[&("job-a".to_string(), 1)], Past::Interrupted);
        assert_eq!(
            past[&("job-b".to_string(), 1)],
            Past::Ended(Outcome { code: 0, error: String::new(), lost: false })
        );
        assert_eq!(
            past[&("job-c".to_string(), 2)],
            Past::Released(Some(Outcome { code: 1, error: String::new(), lost: false }))
        );
        assert_eq!(past[&("job-d".to_string(), 1)], Past::Released(None));
        let lines = std::fs::read_to_string(dir.join("allocations.jsonl")).unwrap().lines().count();
        assert_eq!(lines, 4, "compacted to one line per allocation");
        let (_, again) = Journal::open(&dir).unwrap();
        assert_eq!(again, past, "compaction keeps what it read");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
