//! Names the guest chooses (effect names, lock keys) and the patterns that
//! match them (`email.*`, `account:*`).
//!
//! Grants, `block` policies and sink routes name effects by pattern; lock
//! grants name keys by pattern. A pattern is a name in which `*` matches any
//! run of characters, separators included: `email.*` matches `email.send`
//! and `email.batch.send`, and `*` alone matches everything.

use wildmatch::WildMatch;

use crate::limits::{MAX_EFFECT_NAME_BYTES, MAX_LOCK_KEY_BYTES};

/// What kind of name is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// An effect name: at most [`MAX_EFFECT_NAME_BYTES`] of `[a-zA-Z0-9._-]`.
    Effect,
    /// A lock key: at most [`MAX_LOCK_KEY_BYTES`] of `[a-zA-Z0-9._:/@-]`.
    LockKey,
}

impl NameKind {
    fn label(self) -> &'static str {
        match self {
            NameKind::Effect => "effect name",
            NameKind::LockKey => "lock key",
        }
    }

    fn max_bytes(self) -> usize {
        match self {
            NameKind::Effect => MAX_EFFECT_NAME_BYTES,
            NameKind::LockKey => MAX_LOCK_KEY_BYTES,
        }
    }

    fn allows(self, b: u8) -> bool {
        self.table()[usize::from(b)]
    }

    fn table(self) -> &'static [bool; 256] {
        match self {
            NameKind::Effect => &EFFECT_BYTES,
            NameKind::LockKey => &LOCK_KEY_BYTES,
        }
    }

    fn allowed_text(self) -> &'static str {
        match self {
            NameKind::Effect => "letters, digits, `.`, `_` and `-`",
            NameKind::LockKey => "letters, digits, `.`, `_`, `-`, `:`, `/` and `@`",
        }
    }
}

/// The bytes an effect name may hold, as a table: checking a name is on
/// every request's path.
static EFFECT_BYTES: [bool; 256] = byte_table(b"._-");
/// The bytes a lock key may hold.
static LOCK_KEY_BYTES: [bool; 256] = byte_table(b"._-:/@");

const fn byte_table(punctuation: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
}

/// A name or pattern that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name or pattern is empty.
    #[error("{} is empty", .0.label())]
    Empty(NameKind),
    /// The name or pattern is longer than its kind allows.
    #[error("{} is {} bytes long; the limit is {}", .0.label(), .1, .0.max_bytes())]
    TooLong(NameKind, usize),
    /// A character its kind does not allow (`*` is allowed in patterns).
    /// The name is shown escaped, so the message is one line whatever it
    /// holds.
    #[error(
        "{} `{}` has {ch:?}; use {}{}",
        kind.label(),
        crate::text::printable(name, false),
        kind.allowed_text(),
        if *pattern { " (and `*` in patterns)" } else { "" }
    )]
    BadChar {
        /// What was checked.
        kind: NameKind,
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
    check(NameKind::Effect, name, false)
}

/// Checks that `key` is a well-formed lock key: 1 to [`MAX_LOCK_KEY_BYTES`]
/// bytes of `[a-zA-Z0-9._:/@-]`.
///
/// # Errors
///
/// Returns the first rule the key breaks.
pub fn check_lock_key(key: &str) -> Result<(), NameError> {
    check(NameKind::LockKey, key, false)
}

fn check(kind: NameKind, name: &str, pattern: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty(kind));
    }
    if name.len() > kind.max_bytes() {
        return Err(NameError::TooLong(kind, name.len()));
    }
    let allowed = |b: u8| kind.allows(b) || (pattern && b == b'*');
    if name.bytes().all(allowed) {
        return Ok(());
    }
    let ch = name
        .chars()
        .find(|c| !c.is_ascii() || !allowed(*c as u8))
        .expect("a byte outside the allowed set");
    Err(NameError::BadChar {
        kind,
        name: name.to_owned(),
        ch,
        pattern,
    })
}

/// A list of patterns, compiled once and matched in order. The default list
/// is empty and matches nothing.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    patterns: Vec<String>,
    matchers: Vec<Matcher>,
}

/// One compiled pattern. Most patterns are a name or a prefix and a final
/// `*` (`email.send`, `email.*`, `*`): those are compared directly, which
/// is several times cheaper than the general matcher on every request.
#[derive(Debug, Clone)]
enum Matcher {
    /// No `*`: the name itself.
    Exact(String),
    /// One `*`, at the end: every name that starts with the rest.
    Prefix(String),
    /// Any other placement of `*`s.
    Wild(WildMatch),
}

impl Matcher {
    fn new(pattern: &str) -> Self {
        match pattern.find('*') {
            None => Matcher::Exact(pattern.to_owned()),
            Some(star) if star == pattern.len() - 1 => Matcher::Prefix(pattern[..star].to_owned()),
            Some(_) => Matcher::Wild(WildMatch::new(pattern)),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Exact(exact) => name == exact,
            Matcher::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Matcher::Wild(wild) => wild.matches(name),
        }
    }
}

