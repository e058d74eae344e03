//! The escrow imports on a native target: an in-memory sandbox per thread
//! that applies the host's rules (effect names, grants, policies, scopes,
//! handler kinds, compensations), so plugin logic can be unit-tested without
//! a host. Limits are not simulated.

// The sandbox serves every capability; with some features off, part of it is
// unused.
#![cfg_attr(
    not(all(
        feature = "intents",
        feature = "scopes",
        feature = "effects",
        feature = "locks"
    )),
    allow(dead_code, reason = "another capability's feature is off")
)]

use std::cell::RefCell;
use std::collections::HashMap;

use wildmatch::WildMatch;

#[cfg(feature = "intents")]
use crate::intents::PendingIntent;
use crate::scopes::ScopePolicy;
use crate::testing::recorded::{
    Answer, FakeHandler, Fate, Kind, RecordedBreakerCall, RecordedCompensation, RecordedIntent,
    RecordedInvocation, RecordedLock, SimBreaker,
};
use crate::{Error, Refusal};

/// Longest effect name the host accepts, in bytes (as `escrow-host`).
const MAX_EFFECT_NAME_BYTES: usize = 128;

/// Longest lock key the host accepts, in bytes (as `escrow-host`).
const MAX_LOCK_KEY_BYTES: usize = 256;

thread_local! {
    static SANDBOX: RefCell<State> = RefCell::new(
        // As `Sandbox::new()`: nothing granted, policy commit, no handlers.
        State::new(Some(&[]), Some(&[]), &ScopePolicy::default(), HashMap::new(), HashMap::new())
            .expect("no patterns"),
    );
}

/// One thread's sandbox.
pub(crate) struct State {
    grants: Option<Patterns>,
    breakers: HashMap<String, SimBreaker>,
    pub(crate) breaker_calls: Vec<RecordedBreakerCall>,
    lock_grants: Option<Patterns>,
    /// Locks held: guard id, keys, token.
    held: Vec<(u32, Vec<String>, u64)>,
    next_guard: u32,
    last_token: u64,
    pub(crate) locks: Vec<RecordedLock>,
    policy: Rules,
    handlers: HashMap<String, (Kind, FakeHandler)>,
    seq: u64,
    pub(crate) records: Vec<RecordedIntent>,
    pub(crate) invocations: Vec<RecordedInvocation>,
    pending: Vec<Undo>,
    pub(crate) compensations: Vec<RecordedCompensation>,
    frames: Vec<Frame>,
    next_frame: u32,
    pub(crate) violation: Option<String>,
}

/// A registered compensation.
struct Undo {
    seq: u64,
    effect: String,
    payload: Vec<u8>,
    handler: FakeHandler,
}

struct Frame {
    id: u32,
    start: usize,
    undo_start: usize,
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
    check_text(name, pattern, "effect name", MAX_EFFECT_NAME_BYTES, "")
}

fn check_lock_key(key: &str, pattern: bool) -> Result<(), String> {
    check_text(key, pattern, "lock key", MAX_LOCK_KEY_BYTES, ":/@")
}

/// The host's rules for names: not empty, at most `max` bytes of letters,
/// digits, `.`, `_`, `-` and `extra` (and `*` in patterns).
fn check_text(
    name: &str,
    pattern: bool,
    what: &str,
    max: usize,
    extra: &str,
) -> Result<(), String> {
    let ok = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '-')
            || extra.contains(c)
            || (pattern && c == '*')
    };
    if name.is_empty() {
        Err(format!("{what} is empty"))
    } else if name.len() > max {
        Err(format!(
            "{what} is {} bytes long; the limit is {max}",
            name.len()
        ))
    } else if let Some(ch) = name.chars().find(|c| !ok(*c)) {
        Err(format!("{what} `{name}` has {ch:?}"))
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

    fn lock_keys(patterns: &[String]) -> Result<Self, String> {
        patterns.iter().try_for_each(|p| check_lock_key(p, true))?;
        Ok(Self(patterns.iter().map(|p| WildMatch::new(p)).collect()))
    }

    fn matches(&self, effect: &str) -> bool {
        self.0.iter().any(|m| m.matches(effect))
    }
}

