//! A sink that writes each committed intent as one line of JSON.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use super::Sink;
use crate::error::CallError;
use crate::outcome::Intent;

/// Writes each committed intent as a line of JSON:
///
/// ```json
/// {"seq":1,"effect":"email.send","payload":{"to":"ada@example.com"},
///  "idempotency_key":"0193…:1","run_id":"0193…","plugin":"checkout",
///  "ts":"2026-11-30T21:00:00.123Z"}
/// ```
///
/// with `"fences"` (the locks held when it was recorded, and their fencing
/// tokens) when there were any. `idempotency_key` is the same every time the
/// intent is delivered again, so a reader can skip what it has seen. `ts` is
/// when this line was written (the delivery, in UTC, to the millisecond),
/// not when the plugin asked: a redelivery has a later `ts`.
///
/// A payload that is JSON is embedded as JSON; any other payload is written
/// as `"payload_base64"`. Each line is written whole and flushed before the
/// next intent.
///
/// A file is appended to under an exclusive lock on it, so that processes
/// sharing it never interleave lines. If the file ends in a torn line (a
/// writer was killed mid-line), that fragment is cut off before the next line
/// is written: its intent was never reported delivered, so it is delivered
/// again, whole.
pub struct JsonLines {
    out: Mutex<Out>,
}

enum Out {
    Writer(Box<dyn Write + Send>),
    File(File),
}

impl JsonLines {
    /// Writes to the process's standard output.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// Writes to the process's standard error.
    pub fn stderr() -> Self {
        Self::to_writer(std::io::stderr())
    }

    /// Writes to any writer.
    pub fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Mutex::new(Out::Writer(Box::new(out))),
        }
    }

    /// Appends to the file `name` inside `dir`, creating it if needed. The
    /// file is opened through cap-std, so `name` cannot leave `dir`.
    ///
    /// # Errors
    ///
    /// Fails if the file cannot be opened for appending.
    pub fn append_in(dir: &Dir, name: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = dir.open_with(
            name,
            OpenOptions::new().read(true).append(true).create(true),
        )?;
        Ok(Self {
            out: Mutex::new(Out::File(file.into_std())),
        })
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

/// The JSON line for one intent, written at `at`.
pub(crate) fn intent_line(intent: &Intent, at: SystemTime) -> serde_json::Value {
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
        line["fences"] = crate::outcome::fences_value(&intent.fences);
    }
    line["idempotency_key"] = intent.idempotency_key().into();
    line["run_id"] = intent.run_id.to_string().into();
    line["plugin"] = (*intent.plugin).into();
    line["ts"] = humantime::format_rfc3339_millis(at).to_string().into();
    line
}

/// Cuts a torn last line (one without its newline) off `file`.
fn repair(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the end of the last whole line, reading backwards.
    let mut end = len;
    let mut chunk = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            tracing::warn!(
                cut = len - (start + i as u64 + 1),
                "the JSON-lines file ended in a torn line; cutting it off"
            );
            return file.set_len(start + i as u64 + 1);
        }
        end = start;
    }
    tracing::warn!(
        cut = len,
        "the JSON-lines file held only a torn line; cutting it off"
    );
    file.set_len(0)
}

#[async_trait::async_trait]
impl Sink for JsonLines {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        let mut line =
            serde_json::to_vec(&intent_line(intent, SystemTime::now())).map_err(CallError::new)?;
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| CallError::new("a previous write panicked"))?;
        match &mut *out {
            Out::Writer(out) => {
                out.write_all(&line)?;
                out.flush()?;
            }
            Out::File(file) => {
                file.lock()?;
                let written = repair(file).and_then(|()| file.write_all(&line));
                file.unlock()?;
                written?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_before_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2,\"eff").unwrap();
        let sink = JsonLines::append_to(&path).unwrap();
        let intent = Intent {
            run_id: crate::run_id::RunId::new(),
            plugin: "p".into(),
            seq: 2,
            effect: "a.b".into(),
            payload: b"{}".to_vec(),
            fate: crate::outcome::Fate::Committed,
            rule: "r".into(),
            fences: std::sync::Arc::from([]),
        };
        sink.deliver(&intent).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1]["idempotency_key"], intent.idempotency_key());
        assert_eq!(lines[1]["plugin"], "p");
    }

    #[tokio::test]
    async fn a_file_holding_only_a_torn_line_is_emptied_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"se").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        repair(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