impl Patterns {
    /// Compiles effect-name patterns (`email.*`).
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for the first pattern that is not an effect name
    /// with optional `*`s.
    pub fn effects<I, S>(patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(NameKind::Effect, patterns)
    }

    /// Compiles lock-key patterns (`account:*`).
    ///
    /// # Errors
    ///
    /// Returns [`NameError`] for the first pattern that is not a lock key
    /// with optional `*`s.
    pub fn lock_keys<I, S>(patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(NameKind::LockKey, patterns)
    }

    fn new<I, S>(kind: NameKind, patterns: I) -> Result<Self, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        // `check` admits `*` and nothing else the matcher treats specially
        // (its single-character wildcard `?` is not a name character).
        patterns.iter().try_for_each(|p| check(kind, p, true))?;
        let matchers = patterns.iter().map(|p| Matcher::new(p)).collect();
        Ok(Self { patterns, matchers })
    }

    /// The first pattern (in the order given) that matches `name`.
    pub fn first_match(&self, name: &str) -> Option<&str> {
        self.position(name).map(|i| self.patterns[i].as_str())
    }

    /// The index of the first pattern (in the order given) that matches
    /// `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.matchers.iter().position(|m| m.matches(name))
    }

    /// Whether any pattern matches `name`.
    pub fn is_match(&self, name: &str) -> bool {
        self.position(name).is_some()
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

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_across_dots() {
        let p = Patterns::effects(["email.*"]).unwrap();
        assert!(p.is_match("email.send"));
        assert!(p.is_match("email.batch.send"));
        assert!(!p.is_match("emails.send"));
        assert!(!p.is_match("payments.charge"));
    }

    #[test]
    fn a_lone_star_matches_every_name() {
        assert!(Patterns::effects(["*"]).unwrap().is_match("a.b-c_d"));
        assert!(
            Patterns::lock_keys(["*"])
                .unwrap()
                .is_match("account:7/eu@x")
        );
    }

    #[test]
    fn names_prefixes_and_other_stars_match_as_the_general_matcher_does() {
        let patterns = [
            "email.send",
            "email.*",
            "*",
            "*.send",
            "e*l.*d",
            "email.**",
            "**",
            "a*b*c",
        ];
        let names = [
            "email.send",
            "email.",
            "email",
            "emails.send",
            "email.batch.send",
            "x.send",
            "abc",
            "a.b.c",
            "ac",
            "e.d",
            "send",
        ];
        for pattern in patterns {
            let general = WildMatch::new(pattern);
            let compiled = Matcher::new(pattern);
            for name in names {
                assert_eq!(
                    compiled.matches(name),
                    general.matches(name),
                    "`{pattern}` against `{name}`"
                );
            }
        }
    }

    #[test]
    fn an_empty_list_matches_nothing() {
        assert!(!Patterns::default().is_match("email.send"));
    }

    #[test]
    fn the_first_matching_pattern_in_order_is_reported() {
        let p = Patterns::effects(["orders.save", "*", "orders.*"]).unwrap();
        assert_eq!(p.first_match("orders.save"), Some("orders.save"));
        assert_eq!(p.first_match("orders.load"), Some("*"));
    }

    #[test]
    fn glob_metacharacters_other_than_star_are_rejected() {
        for bad in ["email.{a,b}", "email.[ab]", "email.?", "a b", "é"] {
            assert!(
                matches!(Patterns::effects([bad]), Err(NameError::BadChar { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn effect_names_are_checked_for_length_and_characters() {
        assert_eq!(
            check_effect_name(""),
            Err(NameError::Empty(NameKind::Effect))
        );
        assert_eq!(
            check_effect_name(&"a".repeat(MAX_EFFECT_NAME_BYTES + 1)),
            Err(NameError::TooLong(
                NameKind::Effect,
                MAX_EFFECT_NAME_BYTES + 1
            ))
        );
        assert!(matches!(
            check_effect_name("email.*"),
            Err(NameError::BadChar { ch: '*', .. })
        ));
        assert!(matches!(
            check_effect_name("account:7"),
            Err(NameError::BadChar { ch: ':', .. })
        ));
        assert_eq!(check_effect_name("payments.charge-v2_x"), Ok(()));
    }

    #[test]
    fn lock_keys_allow_separators_effect_names_do_not() {
        assert_eq!(check_lock_key("account:eu/7@bank"), Ok(()));
        assert_eq!(
            check_lock_key(&"k".repeat(MAX_LOCK_KEY_BYTES + 1)),
            Err(NameError::TooLong(
                NameKind::LockKey,
                MAX_LOCK_KEY_BYTES + 1
            ))
        );
        let error = check_lock_key("account 7").unwrap_err().to_string();
        assert!(error.starts_with("lock key `account 7` has ' '"), "{error}");
    }

    #[test]
    fn a_name_with_a_line_break_is_refused_in_one_line_that_shows_it_escaped() {
        let error = check_lock_key("a\nb").unwrap_err().to_string();
        assert!(error.starts_with("lock key `a\\nb` has '\\n'"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
}
