//! What the queue sinks share: their URLs (`SCHEME://HOST:PORT/NAME?k=v`)
//! and the fields that carry an intent's identity next to its payload.

use std::fmt;

use crate::outcome::Intent;

/// A queue sink's URL: a server, and the subject or stream on it.
pub(crate) struct QueueUrl {
    url: url::Url,
    /// The subject or stream (the path, without its leading `/`).
    pub name: String,
    /// The query's pairs, in order.
    pub query: Vec<(String, String)>,
}

impl QueueUrl {
    /// Parses `SCHEME://[USER:PASSWORD@]HOST[:PORT]/NAME[?k=v&...]`;
    /// `name_is` says what NAME is, for the message of a URL without it.
    pub fn parse(
        text: &str,
        scheme: &str,
        default_port: u16,
        name_is: &str,
    ) -> Result<Self, String> {
        let form = format!("{scheme}://HOST:PORT/{name_is}");
        let url = url::Url::parse(text).map_err(|e| {
            format!(
                "`{}` is not a URL ({e}); use {form}",
                crate::text::printable(text, false)
            )
        })?;
        if url.scheme() != scheme || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "`{}` is not of the form {form}",
                Self::hidden(&url)
            ));
        }
        let name = percent_decoded(url.path().trim_start_matches('/'))?;
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "`{}` names no {}; use {form}",
                Self::hidden(&url),
                name_is.to_lowercase()
            ));
        }
        let query = url.query_pairs().into_owned().collect();
        let mut url = url;
        if url.port().is_none() {
            url.set_port(Some(default_port))
                .expect("a URL with a host takes a port");
        }
        Ok(Self { url, name, query })
    }

    /// `HOST:PORT`.
    pub fn address(&self) -> String {
        let host = self.url.host_str().expect("checked by parse");
        let port = self.url.port().expect("set by parse");
        format!("{host}:{port}")
    }

    /// The user name and password, if the URL has them.
    pub fn credentials(&self) -> Option<(&str, Option<&str>)> {
        (!self.url.username().is_empty()).then(|| (self.url.username(), self.url.password()))
    }

    fn hidden(url: &url::Url) -> String {
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
}

/// The URL as written, with its password hidden: for messages.
impl fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::hidden(&self.url))
    }
}

fn percent_decoded(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|name| name.into_owned())
        .map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// The fields that say which intent a message is, by name: `run_id`,
/// `idempotency_key`, `effect`, `plugin`, `seq`, and `fences` (JSON) when
/// the run held locks.
pub(crate) fn fields(intent: &Intent, idempotency_key: &str) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("run_id", intent.run_id.to_string()),
        ("idempotency_key", idempotency_key.to_owned()),
        ("effect", intent.effect.clone()),
        ("plugin", intent.plugin.to_string()),
        ("seq", intent.seq.to_string()),
    ];
    if !intent.fences.is_empty() {
        fields.push((
            "fences",
            crate::outcome::fences_value(&intent.fences).to_string(),
        ));
    }
    fields
}
