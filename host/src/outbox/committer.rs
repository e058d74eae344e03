//! The group committer: one thread that applies the writes of every run and
//! worker of an outbox in shared transactions, one fsync for many writes.
//!
//! Callers answered together tend to write again soon after: the runs a
//! commit released end, and the next ones start, within a short while of
//! each other. Taking only the writes waiting when a writer was free, the
//! first run to come back took a transaction of its own (whose fsync costs
//! about as much as one for thirty runs) while the others queued behind
//! it: with 32 runs in flight, a third of the transactions held one write.
//!
//! So the committer counts the callers in its loop: writes being applied,
//! waiting, and answered but not written again (`awaited`). Each writer
//! takes an equal share of them, and a group is held back, for at most
//! [`GROUP_LINGER`], until the awaited callers bring it to its share. With
//! two writers and 32 runs in flight, that settles into two groups of 16 in
//! turn, one committing while the runs of the other execute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::{OutboxError, OutboxStore, Write, on_own_thread};

/// Most writes one group commit takes at once.
const MAX_GROUP: usize = 256;

/// Longest a group is held back, once a writer is free for it, for the
/// callers answered earlier that have not written again: under load a
/// commit starts at most this much later than it could have. When they do
/// not come back within it (a burst ended), they are no longer awaited.
pub const GROUP_LINGER: Duration = Duration::from_millis(1);

/// A write and where its answer goes.
pub(super) type Pending = (Write, oneshot::Sender<Result<u64, OutboxError>>);

/// What the committer has done so far.
#[derive(Default)]
pub(super) struct Counters {
    /// Transactions made.
    pub(super) transactions: AtomicU64,
    /// Writes they held.
    pub(super) writes: AtomicU64,
    /// Callers answered that have not written again since: the writes
    /// likely to arrive soon.
    awaited: AtomicUsize,
    /// Writes in the groups being applied.
    applying: AtomicUsize,
}

