//! A handler that makes an HTTP request to one fixed URL.

use super::{Call, Handler};
use crate::error::CallError;

/// Most bytes of a response body taken as the answer (16 MiB).
pub const MAX_HTTP_BODY_BYTES: usize = 16 << 20;

/// Bytes of an error response's body kept in the failure message.
const BODY_IN_MESSAGE_BYTES: usize = 1024;

/// Sends each call to one URL, fixed by the operator: the payload is the
/// request body, and a `2xx` response's body is the answer. Any other status
/// is a failure whose message carries the start of the body. The request
/// carries the effect's name in the `escrow-effect` header, the run id in
/// `escrow-run-id`, and the request's idempotency key in `idempotency-key`.
///
/// The URL is the allowlist: the guest chooses only the body.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
}

impl Http {
    /// A handler sending `method` requests to `url` with extra `headers`.
    ///
    /// # Errors
    ///
    /// When the method, URL or a header is malformed, or the URL is not
    /// `http` or `https`.
    pub fn new<'a>(
        method: &str,
        url: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{method}` is not an HTTP method"))?;
        let url = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
            map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            // The URL is the allowlist: do not follow redirects elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            client,
            method,
            url,
            headers: map,
        })
    }
}

#[async_trait::async_trait]
impl Handler for Http {
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let mut response = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header("escrow-effect", call.effect)
            .header("escrow-run-id", call.run_id.to_string())
            .header("idempotency-key", call.idempotency_key())
            .body(call.payload.to_vec())
            .send()
            .await
            .map_err(|e| CallError::new(format!("{} {}: {e}", self.method, self.url)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(CallError::new)? {
            if body.len() + chunk.len() > MAX_HTTP_BODY_BYTES {
                return Err(CallError::new(format!(
                    "{} {}: the response is larger than {MAX_HTTP_BODY_BYTES} bytes",
                    self.method, self.url
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(BODY_IN_MESSAGE_BYTES)])
                .into_owned();
            return Err(CallError::new(format!(
                "{} {}: {status}: {}",
                self.method,
                self.url,
                text.trim()
            )));
        }
        Ok(body)
    }
}
