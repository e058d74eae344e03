//! `escrow:host/scopes`: nested scopes (savepoints) inside a run.
//!
//! Scopes form a stack. The guest's handle to a scope carries the scope's id
//! as its representation; the component model already checks that a guest
//! only passes handles it owns, so no host table is needed.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::escrow::host::scopes::{Host, HostScope, Scope, ScopePolicy};
use crate::ctx::{EscrowCtx, Frame, next_id};
use crate::limits::{Limit, MAX_SCOPE_BLOCK_PATTERNS};
use crate::outcome::{Failure, Refusal};
use crate::policy::{AssertNone, Block, DropAll, Policy};

impl Host for EscrowCtx {}

impl HostScope for EscrowCtx {
    async fn open(&mut self, policy: ScopePolicy) -> Result<Resource<Scope>, Refusal> {
        let max = self.limits.max_scope_depth;
        if self.frames.len() >= max {
            self.violate(Failure::Limit(Limit::ScopeDepth));
            return Err(Refusal::Limit(format!(
                "{}: scopes nest at most {max} deep",
                Limit::ScopeDepth
            )));
        }
        let policy: Option<Box<dyn Policy>> = match policy {
            ScopePolicy::Inherit => None,
            ScopePolicy::Drop => Some(Box::new(DropAll)),
            ScopePolicy::AssertNone => Some(Box::new(AssertNone)),
            ScopePolicy::Block(patterns) => {
                if patterns.len() > MAX_SCOPE_BLOCK_PATTERNS {
                    return Err(Refusal::Invalid(format!(
                        "{} block patterns; at most {MAX_SCOPE_BLOCK_PATTERNS}",
                        patterns.len()
                    )));
                }
                let block = Block::new(patterns).map_err(|e| Refusal::Invalid(e.to_string()))?;
                Some(Box::new(block))
            }
        };
        let frames = &self.frames;
        let id = next_id(&mut self.next_frame, |id| frames.iter().any(|f| f.id == id));
        self.frames.push(Frame {
            id,
            start: self.records.len(),
            compensations: self.compensations.len(),
            policy,
        });
        Ok(Resource::new_own(id))
    }

    async fn commit(&mut self, this: Resource<Scope>) {
        self.close_scope(this.rep(), true, "").await;
    }

    async fn rollback(&mut self, this: Resource<Scope>) {
        self.close_scope(this.rep(), false, "rolled back").await;
    }

    async fn drop(&mut self, rep: Resource<Scope>) -> wasmtime::Result<()> {
        self.close_scope(rep.rep(), false, "was dropped without commit or rollback")
            .await;
        Ok(())
    }
}

impl EscrowCtx {
    /// Ends scope `id` if it is still open. Scopes opened inside it that are
    /// still open are rolled back first. A committed scope's intents and
    /// compensations simply stay where they are: they now belong to the
    /// enclosing scope, whose ranges cover them. A rolled-back scope's held
    /// intents are discarded, with `why` in the rule, and its compensations
    /// run, newest first.
    async fn close_scope(&mut self, id: u32, commit: bool, why: &str) {
        let Some(position) = self.frames.iter().rposition(|f| f.id == id) else {
            // Already ended by an enclosing scope.
            return;
        };
        while self.frames.len() > position + 1 {
            let inner = self.frames.pop().expect("frames above `position`");
            let rule: Arc<str> = Arc::from(format!(
                "scope {} was still open when scope {id} ended",
                inner.id
            ));
            self.roll_back(&inner, &rule).await;
        }
        let frame = self.frames.pop().expect("the frame at `position`");
        if !commit {
            let rule: Arc<str> = Arc::from(format!("scope {id} {why}"));
            self.roll_back(&frame, &rule).await;
        }
    }

    async fn roll_back(&mut self, frame: &Frame, rule: &Arc<str>) {
        self.discard_from(frame.start, rule);
        let until = self.deadline;
        self.compensate_from(frame.compensations, rule, until, false)
            .await;
    }
}