impl Counters {
    /// A write arrived: one caller fewer is awaited.
    fn arrived(&self) {
        let _ = self
            .awaited
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Starts the thread that applies writes in groups: it takes its share of
/// the writes waiting and of those to come (see [`GROUP_LINGER`]),
/// applies them in one transaction, answers each, and starts over, with up
/// to [`OutboxStore::concurrent_writes`] groups in flight; writes that
/// arrive while every writer is busy wait and form the next group. It ends
/// when the last `Outbox` sharing its queue is gone and the groups in
/// flight are applied.
///
/// Groups in flight at once may commit in any order: each write's caller
/// waits for its answer before it writes again, so a run's own writes are
/// applied in the order it made them.
pub(super) fn spawn(
    store: Arc<dyn OutboxStore>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    counters: Arc<Counters>,
    work: Arc<Notify>,
) {
    on_own_thread("escrow-outbox", async move {
        let writers = store.concurrent_writes().max(1);
        let slots = Arc::new(Semaphore::new(writers));
        while let Some(first) = queue.recv().await {
            counters.arrived();
            let slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let mut group = vec![first];
            gather(&mut queue, &counters, writers, &mut group).await;
            counters.applying.fetch_add(group.len(), Ordering::AcqRel);
            let store = Arc::clone(&store);
            let counters = Arc::clone(&counters);
            let work = Arc::clone(&work);
            tokio::spawn(async move {
                if apply(&*store, group, &counters).await {
                    work.notify_waiters();
                }
                drop(slot);
            });
        }
        let _ = slots.acquire_many(writers as u32).await;
    })
    .expect("spawning the outbox writer thread");
}

/// Adds to `group` the writes waiting, up to this writer's share of the
/// callers in the loop; then, short of its share, those that arrive until
/// it holds it, or no caller is awaited, or [`GROUP_LINGER`] has passed.
async fn gather(
    queue: &mut mpsc::UnboundedReceiver<Pending>,
    counters: &Counters,
    writers: usize,
    group: &mut Vec<Pending>,
) {
    // Every caller in the loop: being applied, answered and not back yet,
    // waiting, and this one; each writer takes its share.
    let callers = counters.applying.load(Ordering::Acquire)
        + counters.awaited.load(Ordering::Acquire)
        + queue.len()
        + group.len();
    let share = callers.div_ceil(writers).clamp(1, MAX_GROUP);
    take_waiting(queue, counters, share, group);
    if group.len() >= share {
        return;
    }
    let linger = tokio::time::sleep(GROUP_LINGER);
    tokio::pin!(linger);
    while group.len() < share && counters.awaited.load(Ordering::Acquire) > 0 {
        tokio::select! {
            biased;
            next = queue.recv() => match next {
                Some(next) => {
                    counters.arrived();
                    group.push(next);
                    take_waiting(queue, counters, share, group);
                }
                None => return,
            },
            () = &mut linger => {
                // They are not coming soon: wait for them no more.
                counters.awaited.store(0, Ordering::Release);
                return;
            }
        }
    }
}

/// Adds to `group` the writes waiting now, until it holds `share`.
fn take_waiting(
    queue: &mut mpsc::UnboundedReceiver<Pending>,
    counters: &Counters,
    share: usize,
    group: &mut Vec<Pending>,
) {
    while group.len() < share {
        match queue.try_recv() {
            Ok(next) => {
                counters.arrived();
                group.push(next);
            }
            Err(_) => break,
        }
    }
}

/// Applies one group of writes and answers each of its writers. Returns
/// whether it made entries due that no claim holds.
async fn apply(store: &dyn OutboxStore, group: Vec<Pending>, counters: &Counters) -> bool {
    let (writes, answers): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
    let result = store.write(&writes).await;
    let wakes = result.is_ok() && writes.iter().any(Write::wakes_workers);
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    counters
        .writes
        .fetch_add(writes.len() as u64, Ordering::Relaxed);
    // Before the answers, so that every write they bring back is counted
    // as awaited first.
    counters.awaited.fetch_add(answers.len(), Ordering::AcqRel);
    counters.applying.fetch_sub(answers.len(), Ordering::AcqRel);
    if let Err(error) = &result {
        tracing::warn!(%error, writes = writes.len(), "outbox write failed");
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let _ = answer.send(match &result {
            Ok(held) => Ok(held.get(i).copied().unwrap_or(0)),
            Err(error) => Err(error.clone()),
        });
    }
    wakes
}

#[cfg(test)]
mod tests {
    use super::super::{EntryKind, NewEntry, Outbox, SqliteOutbox};
    use super::*;
    use crate::run_id::RunId;

    /// A commit of one intent, as a run writes it.
    fn commit() -> Write {
        let run_id = RunId::new();
        Write::Commit {
            run_id,
            intents: vec![NewEntry {
                kind: EntryKind::Intent,
                run_id,
                seq: 1,
                plugin: "p".into(),
                effect: "email.send".into(),
                payload: b"{}".to_vec(),
                fences: Vec::new(),
            }],
            claim: None,
            now_ms: 0,
            journaled: false,
            failed_compensations: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_released_by_one_commit_share_their_next_one() {
        const CALLERS: usize = 32;
        const ROUNDS: usize = 20;
        const RUN: Duration = Duration::from_micros(10);
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("outbox.db")).unwrap());
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        // The run's own work before it commits.
                        let started = std::time::Instant::now();
                        while started.elapsed() < RUN {
                            std::hint::spin_loop();
                        }
                        outbox.write(commit()).await.unwrap();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let commits = outbox.group_commits();
        assert_eq!(commits.writes, (CALLERS * ROUNDS) as u64);
        // One transaction a round once the callers move together, and a few
        // more while they first fall in step; the first caller back taking
        // a transaction of its own would make two a round.
        assert!(
            commits.transactions <= (ROUNDS + ROUNDS / 2) as u64,
            "{CALLERS} callers, {ROUNDS} rounds: {commits:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_out_one_linger_for_awaited_callers_that_do_not_come_then_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("outbox.db")).unwrap());
        let awaited = || outbox.inner.groups.awaited.load(Ordering::Acquire);
        // As after a burst of eight runs whose callers then left. (How
        // many a real burst leaves awaited depends on how its writes fell
        // into groups.)
        outbox.inner.groups.awaited.store(8, Ordering::Release);
        let started = std::time::Instant::now();
        outbox.write(commit()).await.unwrap();
        assert!(started.elapsed() >= GROUP_LINGER, "{:?}", started.elapsed());
        // They did not come: only the caller just answered is awaited.
        assert_eq!(awaited(), 1);
    }
}
