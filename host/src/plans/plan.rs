//! Plans: a run that looked and dispatched nothing, saved to be applied
//! exactly, once, later.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::diff::{self, Difference};
use crate::answers::{Answers, Bytes};
use crate::document::{self, Document, DocumentError};
use crate::handlers::EffectKind;
use crate::outcome::{EffectError, Failure, Fate, Intent, Outcome, Refusal};
use crate::patterns::Patterns;
use crate::plugin::Plugin;
use crate::recording::RecordedIntent;
use crate::run::{Committed, ConfigDigest, Dispatch, RunOptions};
use crate::run_id::RunId;

/// The plan format version this escrow writes, and the newest it reads.
pub const PLAN_VERSION: u32 = 1;

/// How long a plan can be applied after it was made, unless it says
/// otherwise ([`Plan::expires_in`]).
pub const DEFAULT_PLAN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// What a run would dispatch, computed without performing any action, and
/// what it was computed from. See the [module](super) and `docs/plans.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's id: the run id its intents are dispatched as, so their
    /// idempotency keys are `{plan_id}:{seq}`.
    pub id: RunId,
    /// The plugin's name.
    pub plugin: String,
    /// The sha256 of the component's bytes.
    pub component_sha256: String,
    /// The digests of the configuration it ran under.
    pub config: ConfigDigest,
    /// When it was made.
    #[serde(with = "crate::document::rfc3339")]
    pub created_at: SystemTime,
    /// After when it is refused.
    #[serde(with = "crate::document::rfc3339")]
    pub expires_at: SystemTime,
    /// The plugin's input.
    pub input: Bytes,
    /// What the plugin returned.
    pub output: Bytes,
    /// The intents a commit would dispatch, in order.
    pub intents: Vec<PlannedIntent>,
    /// The answers the run was given: its queries', its locks', its
    /// breakers'. `apply --verify` runs the plugin on them again.
    pub answers: Answers,
}

/// An intent a plan dispatches when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedIntent {
    /// Its sequence number in the planned run: the `{seq}` of its
    /// idempotency key.
    pub seq: u64,
    /// The effect.
    pub effect: String,
    /// The payload.
    pub payload: Bytes,
}

impl Document for Plan {
    const FORMAT: &'static str = "escrow-plan";
    const VERSION: u32 = PLAN_VERSION;
    const NOUN: &'static str = "plan";
}

/// Why a plan could not be made, checked or applied. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plugin was linked from a compiled component, so nothing names
    /// its bytes.
    #[error(
        "the plugin was not loaded from its bytes, so no plan can name it: load it with \
         `Host::load` or `Host::load_file`"
    )]
    NoComponentDigest,
    /// The plugin asked for an action while it was planned.
    #[error("the plugin asked for the action `{0}`; a plan performs no action, and none was")]
    Action(String),
    /// The planned run, or the run of `--verify` or `--refresh`, failed.
    #[error("the plugin's run failed: {0}")]
    RunFailed(String),
    /// The plan's time is over.
    #[error("the plan expired at {0}")]
    Expired(String),
    /// The component is not the one the plan was made with.
    #[error("the plugin changed: sha256 {planned} → {now}")]
    PluginChanged {
        /// The planned component's sha256, shortened.
        planned: String,
        /// The given component's, shortened.
        now: String,
    },
    /// The configuration is not the one the plan was made under.
    #[error("the configuration changed since the plan was made: its {}", .0.join(", "))]
    ConfigChanged(Vec<&'static str>),
    /// The plan is older than the outbox keeps delivered intents: it
    /// could not tell that the plan was applied already.
    #[error(
        "the plan was made more than {0} ago, longer than the outbox keeps delivered intents: \
         applying it could dispatch it twice"
    )]
    OlderThanRetention(String),
    /// Run again, the plugin requests other intents than the plan's.
    #[error("the plugin's intents now differ from the plan's ({} differences)", .0.len())]
    Differs(Vec<Difference>),
    /// Run again on the plan's answers, the plugin asked something they do
    /// not hold.
    #[error("the plugin no longer runs as planned: {0}")]
    Diverged(String),
    /// The plugin could not be run.
    #[error(transparent)]
    Run(#[from] crate::error::Error),
    /// The plan file could not be read or written.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// What [`Plan::apply`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The plan's intents, each with its fate: dispatched (and how), or
    /// still committed when the plan had been applied already.
    pub intents: Vec<Intent>,
    /// Whether this application dispatched them, or found the plan
    /// applied already.
    pub committed: Committed,
}

