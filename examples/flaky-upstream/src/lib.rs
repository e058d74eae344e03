//! Flaky upstream: call an unreliable dependency through the breaker
//! `upstream`, and say what happened to each call.
//!
//! With the example's config the upstream fails its first three calls: the
//! breaker opens after the third, the next call fails fast without reaching
//! the upstream, the plugin waits out the recovery time, and the trial that
//! follows succeeds and closes the breaker.
//!
//! Input: `{"calls": 8, "wait_for_recovery": true}` (both optional).

use escrow_guest::{BreakerError, breaker};
use serde::Deserialize;

/// How many calls to make.
#[derive(Debug, Deserialize)]
pub struct Plan {
    /// Calls to make (default 8).
    #[serde(default = "default_calls")]
    pub calls: u32,
    /// Whether to wait out the recovery time when the breaker is open
    /// (default true).
    #[serde(default = "default_wait")]
    pub wait_for_recovery: bool,
}

fn default_calls() -> u32 {
    8
}

fn default_wait() -> bool {
    true
}

/// Makes the calls; answers one line per call.
#[escrow_guest::plugin]
pub fn poll(plan: Plan) -> Result<Vec<String>, String> {
    let upstream = breaker("upstream").map_err(|e| e.to_string())?;
    let mut log = Vec::new();
    for call in 1..=plan.calls {
        match upstream.invoke::<serde_json::Value>("upstream.fetch", &call) {
            Ok(answer) => log.push(format!("call {call}: ok, {answer}")),
            Err(BreakerError::CircuitOpen { retry_after }) => {
                log.push(format!(
                    "call {call}: failed fast, the breaker is open; a trial in {} ms",
                    retry_after.as_millis()
                ));
                if plan.wait_for_recovery {
                    std::thread::sleep(retry_after);
                }
            }
            Err(BreakerError::Effect(error)) => log.push(format!("call {call}: {error}")),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use escrow_guest::testing::Sandbox;

    use super::*;

    #[test]
    fn an_open_breaker_fails_every_call_fast() {
        let plan = Plan {
            calls: 2,
            wait_for_recovery: false,
        };
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .open_breaker("upstream")
            .action("upstream.fetch", |_: &[u8]| Ok(b"1".to_vec()))
            .run(|| poll(plan));
        let log = recording.output.unwrap();
        assert!(
            log.iter().all(|line| line.contains("failed fast")),
            "{log:?}"
        );
        assert!(
            recording.invocations.is_empty(),
            "the upstream was never called"
        );
    }

    #[test]
    fn failures_in_a_row_open_the_breaker() {
        let plan = Plan {
            calls: 4,
            wait_for_recovery: false,
        };
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .breaker("upstream", 3)
            .action("upstream.fetch", |_: &[u8]| Err("unavailable".into()))
            .run(|| poll(plan));
        let rejected: Vec<bool> = recording.breaker_calls.iter().map(|c| c.rejected).collect();
        assert_eq!(rejected, [false, false, false, true]);
    }
}
