//! Queue sinks on real servers: NATS JetStream (`nats-server -js`) and Redis
//! Streams (`redis-server`). Each message carries the intent's identity;
//! a redelivery adds nothing; a server killed and restarted mid-delivery
//! loses nothing and repeats nothing in the stream.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use escrow_fixtures::nats::NatsServer;
use escrow_fixtures::redis::RedisServer;
use escrow_host::backends::MemoryBreakers;
use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::config::Config;
use escrow_host::handlers::Handlers;
use escrow_host::outbox::{Outbox, RetryPolicy, SqliteOutbox, Worker};
use escrow_host::sinks::{NatsJetStream, RedisStream, Sink, Sinks};
use escrow_host::{Delivery, Fate, Intent, RunOptions, Status};
use escrow_tests::{all_effects, scripted};
use serde_json::json;

/// Creates the stream `name` capturing `subjects.>` on `server`.
async fn stream(server: &NatsServer, name: &str, subjects: &str) -> jetstream::stream::Stream {
    let client = async_nats::connect(server.url()).await.unwrap();
    jetstream::new(client)
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{subjects}.>")],
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Every message in `stream`, by sequence.
async fn messages(
    stream: &mut jetstream::stream::Stream,
) -> Vec<jetstream::message::StreamMessage> {
    let count = stream.info().await.unwrap().state.messages;
    let mut all = Vec::new();
    for sequence in 1..=count {
        all.push(stream.get_raw_message(sequence).await.unwrap());
    }
    all
}

fn header(message: &jetstream::message::StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no header {name}"))
        .to_string()
}

/// A message's fields (read by name with `field`) say which intent it is.
fn assert_carries_the_identity_of(intent: &Intent, field: impl Fn(&str) -> String) {
    for (name, expected) in [
        ("idempotency_key", intent.idempotency_key()),
        ("run_id", intent.run_id.to_string()),
        ("effect", intent.effect.clone()),
        ("plugin", intent.plugin.to_string()),
        ("seq", intent.seq.to_string()),
    ] {
        assert_eq!(field(name), expected, "{name}");
    }
}

fn two_intents() -> RunOptions {
    let steps = json!([
        { "defer": "orders.charge", "payload": { "order": 42, "cents": 1999 } },
        { "defer": "email.send", "payload": "not json" },
    ]);
    RunOptions::new()
        .grants(all_effects())
        .input(serde_json::to_vec(&json!({ "steps": steps })).unwrap())
}

/// A stream entry's fields, by name.
type Fields = BTreeMap<String, Vec<u8>>;

/// Every entry of the Redis stream `name`, in order.
async fn entries(server: &RedisServer, db: u8, name: &str) -> Vec<Fields> {
    let client = redis::Client::open(format!("{}{db}", server.url())).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let range: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(name)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    range.into_iter().map(|(_, fields)| fields).collect()
}

fn text(entry: &Fields, field: &str) -> String {
    String::from_utf8(entry[field].clone()).unwrap()
}

#[tokio::test]
async fn intents_published_to_jetstream_carry_their_payload_and_identity_and_wait_for_the_ack() {
    let server = NatsServer::start();
    let mut stream = stream(&server, "ORDERS", "orders").await;
    let mut sinks = Sinks::new();
    sinks
        .route(
            "*",
            NatsJetStream::new(&format!("{}/orders.intents", server.url())).unwrap(),
        )
        .unwrap();
    let outcome = scripted()
        .with_sinks(sinks)
        .run(two_intents())
        .await
        .unwrap();

    assert_eq!(outcome.status(), Status::Committed);
    assert!(
        outcome
            .intents
            .iter()
            .all(|i| i.fate == Fate::Dispatched(Delivery::Delivered))
    );
    let messages = messages(&mut stream).await;
    assert_eq!(messages.len(), 2, "one message per intent, acknowledged");
    for (message, intent) in messages.iter().zip(&outcome.intents) {
        assert_eq!(message.subject.as_str(), "orders.intents");
        assert_eq!(message.payload.as_ref(), &intent.payload[..]);
        assert_eq!(header(message, "Nats-Msg-Id"), intent.idempotency_key());
        assert_carries_the_identity_of(intent, |name| header(message, name));
    }
}

#[tokio::test]
async fn a_redelivered_intent_is_dropped_by_the_jetstream_duplicate_window() {
    let server = NatsServer::start();
    let mut stream = stream(&server, "ORDERS", "orders").await;
    let recorded = scripted().run(two_intents()).await.unwrap();
    let sink = NatsJetStream::new(&format!("{}/orders.intents", server.url())).unwrap();
    for _ in 0..3 {
        for intent in &recorded.intents {
            sink.deliver(intent).await.unwrap();
        }
    }
    assert_eq!(messages(&mut stream).await.len(), 2);
}

#[tokio::test]
async fn a_subject_no_stream_captures_fails_delivery_with_one_line_naming_it() {
    let server = NatsServer::start();
    let _stream = stream(&server, "ORDERS", "orders").await;
    let recorded = scripted().run(two_intents()).await.unwrap();
    let sink = NatsJetStream::new(&format!("{}/nowhere.intents", server.url())).unwrap();

    let error = sink
        .deliver(&recorded.intents[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no JetStream stream captures subject `nowhere.intents`"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
}

#[tokio::test]
async fn a_nats_server_that_is_down_fails_delivery_naming_it() {
    let mut server = NatsServer::start();
    let url = server.url();
    server.kill();
    let recorded = scripted().run(two_intents()).await.unwrap();
    let sink = NatsJetStream::new(&format!("{url}/orders.intents")).unwrap();

    let error = sink
        .deliver(&recorded.intents[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("NATS at {}", &url["nats://".len()..])),
        "{error}"
    );
}

#[tokio::test]
async fn a_breaker_in_front_of_a_jetstream_route_stops_attempts_once_the_server_failed() {
    let mut server = NatsServer::start();
    let url = format!("{}/orders.intents", server.url());
    server.kill();
    let mut breakers = Breakers::new(std::sync::Arc::new(MemoryBreakers::new()));
    breakers
        .define(
            "nats",
            BreakerConfig {
                failure_threshold: 1,
                ..BreakerConfig::default()
            },
        )
        .unwrap();
    let mut sinks = Sinks::new();
    sinks
        .route_through(
            "*",
            NatsJetStream::new(&url).unwrap(),
            breakers.into(),
            "nats",
        )
        .unwrap();
    let outcome = scripted()
        .with_sinks(sinks)
        .run(two_intents())
        .await
        .unwrap();

    assert!(matches!(
        &outcome.intents[0].fate,
        Fate::Dispatched(Delivery::Failed(error)) if error.starts_with("NATS at")
    ));
    assert!(matches!(
        &outcome.intents[1].fate,
        Fate::Dispatched(Delivery::NotAttempted(why)) if why.starts_with("breaker `nats` is open")
    ));
}

#[tokio::test]
async fn intents_added_to_a_redis_stream_carry_their_payload_and_identity_in_the_database_named() {
    let server = RedisServer::start();
    let mut sinks = Sinks::new();
    let url = format!("redis-stream://127.0.0.1:{}/intents?db=3", server.port());
    sinks.route("*", RedisStream::new(&url).unwrap()).unwrap();
    let outcome = scripted()
        .with_sinks(sinks)
        .run(two_intents())
        .await
        .unwrap();

    assert_eq!(outcome.status(), Status::Committed);
    assert!(
        entries(&server, 0, "intents").await.is_empty(),
        "db 0 untouched"
    );
    let entries = entries(&server, 3, "intents").await;
    assert_eq!(entries.len(), 2);
    for (entry, intent) in entries.iter().zip(&outcome.intents) {
        assert_eq!(entry["payload"], intent.payload);
        assert_carries_the_identity_of(intent, |name| text(entry, name));
    }
}

#[tokio::test]
async fn a_redelivered_intent_adds_nothing_to_the_redis_stream() {
    let server = RedisServer::start();
    let recorded = scripted().run(two_intents()).await.unwrap();
    let sink = RedisStream::new(&format!(
        "redis-stream://127.0.0.1:{}/intents",
        server.port()
    ))
    .unwrap();
    for _ in 0..3 {
        for intent in &recorded.intents {
            sink.deliver(intent).await.unwrap();
        }
    }
    assert_eq!(entries(&server, 0, "intents").await.len(), 2);
}

#[test]
fn malformed_queue_urls_are_refused_with_one_line_naming_what_is_wrong() {
    for (url, expected) in [
        ("nats://127.0.0.1:4222", "names no subject"),
        ("nats://127.0.0.1:4222/a..b", "is not a NATS subject"),
        ("nats://127.0.0.1:4222/a?x=1", "takes no parameters"),
        (
            "nats:///subject",
            "is not of the form nats://HOST:PORT/SUBJECT",
        ),
    ] {
        let error = NatsJetStream::new(url).err().unwrap();
        assert!(error.contains(expected), "{url}: {error}");
    }
    for (url, expected) in [
        ("redis-stream://127.0.0.1:6379", "names no stream"),
        ("redis-stream://h/s?db=x", "db `x` is not a database number"),
        (
            "redis-stream://h/s?dedup_window=soon",
            "dedup_window `soon` is not a duration",
        ),
        ("redis-stream://h/s?maxlen=1", "unknown parameter `maxlen`"),
        ("redis-stream://u:secret@h/s?db=x", "u:***@h"),
    ] {
        let error = RedisStream::new(url).err().unwrap();
        assert!(error.contains(expected), "{url}: {error}");
        assert!(!error.contains("secret"), "{error}");
    }
}

#[test]
fn a_config_routes_effects_to_queue_sinks_and_refuses_a_route_behind_an_undefined_breaker() {
    let path = std::path::Path::new("escrow.toml");
    let config = Config::parse(
        "sink = \"nats://127.0.0.1:4222/all.intents\"\n\
         [[routes]]\neffects = \"email.*\"\nsink = \"redis-stream://127.0.0.1:6379/emails?db=2\"\nbreaker = \"mailer\"\n\
         [breakers.mailer]\nfailure_threshold = 2\n",
        path,
    )
    .unwrap();
    let routes: Vec<_> = config
        .routes()
        .map(|(effects, _, breaker)| (effects, breaker))
        .collect();
    assert_eq!(routes, [("email.*", Some("mailer"))]);

    let error = Config::parse(
        "[[routes]]\neffects = \"email.*\"\nsink = \"redis-stream://h/emails\"\nbreaker = \"nope\"\n",
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("routes[0]: breaker `nope` is not defined"),
        "{error}"
    );
    let error = Config::parse(
        "[[routes]]\neffects = \"*\"\nsink = \"kafka://h/t\"\n",
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("routes[0]: unknown sink `kafka://h/t`"),
        "{error}"
    );
}

/// The idempotency keys a stream holds are the 2,000 of
/// [`deliver_through_a_restart`], each once.
fn assert_every_intent_once(keys: &[String]) {
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 2000, "every intent arrived");
    assert_eq!(keys.len(), 2000, "none twice in the stream");
}

/// Delivers 2,000 intents from a SQLite outbox through `sink` while
/// `restart` kills and restarts its server once 200 are delivered; returns
/// what `restart` returned once every intent is delivered.
async fn deliver_through_a_restart<R: Send + 'static>(
    sink: impl Sink,
    restart: impl FnOnce() -> R + Send + 'static,
) -> R {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("o.db")).unwrap())
        .lease(Duration::from_millis(500))
        // Retried quickly, and for as long as the outage lasts.
        .retry_policy(RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        });
    let count = 2000;
    super::outbox::write_run(&outbox, count - 1).await;
    let mut sinks = Sinks::new();
    sinks.route("*", sink).unwrap();
    let worker = Worker::new(outbox.clone(), sinks, Handlers::new())
        .poll_interval(Duration::from_millis(20))
        .spawn();
    while outbox.store().stats().await.unwrap().delivered < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarted = tokio::task::spawn_blocking(restart).await.unwrap();
    let started = Instant::now();
    loop {
        let stats = outbox.store().stats().await.unwrap();
        if stats.delivered == count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not all delivered: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await.unwrap();
    restarted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_killed_and_restarted_mid_delivery_gets_every_intent_once() {
    let mut server = NatsServer::start();
    let mut stream = stream(&server, "BULK", "bulk").await;
    let sink = NatsJetStream::new(&format!("{}/bulk.intents", server.url())).unwrap();
    let _server = deliver_through_a_restart(sink, move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        server
    })
    .await;

    let ids: Vec<String> = messages(&mut stream)
        .await
        .iter()
        .map(|m| header(m, "Nats-Msg-Id"))
        .collect();
    assert_every_intent_once(&ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stream_killed_and_restarted_mid_delivery_gets_every_intent_once() {
    let mut server = RedisServer::start_persistent();
    let sink =
        RedisStream::new(&format!("redis-stream://127.0.0.1:{}/bulk", server.port())).unwrap();
    let server = deliver_through_a_restart(sink, move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        server
    })
    .await;

    let entries = entries(&server, 0, "bulk").await;
    let keys: Vec<String> = entries.iter().map(|e| text(e, "idempotency_key")).collect();
    assert_every_intent_once(&keys);
}
