//! Redis backends: state shared by every host that uses the same Redis.
//!
//! Locks are leases: each held key is a Redis key holding its holder's id,
//! with an expiry that a background task renews while the lease is held. A
//! host that dies stops renewing, and its leases expire. Fencing tokens come
//! from one Redis counter, so they increase across hosts.
//!
//! Breakers are one hash per breaker (and a list of recent calls when a
//! failure rate is set); every admission and every result runs one Lua
//! script, the same rules as the in-memory store, so hosts sharing a Redis
//! never let more trials through than configured.
//!
//! One Redis without a quorum is one point of truth: if it fails, or fails
//! over to a replica that missed a write, two holders can believe they hold a
//! key. Fencing tokens are the defence: a store that remembers the highest
//! token it saw for a key rejects writes from a stale holder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breakers::{Admission, BreakerStore, CallResult, ISOLATED, StoreError, Transition};
use super::breakers::{BreakerConfig, BreakerState, Forced};
use super::locks::{Lease, LockBackend, LockError};

/// How long a lease lives without renewal by default. A dead host's locks
/// are free again at most this long after its last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The longest pause between two attempts to take contended keys.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// How long one Redis operation may take by default, connecting included.
/// Past it the store counts as down: breakers fail open and locks are
/// `unavailable` at once, without waiting, until a background probe finds it
/// answering again.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a store known to be down is probed.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// A Redis connection that is opened on first use, bounds every operation
/// by a timeout, and, once an operation failed for want of Redis, answers
/// "down" at once while a background task probes until Redis answers again.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// The URL without its password, for messages.
    what: String,
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    timeout: Duration,
    down: AtomicBool,
    probing: AtomicBool,
}

impl Store {
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let what = match url.rfind('@') {
            Some(at) => format!("redis://{}", &url[at + 1..]),
            None => url.to_owned(),
        };
        Ok(Self::open_client(client, &what, timeout))
    }

    fn with_timeout(&self, timeout: Duration) -> Self {
        Self::open_client(self.inner.client.clone(), &self.inner.what, timeout)
    }

    fn open_client(client: redis::Client, what: &str, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                what: what.to_owned(),
                client,
                connection: tokio::sync::OnceCell::new(),
                timeout,
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
        }
    }

    /// The connection, created (lazily, without connecting) on first use.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let timeout = self.inner.timeout;
        self.inner
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(timeout);
                ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// Runs `op` on the connection within the timeout. When Redis is known to
    /// be down, fails at once.
    pub(crate) async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        if self.inner.down.load(Ordering::Acquire) {
            return Err(format!(
                "Redis at {} is down (probing in the background)",
                self.inner.what
            ));
        }
        let mut connection = self.connection().await?;
        match tokio::time::timeout(self.inner.timeout, op(&mut connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                {
                    self.mark_down();
                }
                Err(format!("Redis at {}: {error}", self.inner.what))
            }
            Err(_) => {
                self.mark_down();
                Err(format!(
                    "Redis at {} did not answer within {:?}",
                    self.inner.what, self.inner.timeout
                ))
            }
        }
    }

    /// Marks the store down and, unless a probe runs already, starts one.
    fn mark_down(&self) {
        if !self.inner.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(redis = %self.inner.what, "Redis is down; deciding without it until it answers");
        }
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.probing.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Ok(mut connection) = store.connection().await else {
                    continue;
                };
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<String>(&mut connection);
                if let Ok(Ok(_)) = tokio::time::timeout(store.inner.timeout, ping).await {
                    store.inner.down.store(false, Ordering::Release);
                    store.inner.probing.store(false, Ordering::Release);
                    tracing::info!(redis = %store.inner.what, "Redis answers again");
                    return;
                }
            }
        });
    }
}

