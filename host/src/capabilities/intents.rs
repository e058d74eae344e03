//! `escrow:host/intents`: deferred effects, recorded now and dispatched after
//! a successful run.

use std::sync::Arc;

use crate::bindings::escrow::host::intents::{Host, IntentInfo};
use crate::ctx::{EscrowCtx, Refused};
use crate::limits::{MAX_EFFECT_NAME_BYTES, kept};
use crate::outcome::{Failure, Fate, Intent, Refusal};
use crate::policy::Decision;

impl Host for EscrowCtx {
    fn enqueue(&mut self, effect: String, payload: Vec<u8>) -> Result<u64, Refusal> {
        let seq = self.next_seq()?;
        let grant = match self.check_request(&effect, payload.len()) {
            Ok(grant) => grant,
            Err(Refused {
                refusal,
                rule,
                keep_payload,
            }) => {
                let payload = if keep_payload { payload } else { Vec::new() };
                return Err(self.refuse(
                    seq,
                    kept(effect, MAX_EFFECT_NAME_BYTES),
                    payload,
                    refusal,
                    rule,
                ));
            }
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
        let fences = self.fences();
        self.records.push(Intent {
            run_id: self.run_id,
            plugin: Arc::clone(&self.plugin),
            seq,
            effect,
            payload,
            fate,
            rule,
            fences,
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
    /// Records a refused deferred request and returns the refusal for the
    /// guest.
    pub(crate) fn refuse(
        &mut self,
        seq: u64,
        effect: String,
        payload: Vec<u8>,
        refusal: Refusal,
        rule: &str,
    ) -> Refusal {
        self.payload_bytes += payload.len();
        let rule = self.rule(rule);
        let fences = self.fences();
        self.records.push(Intent {
            run_id: self.run_id,
            plugin: Arc::clone(&self.plugin),
            seq,
            effect,
            payload,
            fate: Fate::Refused(refusal.clone()),
            rule,
            fences,
        });
        refusal
    }
}
