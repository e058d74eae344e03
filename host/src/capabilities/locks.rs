//! `escrow:host/locks`: locks taken mid-run, all or nothing, in one global
//! order, released when the guard drops or after the run.
//!
//! Deadlock is made impossible rather than unlikely: keys of one request are
//! sorted, deduplicated and taken together, and a run that holds locks may
//! only ask for keys ordered after every key it holds. No run then waits for
//! a key while holding one ordered after it, so no cycle of waits can form.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use crate::backends::LockError as BackendError;
use crate::bindings::escrow::host::locks::{Guard, Host, HostGuard, LockError};
use crate::ctx::EscrowCtx;
use crate::limits::{Limit, MAX_LOCK_KEY_BYTES};
use crate::outcome::{Failure, Fence, LockRecord, Refusal};
use crate::patterns::check_lock_key;
use crate::run::LimitExceeded;

impl Host for EscrowCtx {
    async fn acquire(
        &mut self,
        keys: Vec<String>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Resource<Guard>, LockError>> {
        // Counted and checked first: past the limit nothing is recorded, so
        // a guest locking in a loop cannot grow the host's record.
        self.lock_requests += 1;
        let max = self.limits.max_lock_acquisitions;
        if self.lock_requests > max {
            self.violate(Failure::Limit(Limit::LockAcquisitions));
            return Ok(Err(LockError::Refused(Refusal::Limit(format!(
                "{}: at most {max} lock requests per run",
                Limit::LockAcquisitions
            )))));
        }
        let keys = match self.check_keys(keys) {
            Ok(keys) => keys,
            Err((error, asked)) => {
                let asked = recorded_keys(&asked, self.limits.max_locks);
                return Ok(Err(self.refuse_lock(asked, error)));
            }
        };
        // Never wait beyond the run's deadline: past it the guest is stopped.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let asked_for = Duration::from_millis(timeout_ms.into());
        let taken = match self.held.backend.try_acquire_now(&keys) {
            Some(lease) => Ok(lease),
            None => self.held.backend.acquire(&keys, asked_for.min(left)).await,
        };
        let lease = match taken {
            Ok(lease) => lease,
            Err(BackendError::Timeout) if left < asked_for => {
                self.lock_records.push(LockRecord {
                    keys,
                    result: Err("the run's deadline passed while waiting".into()),
                });
                return Err(LimitExceeded(Limit::Deadline).into());
            }
            Err(BackendError::Timeout) => {
                return Ok(Err(self.refuse_lock(keys, LockError::Timeout)));
            }
            Err(BackendError::Unavailable(why)) => {
                return Ok(Err(self.refuse_lock(keys, LockError::Unavailable(why))));
            }
        };
        tracing::debug!(keys = ?lease.keys, token = lease.token, "locks acquired");
        self.lock_records.push(LockRecord {
            keys: lease.keys.clone(),
            result: Ok(lease.token),
        });
        let id = self.next_guard;
        self.next_guard += 1;
        self.held.leases.push((id, lease));
        self.refresh_fences();
        Ok(Ok(Resource::new_own(id)))
    }
}

/// The keys of a request as recorded when it is refused: at most `max`,
/// each cut to [`MAX_LOCK_KEY_BYTES`].
fn recorded_keys(keys: &[String], max: usize) -> Vec<String> {
    keys.iter()
        .take(max)
        .map(|key| {
            let mut key = key.clone();
            key.truncate(key.floor_char_boundary(MAX_LOCK_KEY_BYTES));
            key
        })
        .collect()
}

/// What a lock error says, for the outcome.
fn lock_error_text(error: &LockError) -> String {
    match error {
        LockError::Refused(refusal) => format!("refused {}: {}", refusal.kind(), refusal.message()),
        LockError::Timeout => "timed out".into(),
        LockError::WouldDeadlock(why) => format!("would deadlock: {why}"),
        LockError::Unavailable(why) => format!("unavailable: {why}"),
    }
}

impl HostGuard for EscrowCtx {
    async fn keys(&mut self, guard: Resource<Guard>) -> wasmtime::Result<Vec<String>> {
        Ok(self.lease(&guard)?.keys.clone())
    }

    async fn fencing_token(&mut self, guard: Resource<Guard>) -> wasmtime::Result<u64> {
        Ok(self.lease(&guard)?.token)
    }

