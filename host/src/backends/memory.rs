//! In-memory backends: the embedded default, shared by every run of one
//! host (and by hosts that share the same value).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::breakers::{Admission, BreakerStore, CallResult, Circuit, StoreError, Transition};
use super::locks::{Lease, LockBackend, LockError};
use crate::breakers::{BreakerConfig, BreakerState, Forced};

/// Locks in this process. Waiting is async and fair: requests are granted
/// in arrival order among those that want a common key, without polling.
#[derive(Debug, Default)]
pub struct MemoryLocks {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Held keys, by the id of the lease holding them.
    // foldhash, seeded per process: keys are the guest's, within its grants.
    held: foldhash::HashMap<String, u64>,
    /// Requests waiting, oldest first.
    waiting: VecDeque<Waiter>,
    next_lease: u64,
    last_token: u64,
}

#[derive(Debug)]
struct Waiter {
    lease: u64,
    keys: Vec<String>,
    grant: oneshot::Sender<u64>,
}

impl MemoryLocks {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn free(&self, keys: &[String]) -> bool {
        keys.iter().all(|k| !self.held.contains_key(k))
    }

    /// Takes `keys` for a new lease when they are free and no waiting
    /// request wants one of them (which would overtake it).
    fn take_if_free(&mut self, keys: &[String]) -> Option<Lease> {
        let contended = self
            .waiting
            .iter()
            .any(|w| w.keys.iter().any(|k| keys.contains(k)));
        if contended || !self.free(keys) {
            return None;
        }
        self.next_lease += 1;
        let lease = self.next_lease;
        let token = self.take(lease, keys);
        Some(lease_of(lease, keys, token))
    }

    /// Takes `keys` for `lease` and returns the new fencing token.
    fn take(&mut self, lease: u64, keys: &[String]) -> u64 {
        for key in keys {
            self.held.insert(key.clone(), lease);
        }
        self.last_token += 1;
        self.last_token
    }

    /// Grants waiting requests in arrival order. A request is granted when
    /// its keys are free and no earlier waiting request wants one of them,
    /// so a request that waits long is never overtaken forever.
    fn grant_waiting(&mut self) {
        let mut wanted: HashSet<String> = HashSet::new();
        let mut index = 0;
        while index < self.waiting.len() {
            let waiter = &self.waiting[index];
            if waiter.grant.is_closed() {
                self.waiting.remove(index);
                continue;
            }
            if self.free(&waiter.keys) && !waiter.keys.iter().any(|k| wanted.contains(k)) {
                let waiter = self.waiting.remove(index).expect("index is in range");
                let token = self.take(waiter.lease, &waiter.keys);
                if waiter.grant.send(token).is_err() {
                    // The requester gave up between the check and the send.
                    self.release(waiter.lease, &waiter.keys);
                }
                continue;
            }
            wanted.extend(waiter.keys.iter().cloned());
            index += 1;
        }
    }

    fn release(&mut self, lease: u64, keys: &[String]) {
        for key in keys {
            if self.held.get(key) == Some(&lease) {
                self.held.remove(key);
            }
        }
    }
}

