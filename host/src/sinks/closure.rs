//! Sinks that call embedder closures in this process.

use std::future::Future;

use super::Sink;
use crate::error::CallError;
use crate::outcome::Intent;

/// A sink that calls a synchronous closure for each committed intent.
///
/// # Examples
///
/// ```
/// use escrow_host::CallError;
/// use escrow_host::sinks::{FnSink, Sinks};
///
/// let mut sinks = Sinks::new();
/// sinks.route("email.*", FnSink(|intent: &escrow_host::Intent| {
///     println!("sending {}", String::from_utf8_lossy(&intent.payload));
///     Ok::<_, CallError>(())
/// }))?;
/// # Ok::<_, escrow_host::patterns::NameError>(())
/// ```
pub struct FnSink<F>(pub F);

#[async_trait::async_trait]
impl<F, E> Sink for FnSink<F>
where
    F: Fn(&Intent) -> Result<(), E> + Send + Sync + 'static,
    E: Into<CallError>,
{
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        (self.0)(intent).map_err(Into::into)
    }
}

/// A sink that awaits an async closure for each committed intent. The
/// closure gets its own copy of the intent.
pub struct AsyncFnSink<F>(pub F);

#[async_trait::async_trait]
impl<F, Fut, E> Sink for AsyncFnSink<F>
where
    F: Fn(Intent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<CallError>,
{
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        (self.0)(intent.clone()).await.map_err(Into::into)
    }
}
