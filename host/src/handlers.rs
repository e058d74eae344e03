//! Handlers: host code that performs an immediate effect while the guest
//! waits for its answer.
//!
//! Each handler is registered for one effect name and declared a *query*
//! (it changes nothing: allowed under every policy) or an *action* (a side
//! effect: performed only where the run's policies would commit an intent
//! for the same effect). Grants cover immediate effects exactly as they cover
//! deferred ones: a handler being registered grants nothing.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use crate::effect_kind::EffectKind;
use crate::error::CallError;
use crate::patterns::{NameError, check_effect_name};
use crate::run_id::RunId;

mod exec;
#[cfg(feature = "http")]
mod http;

pub use exec::Exec;
#[cfg(feature = "http")]
pub use http::Http;

/// How long a handler may take by default before its call counts as failed.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// One call of a handler: the effect, its payload, and the request it
/// answers, so that the handler can make the effect idempotent.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The effect to perform.
    pub effect: &'a str,
    /// The payload exactly as the guest passed it (for a compensation: as
    /// the guest registered it).
    pub payload: &'a [u8],
    /// The run that asked.
    pub run_id: RunId,
    /// The request's sequence number in the run (for a compensation: that of
    /// the call it undoes).
    pub seq: u64,
    /// Whether this call is a compensation.
    pub compensation: bool,
}

impl Call<'_> {
    /// `{run_id}:{seq}`, or `{run_id}:{seq}:compensate` for a compensation:
    /// the same each time this very request is performed again (a
    /// compensation retried after a crash, say).
    pub fn idempotency_key(&self) -> String {
        if self.compensation {
            self.run_id.compensation_key(self.seq)
        } else {
            self.run_id.idempotency_key(self.seq)
        }
    }
}

/// Performs one immediate effect.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Performs `call.effect` with `call.payload` and returns the answer for
    /// the guest.
    ///
    /// # Errors
    ///
    /// A [`CallError`] reaches the guest as `effect-error::failed` with its
    /// message.
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError>;
}

/// A handler that calls a synchronous closure with the payload.
///
/// # Examples
///
/// ```
/// use escrow_host::CallError;
/// use escrow_host::handlers::{FnHandler, Handlers};
///
/// let mut handlers = Handlers::new();
/// handlers.query("prices.get", FnHandler(|_sku: &[u8]| Ok::<_, CallError>(b"1999".to_vec())))?;
/// # Ok::<_, escrow_host::patterns::NameError>(())
/// ```
pub struct FnHandler<F>(pub F);

#[async_trait::async_trait]
impl<F, E> Handler for FnHandler<F>
where
    F: Fn(&[u8]) -> Result<Vec<u8>, E> + Send + Sync + 'static,
    E: Into<CallError>,
{
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        (self.0)(call.payload).map_err(Into::into)
    }
}

/// A handler that awaits an async closure with its own copy of the payload.
pub struct AsyncFnHandler<F>(pub F);

#[async_trait::async_trait]
impl<F, Fut, E> Handler for AsyncFnHandler<F>
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, E>> + Send,
    E: Into<CallError>,
{
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        (self.0)(call.payload.to_vec()).await.map_err(Into::into)
    }
}

/// A handler of JSON as serde types: it deserializes the payload into `A`
/// (for a typed effect, the object of its arguments keyed by parameter
/// name) and serializes the answer from `R`. With `serde_json::Value` it
/// takes and gives any JSON.
///
/// # Examples
///
/// ```
/// use escrow_host::CallError;
/// use escrow_host::handlers::{Handlers, JsonHandler};
///
/// #[derive(serde::Deserialize)]
/// struct PriceOf {
///     sku: String,
/// }
///
/// #[derive(serde::Serialize)]
/// struct Price {
///     cents: u64,
///     currency: &'static str,
/// }
///
/// let mut handlers = Handlers::new();
/// handlers.query(
///     "catalog.price-of",
///     JsonHandler::new(|args: PriceOf| match args.sku.as_str() {
///         "book" => Ok(Price { cents: 1999, currency: "EUR" }),
///         other => Err(CallError::new(format!("no price for {other}"))),
///     }),
/// )?;
/// # Ok::<_, escrow_host::patterns::NameError>(())
/// ```
pub struct JsonHandler<F, A, R> {
    f: F,
    types: std::marker::PhantomData<fn(A) -> R>,
}

impl<F, A, R> JsonHandler<F, A, R> {
    /// A handler calling `f` with the payload as an `A`.
    pub fn new(f: F) -> Self {
        Self {
            f,
            types: std::marker::PhantomData,
        }
    }
}

#[async_trait::async_trait]
impl<F, A, R, E> Handler for JsonHandler<F, A, R>
where
    F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    A: serde::de::DeserializeOwned + 'static,
    R: serde::Serialize + 'static,
    E: Into<CallError>,
{
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let args: A = serde_json::from_slice(call.payload).map_err(|error| {
            CallError::new(format!(
                "the payload of `{}` does not fit the handler: {error}",
                call.effect
            ))
        })?;
        let answer = (self.f)(args).map_err(Into::into)?;
        serde_json::to_vec(&answer).map_err(|error| {
            CallError::new(format!(
                "the answer to `{}` cannot be written as JSON: {error}",
                call.effect
            ))
        })
    }
}

/// A registered handler and its kind.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) kind: EffectKind,
    pub(crate) handler: Arc<dyn Handler>,
}

/// The handlers of a host, by effect name.
#[derive(Clone)]
pub struct Handlers {
    by_effect: foldhash::HashMap<String, Registered>,
    timeout: Duration,
}

impl Default for Handlers {
    fn default() -> Self {
        Self {
            by_effect: foldhash::HashMap::default(),
            timeout: DEFAULT_HANDLER_TIMEOUT,
        }
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut effects: Vec<(&str, &str)> = self
            .by_effect
            .iter()
            .map(|(e, r)| (e.as_str(), r.kind.as_str()))
            .collect();
        effects.sort_unstable();
        f.debug_struct("Handlers")
            .field("effects", &effects)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Handlers {
    /// No handlers: every immediate effect is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for the query `effect` (an exact name), replacing
    /// any handler registered for it before.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed effect name.
    pub fn query(&mut self, effect: &str, handler: impl Handler) -> Result<&mut Self, NameError> {
        self.register(effect, EffectKind::Query, Arc::new(handler))
    }

    /// Registers `handler` for the action `effect` (an exact name), replacing
    /// any handler registered for it before.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed effect name.
    pub fn action(&mut self, effect: &str, handler: impl Handler) -> Result<&mut Self, NameError> {
        self.register(effect, EffectKind::Action, Arc::new(handler))
    }

    /// Registers a shared handler for `effect` with the given kind.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed effect name.
    pub fn register(
        &mut self,
        effect: &str,
        kind: EffectKind,
        handler: Arc<dyn Handler>,
    ) -> Result<&mut Self, NameError> {
        check_effect_name(effect)?;
        self.by_effect
            .insert(effect.to_owned(), Registered { kind, handler });
        Ok(self)
    }

    /// Sets how long one call may take before it counts as failed (default
    /// [`DEFAULT_HANDLER_TIMEOUT`]).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The kind of the handler registered for `effect`, if any.
    pub fn kind(&self, effect: &str) -> Option<EffectKind> {
        self.by_effect.get(effect).map(|r| r.kind)
    }

    pub(crate) fn get(&self, effect: &str) -> Option<&Registered> {
        self.by_effect.get(effect)
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.timeout
    }
}
