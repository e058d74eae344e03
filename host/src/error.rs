//! The library's error type: what can go wrong on the host's side.
//!
//! A guest that fails (returns `err`, traps, exceeds a limit) is not an
//! [`Error`]: that run has an [`Outcome`](crate::outcome::Outcome) whose result says
//! why. An `Error` means the host could not load a plugin or start a run.

use std::path::PathBuf;

/// What went wrong loading a plugin or starting a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The plugin file could not be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("{0} is not a WebAssembly file (it does not start with `\\0asm`)")]
    NotWasm(String),
    /// The bytes are a core module, not a component.
    #[error(
        "{0} is a core WebAssembly module, not a component: build the plugin with \
         `cargo build --target wasm32-wasip2` (a `cdylib` crate using escrow-guest)"
    )]
    CoreModule(String),
    /// The component is malformed or uses features the host does not enable.
    #[error("{what} is not a valid component: {error:#}")]
    Compile {
        /// Which plugin.
        what: String,
        /// What the compiler said.
        error: wasmtime::Error,
    },
    /// A typed effect the component imports cannot be one.
    #[error("{what} cannot run here: {message}")]
    TypedEffect {
        /// The component.
        what: String,
        /// Which function, and why.
        message: String,
    },
    /// The component imports something the host does not provide, or lacks
    /// the export the host calls.
    #[error("{what} cannot run here: {error:#}")]
    Link {
        /// Which plugin.
        what: String,
        /// What the linker said.
        error: wasmtime::Error,
    },
    /// A granted directory could not be opened.
    #[error("cannot grant directory `{}`: {error:#}", path.display())]
    Grant {
        /// The host directory.
        path: PathBuf,
        /// Why it could not be opened.
        error: wasmtime::Error,
    },
    /// The run asked for more than the host was built to allow.
    #[error("{0}")]
    Limits(String),
    /// The run could not be started (the host is out of resources).
    #[error("cannot start the run: {0:#}")]
    Instantiate(wasmtime::Error),
    /// A blocking call was made from inside an async runtime.
    #[error("`run_blocking` was called from inside an async runtime; use `run(..).await` there")]
    BlockingInAsync,
    /// The compilation cache directory could not be used.
    #[error("cannot use `{}` as the compilation cache: {error:#}", path.display())]
    Cache {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: wasmtime::Error,
    },
    /// The input could not be encoded as JSON.
    #[error("cannot encode the input as JSON: {0}")]
    Input(String),
    /// Approval was asked for where it cannot hold runs (no outbox, or a
    /// run that leaves its intents to the embedder).
    #[error("approval: {0}")]
    Approval(String),
    /// The outbox could not be read or written.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The run asked for delivery by a worker, and the host has no outbox.
    #[error("`Dispatch::Later` needs a host with an outbox (`HostBuilder::outbox`)")]
    NoOutbox,
    /// The host could not be built.
    #[error("cannot build the host: {0:#}")]
    Engine(wasmtime::Error),
}

/// Why an embedder's sink or handler failed. The message is what the
/// outcome reports, and what the guest sees of a failed handler.
#[derive(Debug)]
pub struct CallError(Box<dyn std::error::Error + Send + Sync>);

impl CallError {
    /// Wraps any error (or a `String` / `&str` message).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<std::io::Error> for CallError {
    fn from(error: std::io::Error) -> Self {
        Self::new(error)
    }
}

impl From<String> for CallError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for CallError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}
