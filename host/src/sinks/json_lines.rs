//! A sink that writes each committed intent as one line of JSON.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use super::Sink;
use crate::error::CallError;
use crate::outcome::Intent;

/// Writes each committed intent as a line of JSON:
/// `{"seq":1,"effect":"email.send","payload":{...}}`, with `"fences"` (the
/// locks held when it was recorded, and their fencing tokens) when there
/// were any.
///
/// A payload that is JSON is embedded as JSON; any other payload is written
/// as `"payload_base64"`. Each line is flushed before the next intent.
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLines {
    /// Writes to the process's standard output.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// Writes to any writer.
    pub fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Mutex::new(Box::new(out)),
        }
    }

    /// Appends to the file `name` inside `dir`, creating it if needed. The
    /// file is opened through cap-std, so `name` cannot leave `dir`.
    ///
    /// # Errors
    ///
    /// Fails if the file cannot be opened for appending.
    pub fn append_in(dir: &Dir, name: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = dir.open_with(name, OpenOptions::new().append(true).create(true))?;
        Ok(Self::to_writer(file.into_std()))
    }

    /// Appends to the file at `path`, creating it if needed.
    ///
    /// # Errors
    ///
    /// Fails if `path` has no file name, or its directory or the file cannot
    /// be opened.
    pub fn append_to(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{}` does not name a file", path.display()),
            )
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = Dir::open_ambient_dir(parent, ambient_authority())?;
        Self::append_in(&dir, name)
    }
}

/// The JSON line for one intent.
pub(crate) fn intent_line(intent: &Intent) -> serde_json::Value {
    let mut line = serde_json::json!({ "seq": intent.seq, "effect": intent.effect });
    match serde_json::from_slice::<serde_json::Value>(&intent.payload) {
        Ok(payload) => line["payload"] = payload,
        Err(_) => {
            line["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&intent.payload)
                .into();
        }
    }
    if !intent.fences.is_empty() {
        line["fences"] = intent
            .fences
            .iter()
            .map(|f| serde_json::json!({ "key": f.key, "token": f.token }))
            .collect();
    }
    line
}

#[async_trait::async_trait]
impl Sink for JsonLines {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        let mut line = serde_json::to_vec(&intent_line(intent)).map_err(CallError::new)?;
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| CallError::new("a previous write panicked"))?;
        out.write_all(&line)?;
        out.flush()?;
        Ok(())
    }
}
