//! Sinks that call embedder code in this process.

use std::future::Future;

use super::{Sink, SinkError};
use crate::outcome::Intent;

/// A sink that calls a synchronous closure for each committed intent.
///
/// # Examples
///
/// ```
/// use escrow_host::sinks::{Handler, SinkError, Sinks};
///
/// let mut sinks = Sinks::new();
/// sinks.route("email.*", Handler(|intent: &escrow_host::Intent| {
///     println!("sending {}", String::from_utf8_lossy(&intent.payload));
///     Ok::<_, SinkError>(())
/// }))?;
/// # Ok::<_, escrow_host::patterns::NameError>(())
/// ```
pub struct Handler<F>(pub F);

#[async_trait::async_trait]
impl<F, E> Sink for Handler<F>
where
    F: Fn(&Intent) -> Result<(), E> + Send + Sync + 'static,
    E: Into<SinkError>,
{
    async fn deliver(&self, intent: &Intent) -> Result<(), SinkError> {
        (self.0)(intent).map_err(Into::into)
    }
}

/// A sink that awaits an async closure for each committed intent. The
/// closure gets its own copy of the intent.
pub struct AsyncHandler<F>(pub F);

#[async_trait::async_trait]
impl<F, Fut, E> Sink for AsyncHandler<F>
where
    F: Fn(Intent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<SinkError>,
{
    async fn deliver(&self, intent: &Intent) -> Result<(), SinkError> {
        (self.0)(intent.clone()).await.map_err(Into::into)
    }
}

impl From<String> for SinkError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for SinkError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}