impl Plugin {
    /// Plans a run: runs the plugin with `options` without performing any
    /// action (queries are performed, and their answers kept) and
    /// dispatches nothing; the committed intents become the plan's. The
    /// plan expires after [`DEFAULT_PLAN_LIFETIME`].
    ///
    /// # Errors
    ///
    /// [`PlanError::Action`] when the plugin asks for an action,
    /// [`PlanError::RunFailed`] when its run fails otherwise,
    /// [`PlanError::NoComponentDigest`] for a plugin not loaded from its
    /// bytes, and [`PlanError::Run`] when it cannot be run.
    pub async fn plan(&self, options: RunOptions) -> Result<Plan, PlanError> {
        let component_sha256 = self
            .sha256()
            .ok_or(PlanError::NoComponentDigest)?
            .to_owned();
        let config = self.config_digest(&options);
        let input = Bytes(options.input_bytes().to_vec());
        let outcome = self.look(options).await?;
        let output = match &outcome.result {
            Ok(output) => Bytes(output.clone()),
            Err(failure) => return Err(plan_failure(&outcome, failure)),
        };
        let created_at = SystemTime::now();
        Ok(Plan {
            id: outcome.run_id,
            plugin: self.name().to_owned(),
            component_sha256,
            config,
            created_at,
            expires_at: created_at + DEFAULT_PLAN_LIFETIME,
            input,
            output,
            intents: outcome
                .intents
                .iter()
                .filter(|i| i.fate == Fate::Committed)
                .map(|i| PlannedIntent {
                    seq: i.seq,
                    effect: i.effect.clone(),
                    payload: Bytes(i.payload.clone()),
                })
                .collect(),
            answers: Answers::of(&outcome),
        })
    }

    /// Runs the plugin without actions, dispatching nothing (so holding
    /// nothing for approval either).
    pub(super) async fn look(&self, options: RunOptions) -> Result<Outcome, crate::error::Error> {
        let options = options
            .without_actions()
            .dispatch(Dispatch::Hold)
            .require_approval(Patterns::default());
        self.with_outbox(None).run(options).await
    }
}

/// Why a planned run failed: an action it asked for, or its failure.
fn plan_failure(outcome: &Outcome, failure: &Failure) -> PlanError {
    let action = outcome.invocations.iter().find(|call| {
        call.kind == Some(EffectKind::Action)
            && matches!(
                call.result,
                Err(EffectError::Refused(Refusal::Forbidden(_)))
            )
    });
    match (action, failure) {
        (Some(call), Failure::Forbidden { effect, .. }) if *effect == call.effect => {
            PlanError::Action(call.effect.clone())
        }
        (_, Failure::Diverged(why)) => PlanError::Diverged(why.clone()),
        _ => PlanError::RunFailed(failure.to_string()),
    }
}

/// The first 12 hex digits of a sha256, for messages.
fn short(sha256: &str) -> String {
    match sha256.get(..12) {
        Some(head) if sha256.len() > 12 => format!("{head}…"),
        _ => sha256.to_owned(),
    }
}

