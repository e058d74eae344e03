//! The escrow imports on a native target: an in-memory sandbox per thread
//! that applies the host's rules (effect names, grants, policies, scopes),
//! so plugin logic can be unit-tested without a host. Limits are not
//! simulated.

// The sandbox serves every capability; with one feature alone, the other's
// half is unused.
#![cfg_attr(
    not(all(feature = "intents", feature = "scopes")),
    allow(dead_code, reason = "the other capability's feature is off")
)]

use std::cell::RefCell;

use wildmatch::WildMatch;

use crate::Refusal;
#[cfg(feature = "intents")]
use crate::intents::PendingIntent;
use crate::scopes::ScopePolicy;
use crate::testing::{Fate, RecordedIntent};

/// Longest effect name the host accepts, in bytes (as `escrow-host`).
const MAX_EFFECT_NAME_BYTES: usize = 128;

thread_local! {
    static SANDBOX: RefCell<State> = RefCell::new(State::new(None, &ScopePolicy::Inherit).expect("no patterns"));
}

/// One thread's sandbox.
pub(crate) struct State {
    grants: Option<Patterns>,
    policy: Rules,
    seq: u64,
    records: Vec<RecordedIntent>,
    frames: Vec<Frame>,
    next_frame: u32,
    pub(crate) violation: Option<String>,
}

struct Frame {
    id: u32,
    start: usize,
    rules: Rules,
}

/// A policy with its patterns compiled.
enum Rules {
    Commit,
    Drop,
    AssertNone,
    Block(Patterns),
}

impl Rules {
    fn new(policy: &ScopePolicy) -> Result<Self, String> {
        Ok(match policy {
            ScopePolicy::Inherit => Rules::Commit,
            ScopePolicy::Drop => Rules::Drop,
            ScopePolicy::AssertNone => Rules::AssertNone,
            ScopePolicy::Block(patterns) => Rules::Block(Patterns::new(patterns)?),
        })
    }

    fn decide(&self, effect: &str) -> Fate {
        match self {
            Rules::Commit => Fate::Committed,
            Rules::Drop => Fate::Dropped,
            Rules::AssertNone => Fate::Refused(Refusal::Forbidden(format!(
                "`{effect}`: policy assert-none"
            ))),
            Rules::Block(set) if set.matches(effect) => Fate::Blocked,
            Rules::Block(_) => Fate::Committed,
        }
    }
}

fn check_name(name: &str, pattern: bool) -> Result<(), String> {
    let ok = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (pattern && c == '*')
    };
    if name.is_empty() {
        Err("effect name is empty".into())
    } else if name.len() > MAX_EFFECT_NAME_BYTES {
        Err(format!(
            "effect name is {} bytes long; the limit is {MAX_EFFECT_NAME_BYTES}",
            name.len()
        ))
    } else if let Some(ch) = name.chars().find(|c| !ok(*c)) {
        Err(format!("effect name `{name}` has {ch:?}"))
    } else {
        Ok(())
    }
}

/// Effect patterns, where `*` matches any run of characters.
struct Patterns(Vec<WildMatch>);

impl Patterns {
    fn new(patterns: &[String]) -> Result<Self, String> {
        patterns.iter().try_for_each(|p| check_name(p, true))?;
        Ok(Self(patterns.iter().map(|p| WildMatch::new(p)).collect()))
    }

    fn matches(&self, effect: &str) -> bool {
        self.0.iter().any(|m| m.matches(effect))
    }
}

impl State {
    pub(crate) fn new(grants: Option<&[String]>, policy: &ScopePolicy) -> Result<Self, String> {
        Ok(Self {
            grants: grants.map(Patterns::new).transpose()?,
            policy: Rules::new(policy)?,
            seq: 0,
            records: Vec::new(),
            frames: Vec::new(),
            next_frame: 1,
            violation: None,
        })
    }

    /// The recorded intents, with scopes left open rolled back.
    pub(crate) fn into_records(mut self) -> Vec<RecordedIntent> {
        while let Some(frame) = self.frames.pop() {
            self.discard_from(frame.start);
        }
        self.records
    }

