//! `wasi:http`, linked so that components whose toolchain imports it (every
//! StarlingMonkey component, from componentize-js) run, and refused: an
//! outgoing request never leaves the host. A plugin's effects go through
//! escrow's interfaces, where grants and policies apply.

use std::future::Future;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The hooks of every run's `wasi:http`: each outgoing request is answered
/// with `HTTP-request-denied` before any connection is made.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DenyOutgoing;

type ResponseIo = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: ResponseIo,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, ResponseIo), HttpError>> + Send>
    {
        tracing::debug!(
            method = %request.method(),
            uri = %request.uri(),
            "outgoing HTTP request refused: effects go through escrow's interfaces"
        );
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}
