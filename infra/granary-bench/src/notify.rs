//! Notifications delivered per second to one queue recipient: creations queued on the release
//! granary-local, each notified to a recipient whose own queue is declared in a copy of the template.

use crate::{memory_kib, per_second, percentile, queue_creations};
use granary_domain::dissemination::{Recipient, RecipientFilter, Target};
use granary_embedded::{Embedded, EmbeddedOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// The recipient's own queue, declared in the template copy the runner is given.
const RECIPIENT_QUEUE: &str = "bench-recipient";

/// Queues `features` creations, starts the runner with a queue recipient, and waits until the
/// recipient's queue holds one notification per creation.
pub(crate) async fn run(features: usize, workers: usize, runner: &Path) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let template =
        granary_resources::TEMPLATE.replacen("Resources:\n", "Resources:\n  BenchRecipientQueue:\n    Type: AWS::SQS::Queue\n\n", 1);
    let template_path = dir.path().join("template.yaml");
    std::fs::write(&template_path, &template).expect("template copy");
    let data = dir.path().join("data");
    let resources = granary_resources::from_template(&template, |_| None).expect("template");
    assert!(resources.queues.iter().any(|q| q.name == RECIPIENT_QUEUE), "the template copy declares {RECIPIENT_QUEUE}");
    let b = Embedded::open(EmbeddedOptions::new(&data, resources)).expect("open").backend();
    crate::define_model(&b).await;
    let recipient = Recipient {
        target: Target::Queue { queue: RECIPIENT_QUEUE.into() },
        ack_required: false,
        blocking: false,
        filter: RecipientFilter::default(),
        secret: None,
    };
    granary_stores::dissemination::RecipientStore::new("features").put(&b, "bench", &recipient, "bench").await.expect("recipient");
    let start = Instant::now();
    queue_creations(&b, "feature-normal", "notify", features, crate::EMBEDDED_SENDS_AT_ONCE).await;
    println!("queued {features} creation requests in {:.1} s", start.elapsed().as_secs_f64());

    let spawn = || {
        std::process::Command::new(runner)
            .args(["serve", "--listen", "127.0.0.1:0", "--ingest-workers", &workers.to_string(), "--data-dir"])
            .arg(&data)
            .env("GRANARY_LOG", "warn")
            .env("GRANARY_LOCAL_TEMPLATE", &template_path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (cargo build --release -p granary-local)", runner.display()))
    };
    let mut child = spawn();
    let started = Instant::now();
    let pid = child.id();
    let mut peak_kib = 0u64;
    let mut first_notified: Option<Duration> = None;
    let mut ingested: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        peak_kib = peak_kib.max(memory_kib(pid, "VmHWM:"));
        let notified = b.queue.depth(RECIPIENT_QUEUE).await.expect("depth").total() as usize;
        if notified > 0 && first_notified.is_none() {
            first_notified = Some(started.elapsed());
        }
        if ingested.is_none() && b.queue.depth("feature-response").await.expect("depth").total() as usize >= 2 * features {
            ingested = Some(started.elapsed());
        }
        if notified >= features {
            break;
        }
        assert!(Instant::now() < deadline, "not every notification delivered within an hour ({notified} of {features})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    // Each notification's delay from its feature's creation to its arrival on the recipient's queue,
    // and that every one arrived once.
    let mut delays = Vec::with_capacity(features);
    let mut ids = std::collections::HashSet::with_capacity(features);
    loop {
        let got = b.queue.receive(RECIPIENT_QUEUE, 10, None, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            break;
        }
        for m in &got {
            ids.insert(m.attributes.get("granary.event.id").cloned().unwrap_or_default());
            let body: serde_json::Value = serde_json::from_str(&m.body).expect("notification");
            let urn = body.pointer("/payload/urn").and_then(|u| u.as_str()).unwrap_or_default();
            let provider_id = body.pointer("/payload/id").and_then(|u| u.as_str()).unwrap_or_default();
            let key = granary_ports::Key::new(format!("F#{}", granary_domain::entity_uuid(provider_id)), "V001");
            if let Some(item) = b.table.get("features", &key).await.expect("get")
                && item.get_str("urn") == Some(urn)
            {
                delays.push(m.sent_at_ms - item.get_i64("createdAt").unwrap_or(m.sent_at_ms));
            }
        }
        b.queue.delete_batch(RECIPIENT_QUEUE, got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    assert_eq!(ids.len(), features, "one notification per creation, each once");
    delays.sort_unstable();
    let first = first_notified.unwrap_or_default();
    let ingest_time = ingested.unwrap_or(elapsed);
    println!("notification benchmark: {features} creations, each notified to one queue recipient, {workers} ingest workers");
    println!("  creations ingested:     {:>10.0} features/s ({:.1} s)", per_second(features, ingest_time), ingest_time.as_secs_f64());
    println!(
        "  notifications delivered:{:>10.0} per second (first at {:.1} s, all {features} by {:.1} s)",
        per_second(features, elapsed - first),
        first.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  creation to delivery:   p50 {} ms, p99 {} ms ({} measured)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.len()
    );
    println!("  runner peak RSS:        {:>10.1} MiB", peak_kib as f64 / 1024.0);

    // Dissemination alone: a notification of each feature (an admin's NOTIFIED) queued while the
    // runner is down, then delivered by a runner started on them.
    let mut batch = Vec::with_capacity(10);
    for i in 0..features {
        let key = granary_ports::Key::new(format!("F#{}", granary_domain::entity_uuid(&format!("notify-{i:07}"))), "V001");
        let item = b.table.get("features", &key).await.expect("get").expect("created");
        let urn = item.get_str("urn").unwrap_or_default().to_owned();
        let request_id = format!("n{i}");
        let body = serde_json::json!({
            "metadata": {"action": "NOTIFIED", "sessionOwner": "bench", "session": "notify", "requestId": request_id, "requestOwner": "bench"},
            "payload": item.get("feature").cloned().unwrap_or_default(),
        });
        let id = granary_domain::dissemination::notification_id(&urn, "NOTIFIED", &request_id);
        batch.push(granary_ports::OutgoingMessage::new(body.to_string()).attribute("granary.event.id", id));
        if batch.len() == 10 {
            b.queue.send_batch("feature-notification", std::mem::take(&mut batch)).await.expect("send");
        }
    }
    if !batch.is_empty() {
        b.queue.send_batch("feature-notification", batch).await.expect("send");
    }
    let mut child = spawn();
    let started = Instant::now();
    loop {
        let notified = b.queue.depth(RECIPIENT_QUEUE).await.expect("depth").total() as usize;
        if notified >= features {
            break;
        }
        assert!(Instant::now() < deadline, "not every queued notification delivered within an hour ({notified} of {features})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alone = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  dissemination alone:    {:>10.0} notifications/s ({features} queued, delivered in {:.1} s from the runner's start)",
        per_second(features, alone),
        alone.as_secs_f64()
    );
}
