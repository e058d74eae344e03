//! `escrow:host/intents`: deferred effects, recorded now and dispatched after
//! a successful run.

use std::borrow::Cow;
use std::sync::Arc;

use crate::bindings::escrow::host::intents::{Host, IntentInfo};
use crate::ctx::EscrowCtx;
use crate::limits::{Limit, MAX_EFFECT_NAME_BYTES};
use crate::outcome::{Failure, Fate, Intent, Refusal};
use crate::patterns::check_effect_name;
use crate::policy::Decision;

impl Host for EscrowCtx {
    fn enqueue(&mut self, effect: String, payload: Vec<u8>) -> Result<u64, Refusal> {
        self.requests += 1;
        let seq = self.requests;
        let limits = &self.limits;

        // Past the request limit nothing more is recorded, so a guest that
        // loops on enqueue cannot grow the host's memory.
        if seq > limits.max_intents as u64 {
            let max = limits.max_intents;
            self.violate(Failure::Limit(Limit::Intents));
            return Err(Refusal::Limit(format!(
                "{}: at most {max} requests per run",
                Limit::Intents
            )));
        }
        if let Err(error) = check_effect_name(&effect) {
            let mut name = effect;
            name.truncate(name.floor_char_boundary(MAX_EFFECT_NAME_BYTES));
            let refusal = Refusal::Invalid(error.to_string());
            return Err(self.refuse(seq, name, Vec::new(), refusal, "malformed effect name"));
        }
        let exceeded = if payload.len() > limits.max_payload_bytes {
            Some((Limit::PayloadSize, limits.max_payload_bytes))
        } else if self.payload_bytes + payload.len() > limits.max_total_payload_bytes {
            Some((Limit::TotalPayload, limits.max_total_payload_bytes))
        } else {
            None
        };
        if let Some((limit, max)) = exceeded {
            self.violate(Failure::Limit(limit));
            let refusal = Refusal::Limit(format!(
                "{limit}: {} bytes of payload, at most {max}",
                payload.len()
            ));
            return Err(self.refuse(seq, effect, Vec::new(), refusal, "payload too large"));
        }
        let Some(grant) = self.grants.effect_grant_index(&effect) else {
            let refusal =
                Refusal::NotGranted(format!("`{effect}` is not covered by the plugin's grants"));
            return Err(self.refuse(seq, effect, payload, refusal, "no grant covers it"));
        };

        let (fate, rule) = match self.decide(&effect, &payload) {
            Decision::Commit => (Fate::Committed, Arc::clone(self.grants.effect_rule(grant))),
            Decision::Drop(rule) => (Fate::Dropped, self.rule(&rule)),
            Decision::Block(rule) => (Fate::Blocked, self.rule(&rule)),
            Decision::Forbid(rule) => {
                self.violate(Failure::Forbidden {
                    effect: effect.clone(),
                    rule: rule.to_string(),
                });
                let refusal =
                    Refusal::Forbidden(format!("`{effect}`: {rule} forbids effects here"));
                return Err(self.refuse(seq, effect, payload, refusal, &rule));
            }
        };
        self.payload_bytes += payload.len();
        self.records.push(Intent {
            seq,
            effect,
            payload,
            fate,
            rule,
        });
        Ok(seq)
    }

    fn pending(&mut self) -> Vec<IntentInfo> {
        self.records
            .iter()
            .filter(|r| r.fate.is_held())
            .map(|r| IntentInfo {
                seq: r.seq,
                effect: r.effect.clone(),
                payload: r.payload.clone(),
            })
            .collect()
    }
}

impl EscrowCtx {
    /// Asks the run's policy, then each open scope's from the outermost in:
    /// any `Forbid` wins, otherwise the outermost rule that withholds the
    /// intent decides. A nested scope can therefore narrow, never widen.
    fn decide(&self, effect: &str, payload: &[u8]) -> Decision {
        let mut decided = self.policy.decide(effect, payload);
        if matches!(decided, Decision::Forbid(_)) {
            return decided;
        }
        for frame in &self.frames {
            let Some(policy) = &frame.policy else {
                continue;
            };
            match policy.decide(effect, payload) {
                Decision::Commit => {}
                Decision::Forbid(rule) => {
                    return Decision::Forbid(Cow::Owned(format!("scope {} {rule}", frame.id)));
                }
                _ if !decided.is_commit() => {}
                Decision::Drop(rule) => {
                    decided = Decision::Drop(Cow::Owned(format!("scope {} {rule}", frame.id)))
                }
                Decision::Block(rule) => {
                    decided = Decision::Block(Cow::Owned(format!("scope {} {rule}", frame.id)))
                }
            }
        }
        decided
    }

    /// Records a refused request and returns the refusal for the guest.
    fn refuse(
        &mut self,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        refusal: Refusal,
        rule: &str,
    ) -> Refusal {
        self.payload_bytes += payload.len();
        let rule = self.rule(rule);
        self.records.push(Intent {
            seq,
            effect,
            payload,
            fate: Fate::Refused(refusal.clone()),
            rule,
        });
        refusal
    }
}
