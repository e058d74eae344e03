//! The console's pages, rendered on the server. Every value shown goes
//! through maud, which escapes it: a guest's effect name, payload, error or
//! stderr is text on the page, never markup.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use crate::outbox::{Entry, RunSummary, Stats, time_text};

/// The console's style sheet, embedded: the console asks no other host for
/// anything.
const STYLE: &str = r#"
:root { --ink: #1d2433; --muted: #5b6478; --line: #dfe3ea; --bg: #f6f7f9; --accent: #2f5bd3;
        --ok: #1f7a4d; --warn: #a15c00; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--bg); }
header { display: flex; align-items: center; gap: 24px; padding: 0 24px; height: 52px; background: #fff; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; letter-spacing: .02em; }
header nav a { color: var(--muted); text-decoration: none; margin-right: 16px; padding: 15px 0; }
header nav a.active { color: var(--ink); border-bottom: 2px solid var(--accent); }
header .who { margin-left: auto; color: var(--muted); display: flex; gap: 12px; align-items: center; }
main { padding: 24px; max-width: 1200px; }
h1 { font-size: 20px; margin: 0 0 16px; }
h2 { font-size: 15px; margin: 24px 0 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .n { font-size: 22px; font-weight: 650; }
.card .l { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; }
tr:last-child td { border-bottom: 0; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; background: #fafbfc; padding: 8px; border-radius: 6px; border: 1px solid var(--line); }
a { color: var(--accent); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #eef1f6; color: var(--muted); }
.committed, .delivered, .closed, .approved { background: #e3f4ea; color: var(--ok); }
.held, .pending, .half-open, .dropped, .blocked { background: #fdf0dc; color: var(--warn); }
.failed, .dead, .open, .rejected, .refused, .discarded { background: #fbe4e2; color: var(--bad); }
form.inline { display: inline; }
input, select, button { font: inherit; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
button { cursor: pointer; background: var(--accent); color: #fff; border-color: var(--accent); }
button.secondary { background: #fff; color: var(--ink); border-color: var(--line); }
button.danger { background: var(--bad); border-color: var(--bad); }
.filters { display: flex; gap: 8px; flex-wrap: wrap; margin-bottom: 16px; }
.notice { background: #e8effd; border: 1px solid #c9d7fb; padding: 10px 12px; border-radius: 8px; margin-bottom: 16px; }
.error { background: #fbe4e2; border: 1px solid #f3c1bc; padding: 10px 12px; border-radius: 8px; margin-bottom: 16px; }
.muted { color: var(--muted); }
.login { max-width: 380px; margin: 12vh auto; background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 24px; }
.login input { width: 100%; margin: 8px 0 16px; }
"#;

/// The address of the console's page `path` (`/`, `/runs/`) where it is
/// mounted at `base`: a nested router serves its root at the prefix itself,
/// without a final `/`.
pub(crate) fn link(base: &str, path: &str) -> String {
    match (base.is_empty(), path) {
        (false, "/") => base.to_owned(),
        _ => format!("{base}{path}"),
    }
}

/// Who is looking, for the header.
pub(crate) struct Viewer<'a> {
    pub role: &'a str,
    pub csrf: &'a str,
}

/// A page of the console: the header with its navigation, then `body`.
pub(crate) fn layout(
    base: &str,
    title: &str,
    active: &str,
    viewer: &Viewer<'_>,
    notice: Option<&str>,
    body: Markup,
) -> Markup {
    let tabs = [
        ("/", "Overview"),
        ("/runs/", "Runs"),
        ("/dead/", "Dead letters"),
        ("/held/", "Held runs"),
        ("/breakers/", "Breakers"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · escrow" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span.brand { "escrow" }
                    nav {
                        @for (path, name) in tabs {
                            a class=@if path == active { "active" } href=(link(base, path)) { (name) }
                        }
                    }
                    div.who {
                        span { "signed in as " (viewer.role) }
                        form.inline method="post" action={ (base) "/logout" } {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = notice { div.notice { (notice) } }
                    (body)
                }
            }
        }
    }
}

/// The login page.
pub(crate) fn login(base: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · escrow" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                div.login {
                    h1 { "escrow console" }
                    @if let Some(error) = error { div.error { (error) } }
                    form method="post" action={ (base) "/login" } {
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="off" autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.muted { "A viewer token reads; an operator token also retries, approves and controls breakers." }
                }
            }
        }
    }
}

fn badge(text: &str) -> Markup {
    html! { span class={ "badge " (text) } { (text) } }
}

/// The overview: runs of the last hour, the outbox, breakers, plugins.
pub(crate) fn overview(
    base: &str,
    counts: &[(String, u64)],
    stats: Option<&Stats>,
    lag_ms: Option<i64>,
    breakers: &[(String, String)],
    plugins: &[(String, Option<String>)],
) -> Markup {
    html! {
        h1 { "Overview" }
        h2 { "Runs in the last hour" }
        div.cards {
            @if counts.is_empty() { div.card { div.n { "0" } div.l { "runs" } } }
            @for (status, n) in counts {
                a.card href={ (base) "/runs/?since=1h&status=" (status) } style="text-decoration:none;color:inherit" {
                    div.n { (n) } div.l { (status) }
                }
            }
        }
        @if let Some(stats) = stats {
            h2 { "Outbox" }
            div.cards {
                div.card { div.n { (stats.pending) } div.l { "pending" } }
                a.card href={ (base) "/dead/" } style="text-decoration:none;color:inherit" { div.n { (stats.dead) } div.l { "dead" } }
                a.card href={ (base) "/held/" } style="text-decoration:none;color:inherit" { div.n { (stats.held) } div.l { "held" } }
                div.card { div.n { (stats.delivered) } div.l { "delivered" } }
                div.card {
                    div.n { @match lag_ms { Some(ms) => { (format!("{:.1}s", ms as f64 / 1000.0)) }, None => { "none" } } }
                    div.l { "lag" }
                }
            }
        }
        h2 { "Breakers" }
        @if breakers.is_empty() { p.muted { "No breaker is defined." } }
        @else {
            table { tr { th { "breaker" } th { "state" } }
                @for (name, state) in breakers { tr { td { (name) } td { (badge(state)) } } }
            }
        }
        h2 { "Plugins" }
        table { tr { th { "plugin" } th { "component sha256" } }
            @for (name, sha) in plugins {
                tr { td { (name) } td { code { (sha.as_deref().unwrap_or("unknown")) } } }
            }
        }
    }
}

/// The filters a list of runs was asked with.
#[derive(Debug, Default)]
pub(crate) struct RunsForm {
    pub status: String,
    pub plugin: String,
    pub effect: String,
    pub since: String,
    pub q: String,
}

/// A list of runs, with its filters and search.
pub(crate) fn runs(base: &str, form: &RunsForm, runs: &[RunSummary], next: Option<&str>) -> Markup {
    html! {
        h1 { "Runs" }
        form.filters method="get" action={ (base) "/runs/" } {
            input name="q" placeholder="run id or idempotency key" value=(form.q) size="40";
            select name="status" {
                option value="" { "any status" }
                @for status in ["committed", "dropped", "held", "failed"] {
                    option value=(status) selected[form.status == status] { (status) }
                }
            }
            input name="plugin" placeholder="plugin" value=(form.plugin);
            input name="effect" placeholder="effect" value=(form.effect);
            select name="since" {
                @for (value, name) in [("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week")] {
                    option value=(value) selected[form.since == value] { (name) }
                }
            }
            button type="submit" { "Search" }
        }
        @if runs.is_empty() { p.muted { "No run matches." } }
        @else {
            table {
                tr { th { "run" } th { "plugin" } th { "status" } th { "effects" } th { "ended" } }
                @for run in runs {
                    tr {
                        td { a href={ (base) "/runs/" (run.run_id) } { code { (run.run_id) } } }
                        td { (run.plugin) }
                        td { (badge(&run.status)) }
                        td { @for effect in &run.effects { code { (effect) } " " } }
                        td.muted { (time_text(run.ended_at_ms)) }
                    }
                }
            }
        }
        @if let Some(cursor) = next {
            @let older = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("cursor", cursor)
                .append_pair("status", &form.status)
                .append_pair("plugin", &form.plugin)
                .append_pair("effect", &form.effect)
                .append_pair("since", &form.since)
                .finish();
            p { a href={ (base) "/runs/?" (older) } { "Older runs →" } }
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// One run: its result, intents with their delivery, calls, compensations,
/// locks, breaker calls and timings.
pub(crate) fn run(run_id: &str, outcome: Option<&Value>, entries: &[Entry]) -> Markup {
    let entry_of = |seq: u64| {
        entries
            .iter()
            .find(|e| e.entry.seq == seq && e.entry.kind == crate::outbox::EntryKind::Intent)
    };
    html! {
        h1 { "Run " code { (run_id) } }
        @match outcome {
            None => { p.muted { "The history does not keep this run's outcome; its entries follow." } }
            Some(outcome) => {
                p {
                    (badge(outcome["status"].as_str().unwrap_or("")))
                    " plugin " strong { (outcome["plugin"].as_str().unwrap_or("")) }
                    @if let Some(sha) = outcome["component_sha256"].as_str() { " · component " code { (sha.get(..12).unwrap_or(sha)) } }
                }
                @if let Some(error) = outcome["error"].as_str() { div.error { (error) } }
                @else { h2 { "Result" } pre { (pretty(&outcome["result"])) } }
                h2 { "Intents" }
                table {
                    tr { th { "#" } th { "effect" } th { "fate" } th { "rule" } th { "payload" } th { "delivery" } }
                    @for intent in outcome["intents"].as_array().into_iter().flatten() {
                        @let seq = intent["seq"].as_u64().unwrap_or(0);
                        tr id={ "seq-" (seq) } {
                            td { (seq) }
                            td { code { (intent["effect"].as_str().unwrap_or("")) } }
                            td { (badge(intent["fate"].as_str().unwrap_or(""))) }
                            td.muted { (intent["rule"].as_str().unwrap_or("")) }
                            td { pre { (pretty(&intent["payload"])) } }
                            td {
                                @match entry_of(seq) {
                                    Some(entry) => {
                                        (badge(entry.status.as_str()))
                                        " " span.muted { (entry.attempts) @if entry.attempts == 1 { " attempt" } @else { " attempts" } }
                                        @if let Some(error) = &entry.last_error { br; span.muted { (error) } }
                                    }
                                    None => { span.muted { "not in the outbox" } }
                                }
                            }
                        }
                    }
                }
                @if let Some(calls) = outcome["invocations"].as_array().filter(|c| !c.is_empty()) {
                    h2 { "Immediate effects" }
                    table { tr { th { "#" } th { "effect" } th { "payload" } th { "answer" } }
                        @for call in calls {
                            tr {
                                td { (call["seq"]) } td { code { (call["effect"].as_str().unwrap_or("")) } }
                                td { pre { (pretty(&call["payload"])) } }
                                td { pre { (pretty(if call["answer"].is_null() { if call["failed"].is_null() { &call["refused"] } else { &call["failed"] } } else { &call["answer"] })) } }
                            }
                        }
                    }
                }
                @if let Some(undone) = outcome["compensations"].as_array().filter(|c| !c.is_empty()) {
                    h2 { "Compensations" }
                    table { tr { th { "#" } th { "effect" } th { "cause" } th { "result" } }
                        @for c in undone { tr { td { (c["seq"]) } td { code { (c["effect"].as_str().unwrap_or("")) } } td { (c["cause"].as_str().unwrap_or("")) } td { pre { (pretty(&c["result"])) } } } }
                    }
                }
                @if let Some(locks) = outcome["locks"].as_array().filter(|l| !l.is_empty()) {
                    h2 { "Locks" }
                    table { tr { th { "keys" } th { "fencing token or refusal" } }
                        @for lock in locks { tr { td { code { (lock["keys"]) } } td { (lock.get("fencing_token").unwrap_or(&lock["refused"])) } } }
                    }
                }
                @if let Some(calls) = outcome["breakers"].as_array().filter(|b| !b.is_empty()) {
                    h2 { "Breaker calls" }
                    table { tr { th { "#" } th { "breaker" } th { "effect" } th { "verdict" } }
                        @for call in calls { tr { td { (call["seq"]) } td { (call["breaker"].as_str().unwrap_or("")) } td { code { (call["effect"].as_str().unwrap_or("")) } } td { (call["verdict"].as_str().unwrap_or("")) } } }
                    }
                }
                @if let Some(stderr) = outcome.get("guest_stderr") { h2 { "Guest stderr" } pre { (pretty(stderr)) } }
                h2 { "Timings (µs)" }
                pre { (pretty(&outcome["timings_us"])) }
            }
        }
        @if !entries.is_empty() {
            h2 { "Outbox entries" }
            table { tr { th { "id" } th { "key" } th { "effect" } th { "status" } th { "attempts" } th { "last error" } }
                @for entry in entries {
                    tr { td { (entry.id) } td { code { (entry.idempotency_key()) } } td { code { (entry.entry.effect) } } td { (badge(entry.status.as_str())) } td { (entry.attempts) } td.muted { (entry.last_error.as_deref().unwrap_or("")) } }
                }
            }
        }
    }
}

/// The dead letters, each selectable, with a retry of the selected ones or
/// of all; each asks for a confirmation first.
pub(crate) fn dead(base: &str, csrf: &str, entries: &[Entry], total: u64) -> Markup {
    html! {
        h1 { "Dead letters" }
        p.muted { (total) " dead entries; a retry makes them pending again, due now, with a fresh count of attempts." }
        @if entries.is_empty() { p.muted { "No dead letter." } }
        @else {
            form method="post" action={ (base) "/dead/retry" } {
                input type="hidden" name="csrf" value=(csrf);
                table {
                    tr { th {} th { "id" } th { "idempotency key" } th { "effect" } th { "attempts" } th { "last error" } }
                    @for entry in entries {
                        tr {
                            td { input type="checkbox" name="ids" value=(entry.id) aria-label={ "select " (entry.idempotency_key()) }; }
                            td { (entry.id) }
                            td { a href={ (base) "/runs/" (entry.entry.run_id) } { code { (entry.idempotency_key()) } } }
                            td { code { (entry.entry.effect) } }
                            td { (entry.attempts) }
                            td.muted { (entry.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
                p {
                    button name="which" value="selected" type="submit" { "Retry selected" } " "
                    button.secondary name="which" value="all" type="submit" { "Retry all dead" }
                }
            }
        }
    }
}

/// The confirmation of a change: what it will do, and the form that does
/// it.
pub(crate) fn confirm(
    action: &str,
    back: &str,
    csrf: &str,
    question: &str,
    fields: &[(&str, String)],
    button: &str,
) -> Markup {
    html! {
        h1 { "Confirm" }
        p { (question) }
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="confirmed" value="yes";
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            button.danger type="submit" { (button) } " "
            a href=(back) { "Cancel" }
        }
    }
}

/// A held run, with its intents.
pub(crate) struct HeldRun {
    pub run_id: String,
    pub plugin: String,
    pub held_at: String,
    pub intents: Vec<(u64, String, Value)>,
}

/// The held runs, each with an approve and a reject form.
pub(crate) fn held(base: &str, csrf: &str, runs: &[HeldRun]) -> Markup {
    html! {
        h1 { "Held runs" }
        @if runs.is_empty() { p.muted { "No run waits for approval." } }
        @for run in runs {
            div.card style="margin-bottom:16px" id={ "run-" (run.run_id) } {
                p { a href={ (base) "/runs/" (run.run_id) } { code { (run.run_id) } } " · " (run.plugin) " · held since " span.muted { (run.held_at) } }
                table { tr { th { "#" } th { "effect" } th { "payload" } }
                    @for (seq, effect, payload) in &run.intents { tr { td { (seq) } td { code { (effect) } } td { pre { (pretty(payload)) } } } }
                }
                form.filters method="post" action={ (base) "/held/" (run.run_id) } style="margin-top:12px" {
                    input type="hidden" name="csrf" value=(csrf);
                    input name="by" placeholder="your name" required;
                    input name="reason" placeholder="reason" size="40";
                    button name="verdict" value="approve" type="submit" { "Approve" }
                    button.danger name="verdict" value="reject" type="submit" { "Reject" }
                }
            }
        }
    }
}

/// The breakers, each with an open or a reset button.
pub(crate) fn breakers(base: &str, csrf: &str, breakers: &[(String, String)]) -> Markup {
    html! {
        h1 { "Breakers" }
        @if breakers.is_empty() { p.muted { "No breaker is defined." } }
        @else {
            table {
                tr { th { "breaker" } th { "state" } th {} }
                @for (name, state) in breakers {
                    tr {
                        td { (name) }
                        td { (badge(state)) }
                        td {
                            form.inline method="post" action={ (base) "/breakers/" (name) "/open" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.danger type="submit" { "Open" }
                            } " "
                            form.inline method="post" action={ (base) "/breakers/" (name) "/reset" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.secondary type="submit" { "Reset" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A refusal or an error, on a page of its own.
pub(crate) fn problem(message: &str, back: &str) -> Markup {
    html! { h1 { "Not done" } div.error { (message) } p { a href=(back) { "Back" } } }
}
