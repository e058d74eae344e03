//! A sink that publishes each committed intent to NATS JetStream.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{Context, PublishErrorKind};

use super::Sink;
use super::queue_url::QueueUrl;
use crate::error::CallError;
use crate::outcome::Intent;

/// How long connecting to the server may take before a delivery fails.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long JetStream may take to acknowledge a message before its delivery
/// fails (and is retried under the same `Nats-Msg-Id`).
pub const NATS_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes each committed intent to a JetStream subject and waits for the
/// stream's acknowledgement: `nats://HOST:PORT/SUBJECT`.
///
/// The message body is the intent's payload as the guest passed it. Its
/// headers:
///
/// - `Nats-Msg-Id`: the intent's idempotency key, so that the stream's
///   duplicate window drops a redelivery (a retry after a lost
///   acknowledgement, or another worker's delivery after a lease ran out);
/// - `run_id`, `idempotency_key`, `effect`, `plugin` and `seq`;
/// - `fences`, the locks the run held and their fencing tokens as JSON, when
///   it held any.
///
/// The operator creates the stream; a subject that no stream captures fails
/// the delivery with one line naming the subject, and it is retried like any
/// other failure. The connection is made on the first delivery and kept;
/// when the server goes away, the client reconnects in the background and
/// deliveries fail (each within [`NATS_ACK_TIMEOUT`]) until it is back.
pub struct NatsJetStream {
    url: QueueUrl,
    subject: String,
    jetstream: tokio::sync::OnceCell<Context>,
}

impl NatsJetStream {
    /// A sink for `nats://HOST:PORT/SUBJECT`. Nothing is connected until the
    /// first delivery.
    ///
    /// # Errors
    ///
    /// A URL that is not of that form, or a subject with spaces or empty
    /// tokens.
    pub fn new(url: &str) -> Result<Self, String> {
        let url = QueueUrl::parse(url, "nats", 4222, "SUBJECT")?;
        let subject = url.name.clone();
        if subject.split('.').any(str::is_empty) || subject.contains(char::is_whitespace) {
            return Err(format!(
                "`{url}`: `{subject}` is not a NATS subject (dot-separated tokens without spaces)"
            ));
        }
        if !url.query.is_empty() {
            return Err(format!("`{url}` takes no parameters"));
        }
        Ok(Self {
            url,
            subject,
            jetstream: tokio::sync::OnceCell::new(),
        })
    }

    async fn jetstream(&self) -> Result<&Context, CallError> {
        self.jetstream
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(NATS_CONNECT_TIMEOUT)
                    .name("escrow")
                    .connect(self.url.address())
                    .await
                    .map_err(|e| CallError::new(format!("NATS at {}: {e}", self.url.address())))?;
                Ok(async_nats::jetstream::ContextBuilder::new()
                    .timeout(NATS_ACK_TIMEOUT)
                    .build(client))
            })
            .await
    }
}

#[async_trait::async_trait]
impl Sink for NatsJetStream {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        let jetstream = self.jetstream().await?;
        let key = intent.idempotency_key();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", key.as_str());
        for (name, value) in super::queue_url::fields(intent, &key) {
            headers.insert(name, value.as_ref());
        }
        let failed = |kind: PublishErrorKind, error: &dyn std::fmt::Display| {
            CallError::new(match kind {
                PublishErrorKind::StreamNotFound => format!(
                    "no JetStream stream captures subject `{}` at {}",
                    self.subject,
                    self.url.address()
                ),
                _ => format!("NATS at {}: {error}", self.url.address()),
            })
        };
        let acknowledged = jetstream
            .publish_with_headers(self.subject.clone(), headers, intent.payload.clone().into())
            .await
            .map_err(|e| failed(e.kind(), &e))?;
        acknowledged.await.map_err(|e| failed(e.kind(), &e))?;
        Ok(())
    }
}