impl State {
    /// A fresh sandbox with these grants (`None`: everything), policy,
    /// fake handlers and breakers.
    pub(crate) fn new(
        grants: Option<&[String]>,
        lock_grants: Option<&[String]>,
        policy: &ScopePolicy,
        handlers: HashMap<String, (Kind, FakeHandler)>,
        breakers: HashMap<String, SimBreaker>,
    ) -> Result<Self, String> {
        Ok(Self {
            grants: grants.map(Patterns::new).transpose()?,
            lock_grants: lock_grants.map(Patterns::lock_keys).transpose()?,
            breakers,
            breaker_calls: Vec::new(),
            held: Vec::new(),
            next_guard: 1,
            last_token: 0,
            locks: Vec::new(),
            policy: Rules::new(policy)?,
            handlers,
            seq: 0,
            records: Vec::new(),
            invocations: Vec::new(),
            pending: Vec::new(),
            compensations: Vec::new(),
            frames: Vec::new(),
            next_frame: 1,
            violation: None,
        })
    }

    /// Ends the sandboxed run: scopes left open are rolled back, and the
    /// compensations still registered are returned, newest first — what a
    /// host would run if the run failed.
    pub(crate) fn end(&mut self) -> Vec<RecordedCompensation> {
        while let Some(frame) = self.frames.pop() {
            let undos = self.roll_back(&frame);
            let ran = run_undos(undos);
            self.compensations.extend(ran);
        }
        self.pending
            .drain(..)
            .rev()
            .map(|u| RecordedCompensation {
                seq: u.seq,
                effect: u.effect,
                payload: u.payload,
                result: Answer::Pending,
            })
            .collect()
    }

    /// The checks of every request: its name, then the grants.
    fn check(&self, effect: &str) -> Result<(), Refusal> {
        check_name(effect, false).map_err(Refusal::Invalid)?;
        if self.grants.as_ref().is_some_and(|g| !g.matches(effect)) {
            return Err(Refusal::NotGranted(format!(
                "`{effect}` is not covered by the plugin's grants"
            )));
        }
        Ok(())
    }

    /// The run's policy, then each open scope's from the outermost in: any
    /// refusal wins, otherwise the outermost rule that withholds.
    fn decide(&self, effect: &str) -> Fate {
        let mut fate = self.policy.decide(effect);
        for frame in &self.frames {
            if matches!(fate, Fate::Refused(_)) {
                break;
            }
            match frame.rules.decide(effect) {
                refused @ Fate::Refused(_) => fate = refused,
                decided if fate == Fate::Committed => fate = decided,
                _ => {}
            }
        }
        fate
    }

