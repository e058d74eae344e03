//! A sink that adds each committed intent to a Redis stream.

use std::time::Duration;

use redis::Script;

use super::Sink;
use super::queue_url::QueueUrl;
use crate::backends::RedisStore;
use crate::error::CallError;
use crate::outcome::Intent;

/// How long one `XADD` (connecting included) may take before the delivery
/// fails and is retried.
pub const REDIS_STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an idempotency key is remembered after its intent was added, by
/// default: a redelivery within it adds nothing. `?dedup_window=` changes it.
pub const REDIS_STREAM_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Adds the entry unless its idempotency key was added within the window.
/// KEYS: the stream, the key that remembers the idempotency key. ARGV: the
/// window in milliseconds, then the entry's field/value pairs.
///
/// The check comes first and the key is set only after `XADD` succeeded:
/// Redis does not undo a script's earlier writes when a later command fails,
/// so setting it first could remember an entry that was never added.
const ADD_ONCE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return id
";

/// Adds each committed intent to a Redis stream with `XADD`:
/// `redis-stream://[USER:PASSWORD@]HOST:PORT/STREAM[?db=N][&dedup_window=24h]`.
///
/// The entry's fields are `run_id`, `idempotency_key`, `effect`, `plugin`,
/// `seq`, `fences` (JSON, when the run held locks) and `payload` (the
/// payload's bytes as the guest passed them).
///
/// A redelivery of the same idempotency key adds nothing: one Lua script
/// checks a key that remembers it (`{STREAM}:escrow-added:KEY`, holding the
/// entry's id, expiring after the dedup window, default
/// [`REDIS_STREAM_DEDUP_WINDOW`]), adds the entry and sets that key, in one
/// atomic step. The key shares the stream's hash tag, so a Redis Cluster
/// keeps both on one node. What a stream keeps across a Redis restart is
/// what its persistence (`appendonly yes`, `appendfsync always`) keeps.
pub struct RedisStream {
    url: QueueUrl,
    store: RedisStore,
    dedup_window_ms: u64,
    add_once: Script,
}

impl RedisStream {
    /// A sink for `redis-stream://HOST:PORT/STREAM`. Nothing is connected
    /// until the first delivery.
    ///
    /// # Errors
    ///
    /// A URL that is not of that form, a `db` that is not a number, a
    /// `dedup_window` that is not a duration, or an unknown parameter.
    pub fn new(url: &str) -> Result<Self, String> {
        let url = QueueUrl::parse(url, "redis-stream", 6379, "STREAM")?;
        let mut db = 0_u32;
        let mut dedup_window = REDIS_STREAM_DEDUP_WINDOW;
        for (name, value) in &url.query {
            match name.as_str() {
                "db" => {
                    db = value
                        .parse()
                        .map_err(|_| format!("`{url}`: db `{value}` is not a database number"))?;
                }
                "dedup_window" => {
                    dedup_window = humantime::parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("`{url}`: dedup_window `{value}` is not a duration such as 24h")
                        })?;
                }
                other => {
                    return Err(format!(
                        "`{url}`: unknown parameter `{other}`; use db or dedup_window"
                    ));
                }
            }
        }
        let credentials = match url.credentials() {
            None => String::new(),
            Some((user, None)) => format!("{user}@"),
            Some((user, Some(password))) => format!("{user}:{password}@"),
        };
        let client_url = format!("redis://{credentials}{}/{db}", url.address());
        let store = RedisStore::open(&client_url, REDIS_STREAM_TIMEOUT)
            .map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Self {
            url,
            store,
            dedup_window_ms: u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX),
            add_once: Script::new(ADD_ONCE),
        })
    }
}

#[async_trait::async_trait]
impl Sink for RedisStream {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        let key = intent.idempotency_key();
        let stream = &self.url.name;
        let mut invocation = self.add_once.key(stream);
        invocation
            .key(format!("{{{stream}}}:escrow-added:{key}"))
            .arg(self.dedup_window_ms);
        for (name, value) in super::queue_url::fields(intent, &key) {
            invocation.arg(name).arg(value);
        }
        invocation.arg("payload").arg(&intent.payload[..]);
        self.store
            .run(async |connection| invocation.invoke_async::<Option<String>>(connection).await)
            .await
            .map(drop)
            .map_err(CallError::new)
    }
}
