//! `escrow:host/breakers`: immediate effects through named circuit breakers
//! whose state every run of the host shares.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::answers::BreakerReply;
use crate::backends::{Admission, CallResult};
use crate::bindings::escrow::host::breakers::{
    Breaker, BreakerError, BreakerState, Host, HostBreaker,
};
use crate::bindings::escrow::host::effects::EffectError;
use crate::breakers::{Breakers, Defined};
use crate::capabilities::effects::Undo;
use crate::ctx::EscrowCtx;
use crate::limits::{MAX_EFFECT_NAME_BYTES, kept};
use crate::outcome::{BreakerDecision, BreakerVerdict, Refusal};
use crate::patterns::check_effect_name;

impl Host for EscrowCtx {}

impl HostBreaker for EscrowCtx {
    async fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<Breaker>, Refusal>> {
        let opened = if let Err(error) = check_effect_name(&name) {
            Err(Refusal::Invalid(error.to_string()))
        } else if self.grants.breaker_grant(&name).is_none() {
            Err(Refusal::NotGranted(format!(
                "breaker `{name}` is not covered by the plugin's grants"
            )))
        } else {
            self.breakers
                .position(&name)
                .ok_or_else(|| Refusal::NotGranted(format!("no breaker `{name}` is defined")))
        };
        // A handle is the breaker's position among the host's definitions:
        // opening it again gives the same handle.
        let refusal = match opened {
            Ok(position) => return Ok(Ok(Resource::new_own(position as u32))),
            Err(refusal) => refusal,
        };
        // A refused open is a request like any other: counted, and
        // recorded for the audit.
        let seq = match self.next_seq() {
            Ok(seq) => seq,
            Err(limit) => return Ok(Err(limit)),
        };
        self.breaker_decisions.push(BreakerDecision {
            seq,
            breaker: Arc::from(kept(name, MAX_EFFECT_NAME_BYTES)),
            effect: String::new(),
            verdict: BreakerVerdict::Refused(refusal.clone()),
            transitions: Vec::new(),
        });
        Ok(Err(refusal))
    }

    async fn state(&mut self, breaker: Resource<Breaker>) -> wasmtime::Result<BreakerState> {
        let name = Arc::clone(&self.opened(&breaker)?.name);
        // An unreachable store reads as closed: calls would go through.
        Ok(self
            .breakers
            .state(&name)
            .await
            .unwrap_or(BreakerState::Closed))
    }

    async fn invoke(
        &mut self,
        breaker: Resource<Breaker>,
        effect: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, BreakerError>> {
        let breakers = Arc::clone(&self.breakers);
        let defined = self.opened_in(&breakers, &breaker)?;
        let name = Arc::clone(&defined.name);
        // The limit and the name are checked before the store is asked or
        // anything is kept: past the limit a call costs nothing.
        let seq = match self.next_seq() {
            Ok(seq) => seq,
            Err(refusal) => return Ok(Err(BreakerError::Effect(EffectError::Refused(refusal)))),
        };
        if let Err(error) = check_effect_name(&effect) {
            let refusal = Refusal::Invalid(error.to_string());
            self.breaker_decisions.push(BreakerDecision {
                seq,
                breaker: name,
                effect: kept(effect, MAX_EFFECT_NAME_BYTES),
                verdict: BreakerVerdict::Refused(refusal.clone()),
                transitions: Vec::new(),
            });
            return Ok(Err(BreakerError::Effect(EffectError::Refused(refusal))));
        }
        self.perform_guarded(&breakers, defined, seq, effect, payload, None)
            .await
    }

    async fn drop(&mut self, _breaker: Resource<Breaker>) -> wasmtime::Result<()> {
        // Breakers belong to the host; a handle holds nothing.
        Ok(())
    }
}

/// A half-open trial in flight; dropped before it reported (its run's future
/// was dropped), it records the trial as failed.
struct UnreportedTrial {
    breakers: Arc<Breakers>,
    /// `None` once the trial is about to report.
    name: Option<Arc<str>>,
}

impl UnreportedTrial {
    fn reported(mut self) {
        self.name = None;
    }
}

impl Drop for UnreportedTrial {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let breakers = Arc::clone(&self.breakers);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(defined) = breakers.defined(&name) {
                    breakers.record(defined, true, CallResult::Failure).await;
                }
            });
        }
    }
}

