//! `escrow:host/effects`: immediate effects, performed now by a host handler,
//! and the compensations that undo them.

use std::task::Poll;
use std::time::Instant;

use crate::bindings::escrow::host::effects::{EffectError, Host};
use crate::ctx::{EscrowCtx, PendingCompensation, Refused};
use crate::handlers::{Call, EffectKind, Registered};
use crate::limits::{
    Limit, LimitExceeded, MAX_EFFECT_NAME_BYTES, MAX_ERROR_TEXT_BYTES, kept, kept_failure,
};
use crate::outbox::{EntryKind, NewEntry, Write};
use crate::outcome::{Failure, Invocation, Refusal};
use crate::policy::Decision;

impl Host for EscrowCtx {
    async fn invoke(
        &mut self,
        effect: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, EffectError>> {
        self.perform(effect, payload, None).await
    }

    async fn invoke_reversible(
        &mut self,
        effect: String,
        payload: Vec<u8>,
        compensate: String,
        compensate_payload: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, EffectError>> {
        let undo = Undo {
            effect: compensate,
            payload: compensate_payload,
            answer: false,
        };
        self.perform(effect, payload, Some(undo)).await
    }
}

/// The rule that refuses every action of a run without actions (a plan).
const NO_ACTIONS_RULE: &str = "a plan, which performs no action,";

/// What a call will undo with, once its handler has run.
pub(crate) struct Undo {
    /// The compensation's effect.
    pub effect: String,
    /// Its payload, journaled before the call.
    pub payload: Vec<u8>,
    /// Whether the payload is a JSON object (`{"arguments":…}`, a typed
    /// effect's) that the handler's answer joins as `"answer"` once it has
    /// answered. The journaled copy, owed if the host stops during the
    /// call, has no answer: none was known.
    pub answer: bool,
}

/// How a handler call ended.
enum Called {
    Answered(Result<Vec<u8>, crate::error::CallError>),
    TimedOut(std::time::Duration),
    PastDeadline,
}

impl EscrowCtx {
    /// Checks, performs and records one immediate effect. Returns `Err` (a
    /// trap) only when the run's deadline passes while the handler runs.
    pub(crate) async fn perform(
        &mut self,
        effect: String,
        payload: Vec<u8>,
        undo: Option<Undo>,
    ) -> wasmtime::Result<Result<Vec<u8>, EffectError>> {
        match self.next_seq() {
            Ok(seq) => self.perform_as(seq, effect, payload, undo).await,
            Err(refusal) => Ok(Err(EffectError::Refused(refusal))),
        }
    }

    /// [`perform`](Self::perform) for a request whose sequence number was
    /// taken already.
    pub(crate) async fn perform_as(
        &mut self,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        undo: Option<Undo>,
    ) -> wasmtime::Result<Result<Vec<u8>, EffectError>> {
        // A replayed run is matched against its recording first, whatever
        // its grants say now: a different request is a divergence.
        let recorded = match &mut self.replaying {
            None => None,
            Some(replaying) => match replaying.call(&effect) {
                Ok(recorded) => Some(recorded.reply.to_result()),
                Err(why) => return Err(self.diverge(why)),
            },
        };
        let (registered, undo) = match self.admit(&effect, &payload, undo) {
            Ok(admitted) => admitted,
            Err((refusal, keep_payload)) => {
                let kind = self.handlers.kind(&effect);
                let payload = if keep_payload { payload } else { Vec::new() };
                let result = Err(EffectError::Refused(refusal));
                self.record(
                    seq,
                    kept(effect, MAX_EFFECT_NAME_BYTES),
                    payload,
                    kind,
                    &result,
                    None,
                );
                return Ok(result);
            }
        };

        if let Some(result) = recorded {
            let answer = result.as_ref().ok().map(Vec::as_slice);
            let compensation = undo.map(|undo| self.register_undo(seq, undo, answer));
            self.record(
                seq,
                effect,
                payload,
                Some(registered.kind),
                &result,
                compensation,
            );
            return Ok(result);
        }

        if let Some(undo) = &undo
            && let Err(error) = self.journal(seq, &undo.effect, &undo.payload).await
        {
            // The undo could not be made durable: the action is not performed.
            let result = Err(EffectError::Failed(format!(
                "the compensation could not be journaled, so `{effect}` was not performed: {error}"
            )));
            self.record(seq, effect, payload, Some(registered.kind), &result, None);
            return Ok(result);
        }

        let called = {
            let mut call = registered.handler.call(Call {
                effect: &effect,
                payload: &payload,
                run_id: self.run_id,
                seq,
                compensation: false,
            });
            // A handler that answers at once needs no timer: poll it once first.
            match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
                Poll::Ready(answer) => Called::Answered(answer),
                Poll::Pending => {
                    // Never wait beyond the run's deadline: past it the guest
                    // is stopped.
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    let timeout = self.handlers.call_timeout().min(left);
                    match tokio::time::timeout(timeout, call).await {
                        Ok(answer) => Called::Answered(answer),
                        Err(_) if timeout == left => Called::PastDeadline,
                        Err(_) => Called::TimedOut(timeout),
                    }
                }
            }
        };
        // The handler was called: whatever it answered, it may have acted,
        // so its undo is registered.
        let (max, max_total) = (
            self.limits.max_payload_bytes,
            self.limits.max_total_payload_bytes,
        );
        let answer = match &called {
            Called::Answered(Ok(answer)) => Some(answer.as_slice()),
            _ => None,
        };
        let compensation = undo.map(|undo| self.register_undo(seq, undo, answer));
        // The answer is kept in the outcome like a payload, so it counts
        // towards the run's total; one that does not fit is not kept.
        let total = self.payload_bytes + payload.len();
        let past_deadline = matches!(called, Called::PastDeadline);
        let result = match called {
            Called::Answered(Ok(answer)) if answer.len() > max => {
                Err(EffectError::Failed(format!(
                    "the handler's answer is {} bytes; the limit is {max}",
                    answer.len()
                )))
            }
            Called::Answered(Ok(answer)) if total + answer.len() > max_total => {
                Err(EffectError::Failed(format!(
                    "the handler's answer is {} bytes; with it the run's payloads would \
                     pass {} ({max_total} bytes)",
                    answer.len(),
                    Limit::TotalPayload
                )))
            }
            Called::Answered(Ok(answer)) => Ok(answer),
            Called::Answered(Err(error)) => Err(EffectError::Failed(kept_failure(
                error.to_string(),
                MAX_ERROR_TEXT_BYTES,
            ))),
            Called::TimedOut(timeout) => Err(EffectError::Failed(format!(
                "the handler did not answer within {timeout:?}"
            ))),
            Called::PastDeadline => Err(EffectError::Failed(
                "the run's deadline passed during the call".into(),
            )),
        };
        self.record(
            seq,
            effect,
            payload,
            Some(registered.kind),
            &result,
            compensation,
        );
        if past_deadline {
            return Err(LimitExceeded(Limit::Deadline).into());
        }
        Ok(result)
    }

    /// Registers the undo of call `seq`, whose handler was called (and gave
    /// `answer`, if it answered); returns the compensation's effect.
    fn register_undo(&mut self, seq: u64, undo: Undo, answer: Option<&[u8]>) -> String {
        let handler = self
            .handlers
            .get(&undo.effect)
            .expect("checked by admit")
            .handler
            .clone();
        let mut payload = undo.payload;
        if undo.answer
            && let Some(answer) = answer
            && answer.len() <= self.limits.max_payload_bytes
        {
            join_answer(&mut payload, answer);
        }
        self.payload_bytes += payload.len();
        self.compensations.push(PendingCompensation {
            seq,
            effect: undo.effect.clone(),
            payload,
            handler,
        });
        undo.effect
    }

    /// With an outbox, writes the compensation of call `seq` durably before
    /// its action is performed, owed once the run's deadline and the
    /// outbox's grace have passed unless the run resolves it.
    async fn journal(
        &mut self,
        seq: u64,
        compensate: &str,
        payload: &[u8],
    ) -> Result<(), crate::outbox::OutboxError> {
        let Some(outbox) = self.outbox.clone() else {
            return Ok(());
        };
        let now_ms = outbox.now_ms();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let write = Write::Journal {
            entry: NewEntry {
                kind: EntryKind::Compensation,
                run_id: self.run_id,
                seq,
                plugin: self.plugin.to_string(),
                effect: compensate.to_owned(),
                payload: payload.to_vec(),
                fences: self.fences().to_vec(),
            },
            due_at_ms: now_ms + (left + outbox.grace()).as_millis() as i64,
            now_ms,
        };
        // Set first: if the run is cut off while the write is in flight, the
        // write may still land, and the run's end must resolve it.
        self.journaled = true;
        outbox.write(write).await.map(drop)
    }

    /// The checks before a handler is called: the request's own checks for
    /// the effect and its compensation, a handler for each, and for an action
    /// the policies. Returns the handler, or the refusal and whether the
    /// payload is kept.
    fn admit(
        &mut self,
        effect: &str,
        payload: &[u8],
        undo: Option<Undo>,
    ) -> Result<(Registered, Option<Undo>), (Refusal, bool)> {
        let held = payload.len() + undo.as_ref().map_or(0, |undo| undo.payload.len());
        let refused = |r: Refused| (r.refusal, r.keep_payload);
        self.check_request(effect, held).map_err(refused)?;
        if let Some(Undo {
            effect: compensate, ..
        }) = &undo
        {
            self.check_request(compensate, 0).map_err(refused)?;
            if self.handlers.get(compensate).is_none() {
                let refusal = Refusal::NotGranted(format!(
                    "no handler performs the compensation `{compensate}`"
                ));
                return Err((refusal, true));
            }
        }
        let Some(registered) = self.handlers.get(effect).cloned() else {
            return Err((
                Refusal::NotGranted(format!(
                    "`{effect}` is granted, but no handler performs it: give it a \
                     [handlers.\"{effect}\"] entry in the config"
                )),
                true,
            ));
        };
        if registered.kind == EffectKind::Action {
            let rule = match self.decide(effect, payload) {
                _ if self.no_actions => Some(std::borrow::Cow::Borrowed(NO_ACTIONS_RULE)),
                Decision::Commit => None,
                Decision::Drop(rule) | Decision::Block(rule) | Decision::Forbid(rule) => Some(rule),
            };
            if let Some(rule) = rule {
                self.violate(Failure::Forbidden {
                    effect: effect.to_owned(),
                    rule: rule.to_string(),
                });
                let refusal = Refusal::Forbidden(format!(
                    "`{effect}` is an action; {rule} does not let it through"
                ));
                return Err((refusal, true));
            }
        }
        Ok((registered, undo))
    }

    pub(crate) fn record(
        &mut self,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        kind: Option<EffectKind>,
        result: &Result<Vec<u8>, EffectError>,
        compensation: Option<String>,
    ) {
        let answer = result.as_ref().map_or(0, Vec::len);
        tracing::debug!(
            seq, effect = %effect, kind = kind.map(EffectKind::as_str),
            outcome = match result {
                Ok(_) => "answered",
                Err(EffectError::Refused(_)) => "refused",
                Err(EffectError::Failed(_)) => "failed",
            },
            "invocation"
        );
        self.payload_bytes += payload.len() + answer;
        self.invocations.push(Invocation {
            seq,
            effect,
            payload,
            kind,
            result: result.clone(),
            compensation,
        });
    }
}

/// `{"arguments":…}` becomes `{"arguments":…,"answer":…}`, when the answer
/// is JSON; an answer that is not stays out.
fn join_answer(payload: &mut Vec<u8>, answer: &[u8]) {
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(answer).is_ok();
    if is_json && payload.last() == Some(&b'}') {
        payload.pop();
        payload.extend_from_slice(b",\"answer\":");
        payload.extend_from_slice(answer);
        payload.push(b'}');
    }
}