    fn enqueue(&mut self, effect: &str, payload: &[u8]) -> Result<u64, Refusal> {
        self.seq += 1;
        let seq = self.seq;
        let fate = match self.check(effect) {
            Err(refusal) => Fate::Refused(refusal),
            Ok(()) => self.decide(effect),
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

    /// Checks an immediate call; returns its sequence number and the
    /// handlers to call and to undo with.
    fn admit(
        &mut self,
        effect: &str,
        undo: Option<&str>,
    ) -> (u64, Result<(FakeHandler, Option<FakeHandler>), Refusal>) {
        self.seq += 1;
        let admitted = self.check_call(effect, undo);
        if let Err(Refusal::Forbidden(why)) = &admitted {
            self.violation.get_or_insert_with(|| why.clone());
        }
        (self.seq, admitted)
    }

    fn handler(&self, effect: &str) -> Result<(Kind, FakeHandler), Refusal> {
        self.handlers.get(effect).cloned().ok_or_else(|| {
            Refusal::NotGranted(format!(
                "`{effect}` is granted, but no handler performs it: give the sandbox one \
                     (`Sandbox::query` or `Sandbox::action`)"
            ))
        })
    }

    fn check_call(
        &self,
        effect: &str,
        undo: Option<&str>,
    ) -> Result<(FakeHandler, Option<FakeHandler>), Refusal> {
        self.check(effect)?;
        let undo = match undo {
            Some(compensate) => {
                self.check(compensate)?;
                Some(self.handler(compensate)?.1)
            }
            None => None,
        };
        let (kind, call) = self.handler(effect)?;
        if kind == Kind::Action && self.decide(effect) != Fate::Committed {
            return Err(Refusal::Forbidden(format!(
                "`{effect}` is an action; the policy does not let it through"
            )));
        }
        Ok((call, undo))
    }

    #[cfg(feature = "locks")]
    fn acquire(&mut self, keys: &[String]) -> Result<u32, crate::LockError> {
        use crate::LockError;
        let refused = |r| Err(LockError::Refused(r));
        if keys.is_empty() {
            return refused(Refusal::Invalid("no lock keys given".into()));
        }
        for key in keys {
            if let Err(e) = check_lock_key(key, false) {
                return refused(Refusal::Invalid(e));
            }
            if self.lock_grants.as_ref().is_some_and(|g| !g.matches(key)) {
                return refused(Refusal::NotGranted(format!(
                    "lock `{key}` is not covered by the plugin's grants"
                )));
            }
        }
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let highest = self.held.iter().filter_map(|(_, k, _)| k.last()).max();
        if let Some(highest) = highest.filter(|h| keys[0] <= **h) {
            return Err(LockError::WouldDeadlock(format!(
                "this run holds `{highest}` and asks for `{}`",
                keys[0]
            )));
        }
        self.last_token += 1;
        let id = self.next_guard;
        self.next_guard += 1;
        self.locks.push(RecordedLock {
            keys: keys.clone(),
            token: self.last_token,
        });
        self.held.push((id, keys, self.last_token));
        Ok(id)
    }

    fn roll_back(&mut self, frame: &Frame) -> Vec<Undo> {
        for record in &mut self.records[frame.start..] {
            if !matches!(record.fate, Fate::Refused(_)) {
                record.fate = Fate::Discarded;
            }
        }
        let mut undos: Vec<Undo> = self.pending.drain(frame.undo_start..).collect();
        undos.reverse();
        undos
    }

    /// Ends scope `id`; returns the compensations to run, in order.
    fn close(&mut self, id: u32, commit: bool) -> Vec<Undo> {
        let Some(position) = self.frames.iter().rposition(|f| f.id == id) else {
            return Vec::new();
        };
        let mut undos = Vec::new();
        while self.frames.len() > position + usize::from(commit) {
            let frame = self.frames.pop().expect("frames at or above `position`");
            undos.extend(self.roll_back(&frame));
        }
        self.frames.truncate(position);
        undos
    }
}

/// Runs compensations, in the order given, and returns their results.
fn run_undos(undos: Vec<Undo>) -> Vec<RecordedCompensation> {
    undos
        .into_iter()
        .map(|undo| RecordedCompensation {
            result: match (undo.handler)(&undo.payload) {
                Ok(answer) => Answer::Ok(answer),
                Err(message) => Answer::Failed(message),
            },
            seq: undo.seq,
            effect: undo.effect,
            payload: undo.payload,
        })
        .collect()
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

pub(crate) fn invoke(
    effect: &str,
    payload: &[u8],
    undo: Option<(&str, &[u8])>,
) -> Result<Vec<u8>, Error> {
    let (seq, admitted) = SANDBOX.with(|s| s.borrow_mut().admit(effect, undo.map(|u| u.0)));
    // Handlers run outside the sandbox's borrow: a fake may call the SDK.
    let (result, registered) = match admitted {
        Err(refusal) => (Err(Error::Refused(refusal)), None),
        Ok((call, undo_handler)) => (call(payload).map_err(Error::Failed), undo_handler),
    };
    let answer = match &result {
        Ok(answer) => Answer::Ok(answer.clone()),
        Err(Error::Refused(refusal)) => Answer::Refused(refusal.clone()),
        Err(error) => Answer::Failed(error.to_string()),
    };
    SANDBOX.with(|s| {
        let mut s = s.borrow_mut();
        if let (Some(handler), Some((compensate, compensate_payload))) = (registered, undo) {
            s.pending.push(Undo {
                seq,
                effect: compensate.to_owned(),
                payload: compensate_payload.to_vec(),
                handler,
            });
        }
        s.invocations.push(RecordedInvocation {
            seq,
            effect: effect.to_owned(),
            payload: payload.to_vec(),
            result: answer,
        });
    });
    result
}

/// A scope of the native sandbox; dropping it unfinished rolls it back.
#[derive(Debug)]
pub(crate) struct ScopeHandle(u32);

impl Drop for ScopeHandle {
    fn drop(&mut self) {
        close(self.0, false);
    }
}

fn close(id: u32, commit: bool) {
    let _ = SANDBOX.try_with(|s| {
        let undos = s.borrow_mut().close(id, commit);
        // Fakes run outside the sandbox's borrow: one may call the SDK.
        let ran = run_undos(undos);
        s.borrow_mut().compensations.extend(ran);
    });
}

pub(crate) fn scope_open(policy: &ScopePolicy) -> Result<ScopeHandle, Refusal> {
    SANDBOX.with(|s| {
        let mut s = s.borrow_mut();
        let rules = Rules::new(policy).map_err(Refusal::Invalid)?;
        let id = s.next_frame;
        s.next_frame += 1;
        let (start, undo_start) = (s.records.len(), s.pending.len());
        s.frames.push(Frame {
            id,
            start,
            undo_start,
            rules,
        });
        Ok(ScopeHandle(id))
    })
}

pub(crate) fn scope_commit(scope: ScopeHandle) {
    close(scope.0, true);
}

pub(crate) fn scope_rollback(scope: ScopeHandle) {
    close(scope.0, false);
}

/// A lock guard of the native sandbox; dropping it releases its keys.
#[cfg(feature = "locks")]
#[derive(Debug)]
pub(crate) struct GuardHandle(u32);

#[cfg(feature = "locks")]
impl Drop for GuardHandle {
    fn drop(&mut self) {
        let _ = SANDBOX.try_with(|s| s.borrow_mut().held.retain(|(id, _, _)| *id != self.0));
    }
}

#[cfg(feature = "locks")]
pub(crate) fn acquire(keys: &[String], _timeout_ms: u32) -> Result<GuardHandle, crate::LockError> {
    SANDBOX
        .with(|s| s.borrow_mut().acquire(keys))
        .map(GuardHandle)
}

#[cfg(feature = "locks")]
fn held<T>(guard: &GuardHandle, f: impl FnOnce(&(u32, Vec<String>, u64)) -> T) -> T {
    SANDBOX.with(|s| {
        let s = s.borrow();
        f(s.held
            .iter()
            .find(|(id, _, _)| *id == guard.0)
            .expect("a live guard is held"))
    })
}

#[cfg(feature = "locks")]
pub(crate) fn guard_keys(guard: &GuardHandle) -> Vec<String> {
    held(guard, |(_, keys, _)| keys.clone())
}

#[cfg(feature = "locks")]
pub(crate) fn guard_token(guard: &GuardHandle) -> u64 {
    held(guard, |(_, _, token)| *token)
}

/// Kept locks stay held until the sandboxed run ends.
#[cfg(feature = "locks")]
pub(crate) fn guard_keep(guard: GuardHandle) {
    std::mem::forget(guard);
}

/// A breaker of the native sandbox, by name.
#[cfg(feature = "breakers")]
#[derive(Debug)]
pub(crate) struct BreakerHandle(String);

#[cfg(feature = "breakers")]
pub(crate) fn breaker_open(name: &str) -> Result<BreakerHandle, Refusal> {
    SANDBOX.with(|s| {
        if s.borrow().breakers.contains_key(name) {
            Ok(BreakerHandle(name.to_owned()))
        } else {
            Err(Refusal::NotGranted(format!(
                "no breaker `{name}` is defined"
            )))
        }
    })
}

#[cfg(feature = "breakers")]
pub(crate) fn breaker_state(breaker: &BreakerHandle) -> crate::BreakerState {
    SANDBOX.with(|s| match s.borrow().breakers[&breaker.0].is_open() {
        true => crate::BreakerState::Open,
        false => crate::BreakerState::Closed,
    })
}

#[cfg(feature = "breakers")]
pub(crate) fn breaker_invoke(
    breaker: &BreakerHandle,
    effect: &str,
    payload: &[u8],
) -> Result<Vec<u8>, crate::BreakerError> {
    let open = SANDBOX.with(|s| s.borrow().breakers[&breaker.0].is_open());
    let record = |rejected| {
        SANDBOX.with(|s| {
            s.borrow_mut().breaker_calls.push(RecordedBreakerCall {
                breaker: breaker.0.clone(),
                effect: effect.to_owned(),
                rejected,
            })
        })
    };
    if open {
        record(true);
        return Err(crate::BreakerError::CircuitOpen {
            retry_after: std::time::Duration::ZERO,
        });
    }
    record(false);
    let result = invoke(effect, payload, None);
    SANDBOX.with(|s| {
        let mut s = s.borrow_mut();
        let breaker = s
            .breakers
            .get_mut(&breaker.0)
            .expect("an opened breaker is defined");
        breaker.count(matches!(result, Err(Error::Failed(_))));
    });
    result.map_err(crate::BreakerError::Effect)
}
