//! `escrow:host/locks`: locks taken mid-run, all or nothing, in one global
//! order, released when the guard drops or after the run.
//!
//! Deadlock is made impossible rather than unlikely: keys of one request are
//! sorted, deduplicated and taken together, and a run that holds locks may
//! only ask for keys ordered after every key it holds. No run then waits for
//! a key while holding one ordered after it, so no cycle of waits can form.

use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use crate::answers::LockReply;
use crate::backends::LockError as BackendError;
use crate::bindings::escrow::host::locks::{Guard, Host, HostGuard, LockError};
use crate::ctx::{EscrowCtx, next_id};
use crate::limits::{Limit, LimitExceeded, MAX_LOCK_KEY_BYTES, kept};
use crate::outcome::{Failure, LockRecord, Refusal};
use crate::patterns::check_lock_key;

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
        // A replayed run is matched against its recording first.
        let recorded = match &mut self.replaying {
            None => None,
            Some(replaying) => match replaying.lock(&keys) {
                Ok(recorded) => Some(recorded.reply.clone()),
                Err(why) => return Err(self.diverge(why)),
            },
        };
        let keys = match self.check_keys(keys) {
            Ok(keys) => keys,
            Err((error, asked)) => {
                let asked = recorded_keys(asked, self.limits.max_locks);
                return Ok(Err(self.refuse_lock(asked, error)));
            }
        };
        if let Some(reply) = recorded {
            return self.replayed_lock(keys, reply);
        }
        let keys = match self.held.backend.try_acquire_now(keys) {
            Ok(lease) => return Ok(Ok(self.keep_lease(lease))),
            Err(keys) => keys,
        };
        // Never wait beyond the run's deadline: past it the guest is stopped.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let asked_for = Duration::from_millis(timeout_ms.into());
        let lease = match self.held.backend.acquire(&keys, asked_for.min(left)).await {
            Ok(lease) => lease,
            Err(BackendError::Timeout) if left < asked_for => {
                return Err(self.deadline_while_waiting(keys));
            }
            Err(BackendError::Timeout) => {
                return Ok(Err(self.refuse_lock(keys, LockError::Timeout)));
            }
            Err(BackendError::Unavailable(why)) => {
                return Ok(Err(self.refuse_lock(keys, LockError::Unavailable(why))));
            }
        };
        Ok(Ok(self.keep_lease(lease)))
    }
}

/// The keys of a request as recorded when it is refused: at most `max`,
/// each kept in at most [`MAX_LOCK_KEY_BYTES`], in a list allocated for
/// them alone (collecting the guest's list in place would keep its whole
/// allocation, however many keys it had).
fn recorded_keys(keys: Vec<String>, max: usize) -> Vec<String> {
    let mut recorded = Vec::with_capacity(keys.len().min(max));
    recorded.extend(
        keys.into_iter()
            .take(max)
            .map(|key| kept(key, MAX_LOCK_KEY_BYTES)),
    );
    recorded
}

/// What the outcome says of a lock request the deadline cut off.
const DEADLINE_WHILE_WAITING: &str = "the run's deadline passed while waiting";
/// What the outcome says of a lock request that timed out.
const TIMED_OUT: &str = "timed out";
/// How the outcome's text of an unavailable backend starts.
const UNAVAILABLE: &str = "unavailable: ";

