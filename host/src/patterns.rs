//! Effect names and the patterns that match them (`email.*`).
//!
//! Grants, `block` policies and sink routes all name effects by pattern. A
//! pattern is an effect name in which `*` matches any run of characters,
//! dots included: `email.*` matches `email.send` and `email.batch.send`, and
//! `*` alone matches every effect.

use wildmatch::WildMatch;

use crate::limits::MAX_EFFECT_NAME_BYTES;

/// A pattern or an effect name that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name or pattern is empty.
    #[error("effect name is empty")]
    Empty,
    /// The name or pattern is longer than [`MAX_EFFECT_NAME_BYTES`].
    #[error("effect name is {0} bytes long; the limit is {MAX_EFFECT_NAME_BYTES}")]
    TooLong(usize),
    /// A character outside `[a-zA-Z0-9._-]` (and `*` in patterns).
    #[error("effect name `{name}` has {ch:?}; use letters, digits, `.`, `_` and `-`{star}", star = if *.pattern { " (and `*` in patterns)" } else { "" })]
    BadChar {
        /// The offending name or pattern.
        name: String,
        /// The first character that is not allowed.
        ch: char,
        /// Whether a pattern (where `*` is allowed) was being checked.
        pattern: bool,
    },
}

/// Checks that `name` is a well-formed effect name: 1 to
/// [`MAX_EFFECT_NAME_BYTES`] bytes of `[a-zA-Z0-9._-]`.
///
/// # Errors
///
/// Returns the first rule the name breaks.
pub fn check_effect_name(name: &str) -> Result<(), NameError> {
    check(name, false)
}

fn check(name: &str, pattern: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_EFFECT_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (pattern && c == '*')
    };
    match name.chars().find(|c| !allowed(*c)) {
        Some(ch) => Err(NameError::BadChar {
            name: name.to_owned(),
            ch,
            pattern,
        }),
        None => Ok(()),
    }
}

/// A list of effect patterns, compiled once and matched per request, in
/// order. The default list is empty and matches nothing.
#[derive(Debug, Clone, Default)]
pub struct EffectPatterns {
    patterns: Vec<String>,
    matchers: Vec<WildMatch>,
}

impl EffectPatterns {
    /// Compiles `patterns`.
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for the first pattern that is not an effect name
    /// with optional `*`s.
    pub fn new<I, S>(patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        // `check` admits `*` and nothing else the matcher treats specially
        // (its single-character wildcard `?` is not an effect-name character).
        patterns.iter().try_for_each(|p| check(p, true))?;
        let matchers = patterns.iter().map(|p| WildMatch::new(p)).collect();
        Ok(Self { patterns, matchers })
    }

    /// The first pattern (in the order given) that matches `effect`.
    pub fn first_match(&self, effect: &str) -> Option<&str> {
        self.position(effect).map(|i| self.patterns[i].as_str())
    }

    /// The index of the first pattern (in the order given) that matches
    /// `effect`.
    pub fn position(&self, effect: &str) -> Option<usize> {
        self.matchers.iter().position(|m| m.matches(effect))
    }

    /// Whether any pattern matches `effect`.
    pub fn is_match(&self, effect: &str) -> bool {
        self.position(effect).is_some()
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the list has no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl PartialEq for EffectPatterns {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_across_dots() {
        let p = EffectPatterns::new(["email.*"]).unwrap();
        assert!(p.is_match("email.send"));
        assert!(p.is_match("email.batch.send"));
        assert!(!p.is_match("emails.send"));
        assert!(!p.is_match("payments.charge"));
    }

    #[test]
    fn a_lone_star_matches_every_effect() {
        assert!(EffectPatterns::new(["*"]).unwrap().is_match("a.b-c_d"));
    }

    #[test]
    fn an_empty_set_matches_nothing() {
        assert!(!EffectPatterns::default().is_match("email.send"));
    }

    #[test]
    fn the_first_matching_pattern_in_order_is_reported() {
        let p = EffectPatterns::new(["orders.save", "*", "orders.*"]).unwrap();
        assert_eq!(p.first_match("orders.save"), Some("orders.save"));
        assert_eq!(p.first_match("orders.load"), Some("*"));
    }

    #[test]
    fn glob_metacharacters_other_than_star_are_rejected() {
        for bad in ["email.{a,b}", "email.[ab]", "email.?", "a b", "é"] {
            assert!(
                matches!(EffectPatterns::new([bad]), Err(NameError::BadChar { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn effect_names_are_checked_for_length_and_characters() {
        assert_eq!(check_effect_name(""), Err(NameError::Empty));
        assert_eq!(
            check_effect_name(&"a".repeat(MAX_EFFECT_NAME_BYTES + 1)),
            Err(NameError::TooLong(MAX_EFFECT_NAME_BYTES + 1))
        );
        assert!(matches!(
            check_effect_name("email.*"),
            Err(NameError::BadChar { ch: '*', .. })
        ));
        assert_eq!(check_effect_name("payments.charge-v2_x"), Ok(()));
    }
}
