//! Keeping Postgres's statistics of the outbox fresh enough for claims.
//!
//! The claim finds due runs through partial indexes of pending entries.
//! The planner sizes a partial index by the density its statistics saw: an
//! outbox analyzed while nothing was pending stays "empty" to the planner
//! however many entries arrive after, until the next `ANALYZE`. Planned for
//! an empty backlog, a claim over thousands of pending entries joins them
//! with each other: 6 s for 7,000 (31 ms once analyzed), and past the
//! statement timeout for more. Autovacuum analyzes only after a tenth of
//! the table changed, at most once a minute: a burst into a large outbox
//! waits for it.
//!
//! So a worker's first claim compares the pending entries (counted, up to
//! [`PENDING_COUNTED`]) with what the statistics hold of them, and analyzes
//! the table when they were taken while (nearly) nothing was pending and
//! many entries are pending now. A table never analyzed is left alone: the
//! planner sizes it by its pages, which serves claims well (analyzing it
//! early, with every entry pending, made later claims three times slower
//! once delivered entries outnumbered pending ones). And a claim that
//! failed or took longer than [`SLOW_CLAIM`] has the table analyzed, at
//! most once per [`ANALYZE_MIN_INTERVAL`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Pending entries below which statistics count as taken while nearly
/// nothing was pending; with more than twice their count plus this many
/// pending now, a worker's first claim analyzes the outbox first.
pub(super) const STALE_PENDING: i64 = 1_000;
/// The most pending entries counted to compare with the statistics: past
/// them, the statistics cannot be that far off for the claim's plan.
pub(super) const PENDING_COUNTED: i64 = 100_000;
/// A claim slower than this has the outbox analyzed: far slower than any
/// claim of a well-planned backlog (15–50 ms for 1,024 entries).
pub(super) const SLOW_CLAIM: Duration = Duration::from_secs(1);
/// The least time between two analyses after slow claims by one outbox:
/// `ANALYZE` of a table of 400,000 entries takes 150–250 ms.
pub(super) const ANALYZE_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// The pending entries (up to `$1`), how many the statistics hold, and
/// whether the table's statistics were ever taken.
pub(super) const PENDING_AND_BELIEVED: &str = "\
SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM escrow_outbox WHERE status = 'pending' LIMIT $1) \
        AS pending), \
       (SELECT reltuples::BIGINT FROM pg_class \
        WHERE oid = 'escrow_outbox_pending_due'::regclass), \
       (SELECT reltuples >= 0 FROM pg_class WHERE oid = 'escrow_outbox'::regclass)";

/// Whether statistics of a table `analyzed` before, holding `believed`
/// pending entries, were taken while nearly none was pending, and
/// `pending` entries are many more.
pub(super) fn stale(pending: i64, believed: i64, analyzed: bool) -> bool {
    analyzed && (0..STALE_PENDING).contains(&believed) && pending >= 2 * believed + STALE_PENDING
}

/// Refreshes the statistics of `escrow_outbox`.
pub(super) const ANALYZE: &str = "ANALYZE escrow_outbox";

/// When one outbox last looked at its statistics.
#[derive(Debug, Default)]
pub(super) struct Freshness {
    /// Whether a claim has compared yet.
    compared: AtomicBool,
    /// When a slow claim last had the outbox analyzed.
    analyzed_at: Mutex<Option<Instant>>,
}

/// What a claim does about the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// Nothing.
    Skip,
    /// Compare the pending entries with the statistics, and analyze when
    /// they are stale.
    Compare,
    /// Analyze.
    Analyze,
}

impl Freshness {
    /// What the first claim does before it is taken.
    pub(super) fn before_claim(&self) -> Look {
        match self.compared.swap(true, Ordering::Relaxed) {
            false => Look::Compare,
            true => Look::Skip,
        }
    }

    /// What a claim that was slow or failed does after it.
    pub(super) fn after_slow_claim(&self) -> Look {
        let mut analyzed_at = self.analyzed_at.lock().unwrap_or_else(|e| e.into_inner());
        match *analyzed_at {
            Some(at) if at.elapsed() < ANALYZE_MIN_INTERVAL => Look::Skip,
            _ => {
                *analyzed_at = Some(Instant::now());
                Look::Analyze
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_stale_only_when_taken_nearly_empty_with_many_pending_now() {
        // Analyzed while nothing was pending, 7,000 pending now.
        assert!(stale(7_000, 0, true));
        // Never analyzed: the planner sizes the table by its pages.
        assert!(!stale(7_000, 0, false));
        // Taken with a backlog: close enough for the claim's plan.
        assert!(!stale(7_000, 5_000, true));
        // Few pending: any plan is quick.
        assert!(!stale(900, 0, true));
        assert!(stale(2 * 400 + STALE_PENDING, 400, true));
    }

    #[test]
    fn the_first_claim_compares_once_and_slow_claims_analyze_at_most_once_an_interval() {
        let freshness = Freshness::default();
        assert_eq!(freshness.before_claim(), Look::Compare);
        assert_eq!(freshness.before_claim(), Look::Skip);
        assert_eq!(freshness.after_slow_claim(), Look::Analyze);
        assert_eq!(freshness.after_slow_claim(), Look::Skip);
        *freshness.analyzed_at.lock().unwrap() = Instant::now().checked_sub(ANALYZE_MIN_INTERVAL);
        assert_eq!(freshness.after_slow_claim(), Look::Analyze);
    }
}
