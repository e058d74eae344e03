//! Console sessions: a login with a token opens one, held in a cookie that
//! scripts cannot read and other sites do not send (`HttpOnly`,
//! `SameSite=Strict`), with a token of its own that every form carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use super::auth::Role;

/// The session cookie.
pub(crate) const COOKIE: &str = "escrow_session";

/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept at once; past it, the oldest is closed.
pub const MAX_SESSIONS: usize = 10_000;

/// An open session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub role: Role,
    /// What every form of the session carries back (`csrf`).
    pub csrf: String,
    opened: Instant,
}

/// The open sessions, by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn random() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}

impl Sessions {
    /// Opens a session with `role`; returns its id.
    pub(crate) fn open(&self, role: Role, now: Instant) -> String {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| now.duration_since(s.opened) < SESSION_LIFETIME);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        let id = random();
        open.insert(
            id.clone(),
            Session {
                role,
                csrf: random(),
                opened: now,
            },
        );
        id
    }

    /// The session whose id the request's cookie holds, if open.
    pub(crate) fn of(&self, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let id = cookie(headers)?;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(id)
            .filter(|s| now.duration_since(s.opened) < SESSION_LIFETIME)
            .cloned()
    }

    /// Closes the request's session.
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
    }
}

/// The session id of the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` of session `id` for pages under `path`.
pub(crate) fn set_cookie(id: &str, path: &str) -> String {
    format!(
        "{COOKIE}={id}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` that ends the session's cookie.
pub(crate) fn clear_cookie(path: &str) -> String {
    format!("{COOKIE}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends_or_is_closed() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.open(Role::Viewer, now);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("theme=dark; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(sessions.of(&headers, now).unwrap().role, Role::Viewer);
        assert!(sessions.of(&headers, now + SESSION_LIFETIME).is_none());
        sessions.close(&headers);
        assert!(sessions.of(&headers, now).is_none());
    }
}
