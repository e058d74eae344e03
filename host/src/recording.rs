//! Recordings: a run's input, every answer it was given, and what it asked
//! and returned, kept in a file so that a later plugin version can be run
//! on the same input and told the same answers (`escrow replay`).
//!
//! A recording holds only what the run's outcome holds, so the run's limits
//! bound it as they bound the outcome: at most `max_intents` requests, each
//! payload and answer within `max_payload_bytes`, all of them within
//! `max_total_payload_bytes`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::answers::{Answers, Bytes};
use crate::document::{self, Document, DocumentError};
use crate::outcome::{Fate, Outcome};
use crate::run_id::RunId;

/// The recording format version this escrow writes, and the newest it reads.
pub const RECORDING_VERSION: u32 = 1;

/// One recorded run. See the [module](self) and `docs/replay.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// The run.
    pub run_id: RunId,
    /// The plugin's name.
    pub plugin: String,
    /// The sha256 of the component's bytes, when the plugin was loaded from
    /// them.
    pub component_sha256: Option<String>,
    /// When the run was recorded.
    #[serde(with = "crate::document::rfc3339")]
    pub recorded_at: SystemTime,
    /// The input the plugin was given.
    pub input: Bytes,
    /// Every answer the run was given.
    pub answers: Answers,
    /// Every deferred effect it requested, in order.
    pub intents: Vec<RecordedIntent>,
    /// What it returned.
    pub result: RecordedResult,
}

/// A deferred effect a run requested, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedIntent {
    /// The request's sequence number.
    pub seq: u64,
    /// The effect.
    pub effect: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its fate, where a dispatched intent counts as `committed` (whether a
    /// sink took it is the world's doing, not the plugin's): `committed`,
    /// `dropped`, `blocked`, `refused` or `discarded`.
    pub fate: String,
}

/// What a run returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedResult {
    /// The plugin's output.
    Output(Bytes),
    /// Why the run failed.
    Failed(String),
}

impl Document for Recording {
    const FORMAT: &'static str = "escrow-recording";
    const VERSION: u32 = RECORDING_VERSION;
    const NOUN: &'static str = "recording";
}

impl RecordedIntent {
    /// The deferred requests of `outcome`, as a recording keeps them.
    pub fn all_of(outcome: &Outcome) -> Vec<Self> {
        outcome
            .intents
            .iter()
            .map(|intent| RecordedIntent {
                seq: intent.seq,
                effect: intent.effect.clone(),
                payload: Bytes(intent.payload.clone()),
                fate: match intent.fate {
                    Fate::Dispatched(_) => "committed",
                    ref fate => fate.name(),
                }
                .to_owned(),
            })
            .collect()
    }
}

impl RecordedResult {
    /// What `outcome`'s run returned.
    pub fn of(outcome: &Outcome) -> Self {
        match &outcome.result {
            Ok(output) => RecordedResult::Output(Bytes(output.clone())),
            Err(failure) => RecordedResult::Failed(failure.to_string()),
        }
    }
}

impl Recording {
    /// The recording of `outcome`'s run, which was given `input`.
    pub fn of(outcome: &Outcome, input: &[u8]) -> Self {
        Recording {
            run_id: outcome.run_id,
            plugin: outcome.plugin.to_string(),
            component_sha256: outcome.component_sha256.as_deref().map(str::to_owned),
            recorded_at: SystemTime::now(),
            input: Bytes(input.to_vec()),
            answers: Answers::of(outcome),
            intents: RecordedIntent::all_of(outcome),
            result: RecordedResult::of(outcome),
        }
    }

    /// The file this recording is kept in under `dir`: `{run_id}.json`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.json", self.run_id))
    }

    /// Writes the recording into `dir` (which must exist) as
    /// `{run_id}.json`; returns the file.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write_into(&self, dir: &Path) -> Result<PathBuf, DocumentError> {
        let path = self.path_in(dir);
        document::write(&path, self)?;
        Ok(path)
    }

    /// Reads the recording at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is no recording this escrow reads: a
    /// truncated or edited file, another format, a newer version.
    pub fn read(path: &Path) -> Result<Self, DocumentError> {
        document::read(path)
    }

    /// Reads every recording in `dir` (its `*.json` files), oldest run
    /// first.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read, or any of its files is no
    /// recording: one bad file refuses them all, so that a replay never
    /// silently covers fewer runs than were recorded.
    pub fn read_dir(dir: &Path) -> Result<Vec<Self>, DocumentError> {
        let io = |e: std::io::Error| DocumentError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        let mut recordings = paths
            .iter()
            .map(|path| Self::read(path))
            .collect::<Result<Vec<_>, _>>()?;
        recordings.sort_by_key(|r| r.run_id);
        Ok(recordings)
    }
}
