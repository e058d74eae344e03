//! Sinks: where committed intents go.
//!
//! A sink sees an intent only after the run that recorded it succeeded and
//! its scope's policy committed it; sinks never see a failed run. Intents are
//! delivered one at a time, in the order the guest recorded them, and a sink
//! failing on one intent does not stop the others.

use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::backends::{Admission, CallResult};
use crate::breakers::Breakers;
use crate::error::CallError;
use crate::outcome::{Delivery, Fate, Intent};
use crate::patterns::{NameError, Patterns};

mod closure;
mod json_lines;
#[cfg(feature = "nats")]
mod nats;
#[cfg(any(feature = "nats", feature = "redis"))]
mod queue_url;
#[cfg(feature = "redis")]
mod redis_stream;

pub use closure::{AsyncFnSink, FnSink};
pub use json_lines::JsonLines;
#[cfg(feature = "nats")]
pub use nats::{NATS_ACK_TIMEOUT, NATS_CONNECT_TIMEOUT, NatsJetStream};
#[cfg(feature = "redis")]
pub use redis_stream::{REDIS_STREAM_DEDUP_WINDOW, REDIS_STREAM_TIMEOUT, RedisStream};

/// Delivers committed intents somewhere: a handler in this process, a file,
/// a queue.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers one committed intent (its fate is [`Fate::Committed`] while it
    /// is delivered).
    ///
    /// # Errors
    ///
    /// A [`CallError`] is recorded as [`Delivery::Failed`] for this intent;
    /// the next intents are still delivered.
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError>;
}

/// A sink chosen at run time (from a config file, say).
#[async_trait::async_trait]
impl Sink for Box<dyn Sink> {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        (**self).deliver(intent).await
    }
}

/// Routes committed intents to sinks by effect pattern; the first route
/// whose pattern matches an effect takes it.
#[derive(Clone)]
pub struct Sinks {
    routes: Vec<Route>,
    timeout: Duration,
}

#[derive(Clone)]
struct Route {
    patterns: Patterns,
    sink: Arc<dyn Sink>,
    /// A breaker in front of the sink: while it is open, deliveries are not
    /// attempted.
    breaker: Option<(Arc<Breakers>, String)>,
}

impl Default for Sinks {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            timeout: DEFAULT_DELIVERY_TIMEOUT,
        }
    }
}

impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sinks")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.patterns.patterns())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How long one delivery may take by default before it counts as failed.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Sinks {
    /// No routes; every committed intent is reported [`Delivery::NoSink`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no route is defined: every effect then has nowhere to go.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Sends effects matching `pattern` (`email.*`, or `*` for all) to `sink`.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed pattern.
    pub fn route(&mut self, pattern: &str, sink: impl Sink) -> Result<&mut Self, NameError> {
        self.routes.push(Route {
            patterns: Patterns::effects([pattern])?,
            sink: Arc::new(sink),
            breaker: None,
        });
        Ok(self)
    }

    /// Like [`Sinks::route`], behind the breaker `breaker` of `breakers`:
    /// while it is open, intents for this route are not attempted and are
    /// reported [`Delivery::NotAttempted`], ready to be retried later; the
    /// results of attempted deliveries count toward opening it.
    ///
    /// # Errors
    ///
    /// A malformed pattern, or a breaker `breakers` does not define.
    pub fn route_through(
        &mut self,
        pattern: &str,
        sink: impl Sink,
        breakers: Arc<Breakers>,
        breaker: &str,
    ) -> Result<&mut Self, String> {
        if !breakers.is_defined(breaker) {
            return Err(format!("no breaker `{breaker}` is defined"));
        }
        self.routes.push(Route {
            patterns: Patterns::effects([pattern]).map_err(|e| e.to_string())?,
            sink: Arc::new(sink),
            breaker: Some((breakers, breaker.to_owned())),
        });
        Ok(self)
    }

    /// Sets how long one delivery may take before it counts as failed
    /// (default [`DEFAULT_DELIVERY_TIMEOUT`]).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Delivers every [`Fate::Committed`] intent of `intents`, in order, and
    /// turns its fate into [`Fate::Dispatched`] with the sink's answer.
    pub async fn dispatch(&self, intents: &mut [Intent]) {
        for intent in intents.iter_mut().filter(|i| i.fate == Fate::Committed) {
            intent.fate = Fate::Dispatched(self.attempt(intent).await.into());
        }
    }

    /// One delivery attempt of `intent` through the first matching route.
    pub(crate) async fn attempt(&self, intent: &Intent) -> Attempt {
        let attempt = match self
            .routes
            .iter()
            .find(|r| r.patterns.is_match(&intent.effect))
        {
            None => Attempt::NoSink,
            Some(route) => route.deliver(intent, self.timeout).await,
        };
        if matches!(attempt, Attempt::Failed(_) | Attempt::NoSink) {
            crate::observe::delivery_failed();
        }
        tracing::debug!(
            run_id = %intent.run_id, seq = intent.seq,
            delivered = matches!(attempt, Attempt::Delivered),
            "delivery"
        );
        if let Attempt::Failed(error) = &attempt {
            tracing::warn!(
                run_id = %intent.run_id, seq = intent.seq, effect = %intent.effect, %error,
                "delivery failed"
            );
        }
        attempt
    }
}

/// How one delivery attempt ended.
pub(crate) enum Attempt {
    Delivered,
    Failed(String),
    NoSink,
    BreakerOpen {
        retry_after_ms: u64,
        message: String,
    },
}

impl From<Attempt> for Delivery {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::Delivered => Delivery::Delivered,
            Attempt::Failed(error) => Delivery::Failed(error),
            Attempt::NoSink => Delivery::NoSink,
            Attempt::BreakerOpen { message, .. } => Delivery::NotAttempted(message),
        }
    }
}

impl Route {
    async fn deliver(&self, intent: &Intent, timeout: Duration) -> Attempt {
        let admitted = match &self.breaker {
            None => None,
            Some((breakers, name)) => {
                let defined = breakers.defined(name).expect("checked by route_through");
                match breakers.admit(defined).await {
                    Admission::Rejected { retry_after_ms, .. } => {
                        return Attempt::BreakerOpen {
                            retry_after_ms,
                            message: format!(
                                "breaker `{name}` is open; a trial in {retry_after_ms} ms"
                            ),
                        };
                    }
                    Admission::Allowed { trial, .. } => Some((breakers, defined, trial)),
                }
            }
        };
        let mut delivery = self.sink.deliver(intent);
        // A sink that answers at once (an in-process one) needs no timer:
        // poll it once first, and arm the timeout only if it must wait.
        let answered =
            match std::future::poll_fn(|cx| Poll::Ready(delivery.as_mut().poll(cx))).await {
                Poll::Ready(answer) => Ok(answer),
                Poll::Pending => tokio::time::timeout(timeout, delivery).await,
            };
        let attempt = match answered {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(error)) => Attempt::Failed(error.to_string()),
            Err(_) => Attempt::Failed(format!("the sink did not answer within {timeout:?}")),
        };
        if let Some((breakers, defined, trial)) = admitted {
            let counted = match &attempt {
                Attempt::Failed(error) if !defined.ignores(error) => CallResult::Failure,
                _ => CallResult::Success,
            };
            breakers.record(defined, trial, counted).await;
        }
        attempt
    }
}
