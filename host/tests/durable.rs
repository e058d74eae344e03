//! Durable delivery through the `escrow` binary: `run --outbox`, the
//! `outbox` subcommands, and hosts killed with SIGKILL while they commit,
//! deliver, or wait with a compensation owed, on a real SQLite file and a
//! real Postgres server.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use escrow_fixtures as fixtures;
use escrow_fixtures::postgres::PostgresServer;
use serde_json::{Value, json};

fn escrow_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_escrow"));
    command.args(args).env_remove("ESCROW_LOG").env(
        "ESCROW_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
    );
    command
}

fn escrow(args: &[&str]) -> Output {
    escrow_command(args).output().expect("running escrow")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config granting every effect, with an `[outbox]` table of `extra`
/// lines, written into `dir`.
fn config(dir: &Path, extra: &str) -> String {
    let path = dir.join("escrow.toml");
    std::fs::write(
        &path,
        format!("[grants]\neffects = [\"*\"]\n[limits]\ntimeout_ms = 20000\n{extra}"),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn steps_file(dir: &Path, steps: Value) -> String {
    let path = dir.join("input.json");
    std::fs::write(&path, json!({ "steps": steps }).to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn stats(outbox: &str) -> Value {
    let output = escrow(&["outbox", "stats", "--outbox", outbox, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every line of a JSON-lines file, parsed; a torn or garbled line fails
/// the test.
fn lines(path: &Path) -> Vec<Value> {
    let content = std::fs::read_to_string(path).unwrap_or_default();
    content
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("an unparseable line ({e}): {line:?}"))
        })
        .collect()
}

#[test]
fn run_with_an_outbox_stores_then_delivers_and_the_outbox_says_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let db = db.to_str().unwrap();
    let input = steps_file(
        dir.path(),
        json!([{ "defer": "email.send", "payload": { "to": "ada" } }, { "defer": "orders.save", "payload": 7 }]),
    );
    let cfg = config(dir.path(), "");
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        db,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let delivered: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(delivered.len(), 2);
    let run_id = delivered[0]["run_id"].as_str().unwrap();
    assert_eq!(delivered[1]["idempotency_key"], format!("{run_id}:2"));
    assert_eq!(delivered[0]["plugin"], "fixture_scripted");
    assert!(delivered[0]["ts"].as_str().unwrap().ends_with('Z'));

    let stats = stats(db);
    assert_eq!(
        (stats["delivered"].as_u64(), stats["pending"].as_u64()),
        (Some(2), Some(0))
    );
}

#[test]
fn no_deliver_leaves_the_intents_to_outbox_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let db = db.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let input = steps_file(dir.path(), json!([{ "defer": "email.send", "payload": 1 }]));
    let cfg = config(dir.path(), "");
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        db,
        "--no-deliver",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["intents"][0]["delivery"], "queued");
    assert_eq!(stats(db)["pending"], 1);

    let listed = escrow(&[
        "outbox", "list", "--outbox", db, "--status", "pending", "--json",
    ]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["effect"], "email.send");
    assert_eq!(
        listed[0]["idempotency_key"],
        format!("{}:1", report["run_id"].as_str().unwrap())
    );

    let deliver = escrow(&[
        "outbox", "deliver", "--once", "--outbox", db, "--sink", &sink,
    ]);
    assert_eq!(deliver.status.code(), Some(0), "{}", text(&deliver.stderr));
    assert!(
        text(&deliver.stderr).contains("delivered 1"),
        "{}",
        text(&deliver.stderr)
    );
    assert_eq!(lines(&out).len(), 1);
    assert_eq!(stats(db)["delivered"], 1);
}

#[test]
fn outbox_list_shows_a_payload_that_is_not_utf8_as_the_outcome_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let db = db.to_str().unwrap();
    let input = steps_file(
        dir.path(),
        json!([{ "defer_hex": "email.send", "hex": "ff00fe41" }]),
    );
    let cfg = config(dir.path(), "");
    let run = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        db,
        "--no-deliver",
        "--json",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();

    let listed = escrow(&["outbox", "list", "--outbox", db, "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["payload"], json!({ "$bytes_base64": "/wD+QQ==" }));
    assert_eq!(listed[0]["payload"], report["intents"][0]["payload"]);
}

#[test]
fn an_unusable_outbox_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("not-a-db");
    std::fs::write(
        &garbage,
        "some text that is certainly not a SQLite database file",
    )
    .unwrap();
    let refused = escrow(&["outbox", "stats", "--outbox", garbage.to_str().unwrap()]);
    let missing = escrow(&["outbox", "stats", "--outbox", "/nonexistent/o.db"]);
    let unreachable = escrow(&[
        "outbox",
        "stats",
        "--outbox",
        "postgres://escrow@127.0.0.1:1/x",
    ]);
    for (output, says) in [
        (refused, "is unusable"),
        (missing, "`/nonexistent` does not exist"),
        (
            unreachable,
            "cannot open the outbox `postgres://escrow@127.0.0.1:1/x`",
        ),
    ] {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// Kills `escrow run` of a 1,000-intent run at random points, `trials`
/// times, then delivers what is owed with `escrow outbox deliver --once`,
/// and checks that every committed intent was delivered, whole, and that
/// every run committed all of its intents or none.
fn crash_while_committing_and_delivering(outbox: &str, trials: u32) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let cfg = config(
        dir.path(),
        "[outbox]\nlease_ms = 50\ndelivery_lease_ms = 50\n",
    );
    let input = steps_file(
        dir.path(),
        json!([{ "repeat": 1000, "steps": [{ "defer": "orders.save", "payload": { "total": 1999 } }] }]),
    );
    let run = || {
        escrow_command(&[
            "run",
            fixtures::SCRIPTED,
            "--config",
            &cfg,
            "--input-file",
            &input,
            "--outbox",
            outbox,
            "--sink",
            &sink,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running escrow")
    };
    // One run to the end: it warms the compile cache and tells how long a
    // run takes, so that kills land all through it.
    let started = Instant::now();
    assert!(run().wait().unwrap().success());
    let whole = started.elapsed().max(Duration::from_millis(20));

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = whole.mul_f64((seed % 1000) as f64 / 1000.0 * 1.2);
        let mut child = run();
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
    }
    // Claims of killed runs end with their lease.
    std::thread::sleep(Duration::from_millis(100));
    let deliver = escrow(&[
        "outbox", "deliver", "--once", "--config", &cfg, "--outbox", outbox, "--sink", &sink,
    ]);
    assert_eq!(deliver.status.code(), Some(0), "{}", text(&deliver.stderr));

    let stats = stats(outbox);
    assert_eq!(stats["pending"], 0, "{stats}");
    assert_eq!(stats["dead"], 0, "{stats}");
    let mut runs: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut keys = BTreeSet::new();
    for line in lines(&out) {
        let key = line["idempotency_key"].as_str().unwrap().to_owned();
        let run = line["run_id"].as_str().unwrap().to_owned();
        assert_eq!(
            key,
            format!("{run}:{}", line["seq"]),
            "a duplicate repeats its key"
        );
        runs.entry(run)
            .or_default()
            .insert(line["seq"].as_u64().unwrap());
        keys.insert(key);
    }
    assert_eq!(
        keys.len() as u64,
        stats["delivered"].as_u64().unwrap(),
        "every committed intent was delivered, and nothing else"
    );
    for (run, seqs) in &runs {
        assert_eq!(
            seqs.len(),
            1000,
            "run {run} committed all of its intents or none"
        );
    }
    assert!(
        runs.len() >= 2,
        "the first run and at least one killed run committed"
    );
}

#[test]
fn a_host_killed_while_committing_and_delivering_loses_no_committed_intent_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    crash_while_committing_and_delivering(db.to_str().unwrap(), 100);
}

#[test]
fn a_host_killed_while_committing_and_delivering_loses_no_committed_intent_on_postgres() {
    let server = PostgresServer::start();
    crash_while_committing_and_delivering(&server.url(), 100);
}

/// An exec handler that appends `WORD $ESCROW_IDEMPOTENCY_KEY` to `log`.
fn logging_handler(dir: &Path, word: &str, log: &Path) -> PathBuf {
    let path = dir.join(format!("{word}.sh"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{word} $ESCROW_IDEMPOTENCY_KEY\" >> '{}'\necho '{{}}'\n",
            log.display()
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
    path
}

fn owed_compensation_after_a_kill(outbox: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let book = logging_handler(dir.path(), "booked", &log);
    let cancel = logging_handler(dir.path(), "cancelled", &log);
    let cfg_path = dir.path().join("escrow.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[grants]\neffects = [\"flight.*\"]\n[limits]\ntimeout_ms = 1500\n\
             [outbox]\ncompensation_grace_ms = 0\n\
             [handlers.\"flight.book\"]\nkind = \"action\"\nexec = [\"{}\"]\n\
             [handlers.\"flight.cancel\"]\nkind = \"action\"\nexec = [\"{}\"]\n",
            book.display(),
            cancel.display()
        ),
    )
    .unwrap();
    let cfg = cfg_path.to_str().unwrap();
    let book_step = json!({ "invoke_reversible": "flight.book", "payload": 1, "compensate": "flight.cancel", "compensate_payload": 1 });
    let slow = steps_file(dir.path(), json!([book_step, { "sleep_ms": 60000 }]));
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();

    let started = Instant::now();
    let mut child = escrow_command(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        cfg,
        "--input-file",
        &slow,
        "--outbox",
        outbox,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    while !calls().contains("booked") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the flight was never booked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let deliver = || {
        let output = escrow(&[
            "outbox", "deliver", "--once", "--config", cfg, "--outbox", outbox,
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    };
    deliver();
    assert!(
        !calls().contains("cancelled"),
        "not owed before the run's deadline: {}",
        calls()
    );
    // Owed once the run's deadline (1.5 s after it started) has passed.
    while !calls().contains("cancelled") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the compensation was never performed"
        );
        std::thread::sleep(Duration::from_millis(100));
        deliver();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the deadline"
    );
    deliver();
    let booked = calls()
        .lines()
        .find_map(|l| l.strip_prefix("booked ").map(str::to_owned))
        .unwrap();
    let cancelled: Vec<String> = calls()
        .lines()
        .filter_map(|l| l.strip_prefix("cancelled ").map(str::to_owned))
        .collect();
    assert_eq!(
        cancelled,
        [format!("{booked}:compensate")],
        "performed exactly once"
    );

    // A run that succeeds leaves nothing owed.
    let quick = steps_file(dir.path(), json!([book_step]));
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        cfg,
        "--input-file",
        &quick,
        "--outbox",
        outbox,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(stats(outbox)["pending"], 0);
}

#[test]
fn a_compensation_owed_by_a_killed_host_is_performed_once_after_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    owed_compensation_after_a_kill(db.to_str().unwrap());
}

#[test]
fn a_compensation_owed_by_a_killed_host_is_performed_once_after_restart_on_postgres() {
    let server = PostgresServer::start();
    owed_compensation_after_a_kill(&server.url());
}

#[test]
fn the_outbox_example_delivers_a_payroll_after_the_host_left_and_the_bank_applies_it_once() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/outbox");
    let dir = tempfile::tempdir().unwrap();
    for file in ["escrow.toml", "payroll.json", "bank.py"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    let cfg = dir.path().join("escrow.toml");
    let cfg = cfg.to_str().unwrap();
    let input = dir.path().join("payroll.json");
    let run = escrow(&[
        "run",
        fixtures::OUTBOX,
        "--config",
        cfg,
        "--input-file",
        input.to_str().unwrap(),
        "--no-deliver",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("queued in the outbox"),
        "{}",
        text(&run.stderr)
    );

    let deliver = escrow(&["outbox", "deliver", "--config", cfg, "--once"]);
    assert!(
        text(&deliver.stderr).contains("delivered 3, retrying 0, dead 0"),
        "{}",
        text(&deliver.stderr)
    );
    let payments = lines(&dir.path().join("payments.jsonl"));
    let names: Vec<&str> = payments
        .iter()
        .map(|p| p["payload"]["to"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "grace", "edsger"]);

    let bank = |expected: &str| {
        let Ok(output) = Command::new("python3")
            .args(["bank.py", "payments.jsonl", "bank.db"])
            .current_dir(dir.path())
            .output()
        else {
            eprintln!("python3 is not installed; the bank is not checked");
            return;
        };
        let out = text(&output.stdout);
        assert!(out.starts_with(expected), "{out}{}", text(&output.stderr));
        assert!(out.contains("ada         4200.00"), "{out}");
    };
    bank("applied 3, skipped 0");
    bank("applied 0, skipped 3");
}

/// Writes `runs` runs of 1,000 intents each into `outbox` with `escrow run
/// --no-deliver`.
fn fill(dir: &Path, outbox: &str, runs: u32) {
    let cfg = config(dir, "");
    let input = steps_file(
        dir,
        json!([{ "repeat": 1000, "steps": [{ "defer": "orders.save", "payload": 1 }] }]),
    );
    for _ in 0..runs {
        let output = escrow(&[
            "run",
            fixtures::SCRIPTED,
            "--config",
            &cfg,
            "--input-file",
            &input,
            "--outbox",
            outbox,
            "--no-deliver",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    }
}

/// The idempotency keys of every line of `files`, in order.
fn keys_in(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|file| lines(file))
        .map(|line| line["idempotency_key"].as_str().unwrap().to_owned())
        .collect()
}

/// Two worker processes deliver 10,000 intents at once, each to a file of
/// its own: every intent is delivered, none twice.
fn two_workers_compete(outbox: &str) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), outbox, 10);
    let files: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| dir.path().join(format!("{name}.jsonl")))
        .collect();
    let workers: Vec<_> = files
        .iter()
        .map(|file| {
            let sink = format!("file:{}", file.display());
            escrow_command(&[
                "outbox", "deliver", "--once", "--outbox", outbox, "--sink", &sink,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for mut worker in workers {
        assert!(worker.wait().unwrap().success());
    }
    let keys = keys_in(&files);
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 10_000, "every intent delivered");
    assert_eq!(keys.len(), 10_000, "none delivered twice");
    assert_eq!(stats(outbox)["delivered"], 10_000);
}

#[test]
fn two_worker_processes_on_one_sqlite_file_never_deliver_the_same_intent() {
    let dir = tempfile::tempdir().unwrap();
    two_workers_compete(dir.path().join("outbox.db").to_str().unwrap());
}

#[test]
fn two_worker_processes_on_one_postgres_never_deliver_the_same_intent() {
    two_workers_compete(&PostgresServer::start().url());
}

/// A worker stopped (SIGSTOP) in the middle of a delivery, past its lease:
/// another worker takes its entries over; when the first resumes, what it
/// delivered late is refused by its claim token, nothing is lost, and the
/// only duplicates are deliveries under the same idempotency key.
fn a_stopped_worker_loses_its_claim(outbox: &str) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), outbox, 1);
    let cfg = dir.path().join("lease.toml");
    std::fs::write(&cfg, "[outbox]\nlease_ms = 500\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    // Nobody reads the first worker's stdout: it blocks once the pipe is
    // full, mid-delivery, its claim held. Then it is stopped as well.
    let mut first = escrow_command(&[
        "outbox", "deliver", "--follow", "--outbox", outbox, "--config", cfg, "--sink", "stdout",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while stats(outbox)["claimed"].as_u64() == Some(0) {
        assert!(started.elapsed() < Duration::from_secs(30), "never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signal = |name: &str, pid: u32| {
        let sent = Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    if outbox.starts_with("postgres") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(outbox, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            for _ in 0..30 {
            for r in c.query("SELECT pid, state, left(query, 30), (now() - xact_start)::text FROM pg_stat_activity WHERE datname IS NOT NULL AND pid <> pg_backend_pid()", &[]).await.unwrap() {
                eprintln!("SAMPLE {:?} {:?} {:?} {:?}", r.get::<_, i32>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
    }
    signal("-STOP", first.id());
    // A SQLite writer stopped inside a write transaction holds the file's
    // one write lock until it resumes: no other process can write, which is
    // SQLite's nature and not this test's case. So the worker is stopped
    // again until it is stopped outside one.
    while outbox.ends_with(".db") && write_locked(Path::new(outbox)) {
        signal("-CONT", first.id());
        std::thread::sleep(Duration::from_millis(3));
        signal("-STOP", first.id());
    }
    std::thread::sleep(Duration::from_millis(700));

    let taken = dir.path().join("second.jsonl");
    let second = escrow(&[
        "outbox",
        "deliver",
        "--once",
        "--outbox",
        outbox,
        "--config",
        cfg,
        "--sink",
        &format!("file:{}", taken.display()),
    ]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    if outbox.starts_with("postgres") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(outbox, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            for r in c.query("SELECT pid, state, query, xact_start::text FROM pg_stat_activity WHERE datname IS NOT NULL", &[]).await.unwrap() {
                eprintln!("DEBUG {:?} {:?} {:?} {:?}", r.get::<_, i32>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3));
            }
            for r in c.query("SELECT id, status, claim_token, lease_until, due_at, ord FROM escrow_outbox ORDER BY ord LIMIT 3", &[]).await.unwrap() {
                eprintln!("ROW {:?} {:?} {:?} {:?} {:?} {:?}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, Option<String>>(2), r.get::<_, Option<i64>>(3), r.get::<_, i64>(4), r.get::<_, i64>(5));
            }
        });
    }
    assert_eq!(stats(outbox)["pending"], 0, "{}", text(&second.stderr));

    // The first resumes, writes what it was writing, and finds its claim
    // gone when it settles; it is then stopped as an operator would.
    signal("-CONT", first.id());
    let mut stdout = first.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    std::thread::sleep(Duration::from_millis(500));
    signal("-TERM", first.id());
    let first_out = reader.join().unwrap();
    let first_status = first.wait().unwrap();
    assert_eq!(first_status.code(), Some(0));

    let mut keys: Vec<String> = first_out
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap();
            line["idempotency_key"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.extend(keys_in(&[taken]));
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 1000, "nothing lost");
    let stats = stats(outbox);
    assert_eq!(
        (stats["delivered"].as_u64(), stats["pending"].as_u64()),
        (Some(1000), Some(0)),
        "{stats}"
    );
    // Each entry counts the attempts of the claim that settled it: the
    // stopped worker's late settlements were refused.
    assert!(stats["attempts"].as_u64() <= Some(1000), "{stats}");
}

/// Whether another connection holds the SQLite file's write lock now.
fn write_locked(path: &Path) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => false,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            true
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_worker_stopped_past_its_lease_on_sqlite_loses_its_claim_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    a_stopped_worker_loses_its_claim(dir.path().join("outbox.db").to_str().unwrap());
}

#[test]
fn a_worker_stopped_past_its_lease_on_postgres_loses_its_claim_and_nothing_is_lost() {
    a_stopped_worker_loses_its_claim(&PostgresServer::start().url());
}

/// An outbox of one pending intent to `a.b`, written by `escrow run
/// --no-deliver` into `dir`, with `[outbox]` lines `extra`; returns the
/// outbox and the config.
fn one_pending(dir: &Path, extra: &str) -> (String, String) {
    let db = dir.join("outbox.db").to_str().unwrap().to_owned();
    let input = steps_file(dir, json!([{ "defer": "a.b", "payload": 1 }]));
    let cfg = config(dir, extra);
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        &db,
        "--no-deliver",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    (db, cfg)
}

#[test]
fn outbox_commands_refuse_an_outbox_that_does_not_exist_and_create_none() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("outbx.db");
    let typo = typo.to_str().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    for (store, says) in [
        (
            typo,
            "there is no such file (a run with an outbox creates it)",
        ),
        (empty, "the file holds no escrow outbox"),
    ] {
        for command in [
            &["outbox", "stats", "--outbox", store][..],
            &["outbox", "list", "--outbox", store],
            &["outbox", "retry", "--dead", "--outbox", store],
            &["outbox", "deliver", "--once", "--outbox", store],
        ] {
            let output = escrow(command);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            assert!(stderr.contains(says), "{command:?}: {stderr}");
        }
    }
    assert!(!Path::new(typo).exists(), "no outbox was created");
    assert_eq!(
        std::fs::metadata(empty).unwrap().len(),
        0,
        "nothing written"
    );

    let server = PostgresServer::start();
    let output = escrow(&["outbox", "stats", "--outbox", &server.url()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the database holds no escrow outbox"),
        "{stderr}"
    );
}

#[test]
fn outbox_retry_of_an_unknown_id_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = one_pending(dir.path(), "");
    let output = escrow(&["outbox", "retry", "999", "--outbox", &db]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nothing retried: no entry has the id 999"),
        "{stderr}"
    );
    assert_eq!(stats(&db)["pending"], 1);
}

#[test]
fn deliver_ignore_backoff_attempts_a_failing_intent_until_it_is_dead_and_list_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cfg) = one_pending(dir.path(), "[outbox]\nmax_attempts = 3\n");
    // Every write to /dev/full fails: the first attempt schedules a retry a
    // backoff away, and a plain deliver then finds nothing due.
    let deliver = |extra: &[&str]| {
        let mut args = vec![
            "outbox",
            "deliver",
            "--outbox",
            &db,
            "--config",
            &cfg,
            "--sink",
            "file:/dev/full",
        ];
        args.extend_from_slice(extra);
        escrow(&args)
    };
    let first = deliver(&["--once"]);
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let again = deliver(&["--once"]);
    assert!(
        text(&again.stderr).contains("delivered 0, retrying 0, dead 0"),
        "{}",
        text(&again.stderr)
    );
    let drill = deliver(&["--ignore-backoff"]);
    assert_eq!(drill.status.code(), Some(3), "{}", text(&drill.stderr));
    assert!(
        text(&drill.stderr).contains("delivered 0, retrying 1, dead 1"),
        "{}",
        text(&drill.stderr)
    );
    let stats = stats(&db);
    assert_eq!(
        (stats["dead"].as_u64(), stats["attempts"].as_u64()),
        (Some(1), Some(3))
    );

    // Retried by hand: a fresh count, the earlier attempts kept.
    let retry = escrow(&["outbox", "retry", "--dead", "--outbox", &db]);
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry.stderr));
    let listed = escrow(&["outbox", "list", "--outbox", &db, "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        (&listed[0]["attempts"], &listed[0]["attempts_before_retry"]),
        (&json!(0), &json!(3))
    );
    let out = dir.path().join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let delivered = escrow(&[
        "outbox", "deliver", "--once", "--outbox", &db, "--sink", &sink,
    ]);
    assert_eq!(
        delivered.status.code(),
        Some(0),
        "{}",
        text(&delivered.stderr)
    );
    let listed = escrow(&["outbox", "list", "--outbox", &db, "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["status"], "delivered");
    assert_eq!(listed[0]["last_error"], Value::Null, "{listed}");
    assert_eq!(self::stats(&db)["attempts"], 4);
}

#[test]
fn deliver_follow_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = one_pending(dir.path(), "");
    let out = dir.path().join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let child = escrow_command(&[
        "outbox",
        "deliver",
        "--follow",
        "--poll-ms",
        "20",
        "--outbox",
        &db,
        "--sink",
        &sink,
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while lines(&out).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "it exits, not killed: {stderr}"
    );
    assert!(stderr.contains("escrow: stopping"), "{stderr}");
    assert!(stderr.contains("delivered 1"), "{stderr}");
}

/// A host killed while it delivers keeps its claim until its short delivery
/// lease ends: `deliver --once` and `stats` say so, and until when, instead
/// of a bare `delivered 0`; once it has ended, the next delivery takes them.
#[test]
fn deliver_and_stats_say_what_a_dead_host_s_claim_holds_and_a_delivery_takes_it_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let db = db.to_str().unwrap();
    // 1,000 intents of 200 bytes: more than a pipe holds, so with nobody
    // reading its stdout the host blocks mid-delivery, its claim held.
    let steps: Vec<Value> = (0..1000)
        .map(|i| json!({ "defer": "a.b", "payload": format!("{i:0>200}") }))
        .collect();
    let input = steps_file(dir.path(), json!(steps));
    let cfg = config(dir.path(), "[outbox]\ndelivery_lease_ms = 3000\n");
    let mut host = escrow_command(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        db,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "never claimed");
        if Path::new(db).exists() {
            let output = escrow(&["outbox", "stats", "--outbox", db, "--json"]);
            if let Ok(stats) = serde_json::from_slice::<Value>(&output.stdout)
                && stats["claimed"].as_u64() > Some(0)
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    host.kill().unwrap();
    host.wait().unwrap();

    let out = dir.path().join("out.jsonl");
    let sink = format!("file:{}", out.display());
    let deliver = escrow(&[
        "outbox", "deliver", "--once", "--outbox", db, "--sink", &sink,
    ]);
    let stderr = text(&deliver.stderr);
    assert_eq!(deliver.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("delivered 0"), "{stderr}");
    assert!(
        stderr.contains("claimed by another worker or host, until "),
        "{stderr}"
    );
    let held = stats(db);
    assert!(held["claimed"].as_u64() > Some(0), "{held}");
    assert!(
        held["claimed_until"].as_str().unwrap().ends_with('Z'),
        "{held}"
    );

    std::thread::sleep(Duration::from_millis(3100));
    let deliver = escrow(&[
        "outbox", "deliver", "--once", "--outbox", db, "--sink", &sink,
    ]);
    assert_eq!(deliver.status.code(), Some(0), "{}", text(&deliver.stderr));
    let after = stats(db);
    assert_eq!(
        (after["pending"].as_u64(), after["claimed"].as_u64()),
        (Some(0), Some(0)),
        "{after}"
    );
    assert_eq!(after["delivered"], 1000);
    assert_eq!(lines(&out).len() as u64, held["pending"].as_u64().unwrap());
}

#[test]
fn outbox_prune_deletes_what_ended_before_the_age_given_and_dead_entries_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cfg) = one_pending(dir.path(), "[outbox]\nmax_attempts = 1\n");
    // The one intent dies on /dev/full; a second run's intent is delivered.
    let dead = escrow(&[
        "outbox",
        "deliver",
        "--once",
        "--outbox",
        &db,
        "--config",
        &cfg,
        "--sink",
        "file:/dev/full",
    ]);
    assert_eq!(dead.status.code(), Some(3), "{}", text(&dead.stderr));
    let input = steps_file(dir.path(), json!([{ "defer": "a.b", "payload": 2 }]));
    let out = dir.path().join("out.jsonl");
    let run = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        &cfg,
        "--input-file",
        &input,
        "--outbox",
        &db,
        "--sink",
        &format!("file:{}", out.display()),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let before = stats(&db);
    assert_eq!(
        (before["delivered"].as_u64(), before["dead"].as_u64()),
        (Some(1), Some(1))
    );

    let prune = |extra: &[&str]| {
        let mut args = vec!["outbox", "prune", "--outbox", &db];
        args.extend_from_slice(extra);
        escrow(&args)
    };
    let young = prune(&["--older-than", "1h"]);
    assert_eq!(young.status.code(), Some(0), "{}", text(&young.stderr));
    assert!(
        text(&young.stderr).contains("deleted 0 delivered entries"),
        "{}",
        text(&young.stderr)
    );

    std::thread::sleep(Duration::from_millis(5));
    let delivered = prune(&["--older-than", "1ms"]);
    assert!(
        text(&delivered.stderr).contains("deleted 1 delivered entries that ended before "),
        "{}",
        text(&delivered.stderr)
    );
    assert_eq!(
        stats(&db)["dead"],
        1,
        "dead entries are kept without --dead"
    );
    let with_dead = prune(&["--older-than", "1ms", "--dead"]);
    assert!(
        text(&with_dead.stderr).contains("deleted 1 delivered or dead entries"),
        "{}",
        text(&with_dead.stderr)
    );
    let after = stats(&db);
    assert_eq!(
        (after["delivered"].as_u64(), after["dead"].as_u64()),
        (Some(0), Some(0))
    );

    let bad = prune(&["--older-than", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("soon"), "{}", text(&bad.stderr));
}

/// A SQLite outbox on a full disk (a 512 KiB tmpfs, mounted in a mount
/// namespace of the test's own, which needs root and `unshare`): a run whose
/// intents do not fit fails with one line, reports none of them committed,
/// and the outbox holds what it held before.
#[test]
fn a_run_into_a_sqlite_outbox_on_a_full_disk_fails_and_reports_nothing_committed() {
    let probe = Command::new("unshare").args(["--mount", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `unshare --mount` needs root and util-linux");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("full")).unwrap();
    let cfg = config(d, "");
    std::fs::write(
        d.join("small.json"),
        json!({ "steps": [{ "defer": "a.b", "payload": 1 }] }).to_string(),
    )
    .unwrap();
    let big: Vec<Value> = (0..1000)
        .map(|_| json!({ "defer": "a.b", "payload": "x".repeat(900) }))
        .collect();
    std::fs::write(d.join("big.json"), json!({ "steps": big }).to_string()).unwrap();
    let escrow = env!("CARGO_BIN_EXE_escrow");
    let plugin = fixtures::SCRIPTED;
    let script = format!(
        "cd {d} && mount -t tmpfs -o size=512k tmpfs full && \
         {escrow} run {plugin} --config {cfg} --input-file small.json --outbox full/o.db --no-deliver >/dev/null 2>&1 && \
         {escrow} run {plugin} --config {cfg} --input-file big.json --outbox full/o.db --no-deliver --json >big.out 2>big.err; \
         echo $? >big.code; \
         {escrow} run {plugin} --config {cfg} --input-file big.json --outbox full/o.db --no-deliver >/dev/null 2>human.err; \
         {escrow} outbox stats --outbox full/o.db --json >stats.json",
        d = d.display(),
    );
    let shell = Command::new("unshare")
        .env_remove("ESCROW_LOG")
        .env(
            "ESCROW_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
        )
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(shell.status.success(), "{}", text(&shell.stderr));
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap();
    assert_eq!(read("big.code").trim(), "1");
    let report: Value = serde_json::from_str(&read("big.out")).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("the committed intents could not be stored"),
        "{}",
        report["error"]
    );
    assert!(
        report["intents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["fate"] == "discarded"),
        "nothing reported committed"
    );
    let human = read("human.err");
    assert_eq!(
        human.lines().filter(|l| l.starts_with("escrow: ")).count(),
        1,
        "{human}"
    );
    assert!(human.contains("disk is full"), "{human}");
    let stats: Value = serde_json::from_str(&read("stats.json")).unwrap();
    assert_eq!(stats["pending"], 1, "only the run that fitted is stored");
}
