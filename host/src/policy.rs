//! Policies: what a scope does with the effects requested inside it.
//!
//! A policy is asked once per request, when the guest makes it, and its
//! [`Decision`] is final: `Commit` intents are dispatched if the run succeeds,
//! `Drop` and `Block` intents are kept for inspection and never dispatched,
//! and `Forbid` refuses the request and fails the run.
//!
//! The built-in policies are [`Commit`], [`DropAll`], [`AssertNone`] and
//! [`Block`]; an embedder writes its own by implementing [`Policy`].

use std::borrow::Cow;
use std::fmt;

use crate::patterns::{NameError, Patterns};

/// What happens to one requested effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Dispatch it if the run (and every enclosing scope) commits.
    Commit,
    /// Keep it for inspection; never dispatch it. The string names the rule.
    Drop(Cow<'static, str>),
    /// Keep it visible as blocked; never dispatch it. The string names the rule.
    Block(Cow<'static, str>),
    /// Refuse it with `forbidden` and fail the run, even if the guest handles
    /// the refusal. The string names the rule.
    Forbid(Cow<'static, str>),
}

impl Decision {
    /// Whether the effect may still be dispatched.
    pub fn is_commit(&self) -> bool {
        matches!(self, Decision::Commit)
    }
}

/// Decides the fate of each effect a scope's guest requests.
///
/// Policies see a request only after the grants allowed it: a policy can
/// narrow what a plugin may do, never widen it.
///
/// # Examples
///
/// ```
/// use std::borrow::Cow;
/// use escrow_host::policy::{Decision, Policy};
///
/// /// Hold back charges above 1000, let everything else through.
/// #[derive(Debug)]
/// struct CapCharges;
///
/// impl Policy for CapCharges {
///     fn decide(&self, effect: &str, payload: &[u8]) -> Decision {
///         let amount = serde_json::from_slice::<serde_json::Value>(payload)
///             .ok()
///             .and_then(|v| v["amount"].as_u64())
///             .unwrap_or(0);
///         if effect == "payments.charge" && amount > 1000 {
///             Decision::Block(Cow::Borrowed("charges above 1000 need review"))
///         } else {
///             Decision::Commit
///         }
///     }
/// }
///
/// let policy = CapCharges;
/// assert!(policy.decide("payments.charge", br#"{"amount": 5}"#).is_commit());
/// assert!(!policy.decide("payments.charge", br#"{"amount": 5000}"#).is_commit());
/// ```
pub trait Policy: fmt::Debug + Send + Sync + 'static {
    /// Decides what happens to a request for `effect` with `payload`.
    fn decide(&self, effect: &str, payload: &[u8]) -> Decision;
}

/// Dispatch every intent of a successful run, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Commit;

impl Policy for Commit {
    fn decide(&self, _: &str, _: &[u8]) -> Decision {
        Decision::Commit
    }
}

/// Record every intent and dispatch none: a dry run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DropAll;

impl Policy for DropAll {
    fn decide(&self, _: &str, _: &[u8]) -> Decision {
        Decision::Drop(Cow::Borrowed("policy drop"))
    }
}

/// Refuse every effect with `forbidden` and fail the run: for code that must
/// be pure.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssertNone;

impl Policy for AssertNone {
    fn decide(&self, _: &str, _: &[u8]) -> Decision {
        Decision::Forbid(Cow::Borrowed("policy assert-none"))
    }
}

/// Keep intents whose effect matches a pattern visible but never dispatch
/// them; commit the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Block(Patterns);

impl Block {
    /// Blocks effects matching any of `patterns` (`email.*`).
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed pattern.
    pub fn new<I, S>(patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Patterns::effects(patterns).map(Self)
    }

    /// The blocked patterns.
    pub fn patterns(&self) -> &Patterns {
        &self.0
    }
}

impl Policy for Block {
    fn decide(&self, effect: &str, _: &[u8]) -> Decision {
        match self.0.first_match(effect) {
            Some(pattern) => Decision::Block(Cow::Owned(format!("block {pattern}"))),
            None => Decision::Commit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_the_pattern_that_matched() {
        let block = Block::new(["email.*", "sms.send"]).unwrap();
        assert_eq!(
            block.decide("email.send", b""),
            Decision::Block("block email.*".into())
        );
        assert_eq!(block.decide("orders.save", b""), Decision::Commit);
    }
}