/// What a lock error says, for the outcome.
fn lock_error_text(error: &LockError) -> String {
    match error {
        LockError::Refused(refusal) => format!("refused {}: {}", refusal.kind(), refusal.message()),
        LockError::Timeout => TIMED_OUT.into(),
        LockError::WouldDeadlock(why) => format!("would deadlock: {why}"),
        LockError::Unavailable(why) => format!("{UNAVAILABLE}{why}"),
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
        self.held_locks_changed();
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
    /// Answers a lock request of a replayed run, whose checks passed, as the
    /// recording says: the backend is not asked.
    fn replayed_lock(
        &mut self,
        keys: Vec<String>,
        reply: LockReply,
    ) -> wasmtime::Result<Result<Resource<Guard>, LockError>> {
        let error = match reply {
            LockReply::Token(token) => {
                // No backend holds it: its release finds no holder 0.
                let lease = crate::backends::Lease {
                    keys,
                    token,
                    holder: 0,
                    keepalive: None,
                };
                return Ok(Ok(self.keep_lease(lease)));
            }
            LockReply::Error(text) if text == DEADLINE_WHILE_WAITING => {
                return Err(self.deadline_while_waiting(keys));
            }
            LockReply::Error(text) if text == TIMED_OUT => LockError::Timeout,
            LockReply::Error(text) => match text.strip_prefix(UNAVAILABLE) {
                Some(why) => LockError::Unavailable(why.to_owned()),
                // Refused by the recorded run's checks, which this run's pass.
                None => LockError::Unavailable(format!("the recording has: {text}")),
            },
        };
        Ok(Err(self.refuse_lock(keys, error)))
    }

    /// Records that the run's deadline passed while the request waited, and
    /// gives the trap that stops the guest.
    fn deadline_while_waiting(&mut self, keys: Vec<String>) -> wasmtime::Error {
        self.lock_records.push(LockRecord {
            keys,
            result: Err(DEADLINE_WHILE_WAITING.into()),
        });
        LimitExceeded(Limit::Deadline).into()
    }

    /// Records a lease taken and keeps it until its guard is dropped or the
    /// run ends; returns the guard.
    fn keep_lease(&mut self, lease: crate::backends::Lease) -> Resource<Guard> {
        tracing::debug!(keys = ?lease.keys, token = lease.token, "locks acquired");
        self.lock_records.push(LockRecord {
            keys: lease.keys.clone(),
            result: Ok(lease.token),
        });
        let leases = &self.held.leases;
        let id = next_id(&mut self.next_guard, |id| {
            leases.iter().any(|(g, _)| *g == id)
        });
        self.held.leases.push((id, lease));
        self.held_locks_changed();
        Resource::new_own(id)
    }

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
        if let Err(error) = self.check_each(&keys) {
            return Err((error, keys));
        }
        // Keys asked in order (a single key, say) are taken as they are;
        // others are sorted through their indices, so that a refusal records
        // them as asked without a copy made for every request.
        let order = (!keys.is_sorted_by(|a, b| a < b)).then(|| {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_unstable_by(|a, b| keys[*a].cmp(&keys[*b]));
            order.dedup_by(|a, b| keys[*a] == keys[*b]);
            order
        });
        let (distinct, lowest) = match &order {
            Some(order) => (order.len(), &keys[order[0]]),
            None => (keys.len(), &keys[0]),
        };
        if let Err(error) = self.check_against_held(distinct, lowest) {
            return Err((error, keys));
        }
        Ok(match order {
            None => keys,
            Some(order) => order
                .into_iter()
                .map(|i| std::mem::take(&mut keys[i]))
                .collect(),
        })
    }

    /// The checks of each key of a request: some keys, not more than a run
    /// may hold, each well formed and granted.
    fn check_each(&mut self, keys: &[String]) -> Result<(), LockError> {
        let refused = |refusal| Err(LockError::Refused(refusal));
        if keys.is_empty() {
            return refused(Refusal::Invalid("no lock keys given".into()));
        }
        let max = self.limits.max_locks;
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
        Ok(())
    }

    /// The checks of a request against the locks the run holds: at most
    /// `max_locks` keys in all, and every new key ordered after every held
    /// one (`lowest` is the request's first key in key order).
    fn check_against_held(&mut self, distinct: usize, lowest: &str) -> Result<(), LockError> {
        let max = self.limits.max_locks;
        let held: usize = self.held.leases.iter().map(|(_, l)| l.keys.len()).sum();
        if held + distinct > max {
            self.violate(Failure::Limit(Limit::Locks));
            return Err(LockError::Refused(Refusal::Limit(format!(
                "{}: this run holds {held} keys and asks for {distinct} more; at most {max}",
                Limit::Locks,
            ))));
        }
        let highest = self
            .held
            .leases
            .iter()
            .filter_map(|(_, l)| l.keys.last())
            .max();
        if let Some(highest) = highest.filter(|h| lowest <= h.as_str()) {
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
}
