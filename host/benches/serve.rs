//! What `POST /v1/plugins/{name}/runs` costs over the library, driven by an
//! HTTP load generator (`oha`) against `escrow serve`'s router, next to what
//! it is made of, measured in the same run:
//!
//! - the library's own run of the same plugin, options and input
//!   (`Plugin::run`: a fresh instance of the Rust checkout, 3 intents
//!   committed to an in-memory sink);
//! - the HTTP round trip of an empty axum handler, driven by `oha` the same
//!   way (the same request, headers and body).
//!
//! The goal: the served run's median ≤ 2 × (the library run's median + the
//! empty round trip's median), one request at a time. Eight at a time, the
//! requests a second are printed next to the library's runs a second with
//! eight in flight.
//!
//! ```sh
//! cargo install oha --locked   # once
//! cargo bench -p escrow-host --bench serve
//! ```

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use escrow_fixtures as fixtures;
use escrow_host::serve::{Served, Service, Tokens, router};
use escrow_host::sinks::FnSink;
use escrow_host::{CallError, Grants, Host, Intent, Plugin, RunOptions};
use serde_json::Value;

/// Requests `oha` sends for each figure.
const REQUESTS: usize = 3_000;

/// Library runs sampled for the median.
const SAMPLES: usize = 1_000;

/// Requests (and library runs) in flight for the throughput figures.
const IN_FLIGHT: usize = 8;

const TOKEN: &str = "operator-token-for-the-bench";

const INPUT: &str = r#"{"id": 42}"#;

fn plugin() -> Plugin {
    Host::builder()
        .route("*", FnSink(|_: &Intent| Ok::<_, CallError>(())))
        .unwrap()
        .build()
        .unwrap()
        .load_file(fixtures::CHECKOUT)
        .unwrap()
}

fn options() -> RunOptions {
    RunOptions::new()
        .grants(
            Grants::new()
                .effects(["payments.charge", "orders.save", "email.send"])
                .unwrap(),
        )
        .input(INPUT.as_bytes().to_vec())
}

/// Serves `app` on a free loopback port; its address.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// What `oha` measured of `url`, `in_flight` requests at a time.
struct Load {
    median: Duration,
    p99: Duration,
    per_second: f64,
}

fn oha(url: &str, in_flight: usize) -> Load {
    let output = Command::new("oha")
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-n", &REQUESTS.to_string(), "-c", &in_flight.to_string()])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Content-Type: application/json", "-d", INPUT, url])
        .output()
        .expect("oha, the load generator: `cargo install oha --locked`");
    assert!(
        output.status.success(),
        "oha: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let codes = &report["statusCodeDistribution"];
    assert_eq!(
        codes["200"].as_u64(),
        Some(REQUESTS as u64),
        "every request must succeed: {codes}"
    );
    let seconds = |v: &Value| Duration::from_secs_f64(v.as_f64().unwrap());
    Load {
        median: seconds(&report["latencyPercentiles"]["p50"]),
        p99: seconds(&report["latencyPercentiles"]["p99"]),
        per_second: report["summary"]["requestsPerSec"].as_f64().unwrap(),
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn serve_runs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let plugin = plugin();
    let library = || async {
        let outcome = plugin.run(options()).await.unwrap();
        assert!(outcome.result.is_ok());
    };

    let mut group = c.benchmark_group("serve");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("library run", |b| b.to_async(&rt).iter(library));
    group.finish();
    let run = median(
        (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                rt.block_on(library());
                started.elapsed()
            })
            .collect(),
    );
    let started = Instant::now();
    rt.block_on(async {
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..SAMPLES {
            if running.len() == IN_FLIGHT {
                running.join_next().await.unwrap().unwrap();
            }
            let plugin = plugin.clone();
            running.spawn(async move { plugin.run(options()).await.unwrap() });
        }
        running.join_all().await;
    });
    let runs_per_second = SAMPLES as f64 / started.elapsed().as_secs_f64();

    let mut tokens = Tokens::new();
    tokens.parse("bench", &format!("operator:{TOKEN}")).unwrap();
    let service = Service::new(tokens).plugin(
        "checkout",
        Served {
            plugin: plugin.clone(),
            options: options(),
            path: None,
        },
    );
    let served = rt.block_on(serve(router(Arc::new(service))));
    let empty = rt.block_on(serve(
        axum::Router::new().route("/empty", axum::routing::post(|| async {})),
    ));

    let served_url = format!("http://{served}/v1/plugins/checkout/runs");
    let empty_url = format!("http://{empty}/empty");
    let round_trip = oha(&empty_url, 1);
    let one = oha(&served_url, 1);
    let empty_many = oha(&empty_url, IN_FLIGHT);
    let many = oha(&served_url, IN_FLIGHT);

    let budget = 2 * (run + round_trip.median);
    println!("\nPOST /v1/plugins/checkout/runs, the Rust checkout, {REQUESTS} requests by oha");
    println!(
        "  one at a time: median {:.3} ms, p99 {:.3} ms",
        ms(one.median),
        ms(one.p99)
    );
    println!(
        "    baselines: library run median {:.3} ms; empty axum handler median {:.3} ms, p99 {:.3} ms",
        ms(run),
        ms(round_trip.median),
        ms(round_trip.p99)
    );
    println!(
        "    ratio to (run + round trip): {:.2}x (goal ≤ 2x: {})",
        one.median.as_secs_f64() / (run + round_trip.median).as_secs_f64(),
        if one.median <= budget {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  {IN_FLIGHT} at a time: {:.0} requests/s; library {:.0} runs/s with {IN_FLIGHT} in flight; empty handler {:.0} requests/s",
        many.per_second, runs_per_second, empty_many.per_second
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    serve_runs(&mut criterion);
    criterion.final_summary();
}
