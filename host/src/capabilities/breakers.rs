//! `escrow:host/breakers`: immediate effects through named circuit breakers
//! whose state every run of the host shares.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::backends::{Admission, CallResult};
use crate::bindings::escrow::host::breakers::{
    Breaker, BreakerError, BreakerState, Host, HostBreaker,
};
use crate::bindings::escrow::host::effects::EffectError;
use crate::ctx::{EscrowCtx, truncated};
use crate::outcome::{BreakerDecision, BreakerVerdict, Refusal};
use crate::patterns::check_effect_name;

impl Host for EscrowCtx {}

impl HostBreaker for EscrowCtx {
    async fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<Breaker>, Refusal>> {
        let refusal = if let Err(error) = check_effect_name(&name) {
            Some(Refusal::Invalid(error.to_string()))
        } else if self.grants.breaker_grant(&name).is_none() {
            Some(Refusal::NotGranted(format!(
                "breaker `{name}` is not covered by the plugin's grants"
            )))
        } else if !self.breakers.is_defined(&name) {
            Some(Refusal::NotGranted(format!(
                "no breaker `{name}` is defined"
            )))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // A refused open is a request like any other: counted, and
            // recorded for the audit.
            let seq = match self.next_seq() {
                Ok(seq) => seq,
                Err(limit) => return Ok(Err(limit)),
            };
            self.breaker_decisions.push(BreakerDecision {
                seq,
                breaker: Arc::from(truncated(name)),
                effect: String::new(),
                verdict: BreakerVerdict::Refused(refusal.clone()),
                transitions: Vec::new(),
            });
            return Ok(Err(refusal));
        }
        // Opening the same breaker again gives the same handle's meaning.
        let index = match self.opened_breakers.iter().position(|n| **n == *name) {
            Some(index) => index,
            None => {
                self.opened_breakers.push(Arc::from(name));
                self.opened_breakers.len() - 1
            }
        };
        Ok(Ok(Resource::new_own(index as u32)))
    }

    async fn state(&mut self, breaker: Resource<Breaker>) -> wasmtime::Result<BreakerState> {
        let name = self.breaker_name(&breaker)?;
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
        let name = self.breaker_name(&breaker)?;
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
                effect: truncated(effect),
                verdict: BreakerVerdict::Refused(refusal.clone()),
                transitions: Vec::new(),
            });
            return Ok(Err(BreakerError::Effect(EffectError::Refused(refusal))));
        }
        let breakers = Arc::clone(&self.breakers);
        let defined = breakers
            .defined(&name)
            .expect("only defined breakers are opened");
        let mut transitions = Vec::new();
        let trial = match breakers.admit(&name, defined).await {
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
            breakers: Arc::clone(&breakers),
            name: Some(Arc::clone(&name)),
        });
        let performed = self.perform_as(seq, effect.clone(), payload, None).await;
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
        transitions.extend(breakers.record(&name, defined, trial, counted).await);
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

    async fn drop(&mut self, _breaker: Resource<Breaker>) -> wasmtime::Result<()> {
        // Breakers belong to the host; a handle holds nothing.
        Ok(())
    }
}

/// A half-open trial in flight; dropped before it reported (its run's future
/// was dropped), it records the trial as failed.
struct UnreportedTrial {
    breakers: Arc<crate::breakers::Breakers>,
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
                    breakers
                        .record(&name, defined, true, CallResult::Failure)
                        .await;
                }
            });
        }
    }
}

impl EscrowCtx {
    fn breaker_name(&self, breaker: &Resource<Breaker>) -> wasmtime::Result<Arc<str>> {
        self.opened_breakers
            .get(breaker.rep() as usize)
            .cloned()
            .ok_or_else(|| wasmtime::format_err!("unknown breaker handle"))
    }
}
