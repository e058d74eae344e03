//! `escrow replay`: run a plugin version on recorded runs and show what it
//! would do differently.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use escrow_host::plans::Verdict;
use escrow_host::recording::Recording;
use serde_json::json;

use super::setup::{ConfigArgs, HostArgs};

/// Replay recorded runs (`escrow run --record DIR`) against a plugin.
///
/// Each run gets its recorded input, and every immediate effect, lock and
/// breaker is answered from its recording: no handler is called and
/// nothing is dispatched. Prints, for each run that differs, its added,
/// removed and changed intents (with the JSON fields that changed, old →
/// new), and for one that diverged, the request the recording has no
/// answer for; then a summary. Exit code: 0 when every run is identical, 1
/// otherwise, 2 for a bad invocation or recording.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The directory of recordings.
    #[arg(value_name = "DIR")]
    recordings: PathBuf,
    /// The plugin version to replay them against.
    #[arg(long)]
    plugin: PathBuf,
    #[command(flatten)]
    setup: ConfigArgs,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: ReplayArgs) -> anyhow::Result<u8> {
    super::block_on(replay(args))
}

async fn replay(args: ReplayArgs) -> anyhow::Result<u8> {
    let recordings = Recording::read_dir(&args.recordings)?;
    let config = args.setup.config()?;
    let how = HostArgs {
        outbox: None,
        sink: None,
        json: true,
        keep_history: false,
    };
    let loaded = args.setup.load(&config, &args.plugin, how).await?;
    let report = loaded.plugin.replay(&recordings, loaded.options).await?;
    if args.json {
        let document = json!({
            "runs": report.runs.len(),
            "identical": report.identical(),
            "differ": report.differ(),
            "diverged": report.diverged(),
            "replays": report.runs,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        let mut out = std::io::stdout().lock();
        for run in &report.runs {
            match &run.verdict {
                Verdict::Identical => {}
                Verdict::Differs { differences } => {
                    writeln!(out, "run {}: differs", run.run_id)?;
                    for difference in differences {
                        writeln!(out, "  {difference}")?;
                    }
                }
                Verdict::Diverged { why } => writeln!(out, "run {}: {why}", run.run_id)?,
            }
        }
        writeln!(out, "{report}")?;
    }
    Ok(if report.all_identical() { 0 } else { 1 })
}