    fn enqueue(&mut self, effect: &str, payload: &[u8]) -> Result<u64, Refusal> {
        self.seq += 1;
        let seq = self.seq;
        let fate = if let Err(e) = check_name(effect, false) {
            Fate::Refused(Refusal::Invalid(e))
        } else if self.grants.as_ref().is_some_and(|g| !g.matches(effect)) {
            Fate::Refused(Refusal::NotGranted(format!(
                "`{effect}` is not covered by the plugin's grants"
            )))
        } else {
            // Any refusal wins; otherwise the outermost rule that withholds.
            let mut fate = self.policy.decide(effect);
            for frame in &self.frames {
                match frame.rules.decide(effect) {
                    refused @ Fate::Refused(_) => fate = refused,
                    decided if fate == Fate::Committed => fate = decided,
                    _ => {}
                }
                if matches!(fate, Fate::Refused(_)) {
                    break;
                }
            }
            fate
        };
        if let Fate::Refused(Refusal::Forbidden(why)) = &fate {
            self.violation.get_or_insert_with(|| why.clone());
        }
        self.records.push(RecordedIntent {
            seq,
            effect: effect.to_owned(),
            payload: payload.to_vec(),
            fate: fate.clone(),
        });
        match fate {
            Fate::Refused(refusal) => Err(refusal),
            _ => Ok(seq),
        }
    }

    fn close(&mut self, id: u32, commit: bool) {
        let Some(position) = self.frames.iter().rposition(|f| f.id == id) else {
            return;
        };
        while self.frames.len() > position + (commit as usize) {
            let frame = self.frames.pop().expect("frames at or above `position`");
            self.discard_from(frame.start);
        }
        self.frames.truncate(position);
    }

    fn discard_from(&mut self, start: usize) {
        for record in &mut self.records[start..] {
            if !matches!(record.fate, Fate::Refused(_)) {
                record.fate = Fate::Discarded;
            }
        }
    }
}

/// Runs `body` with `state` as this thread's sandbox and returns the state
/// it left.
pub(crate) fn with_sandbox<T>(state: State, body: impl FnOnce() -> T) -> (T, State) {
    let previous = SANDBOX.with(|s| s.replace(state));
    let output = body();
    let state = SANDBOX.with(|s| s.replace(previous));
    (output, state)
}

#[cfg(feature = "intents")]
pub(crate) fn enqueue(effect: &str, payload: &[u8]) -> Result<u64, Refusal> {
    SANDBOX.with(|s| s.borrow_mut().enqueue(effect, payload))
}

#[cfg(feature = "intents")]
pub(crate) fn pending() -> Vec<PendingIntent> {
    SANDBOX.with(|s| {
        s.borrow()
            .records
            .iter()
            .filter(|r| !matches!(r.fate, Fate::Refused(_) | Fate::Discarded))
            .map(|r| PendingIntent {
                seq: r.seq,
                effect: r.effect.clone(),
                payload: r.payload.clone(),
            })
            .collect()
    })
}

/// A scope of the native sandbox; dropping it unfinished rolls it back.
#[derive(Debug)]
pub(crate) struct ScopeHandle(u32);

impl Drop for ScopeHandle {
    fn drop(&mut self) {
        let _ = SANDBOX.try_with(|s| s.borrow_mut().close(self.0, false));
    }
}

pub(crate) fn scope_open(policy: &ScopePolicy) -> Result<ScopeHandle, Refusal> {
    SANDBOX.with(|s| {
        let mut s = s.borrow_mut();
        let rules = Rules::new(policy).map_err(Refusal::Invalid)?;
        let id = s.next_frame;
        s.next_frame += 1;
        let start = s.records.len();
        s.frames.push(Frame { id, start, rules });
        Ok(ScopeHandle(id))
    })
}

pub(crate) fn scope_commit(scope: ScopeHandle) {
    SANDBOX.with(|s| s.borrow_mut().close(scope.0, true));
}

pub(crate) fn scope_rollback(scope: ScopeHandle) {
    SANDBOX.with(|s| s.borrow_mut().close(scope.0, false));
}
