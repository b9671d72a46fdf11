//! `granary-bench`: benchmarks that print figures. Build with `--release`; see the README for the
//! figures measured on the reference machine and the commands that produced them.
//!
//! - `ports`: the embedded queue (send, receive and delete in batches of 10) and table (conditional
//!   puts and guarded counter updates) through the port traits, on a fresh data directory.

use clap::{Parser, Subcommand};
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_ports::{Cond, IndexSpec, Item, Key, KeyAttr, OutgoingMessage, QueueSpec, Resources, TableSpec, Update};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "granary-bench", about = "Granary benchmarks; each prints its figures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded queue and table through the ports.
    Ports {
        /// Messages through the queue cycle.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Conditional writes of each kind.
        #[arg(long, default_value_t = 100_000)]
        writes: usize,
        /// Data directory (a temporary one when absent).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn ports(messages: usize, writes: usize, dir: PathBuf) {
    let resources = Resources {
        tables: vec![TableSpec {
            name: "bench".into(),
            indexes: vec![IndexSpec::new("byState", KeyAttr::string("state"), Some(KeyAttr::number("at")))],
            ttl_attr: None,
        }],
        queues: vec![QueueSpec::new("bench").with_dlq("bench-dlq", 5), QueueSpec::new("bench-dlq")],
        buckets: vec![],
    };
    let b = Embedded::open(EmbeddedOptions::new(&dir, resources)).expect("open").backend();
    let body = serde_json::json!({"metadata": {"sessionOwner": "bench", "session": "s"}, "feature": {"id": "p", "properties": {"a": 1}}})
        .to_string();

    // Queue: send everything, then receive and delete everything, both in batches of 10.
    let start = Instant::now();
    for _ in 0..messages.div_ceil(10) {
        let batch = (0..10).map(|_| OutgoingMessage::new(body.clone()).attribute("regards.request.type", "CREATION")).collect();
        b.queue.send_batch("bench", batch).await.expect("send");
    }
    let sent = start.elapsed();
    let start = Instant::now();
    let mut received = 0;
    loop {
        let got = b.queue.receive("bench", 10, None, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            break;
        }
        received += got.len();
        b.queue.delete_batch("bench", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    let drained = start.elapsed();
    let total = messages.div_ceil(10) * 10;
    assert_eq!(received, total, "every message received once");
    // Interleaved: what a steady producer and consumer see.
    let start = Instant::now();
    for _ in 0..messages.div_ceil(10) {
        let batch = (0..10).map(|_| OutgoingMessage::new(body.clone())).collect();
        b.queue.send_batch("bench", batch).await.expect("send");
        let got = b.queue.receive("bench", 10, None, Duration::ZERO).await.expect("receive");
        b.queue.delete_batch("bench", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    let cycle = start.elapsed();

    // Table: put-if-absent on distinct keys, then guarded counter increments on one item.
    let start = Instant::now();
    for i in 0..writes {
        let item =
            Item::new(Key::new(format!("F#{i}"), "V001")).with("state", "RUNNING").with("at", i as i64).with("payload", body.as_str());
        b.table.put("bench", item, Some(Cond::ItemAbsent)).await.expect("put");
    }
    let puts = start.elapsed();
    let start = Instant::now();
    let mut granted = 0;
    for _ in 0..writes {
        if b.table
            .update("bench", &Key::new("slots", "pool"), vec![Update::add("n", 1)], Some(Cond::counter_below("n", 1, writes as i64 / 2)))
            .await
            .is_ok()
        {
            granted += 1;
        }
    }
    let counters = start.elapsed();
    assert_eq!(granted, writes / 2, "the guard held");

    println!("embedded ports benchmark ({total} messages, {writes} writes of each kind, data directory {})", dir.display());
    println!("  queue send, batches of 10:               {:>10.0} messages/s", per_second(total, sent));
    println!("  queue receive + delete, batches of 10:   {:>10.0} messages/s", per_second(total, drained));
    println!("  queue full cycle (send, receive, delete): {:>9.0} messages/s (phases measured apart)", per_second(total, sent + drained));
    println!("  queue full cycle, interleaved batches:   {:>10.0} messages/s", per_second(total, cycle));
    println!("  table put-if-absent (indexed item):      {:>10.0} writes/s", per_second(writes, puts));
    println!("  table guarded counter (n < limit):       {:>10.0} writes/s", per_second(writes, counters));
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Ports { messages, writes, data_dir } => {
            let tmp = tempfile::tempdir().expect("temporary directory");
            let dir = data_dir.unwrap_or_else(|| tmp.path().to_owned());
            ports(messages, writes, dir).await;
        }
    }
}