impl EscrowCtx {
    /// Performs the immediate effect `effect` through the breaker
    /// `defined`, as request `seq`: rejected while it is open, counted by
    /// what the handler answered, and recorded.
    pub(crate) async fn perform_guarded(
        &mut self,
        breakers: &Arc<Breakers>,
        defined: &Defined,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        undo: Option<Undo>,
    ) -> wasmtime::Result<Result<Vec<u8>, BreakerError>> {
        let name = Arc::clone(&defined.name);
        let mut transitions = Vec::new();
        let admission = match &mut self.replaying {
            None => breakers.admit(defined).await,
            Some(replaying) => match replaying.breaker(&name, &effect) {
                Ok(BreakerReply::Allowed { trial }) => {
                    return self
                        .replayed_breaker_call(name, seq, effect, payload, undo, trial)
                        .await;
                }
                Ok(BreakerReply::Rejected { retry_after_ms }) => Admission::Rejected {
                    retry_after_ms,
                    lapsed: None,
                },
                Err(why) => return Err(self.diverge(why)),
            },
        };
        let trial = match admission {
            Admission::Rejected {
                retry_after_ms,
                lapsed,
            } => {
                transitions.extend(lapsed);
                self.breaker_decisions.push(BreakerDecision {
                    seq,
                    breaker: name,
                    effect,
                    verdict: BreakerVerdict::Rejected { retry_after_ms },
                    transitions,
                });
                return Ok(Err(BreakerError::CircuitOpen(retry_after_ms)));
            }
            Admission::Allowed { trial, transition } => {
                transitions.extend(transition);
                trial
            }
        };
        // If the run is dropped or cut off while the call runs, the trial
        // still reports: as failed, at once, not after its lease.
        let unreported = trial.then(|| UnreportedTrial {
            breakers: Arc::clone(breakers),
            name: Some(Arc::clone(&name)),
        });
        let performed = self.perform_as(seq, effect.clone(), payload, undo).await;
        if let Some(unreported) = unreported {
            unreported.reported();
        }
        let counted = match &performed {
            Ok(Ok(_)) => CallResult::Success,
            Ok(Err(EffectError::Refused(_))) => CallResult::NotCalled,
            Ok(Err(EffectError::Failed(message))) if defined.ignores(message) => {
                CallResult::Success
            }
            // A failed call, or one still running at the deadline.
            Ok(Err(EffectError::Failed(_))) | Err(_) => CallResult::Failure,
        };
        transitions.extend(breakers.record(defined, trial, counted).await);
        tracing::debug!(seq, breaker = %name, trial, counted = counted.as_str(), "breaker call");
        self.breaker_decisions.push(BreakerDecision {
            seq,
            breaker: name,
            effect,
            verdict: BreakerVerdict::Allowed { trial, counted },
            transitions,
        });
        Ok(performed?.map_err(BreakerError::Effect))
    }

    /// A call a replayed run's recording let through breaker `name`: its
    /// answer comes from the recording too, and the breaker's shared state
    /// is left alone.
    async fn replayed_breaker_call(
        &mut self,
        name: Arc<str>,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        undo: Option<Undo>,
        trial: bool,
    ) -> wasmtime::Result<Result<Vec<u8>, BreakerError>> {
        let performed = self.perform_as(seq, effect.clone(), payload, undo).await?;
        let counted = match &performed {
            Ok(_) => CallResult::Success,
            Err(EffectError::Refused(_)) => CallResult::NotCalled,
            Err(EffectError::Failed(_)) => CallResult::Failure,
        };
        self.breaker_decisions.push(BreakerDecision {
            seq,
            breaker: name,
            effect,
            verdict: BreakerVerdict::Allowed { trial, counted },
            transitions: Vec::new(),
        });
        Ok(performed.map_err(BreakerError::Effect))
    }

    fn opened(&self, breaker: &Resource<Breaker>) -> wasmtime::Result<&Defined> {
        self.opened_in(&self.breakers, breaker)
    }

    /// The definition behind a handle `open` gave. The handle is the
    /// guest's: one `open` never made is a trap, not a panic.
    fn opened_in<'b>(
        &self,
        breakers: &'b Breakers,
        breaker: &Resource<Breaker>,
    ) -> wasmtime::Result<&'b Defined> {
        breakers
            .try_at(breaker.rep() as usize)
            .ok_or_else(|| wasmtime::format_err!("unknown breaker handle"))
    }
}
