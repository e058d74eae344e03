//! In-memory backends: the embedded default, shared by every run of one
//! host (and by hosts that share the same value).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::breakers::{Admission, BreakerStore, CallResult, Circuit, StoreError, Transition};
use super::breakers::{BreakerConfig, BreakerState, Forced};
use super::locks::{Lease, LockBackend, LockError};

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
    /// Gives the keys back when they are not.
    fn take_if_free(&mut self, keys: Vec<String>) -> Result<Lease, Vec<String>> {
        let contended = self
            .waiting
            .iter()
            .any(|w| w.keys.iter().any(|k| keys.contains(k)));
        if contended || !self.free(&keys) {
            return Err(keys);
        }
        self.next_lease += 1;
        let lease = self.next_lease;
        let token = self.take(lease, &keys);
        Ok(lease_of(lease, keys, token))
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
            let keys = match state.take_if_free(keys.to_vec()) {
                Ok(lease) => return Ok(lease),
                Err(keys) => keys,
            };
            state.next_lease += 1;
            let lease = state.next_lease;
            let (grant, granted) = oneshot::channel();
            state.waiting.push_back(Waiter { lease, keys, grant });
            (lease, granted)
        };
        match tokio::time::timeout(timeout, granted).await {
            Ok(Ok(token)) => Ok(lease_of(lease, keys.to_vec(), token)),
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

    fn try_acquire_now(&self, keys: Vec<String>) -> Result<Lease, Vec<String>> {
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

fn lease_of(id: u64, keys: Vec<String>, token: u64) -> Lease {
    Lease {
        keys,
        token,
        holder: u128::from(id),
        keepalive: None,
    }
}

/// Breaker state in this process, shared by every run of the host.
#[derive(Debug, Default)]
pub struct MemoryBreakers {
    circuits: Mutex<foldhash::HashMap<String, Arc<LocalCircuit>>>,
}

impl MemoryBreakers {
    /// Every breaker closed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of breaker `name`, made closed the first time it is asked
    /// for. [`Breakers`](crate::breakers::Breakers) keeps it with the
    /// breaker's definition, so that a call finds it without a lookup.
    pub(crate) fn circuit(&self, name: &str) -> Arc<LocalCircuit> {
        let mut circuits = self
            .circuits
            .lock()
            .expect("the breaker table is never poisoned");
        if let Some(circuit) = circuits.get(name) {
            return Arc::clone(circuit);
        }
        Arc::clone(circuits.entry(name.to_owned()).or_default())
    }
}

/// One breaker's state in this process.
///
/// While the breaker is closed with no failure counted (`clean`), a call
/// is admitted and a success counted by reading one atomic flag: neither
/// changes the state. Everything else takes the lock, applies the rules of
/// [`Circuit`] and sets the flag again before letting go. A call that reads
/// the flag while another thread changes the state is ordered before that
/// change, as if it had taken the lock first.
#[derive(Debug)]
pub(crate) struct LocalCircuit {
    clean: AtomicBool,
    circuit: Mutex<Circuit>,
}

impl Default for LocalCircuit {
    fn default() -> Self {
        Self {
            clean: AtomicBool::new(true),
            circuit: Mutex::default(),
        }
    }
}

impl LocalCircuit {
    /// Applies `f` to the state under the lock.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuit = self
            .circuit
            .lock()
            .expect("a breaker's state is never poisoned");
        let result = f(&mut circuit);
        self.clean.store(circuit.is_clean(), Ordering::Release);
        result
    }

    /// The admission of a call while the breaker is clean: let through, no
    /// trial, nothing changed. `None` when the state must be asked. A
    /// breaker with a failure rate counts every call in its window, so it
    /// always asks.
    pub(crate) fn admit_clean(&self, config: &BreakerConfig) -> Option<Admission> {
        self.is_clean(config).then_some(Admission::Allowed {
            trial: false,
            transition: None,
        })
    }

    /// Whether `result` changes nothing: a success or an uncalled call
    /// (not a trial) while the breaker is clean.
    pub(crate) fn records_nothing(
        &self,
        config: &BreakerConfig,
        trial: bool,
        result: CallResult,
    ) -> bool {
        !trial && result != CallResult::Failure && self.is_clean(config)
    }

    fn is_clean(&self, config: &BreakerConfig) -> bool {
        config.failure_rate.is_none() && self.clean.load(Ordering::Acquire)
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
        Ok(self.circuit(name).with(|c| c.admit(config, now_ms)))
    }

    async fn record(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Result<Option<Transition>, StoreError> {
        Ok(self
            .circuit(name)
            .with(|c| c.record(config, now_ms, trial, result)))
    }

    async fn force(
        &self,
        name: &str,
        _: &BreakerConfig,
        _now_ms: u64,
        to: Forced,
    ) -> Result<Option<Transition>, StoreError> {
        Ok(self.circuit(name).with(|c| c.force(to)))
    }

    async fn state(
        &self,
        name: &str,
        _: &BreakerConfig,
        now_ms: u64,
    ) -> Result<BreakerState, StoreError> {
        Ok(self.circuit(name).with(|c| c.state_at(now_ms)))
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

    #[test]
    fn a_clean_breaker_admits_and_counts_successes_without_taking_its_lock() {
        let circuit = LocalCircuit::default();
        let config = BreakerConfig::default();
        let _held = circuit.circuit.lock().unwrap();
        assert_eq!(
            circuit.admit_clean(&config),
            Some(Admission::Allowed {
                trial: false,
                transition: None
            })
        );
        assert!(circuit.records_nothing(&config, false, CallResult::Success));
        assert!(circuit.records_nothing(&config, false, CallResult::NotCalled));
        assert!(!circuit.records_nothing(&config, false, CallResult::Failure));
        assert!(!circuit.records_nothing(&config, true, CallResult::Success));
    }

    #[test]
    fn a_counted_failure_an_open_state_or_a_failure_rate_sends_every_call_to_the_lock() {
        let circuit = LocalCircuit::default();
        let config = BreakerConfig::default();
        circuit.with(|c| c.record(&config, 0, false, CallResult::Failure));
        assert_eq!(circuit.admit_clean(&config), None);
        assert!(!circuit.records_nothing(&config, false, CallResult::Success));
        // A success clears the count: clean again.
        circuit.with(|c| c.record(&config, 0, false, CallResult::Success));
        assert!(circuit.admit_clean(&config).is_some());

        circuit.with(|c| c.force(Forced::Open));
        assert_eq!(circuit.admit_clean(&config), None);
        circuit.with(|c| c.force(Forced::Closed));
        assert!(circuit.admit_clean(&config).is_some());

        let rated = BreakerConfig {
            failure_rate: Some(crate::backends::breakers::FailureRate {
                ratio: 0.5,
                window: Duration::from_secs(10),
                min_calls: 4,
            }),
            ..BreakerConfig::default()
        };
        assert_eq!(circuit.admit_clean(&rated), None);
        assert!(!circuit.records_nothing(&rated, false, CallResult::Success));
    }
}
