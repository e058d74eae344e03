//! Replays: a plugin version run on recorded runs, told the recorded
//! answers, and what it would do differently.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::diff::{self, Difference};
use crate::answers::Answers;
use crate::backends::MemoryLocks;
use crate::outcome::Failure;
use crate::patterns::Patterns;
use crate::plugin::Plugin;
use crate::recording::{RecordedIntent, RecordedResult, Recording};
use crate::run::{Dispatch, RunOptions};
use crate::run_id::RunId;

/// What one recorded run does when replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReplay {
    /// The recorded run.
    pub run_id: RunId,
    /// How its replay compares.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// How a replayed run compares with its recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The same intents, immediate payloads and result.
    Identical,
    /// Told the same answers, it requests or returns something else.
    Differs {
        /// What differs, in order: intents, immediate calls, the result.
        differences: Vec<Difference>,
    },
    /// It asked something the recording holds no answer for, and was
    /// stopped there.
    Diverged {
        /// Which request, and what the recording has instead.
        why: String,
    },
}

/// The replay of many recorded runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Each run, in the order replayed.
    pub runs: Vec<RunReplay>,
}

impl ReplayReport {
    /// How many runs replayed identically.
    pub fn identical(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Identical))
    }

    /// How many runs differ.
    pub fn differ(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Differs { .. }))
    }

    /// How many runs diverged.
    pub fn diverged(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Diverged { .. }))
    }

    /// Whether every run replayed identically.
    pub fn all_identical(&self) -> bool {
        self.identical() == self.runs.len()
    }

    fn count(&self, which: impl Fn(&Verdict) -> bool) -> usize {
        self.runs.iter().filter(|r| which(&r.verdict)).count()
    }
}

impl fmt::Display for ReplayReport {
    /// `120 runs: 117 identical, 2 differ, 1 diverged`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs = self.runs.len();
        write!(
            f,
            "{runs} run{}: {} identical, {} differ, {} diverged",
            if runs == 1 { "" } else { "s" },
            self.identical(),
            self.differ(),
            self.diverged()
        )
    }
}

impl Plugin {
    /// Replays `recordings` against this plugin, under `options` (their
    /// grants, policy and limits; the input is each recording's). Every
    /// immediate effect, lock request and breaker call is answered from the
    /// recording: no handler is called, no lock taken, no compensation
    /// performed, and nothing is dispatched. Each run's intents, immediate
    /// payloads and result are compared with the recording's.
    ///
    /// # Errors
    ///
    /// When a run cannot be started (see [`Plugin::run`]); a run that
    /// fails is compared like any other.
    pub async fn replay(
        &self,
        recordings: &[Recording],
        options: RunOptions,
    ) -> Result<ReplayReport, crate::error::Error> {
        // Locks are answered from the recording; a table of its own keeps
        // every release away from the host's backend.
        let replaying = self
            .with_outbox(None)
            .with_locks(Arc::new(MemoryLocks::new()));
        let mut report = ReplayReport::default();
        for recording in recordings {
            let options = options
                .clone()
                .input(recording.input.0.clone())
                .answered_from(recording.answers.clone())
                .dispatch(Dispatch::Hold)
                .require_approval(Patterns::default());
            let outcome = replaying.run(options).await?;
            let verdict = match &outcome.result {
                Err(Failure::Diverged(why)) => Verdict::Diverged { why: why.clone() },
                _ => {
                    let calls = Answers::of(&outcome).calls;
                    let differences = diff::runs(
                        (
                            &recording.intents,
                            &recording.answers.calls,
                            &recording.result,
                        ),
                        (
                            &RecordedIntent::all_of(&outcome),
                            &calls,
                            &RecordedResult::of(&outcome),
                        ),
                    );
                    match differences.is_empty() {
                        true => Verdict::Identical,
                        false => Verdict::Differs { differences },
                    }
                }
            };
            report.runs.push(RunReplay {
                run_id: recording.run_id,
                verdict,
            });
        }
        Ok(report)
    }
}