#[async_trait::async_trait]
impl LockBackend for MemoryLocks {
    async fn acquire(&self, keys: &[String], timeout: Duration) -> Result<Lease, LockError> {
        let (lease, granted) = {
            let mut state = self.state.lock().expect("the lock table is never poisoned");
            if let Some(lease) = state.take_if_free(keys) {
                return Ok(lease);
            }
            state.next_lease += 1;
            let lease = state.next_lease;
            let (grant, granted) = oneshot::channel();
            state.waiting.push_back(Waiter {
                lease,
                keys: keys.to_vec(),
                grant,
            });
            (lease, granted)
        };
        match tokio::time::timeout(timeout, granted).await {
            Ok(Ok(token)) => Ok(lease_of(lease, keys, token)),
            Ok(Err(_)) => Err(LockError::Unavailable(
                "the lock table dropped the request".into(),
            )),
            Err(_) => {
                let mut state = self.state.lock().expect("the lock table is never poisoned");
                state.waiting.retain(|w| w.lease != lease);
                // The grant may have raced the timeout: give it back.
                state.release(lease, keys);
                state.grant_waiting();
                Err(LockError::Timeout)
            }
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), LockError> {
        self.release_now(lease)
            .expect("the in-memory table always releases at once");
        Ok(())
    }

    fn try_acquire_now(&self, keys: &[String]) -> Option<Lease> {
        self.state
            .lock()
            .expect("the lock table is never poisoned")
            .take_if_free(keys)
    }

    fn release_now(&self, lease: Lease) -> Result<(), Lease> {
        let id = lease.holder as u64;
        let mut state = self.state.lock().expect("the lock table is never poisoned");
        state.release(id, &lease.keys);
        if !state.waiting.is_empty() {
            state.grant_waiting();
        }
        Ok(())
    }
}

fn lease_of(id: u64, keys: &[String], token: u64) -> Lease {
    Lease {
        keys: keys.to_vec(),
        token,
        holder: u128::from(id),
        keepalive: None,
    }
}

/// Breaker state in this process, shared by every run of the host.
#[derive(Debug, Default)]
pub struct MemoryBreakers {
    circuits: Mutex<foldhash::HashMap<String, Circuit>>,
}

impl MemoryBreakers {
    /// Every breaker closed.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuits = self
            .circuits
            .lock()
            .expect("the breaker table is never poisoned");
        // The name is copied only the first time the breaker is used.
        if let Some(circuit) = circuits.get_mut(name) {
            return f(circuit);
        }
        f(circuits.entry(name.to_owned()).or_default())
    }
}

#[async_trait::async_trait]
impl BreakerStore for MemoryBreakers {
    async fn admit(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        Ok(self.with(name, |c| c.admit(config, now_ms)))
    }

    async fn record(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Result<Option<Transition>, StoreError> {
        Ok(self.with(name, |c| c.record(config, now_ms, trial, result)))
    }

    fn admit_now(&self, name: &str, config: &BreakerConfig, now_ms: u64) -> Option<Admission> {
        Some(self.with(name, |c| c.admit(config, now_ms)))
    }

    fn record_now(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Option<Option<Transition>> {
        Some(self.with(name, |c| c.record(config, now_ms, trial, result)))
    }

    async fn force(
        &self,
        name: &str,
        _: &BreakerConfig,
        _now_ms: u64,
        to: Forced,
    ) -> Result<Option<Transition>, StoreError> {
        Ok(self.with(name, |c| c.force(to)))
    }

    async fn state(
        &self,
        name: &str,
        _: &BreakerConfig,
        now_ms: u64,
    ) -> Result<BreakerState, StoreError> {
        Ok(self.with(name, |c| c.state_at(now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| (*k).to_owned()).collect()
    }

    #[tokio::test]
    async fn free_keys_are_taken_at_once_with_increasing_tokens() {
        let locks = MemoryLocks::new();
        let first = locks
            .acquire(&keys(&["a", "b"]), Duration::ZERO)
            .await
            .unwrap();
        let second = locks.acquire(&keys(&["c"]), Duration::ZERO).await.unwrap();
        assert!(second.token > first.token);
    }

    #[tokio::test]
    async fn a_held_key_makes_the_whole_request_wait_and_time_out_holding_nothing() {
        let locks = MemoryLocks::new();
        let _b = locks.acquire(&keys(&["b"]), Duration::ZERO).await.unwrap();
        let error = locks
            .acquire(&keys(&["a", "b"]), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(error, LockError::Timeout);
        // `a` was not kept: it is free now.
        locks.acquire(&keys(&["a"]), Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn a_release_wakes_the_oldest_waiter_first() {
        let locks = Arc::new(MemoryLocks::new());
        let held = locks.acquire(&keys(&["a"]), Duration::ZERO).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for name in ["first", "second"] {
            let (locks, order) = (Arc::clone(&locks), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let lease = locks
                    .acquire(&keys(&["a"]), Duration::from_secs(5))
                    .await
                    .unwrap();
                order.lock().unwrap().push(name);
                locks.release(lease).await.unwrap();
            }));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        locks.release(held).await.unwrap();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }
}
