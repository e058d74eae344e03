//! A handler that runs a program: the payload on its stdin, the answer from
//! its stdout.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Call, Handler};
use crate::error::CallError;

/// Most bytes of a program's stdout taken as its answer (16 MiB); more is a
/// failure, so a runaway program cannot exhaust the host's memory.
pub const MAX_EXEC_OUTPUT_BYTES: usize = 16 << 20;

/// Bytes of a failing program's stderr kept in the failure message.
const STDERR_IN_MESSAGE_BYTES: usize = 1024;

/// Runs a program for each call: the payload is written to its stdin, and
/// its stdout, if it exits with status 0, is the answer. A non-zero exit is
/// a failure whose message carries the start of its stderr. The program gets
/// the effect's name in `ESCROW_EFFECT`, the run id in `ESCROW_RUN_ID` and the
/// request's idempotency key in `ESCROW_IDEMPOTENCY_KEY`, and is killed if the
/// call times out.
///
/// The command is the operator's: the guest chooses only the payload.
#[derive(Debug, Clone)]
pub struct Exec {
    program: String,
    args: Vec<String>,
}

impl Exec {
    /// A handler running `program` with `args`.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

#[async_trait::async_trait]
impl Handler for Exec {
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let payload = call.payload;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("ESCROW_EFFECT", call.effect)
            .env("ESCROW_RUN_ID", call.run_id.to_string())
            .env("ESCROW_IDEMPOTENCY_KEY", call.idempotency_key())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CallError::new(format!("cannot run `{}`: {e}", self.program)))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // Feed stdin while reading the outputs, so that a program that
        // answers before reading all of its input cannot deadlock.
        let write = async {
            // A program may exit without reading its input; that is its call.
            let _ = stdin.write_all(payload).await;
            drop(stdin);
        };
        let mut answer = Vec::new();
        let mut errors = Vec::new();
        let mut stdout = stdout.take(MAX_EXEC_OUTPUT_BYTES as u64 + 1);
        let mut stderr = stderr.take(MAX_EXEC_OUTPUT_BYTES as u64);
        let ((), out, err) = tokio::join!(
            write,
            stdout.read_to_end(&mut answer),
            stderr.read_to_end(&mut errors)
        );
        out?;
        err?;
        if answer.len() > MAX_EXEC_OUTPUT_BYTES {
            child.kill().await?;
            return Err(CallError::new(format!(
                "`{}` wrote more than {MAX_EXEC_OUTPUT_BYTES} bytes",
                self.program
            )));
        }
        let status = child.wait().await?;
        if !status.success() {
            errors.truncate(STDERR_IN_MESSAGE_BYTES);
            let errors = String::from_utf8_lossy(&errors);
            return Err(CallError::new(format!(
                "`{}` {status}: {}",
                self.program,
                errors.trim()
            )));
        }
        Ok(answer)
    }
}
