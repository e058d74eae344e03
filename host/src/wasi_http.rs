//! `wasi:http`, linked so that components whose toolchain imports it (every
//! StarlingMonkey component, from componentize-js) run, and refused: an
//! outgoing request never leaves the host. A plugin's effects go through
//! escrow's interfaces, where grants and policies apply.

use std::future::Future;

use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks,
};

use crate::limits::{MAX_HTTP_BODY_CHUNK_BYTES, MAX_HTTP_FIELDS_BYTES};

/// The `wasi:http` context of a run: header sets bounded by
/// [`MAX_HTTP_FIELDS_BYTES`], so that a guest holding many of them (at most
/// [`MAX_RESOURCE_HANDLES`](crate::limits::MAX_RESOURCE_HANDLES)) cannot
/// make the host keep much.
pub(crate) fn context() -> WasiHttpCtx {
    let mut ctx = WasiHttpCtx::new();
    ctx.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
    ctx
}

/// The hooks of every run's `wasi:http`: each outgoing request is answered
/// with `HTTP-request-denied` before any connection is made, and a body
/// write is buffered up to [`MAX_HTTP_BODY_CHUNK_BYTES`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DenyOutgoing;

type ResponseIo = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for DenyOutgoing {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        MAX_HTTP_BODY_CHUNK_BYTES
    }

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
