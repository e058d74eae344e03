//! Grants: what a plugin may request. Deny by default.
//!
//! Grants say what a plugin *may* do; they never say how the host does it
//! (that is the embedder's choice of sinks and backends). An empty
//! [`Grants`] lets a plugin compute and nothing else: every effect request is
//! refused `not-granted`, and it gets no filesystem, network, environment
//! variables or arguments.

use std::path::PathBuf;
use std::sync::Arc;

use crate::patterns::{NameError, Patterns};

/// What a plugin may request during a run.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    effects: Patterns,
    /// `granted by <pattern>` for each effect pattern, made once so that
    /// settling a committed intent allocates no message.
    effect_rules: Vec<Arc<str>>,
    locks: Patterns,
    breakers: Patterns,
    dirs: Vec<DirGrant>,
    env: Vec<(String, String)>,
}

/// A host directory the guest may see, preopened through cap-std: nothing
/// outside it can be named from inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (`/data`).
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

impl Grants {
    /// No grants at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows requesting effects whose names match `patterns` (`email.*`).
    /// Replaces any effect patterns granted before.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed pattern.
    pub fn effects<I, S>(mut self, patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.effects = Patterns::effects(patterns)?;
        self.effect_rules = self
            .effects
            .patterns()
            .iter()
            .map(|p| format!("granted by {p}").into())
            .collect();
        Ok(self)
    }

    /// Allows taking locks on keys matching `patterns` (`account:*`).
    /// Replaces any lock patterns granted before.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed pattern.
    pub fn locks<I, S>(mut self, patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.locks = Patterns::lock_keys(patterns)?;
        Ok(self)
    }

    /// The granted lock pattern that covers `key`, if any.
    pub fn lock_grant(&self, key: &str) -> Option<&str> {
        self.locks.first_match(key)
    }

    /// The granted lock-key patterns.
    pub fn lock_patterns(&self) -> &[String] {
        self.locks.patterns()
    }

    /// Allows opening the breakers whose names match `patterns`
    /// (`payments`, `upstream.*`). Replaces any breaker patterns granted
    /// before.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for a malformed pattern.
    pub fn breakers<I, S>(mut self, patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.breakers = Patterns::effects(patterns)?;
        Ok(self)
    }

    /// The granted breaker pattern that covers `name`, if any.
    pub fn breaker_grant(&self, name: &str) -> Option<&str> {
        self.breakers.first_match(name)
    }

    /// The granted breaker patterns.
    pub fn breaker_patterns(&self) -> &[String] {
        self.breakers.patterns()
    }

    /// Shows the host directory `host` to the guest at `guest`, read-only
    /// unless `writable`.
    pub fn dir(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<String>,
        writable: bool,
    ) -> Self {
        self.dirs.push(DirGrant {
            host: host.into(),
            guest: guest.into(),
            writable,
        });
        self
    }

    /// Sets the environment variable `key` to `value` for the guest.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The granted effect pattern that covers `effect`, if any.
    pub fn effect_grant(&self, effect: &str) -> Option<&str> {
        self.effects.first_match(effect)
    }

    /// The index, in [`Grants::effect_patterns`], of the pattern that covers
    /// `effect`.
    pub(crate) fn effect_grant_index(&self, effect: &str) -> Option<usize> {
        self.effects.position(effect)
    }

    /// The rule of an intent granted by the pattern at `index`.
    pub(crate) fn effect_rule(&self, index: usize) -> &Arc<str> {
        &self.effect_rules[index]
    }

    /// The granted effect patterns.
    pub fn effect_patterns(&self) -> &[String] {
        self.effects.patterns()
    }

    /// The granted directories.
    pub fn dirs(&self) -> &[DirGrant] {
        &self.dirs
    }

    /// The granted environment variables.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_granted_by_default() {
        let grants = Grants::new();
        assert_eq!(grants.effect_grant("email.send"), None);
        assert!(grants.dirs().is_empty());
        assert_eq!(grants.lock_grant("account:1"), None);
        assert!(grants.env_vars().is_empty());
    }

    #[test]
    fn an_effect_is_granted_by_the_first_pattern_that_matches() {
        let grants = Grants::new().effects(["orders.*", "email.send"]).unwrap();
        assert_eq!(grants.effect_grant("orders.save"), Some("orders.*"));
        assert_eq!(grants.effect_grant("email.send"), Some("email.send"));
        assert_eq!(grants.effect_grant("email.sendx"), None);
    }
}