impl Plan {
    /// The plan, to expire `lifetime` after it was made.
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_at = self.created_at + lifetime;
        self
    }

    /// Reads the plan at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is no plan this escrow reads: a
    /// truncated or edited file, another format, a newer version.
    pub fn read(path: &Path) -> Result<Self, DocumentError> {
        document::read(path)
    }

    /// Writes the plan to `path`, whole or not at all.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), DocumentError> {
        document::write(path, self)
    }

    /// Checks that the plan may be applied with `plugin` under `options`
    /// at `now`: it has not expired, and neither the component nor the
    /// configuration changed.
    ///
    /// # Errors
    ///
    /// [`PlanError::Expired`], [`PlanError::PluginChanged`] or
    /// [`PlanError::ConfigChanged`].
    pub fn check(
        &self,
        plugin: &Plugin,
        options: &RunOptions,
        now: SystemTime,
    ) -> Result<(), PlanError> {
        if now > self.expires_at {
            return Err(PlanError::Expired(
                humantime::format_rfc3339_seconds(self.expires_at).to_string(),
            ));
        }
        let given = plugin.sha256().unwrap_or("unknown");
        if given != self.component_sha256 {
            return Err(PlanError::PluginChanged {
                planned: short(&self.component_sha256),
                now: short(given),
            });
        }
        let changed = self.config.changed(&plugin.config_digest(options));
        if !changed.is_empty() {
            return Err(PlanError::ConfigChanged(changed));
        }
        Ok(())
    }

    /// [Checks](Self::check) the plan, then runs the plugin again on its
    /// input, told the answers the plan recorded, and compares its intents
    /// with the plan's.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check); [`PlanError::Differs`] with the
    /// differences, [`PlanError::Diverged`] when the plugin asks what the
    /// plan holds no answer for, [`PlanError::RunFailed`] when it fails.
    pub async fn verify(&self, plugin: &Plugin, options: RunOptions) -> Result<(), PlanError> {
        self.check(plugin, &options, SystemTime::now())?;
        let options = options.answered_from(self.answers.clone());
        self.compare(plugin, options).await
    }

    /// [Checks](Self::check) the plan, then plans again with live queries
    /// and compares the intents with the plan's: refuses when the world
    /// changed what the plugin would do.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub async fn refresh(&self, plugin: &Plugin, options: RunOptions) -> Result<(), PlanError> {
        self.check(plugin, &options, SystemTime::now())?;
        self.compare(plugin, options).await
    }

    async fn compare(&self, plugin: &Plugin, options: RunOptions) -> Result<(), PlanError> {
        let outcome = plugin.look(options.input(self.input.0.clone())).await?;
        if let Err(failure) = &outcome.result {
            return Err(plan_failure(&outcome, failure));
        }
        let planned: Vec<RecordedIntent> = self
            .intents
            .iter()
            .map(|i| RecordedIntent {
                seq: i.seq,
                effect: i.effect.clone(),
                payload: i.payload.clone(),
                fate: Fate::Committed.name().to_owned(),
            })
            .collect();
        let now: Vec<RecordedIntent> = RecordedIntent::all_of(&outcome)
            .into_iter()
            .filter(|i| i.fate == Fate::Committed.name())
            .collect();
        let differences = diff::intents(&planned, &now);
        match differences.is_empty() {
            true => Ok(()),
            false => Err(PlanError::Differs(differences)),
        }
    }

    /// [Checks](Self::check) the plan, then dispatches exactly its intents
    /// as the run [`id`](Self::id) of `plugin`, through its outbox when it
    /// has one (see [`Plugin::dispatch_committed`]). With an outbox a plan
    /// is applied once: applying it again dispatches nothing and answers
    /// [`Committed::Already`]. Without one, every call dispatches: keeping
    /// a plan from being applied twice is then the caller's to do.
    ///
    /// The intents carry no fences: the locks the planned run held are not
    /// held when the plan is applied.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check); [`PlanError::OlderThanRetention`] when
    /// the outbox no longer keeps what it delivered as long ago as the plan
    /// was made; [`PlanError::Run`] when the outbox cannot be used.
    pub async fn apply(&self, plugin: &Plugin, options: &RunOptions) -> Result<Applied, PlanError> {
        let now = SystemTime::now();
        self.check(plugin, options, now)?;
        if let Some(outbox) = plugin.outbox() {
            let age = now.duration_since(self.created_at).unwrap_or_default();
            if age > outbox.retained_for() {
                return Err(PlanError::OlderThanRetention(
                    humantime::format_duration(outbox.retained_for()).to_string(),
                ));
            }
        }
        let plugin_name: Arc<str> = Arc::from(plugin.name());
        let rule: Arc<str> = Arc::from(format!("plan {}", self.id));
        let mut intents: Vec<Intent> = self
            .intents
            .iter()
            .map(|planned| Intent {
                run_id: self.id,
                plugin: Arc::clone(&plugin_name),
                seq: planned.seq,
                effect: planned.effect.clone(),
                payload: planned.payload.0.clone(),
                fate: Fate::Committed,
                rule: Arc::clone(&rule),
                fences: Arc::from([]),
            })
            .collect();
        let committed = plugin
            .dispatch_committed(self.id, &mut intents, options)
            .await?;
        Ok(Applied { intents, committed })
    }
}
