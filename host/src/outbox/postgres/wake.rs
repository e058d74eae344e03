//! Waking workers on other hosts: a commit that makes entries due sends
//! `NOTIFY escrow_outbox`, at most once per [`POSTGRES_NOTIFY_INTERVAL`]
//! from one process, and a waiting worker `LISTEN`s on a connection of its
//! own.
//!
//! `NOTIFY` takes a lock shared by the whole cluster when its transaction
//! commits, so it is not sent by every group: the first commit after a
//! quiet interval notifies at once (a leading edge), and commits within the
//! interval are covered by one more notification at its end (a trailing
//! edge), sent after they committed. A listener therefore never misses a
//! commit by more than the interval, and the lock is taken at most twice
//! per interval by one process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{connections, error_text};
use crate::outbox::Changes;

/// The shortest time between two `NOTIFY`s from one process.
pub const POSTGRES_NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// How long a listener whose connection failed waits before connecting
/// again; meanwhile its worker polls.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Tells the listeners of the channel `escrow_outbox`.
const NOTIFY: &str = "NOTIFY escrow_outbox";
/// Listens to the channel `escrow_outbox`.
const LISTEN: &str = "LISTEN escrow_outbox";

/// When this process last notified, and whether a notification at the end
/// of the interval is already due.
#[derive(Default)]
pub(super) struct Throttle {
    state: Mutex<(Option<Instant>, bool)>,
}

impl Throttle {
    /// Tells listeners that entries came due, now or at the end of the
    /// current interval; called after the writes committed.
    pub(super) fn notify(self: &Arc<Self>, pool: &Pool) {
        let now = Instant::now();
        let delay = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match *state {
                (_, true) => return,
                (Some(last), false) if now < last + POSTGRES_NOTIFY_INTERVAL => {
                    state.1 = true;
                    last + POSTGRES_NOTIFY_INTERVAL - now
                }
                _ => {
                    state.0 = Some(now);
                    Duration::ZERO
                }
            }
        };
        let throttle = Arc::clone(self);
        let pool = pool.clone();
        connections().spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                *throttle.state.lock().unwrap_or_else(|p| p.into_inner()) =
                    (Some(Instant::now()), false);
            }
            let sent = match pool.get().await {
                Ok(client) => client
                    .batch_execute(NOTIFY)
                    .await
                    .map_err(|e| error_text(&e)),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = sent {
                // Listeners poll meanwhile: late, not lost.
                tracing::debug!(%error, "NOTIFY failed");
            }
        });
    }
}

/// A connection of its own that `LISTEN`s, driven on the connections'
/// runtime and connected again when it fails; stopped when dropped.
pub(super) struct Listener {
    notified: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Listener {
    pub(super) fn start(config: tokio_postgres::Config) -> Self {
        let notified = Arc::new(Notify::new());
        let wake = Arc::clone(&notified);
        let task = connections().spawn(async move {
            loop {
                if let Err(error) = listen(&config, &wake).await {
                    tracing::debug!(%error, "the LISTEN connection ended; polling until it is back");
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
        Self {
            notified,
            task: task.abort_handle(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
impl Changes for Listener {
    async fn changed(&mut self) {
        self.notified.notified().await;
    }
}

/// Connects, listens, and wakes `wake` on every notification until the
/// connection fails. Once listening it wakes `wake` too: what was committed
/// while it was not listening is looked for.
async fn listen(config: &tokio_postgres::Config, wake: &Notify) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| error_text(&e))?;
    let listening = client.batch_execute(LISTEN);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            answer = &mut listening, if !listened => {
                answer.map_err(|e| error_text(&e))?;
                listened = true;
                wake.notify_one();
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(error_text(&e)),
                None => return Err("the server closed the connection".into()),
            },
        }
    }
}
