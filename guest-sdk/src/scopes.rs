//! Nested scopes (savepoints): a region whose intents are kept only if it
//! commits.

#[cfg(feature = "scopes")]
use crate::error::{Error, Refusal};
#[cfg(feature = "scopes")]
use crate::sys;

/// The rules of a nested scope. A scope can only narrow what encloses it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ScopePolicy {
    /// The enclosing rules apply unchanged.
    #[default]
    Inherit,
    /// Intents recorded inside are kept for inspection, never dispatched.
    Drop,
    /// Any effect requested inside is refused and fails the run.
    AssertNone,
    /// Intents whose effect matches a pattern (`email.*`) are never
    /// dispatched.
    Block(Vec<String>),
}

#[cfg(feature = "scopes")]
/// An open nested scope. Intents recorded while it is the innermost open
/// scope belong to it.
///
/// End it with [`commit`](Scope::commit) or [`rollback`](Scope::rollback);
/// dropping it unfinished rolls it back.
#[derive(Debug)]
#[must_use = "a scope that is dropped at once rolls back at once"]
pub struct Scope(sys::ScopeHandle);

#[cfg(feature = "scopes")]
impl Scope {
    /// Opens a scope inside the innermost open one.
    ///
    /// # Errors
    ///
    /// A [`Refusal::Limit`] when scopes would nest too deep, a
    /// [`Refusal::Invalid`] for a malformed block pattern.
    pub fn open(policy: ScopePolicy) -> Result<Self, Refusal> {
        sys::scope_open(&policy).map(Scope)
    }

    /// Ends the scope, keeping its intents: they now belong to the enclosing
    /// scope and are dispatched only if it commits too.
    pub fn commit(self) {
        sys::scope_commit(self.0);
    }

    /// Ends the scope and discards its intents.
    pub fn rollback(self) {
        sys::scope_rollback(self.0);
    }
}

#[cfg(feature = "scopes")]
/// Runs `body` in a nested scope that commits if it returns `Ok` and rolls
/// back if it returns `Err`.
///
/// # Errors
///
/// `body`'s error, or the refusal to open the scope.
///
/// # Examples
///
/// ```
/// # use escrow_guest::{defer, scope, Error};
/// # fn demo(vip: bool) -> Result<(), Error> {
/// let upgraded = scope(|| {
///     defer("seats.upgrade", &"12A")?;
///     if !vip { return Err(Error::msg("not a VIP")); }
///     Ok(())
/// });
/// // On `Err`, the upgrade intent is gone; the rest of the run goes on.
/// # let _ = upgraded; Ok(()) }
/// ```
pub fn scope<T, E: From<Error>>(body: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    scope_with(ScopePolicy::Inherit, body)
}

#[cfg(feature = "scopes")]
/// [`scope`] under a narrower policy, for a region that must stay pure
/// ([`ScopePolicy::AssertNone`]) or whose effects are only simulated
/// ([`ScopePolicy::Drop`]).
///
/// # Errors
///
/// `body`'s error, or the refusal to open the scope.
pub fn scope_with<T, E: From<Error>>(
    policy: ScopePolicy,
    body: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let scope = Scope::open(policy).map_err(|r| E::from(Error::Refused(r)))?;
    let result = body();
    match &result {
        Ok(_) => scope.commit(),
        Err(_) => scope.rollback(),
    }
    result
}
