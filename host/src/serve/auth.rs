//! Who may use the service: bearer tokens with a role each, deny by
//! default, and failed attempts limited per client.
//!
//! Tokens are `ROLE:TOKEN` pairs: comma-separated in `ESCROW_TOKENS`, or a
//! line each in `[serve] tokens_file`. The service keeps the sha256 of each
//! token, never the token, so neither a log nor a dump of it shows one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable of tokens: `operator:…,viewer:…`.
pub const TOKENS_VAR: &str = "ESCROW_TOKENS";

/// Failed attempts a client may make in [`FAILURE_WINDOW`]; past them it is
/// answered 429 until the window ends.
pub const MAX_FAILED_ATTEMPTS: u32 = 10;

/// The window in which failed attempts are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The most clients whose failed attempts are counted at once; past it,
/// those whose window ended are forgotten, then the oldest.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: runs, intents, stats, breakers, plugins, metrics.
    Viewer,
    /// Also runs plugins, retries, approves and rejects, opens and resets
    /// breakers, reloads plugins.
    Operator,
}

impl Role {
    /// `viewer` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// The tokens the service accepts, by the sha256 of each.
#[derive(Default)]
pub struct Tokens {
    roles: HashMap<[u8; 32], Role>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.roles.len())
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// How a request's credentials were judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A known token, with its role.
    Allowed(Role),
    /// No token, or an unknown one: 401.
    Unknown,
    /// Too many failed attempts from this client: 429.
    Limited,
}

impl Tokens {
    /// No token: every request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` with `role`.
    ///
    /// # Errors
    ///
    /// A token shorter than [`MIN_TOKEN_BYTES`] or with spaces, commas or
    /// control characters.
    pub fn add(&mut self, role: Role, token: &str) -> Result<&mut Self, String> {
        if token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "a {} token is {} bytes; at least {MIN_TOKEN_BYTES} are needed",
                role.as_str(),
                token.len()
            ));
        }
        if token
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c.is_control())
        {
            return Err(format!(
                "a {} token holds a space, a comma or a control character",
                role.as_str()
            ));
        }
        self.roles.insert(digest(token), role);
        Ok(self)
    }

    /// Accepts each `ROLE:TOKEN` of `pairs`, separated by commas or lines
    /// (blank lines and lines starting with `#` are skipped); `what` names
    /// their source in errors, which never show a token.
    ///
    /// # Errors
    ///
    /// An unknown role, a pair without `:`, or a bad token.
    pub fn parse(&mut self, what: &str, pairs: &str) -> Result<&mut Self, String> {
        for (i, pair) in pairs
            .split([',', '\n'])
            .map(str::trim)
            .enumerate()
            .filter(|(_, p)| !p.is_empty() && !p.starts_with('#'))
        {
            let at = |message: String| format!("{what}, entry {}: {message}", i + 1);
            let (role, token) = pair
                .split_once(':')
                .ok_or_else(|| at("give ROLE:TOKEN".into()))?;
            let role = match role.trim() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => return Err(at(format!("`{other}` is no role: viewer or operator"))),
            };
            self.add(role, token.trim()).map_err(at)?;
        }
        Ok(self)
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    /// Judges the token `presented` by `client` (when known) at `now`.
    pub fn judge(&self, presented: Option<&str>, client: Option<IpAddr>, now: Instant) -> Verdict {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = client
            && let Some((count, since)) = failures.get(&client)
            && now.duration_since(*since) < FAILURE_WINDOW
            && *count >= MAX_FAILED_ATTEMPTS
        {
            return Verdict::Limited;
        }
        if let Some(role) = presented.and_then(|t| self.roles.get(&digest(t))) {
            return Verdict::Allowed(*role);
        }
        if let Some(client) = client {
            if failures.len() >= MAX_TRACKED_CLIENTS && !failures.contains_key(&client) {
                failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
                if failures.len() >= MAX_TRACKED_CLIENTS
                    && let Some(oldest) = failures
                        .iter()
                        .min_by_key(|(_, (_, s))| *s)
                        .map(|(c, _)| *c)
                {
                    failures.remove(&oldest);
                }
            }
            let entry = failures.entry(client).or_insert((0, now));
            if now.duration_since(entry.1) >= FAILURE_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
        Verdict::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "operator-token-0123456789";
    const VIEWER: &str = "viewer-token-0123456789";

    fn tokens() -> Tokens {
        let mut tokens = Tokens::new();
        tokens
            .parse(
                "ESCROW_TOKENS",
                &format!("operator:{OPERATOR}, viewer:{VIEWER}"),
            )
            .unwrap();
        tokens
    }

    #[test]
    fn each_token_has_its_role_and_others_are_unknown() {
        let tokens = tokens();
        let now = Instant::now();
        assert_eq!(
            tokens.judge(Some(OPERATOR), None, now),
            Verdict::Allowed(Role::Operator)
        );
        assert_eq!(
            tokens.judge(Some(VIEWER), None, now),
            Verdict::Allowed(Role::Viewer)
        );
        assert_eq!(tokens.judge(Some("nope"), None, now), Verdict::Unknown);
        assert_eq!(tokens.judge(None, None, now), Verdict::Unknown);
    }

    #[test]
    fn a_client_that_fails_too_often_is_limited_until_its_window_ends() {
        let tokens = tokens();
        let client: IpAddr = "127.0.0.7".parse().unwrap();
        let now = Instant::now();
        for _ in 0..MAX_FAILED_ATTEMPTS {
            assert_eq!(
                tokens.judge(Some("guess"), Some(client), now),
                Verdict::Unknown
            );
        }
        assert_eq!(
            tokens.judge(Some(OPERATOR), Some(client), now),
            Verdict::Limited
        );
        let other: IpAddr = "127.0.0.8".parse().unwrap();
        assert_eq!(
            tokens.judge(Some(VIEWER), Some(other), now),
            Verdict::Allowed(Role::Viewer)
        );
        let later = now + FAILURE_WINDOW;
        assert_eq!(
            tokens.judge(Some(OPERATOR), Some(client), later),
            Verdict::Allowed(Role::Operator)
        );
    }

    #[test]
    fn bad_pairs_are_refused_without_showing_the_token() {
        for (pairs, expected) in [
            ("admin:0123456789abcdef", "`admin` is no role"),
            ("viewer:short", "at least 16"),
            ("viewer", "give ROLE:TOKEN"),
        ] {
            let error = Tokens::new().parse("tokens", pairs).unwrap_err();
            assert!(error.contains(expected), "{error}");
            assert!(
                !error.contains("0123456789abcdef") && !error.contains("short"),
                "{error}"
            );
        }
    }
}