/// Takes every key or none. KEYS: the lock keys, then the fence counter.
/// ARGV: the holder, the lease in milliseconds. Returns the new token, or 0
/// when a key is held.
///
/// A token is at least Redis's clock in microseconds, so that tokens keep
/// increasing after a restart that lost the counter (no persistence): a
/// stale holder's token is then still below every new one.
const ACQUIRE: &str = r"
for i = 1, #KEYS - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
local token = redis.call('INCR', KEYS[#KEYS])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
if token < floor then
  token = floor
  redis.call('SET', KEYS[#KEYS], token)
end
for i = 1, #KEYS - 1 do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return token
";

/// Deletes the keys still held by ARGV[1].
const RELEASE: &str = r"
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
";

/// Extends the keys still held by ARGV[1] to ARGV[2] milliseconds; returns
/// how many it extended.
const RENEW: &str = r"
local renewed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
";

/// Locks in Redis, shared by every host connected to it.
#[derive(Clone)]
pub struct RedisLocks {
    store: Store,
    prefix: String,
    lease: Duration,
    acquire: Script,
    release: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLocks")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisLocks {
    /// Locks in the Redis at `url` (`redis://host:port/db`). Keys are
    /// prefixed with `escrow:`; leases last [`DEFAULT_LEASE`]; each
    /// operation is bounded by [`DEFAULT_STORE_TIMEOUT`].
    ///
    /// The connection is opened on first use: a host whose plugins take no
    /// lock runs while Redis is down.
    ///
    /// # Errors
    ///
    /// When the URL is malformed.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        let store = Store::open(url, DEFAULT_STORE_TIMEOUT).map_err(LockError::Unavailable)?;
        Ok(Self {
            store,
            prefix: "escrow:".into(),
            lease: DEFAULT_LEASE,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
        })
    }

    /// How long a lease lives without renewal. It is renewed every third of
    /// that while held.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long one Redis operation may take (default
    /// [`DEFAULT_STORE_TIMEOUT`]); a lock request never waits longer for
    /// Redis than this, nor than its run's deadline.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store = self.store.with_timeout(timeout);
        self
    }

    /// The prefix of every Redis key this backend uses (default `escrow:`),
    /// to keep several deployments apart in one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, lock: &str) -> String {
        format!("{}lock:{lock}", self.prefix)
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Renews `keys` for `holder` every third of the lease until aborted.
    fn keep_alive(&self, keys: Vec<String>, holder: String) -> tokio::task::AbortHandle {
        let store = self.store.clone();
        let renew = self.renew.clone();
        let (lease_ms, every) = (self.lease_ms(), self.lease / 3);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut call = renew.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                call.arg(&holder).arg(lease_ms);
                let renewed: Result<usize, _> = store.run(async |c| call.invoke_async(c).await).await;
                match renewed {
                    Ok(n) if n == keys.len() => {}
                    Ok(_) => {
                        tracing::warn!(?keys, "a lock lease expired before it was renewed; fencing tokens now protect its writes");
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "renewing a lock lease failed; will retry"),
                }
            }
        })
        .abort_handle()
    }
}

