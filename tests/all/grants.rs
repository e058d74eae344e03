//! Grants: deny by default. Effects need a matching pattern; the guest gets
//! no filesystem or environment unless granted.

use std::sync::Arc;

use escrow_host::policy::{AssertNone, Block, Commit, DropAll, Policy};
use escrow_host::{Fate, Grants, Refusal, RunOptions, Status};
use escrow_tests::{Recorder, fates, results, run_script};
use serde_json::json;

#[tokio::test]
async fn an_effect_without_a_grant_is_refused_not_granted_under_every_policy() {
    let policies: [(&str, Arc<dyn Policy>); 4] = [
        ("commit", Arc::new(Commit)),
        ("drop", Arc::new(DropAll)),
        ("assert-none", Arc::new(AssertNone)),
        ("block", Arc::new(Block::new(["payments.*"]).unwrap())),
    ];
    for (name, policy) in policies {
        let recorder = Recorder::new();
        let options = RunOptions::new()
            .grants(Grants::new().effects(["email.*"]).unwrap())
            .shared_policy(policy);
        let steps = json!([{ "defer": "payments.charge", "payload": 5 }]);
        let outcome = run_script(steps, options, &recorder).await;

        let intent = &outcome.intents[0];
        assert!(
            matches!(&intent.fate, Fate::Refused(Refusal::NotGranted(m)) if m.contains("payments.charge")),
            "{name}: {:?}",
            intent.fate
        );
        assert_eq!(&*intent.rule, "no grant covers it", "{name}");
        assert_eq!(
            intent.payload, b"5",
            "{name}: the refused request is recorded whole"
        );
        assert!(recorder.seen().is_empty(), "{name}");
        if name != "assert-none" {
            assert_eq!(
                results(&outcome)[0]["refused"]["kind"],
                "not-granted",
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn nothing_is_granted_by_default() {
    let steps = json!([{ "defer": "email.send", "payload": 1 }]);
    let outcome = run_script(steps, RunOptions::new(), &Recorder::new()).await;

    assert_eq!(
        outcome.status(),
        Status::Committed,
        "a refusal the guest handles does not fail the run"
    );
    assert_eq!(fates(&outcome), [("email.send", "refused")]);
}

#[tokio::test]
async fn a_grant_pattern_covers_its_family_of_effects_and_no_other() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "email.send", "payload": 1 },
        { "defer": "email.batch.send", "payload": 2 },
        { "defer": "emails.send", "payload": 3 },
    ]);
    let options = RunOptions::new().grants(Grants::new().effects(["email.*"]).unwrap());
    let outcome = run_script(steps, options, &recorder).await;

    assert_eq!(
        fates(&outcome),
        [
            ("email.send", "dispatched"),
            ("email.batch.send", "dispatched"),
            ("emails.send", "refused")
        ]
    );
    assert_eq!(&*outcome.intents[0].rule, "granted by email.*");
}

#[tokio::test]
async fn the_guest_sees_no_filesystem_unless_a_directory_is_granted() {
    let steps = json!([{ "read_file": "/etc/hostname" }, { "read_file": "data.txt" }]);
    let outcome = run_script(steps, RunOptions::new(), &Recorder::new()).await;

    for result in results(&outcome) {
        assert!(result.get("error").is_some(), "{result}");
    }
}

#[tokio::test]
async fn a_granted_directory_is_readable_and_read_only_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "from the host").unwrap();
    let grants = Grants::new().dir(dir.path(), "/data", false);
    let steps = json!([{ "read_file": "/data/data.txt" }, { "write_file": "/data/new.txt" }]);
    let outcome = run_script(steps, RunOptions::new().grants(grants), &Recorder::new()).await;

    let results = results(&outcome);
    assert_eq!(results[0], json!({ "ok": "from the host" }));
    assert!(results[1].get("error").is_some(), "{}", results[1]);
    assert!(!dir.path().join("new.txt").exists());
}

#[tokio::test]
async fn a_writable_directory_grant_lets_the_guest_write_inside_it_and_nowhere_else() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join("secret.txt"), "outside").unwrap();
    let dir = parent.path().join("granted");
    std::fs::create_dir(&dir).unwrap();
    let grants = Grants::new().dir(&dir, "/data", true);
    let steps = json!([
        { "write_file": "/data/new.txt" },
        { "read_file": "/data/../secret.txt" },
        { "write_file": "/data/../escaped.txt" },
    ]);
    let outcome = run_script(steps, RunOptions::new().grants(grants), &Recorder::new()).await;

    let results = results(&outcome);
    assert_eq!(results[0], json!({ "ok": "written" }));
    assert_eq!(
        std::fs::read_to_string(dir.join("new.txt")).unwrap(),
        "written by the guest"
    );
    assert!(results[1].get("error").is_some(), "{}", results[1]);
    assert!(results[2].get("error").is_some(), "{}", results[2]);
    assert!(!parent.path().join("escaped.txt").exists());
}

#[tokio::test]
async fn the_guest_sees_only_the_environment_variables_it_was_granted() {
    let steps = json!([{ "env": "PATH" }, { "env": "REGION" }]);
    let outcome = run_script(steps.clone(), RunOptions::new(), &Recorder::new()).await;
    assert!(results(&outcome).iter().all(|r| r.get("error").is_some()));

    let grants = Grants::new().env("REGION", "eu-west");
    let outcome = run_script(steps, RunOptions::new().grants(grants), &Recorder::new()).await;
    let results = results(&outcome);
    assert!(
        results[0].get("error").is_some(),
        "PATH is not inherited: {}",
        results[0]
    );
    assert_eq!(results[1], json!({ "ok": "eu-west" }));
}

#[tokio::test]
async fn a_granted_directory_that_does_not_exist_is_a_host_error() {
    let grants = Grants::new().dir("/nonexistent/escrow/dir", "/data", false);
    let error = escrow_tests::scripted()
        .run(RunOptions::new().grants(grants).input(r#"{"steps":[]}"#))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/escrow/dir"),
        "{error}"
    );
}

#[tokio::test]
async fn the_guest_has_no_network() {
    // A real server on loopback: a refused connection is the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let steps = json!([{ "connect": address }]);
    let outcome = run_script(steps, RunOptions::new(), &Recorder::new()).await;

    let result = &results(&outcome)[0];
    assert!(result.get("error").is_some(), "{result}");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "no connection reached the server"
    );
}

#[tokio::test]
async fn the_guest_gets_no_arguments() {
    let outcome = run_script(json!(["args"]), RunOptions::new(), &Recorder::new()).await;
    assert_eq!(results(&outcome)[0], json!([]));
}