    async fn drop(&mut self, guard: Resource<Guard>) -> wasmtime::Result<()> {
        let position = self
            .held
            .leases
            .iter()
            .position(|(id, _)| *id == guard.rep());
        let (_, lease) = self
            .held
            .leases
            .remove(position.ok_or_else(|| wasmtime::format_err!("unknown lock guard"))?);
        self.refresh_fences();
        // Kept only for the warning below, and only when it would be seen.
        let keys = tracing::enabled!(tracing::Level::WARN).then(|| lease.keys.clone());
        let released = match self.held.backend.release_now(lease) {
            Ok(()) => Ok(()),
            Err(lease) => self.held.backend.release(lease).await,
        };
        if let Err(error) = released {
            tracing::warn!(?keys, %error, "releasing locks failed; they end when their lease expires");
        }
        Ok(())
    }
}

impl EscrowCtx {
    /// Records a lock request that got no lock, and hands back its error for
    /// the guest.
    fn refuse_lock(&mut self, keys: Vec<String>, error: LockError) -> LockError {
        tracing::debug!(?keys, error = %lock_error_text(&error), "locks not given");
        self.lock_records.push(LockRecord {
            keys,
            result: Err(lock_error_text(&error)),
        });
        error
    }

    /// Checks a request's keys against the grants, the limit and the global
    /// order; returns them sorted and deduplicated, or the error and the
    /// keys as asked.
    fn check_keys(
        &mut self,
        mut keys: Vec<String>,
    ) -> Result<Vec<String>, (LockError, Vec<String>)> {
        // The keys are sorted through their indices, so that a refusal
        // records them as asked without a copy made for every request.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        match self.check_sorted(&keys, &mut order) {
            Ok(()) => Ok(order
                .into_iter()
                .map(|i| std::mem::take(&mut keys[i]))
                .collect()),
            Err(error) => Err((error, keys)),
        }
    }

    /// The checks of [`check_keys`](Self::check_keys); leaves in `order` the
    /// indices of the distinct keys, in key order.
    fn check_sorted(&mut self, keys: &[String], order: &mut Vec<usize>) -> Result<(), LockError> {
        let refused = |refusal| Err(LockError::Refused(refusal));
        if keys.is_empty() {
            return refused(Refusal::Invalid("no lock keys given".into()));
        }
        let max = self.limits.max_locks;
        let held: usize = self.held.leases.iter().map(|(_, l)| l.keys.len()).sum();
        // Checked before the keys are, so that a huge list costs nothing more.
        if keys.len() > max {
            self.violate(Failure::Limit(Limit::Locks));
            return refused(Refusal::Limit(format!(
                "{}: at most {max} keys held at once",
                Limit::Locks
            )));
        }
        for key in keys {
            if let Err(error) = check_lock_key(key) {
                return refused(Refusal::Invalid(error.to_string()));
            }
            if self.grants.lock_grant(key).is_none() {
                return refused(Refusal::NotGranted(format!(
                    "lock `{key}` is not covered by the plugin's grants"
                )));
            }
        }
        order.sort_unstable_by(|a, b| keys[*a].cmp(&keys[*b]));
        order.dedup_by(|a, b| keys[*a] == keys[*b]);
        if held + order.len() > max {
            self.violate(Failure::Limit(Limit::Locks));
            return refused(Refusal::Limit(format!(
                "{}: this run holds {held} keys and asks for {} more; at most {max}",
                Limit::Locks,
                order.len()
            )));
        }
        let highest = self
            .held
            .leases
            .iter()
            .filter_map(|(_, l)| l.keys.last())
            .max();
        let lowest = &keys[order[0]];
        if let Some(highest) = highest.filter(|h| lowest <= *h) {
            return Err(LockError::WouldDeadlock(format!(
                "this run holds `{highest}` and asks for `{lowest}`: take locks in key order, or all at once"
            )));
        }
        Ok(())
    }

    fn lease(&self, guard: &Resource<Guard>) -> wasmtime::Result<&crate::backends::Lease> {
        self.held
            .leases
            .iter()
            .find(|(id, _)| *id == guard.rep())
            .map(|(_, lease)| lease)
            .ok_or_else(|| wasmtime::format_err!("unknown lock guard"))
    }

    fn refresh_fences(&mut self) {
        if self.held.leases.is_empty() {
            self.fences = Arc::clone(crate::ctx::no_fences());
            return;
        }
        let fences: Vec<Fence> = self
            .held
            .leases
            .iter()
            .flat_map(|(_, lease)| {
                lease.keys.iter().map(|key| Fence {
                    key: key.clone(),
                    token: lease.token,
                })
            })
            .collect();
        self.fences = Arc::from(fences);
    }
}