#[async_trait::async_trait]
impl LockBackend for RedisLocks {
    async fn acquire(&self, keys: &[String], timeout: Duration) -> Result<Lease, LockError> {
        let holder = uuid::Uuid::new_v4().as_u128();
        let holder_text = format!("{holder:032x}");
        let redis_keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let fence = format!("{}lock-fence", self.prefix);
        let give_up = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut call = self.acquire.prepare_invoke();
            for key in &redis_keys {
                call.key(key);
            }
            call.key(&fence).arg(&holder_text).arg(self.lease_ms());
            let token: u64 = self
                .store
                .run(async |c| call.invoke_async(c).await)
                .await
                .map_err(LockError::Unavailable)?;
            if token > 0 {
                let keepalive = Some(self.keep_alive(redis_keys, holder_text));
                return Ok(Lease {
                    keys: keys.to_vec(),
                    token,
                    holder,
                    keepalive,
                });
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(pause.min(give_up - now)).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    async fn release(&self, mut lease: Lease) -> Result<(), LockError> {
        if let Some(keepalive) = lease.keepalive.take() {
            keepalive.abort();
        }
        let mut call = self.release.prepare_invoke();
        for key in &lease.keys {
            call.key(self.key(key));
        }
        call.arg(format!("{:032x}", lease.holder));
        let _released: usize = self
            .store
            .run(async |c| call.invoke_async(c).await)
            .await
            .map_err(LockError::Unavailable)?;
        Ok(())
    }
}

/// The breaker state machine (see `crate::breakers`), in Lua. KEYS: the
/// breaker's hash, its window list. ARGV: op (`admit`, `record`, `state`,
/// `isolate`, `reset`), now, threshold, recovery, trials, ratio (-1 for
/// none), window, min calls, trial (1/0), result (`s`, `f`, `n`), trial
/// lease, the `open_until` of an isolated breaker. States: 0 closed, 1 open,
/// 2 half-open.
const BREAKER: &str = r"
local h, w = KEYS[1], KEYS[2]
local op, now = ARGV[1], tonumber(ARGV[2])
local threshold, recovery, trials_max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ratio, window, min_calls = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lease, isolated = tonumber(ARGV[11]), ARGV[12]
local function get(f) return tonumber(redis.call('HGET', h, f) or '0') end
local state = get('state')
local from = state
local function enter(to)
  redis.call('DEL', h, w)
  redis.call('HSET', h, 'state', to)
  state = to
end
local function open()
  enter(1)
  redis.call('HSET', h, 'open_until', now + recovery)
end
if op == 'state' then
  if state == 1 and now >= get('open_until') then return {2} end
  return {state}
end
if op == 'isolate' then
  enter(1)
  redis.call('HSET', h, 'open_until', isolated)
  return {from, 1}
end
if op == 'reset' then
  enter(0)
  return {from, 0}
end
if op == 'admit' then
  local moved = -1
  if state == 1 and now >= get('open_until') then enter(2); moved = 2 end
  if state == 0 then return {1, 0, 0, from, moved} end
  if state == 1 then return {0, 0, get('open_until') - now, from, moved} end
  local trials = get('trials')
  if trials < trials_max then
    redis.call('HSET', h, 'trials', trials + 1, 'trial_until', now + lease)
    return {1, 1, 0, from, moved}
  end
  if now >= get('trial_until') then
    open()
    return {0, 0, recovery, 2, 1}
  end
  return {0, 0, 0, from, moved}
end
local trial, result = ARGV[9] == '1', ARGV[10]
if state == 2 and trial then
  if result == 'n' then
    redis.call('HSET', h, 'trials', math.max(get('trials') - 1, 0))
    return {from, -1}
  end
  if result == 'f' then open(); return {from, 1} end
  local successes = get('successes') + 1
  if successes >= trials_max then enter(0); return {from, 0} end
  redis.call('HSET', h, 'successes', successes)
  return {from, -1}
end
if state == 0 and not trial and result ~= 'n' then
  local failures = 0
  if result == 'f' then failures = get('failures') + 1 end
  redis.call('HSET', h, 'failures', failures)
  local tripped = failures >= threshold
  if ratio >= 0 then
    redis.call('RPUSH', w, now .. ':' .. (result == 'f' and '1' or '0'))
    while true do
      local first = redis.call('LINDEX', w, 0)
      if not first then break end
      local at = tonumber(string.match(first, '^(%d+):'))
      if at + window <= now then redis.call('LPOP', w) else break end
    end
    local entries = redis.call('LRANGE', w, 0, -1)
    local failed = 0
    for _, e in ipairs(entries) do
      if string.sub(e, -1) == '1' then failed = failed + 1 end
    end
    if #entries >= min_calls and failed >= ratio * #entries then tripped = true end
  end
  if tripped then open(); return {from, 1} end
end
return {from, -1}
";

/// Breaker state in Redis, shared by every host connected to it.
#[derive(Clone)]
pub struct RedisBreakers {
    store: Store,
    prefix: String,
    script: Script,
}

impl std::fmt::Debug for RedisBreakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBreakers")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn state_of(code: i64) -> BreakerState {
    match code {
        1 => BreakerState::Open,
        2 => BreakerState::HalfOpen,
        _ => BreakerState::Closed,
    }
}

fn transition(from: i64, to: i64) -> Option<Transition> {
    (to >= 0).then(|| Transition {
        from: state_of(from),
        to: state_of(to),
    })
}

impl RedisBreakers {
    /// Breaker state in the Redis at `url`. Keys are prefixed with
    /// `escrow:`; each operation is bounded by [`DEFAULT_STORE_TIMEOUT`].
    ///
    /// The connection is opened on first use: a host whose plugins open no
    /// breaker runs while Redis is down.
    ///
    /// # Errors
    ///
    /// When the URL is malformed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Store::open(url, DEFAULT_STORE_TIMEOUT).map_err(StoreError)?;
        Ok(Self {
            store,
            prefix: "escrow:".into(),
            script: Script::new(BREAKER),
        })
    }

    /// How long one Redis operation may take (default
    /// [`DEFAULT_STORE_TIMEOUT`]); past it, and while Redis stays down,
    /// breakers fail open at once.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store = self.store.with_timeout(timeout);
        self
    }

    /// The prefix of every Redis key this store uses (default `escrow:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    async fn run(
        &self,
        op: &str,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Result<Vec<i64>, StoreError> {
        let (ratio, window, min_calls) =
            config.failure_rate.as_ref().map_or((-1.0, 0, 0), |rate| {
                (rate.ratio, rate.window.as_millis() as u64, rate.min_calls)
            });
        let result = match result {
            CallResult::Success => "s",
            CallResult::Failure => "f",
            CallResult::NotCalled => "n",
        };
        let mut call = self.script.prepare_invoke();
        call.key(format!("{}breaker:{name}", self.prefix))
            .key(format!("{}breaker-window:{name}", self.prefix))
            .arg(op)
            .arg(now_ms)
            .arg(config.failure_threshold.max(1))
            .arg(config.recovery.as_millis() as u64)
            .arg(config.half_open_trials.max(1))
            .arg(ratio)
            .arg(window)
            .arg(min_calls.max(1))
            .arg(u8::from(trial))
            .arg(result)
            .arg(config.trial_lease.as_millis() as u64)
            .arg(ISOLATED);
        self.store
            .run(async |c| call.invoke_async(c).await)
            .await
            .map_err(StoreError)
    }
}

#[async_trait::async_trait]
impl BreakerStore for RedisBreakers {
    async fn admit(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        let answer = self
            .run("admit", name, config, now_ms, false, CallResult::NotCalled)
            .await?;
        let [allowed, trial, retry_after, from, to] = answer[..] else {
            return Err(StoreError(format!("unexpected answer {answer:?}")));
        };
        Ok(if allowed == 1 {
            Admission::Allowed {
                trial: trial == 1,
                transition: transition(from, to),
            }
        } else {
            Admission::Rejected {
                retry_after_ms: retry_after.max(0) as u64,
                lapsed: (to == 1).then(|| Transition {
                    from: state_of(from),
                    to: BreakerState::Open,
                }),
            }
        })
    }

    async fn record(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Result<Option<Transition>, StoreError> {
        let answer = self
            .run("record", name, config, now_ms, trial, result)
            .await?;
        let [from, to] = answer[..] else {
            return Err(StoreError(format!("unexpected answer {answer:?}")));
        };
        Ok(transition(from, to))
    }

    async fn force(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        to: Forced,
    ) -> Result<Option<Transition>, StoreError> {
        let op = match to {
            Forced::Open => "isolate",
            Forced::Closed => "reset",
        };
        let answer = self
            .run(op, name, config, now_ms, false, CallResult::NotCalled)
            .await?;
        let [from, to] = answer[..] else {
            return Err(StoreError(format!("unexpected answer {answer:?}")));
        };
        Ok(transition(from, to).filter(|t| t.from != t.to))
    }

    async fn state(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
    ) -> Result<BreakerState, StoreError> {
        let answer = self
            .run("state", name, config, now_ms, false, CallResult::NotCalled)
            .await?;
        Ok(state_of(answer.first().copied().unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use escrow_fixtures::redis::RedisServer;

    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| (*k).to_owned()).collect()
    }

    #[tokio::test]
    async fn only_the_holder_can_release_a_key() {
        let server = RedisServer::start();
        let first = RedisLocks::connect(&server.url())
            .await
            .unwrap()
            .lease(Duration::from_millis(200));
        let second = RedisLocks::connect(&server.url()).await.unwrap();
        let mut stale = first.acquire(&keys(&["k"]), Duration::ZERO).await.unwrap();
        // The first holder stalls: its renewals stop and its lease expires.
        stale.keepalive.take().unwrap().abort();
        let current = second
            .acquire(&keys(&["k"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(current.token > stale.token);

        // When it wakes up and releases, the key it no longer holds stays.
        first.release(stale).await.unwrap();
        assert_eq!(
            second
                .acquire(&keys(&["k"]), Duration::ZERO)
                .await
                .unwrap_err(),
            LockError::Timeout
        );
        second.release(current).await.unwrap();
    }
}
