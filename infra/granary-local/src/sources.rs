//! Stands in for Lambda's event sources: SQS event source mappings (receive a batch, invoke with a real
//! `SqsEvent`, delete what succeeded, leave the reported failures to come back after their visibility
//! timeout) and EventBridge schedules (invoke with a real scheduled event).

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use granary_lambda::sqs::sqs_event;
use granary_ports::Backend;
use granary_ports::queue::{MAX_BATCH, receive_up_to};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long an idle poller waits on its lowest-priority queue before looking at the higher ones again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Whether every batch is delivered twice, at once, to two concurrent invocations
/// (`GRANARY_LOCAL_DUPLICATE_DELIVERY=1`): SQS delivers at least once, and a message can be in two
/// invocations at the same time; with this on, a run shows whether every handler holds to that.
fn duplicate_delivery() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GRANARY_LOCAL_DUPLICATE_DELIVERY").is_ok_and(|v| v == "1" || v == "true"))
}

/// A scheduled event, as EventBridge sends it to a rule's target.
pub fn scheduled_event(rule: &str, now: chrono::DateTime<chrono::Utc>) -> Result<CloudWatchEvent, String> {
    serde_json::from_value(json!({
        "version": "0",
        "id": uuid::Uuid::now_v7().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "local",
        "resources": [format!("arn:aws:events:local:000000000000:rule/{rule}")],
        "detail": {}
    }))
    .map_err(|e| format!("cannot build scheduled event: {e}"))
}

/// Polls `queues` in strict priority order (the first non-empty one wins) and invokes `handler` with
/// batches of up to `batch_size`, until `shutdown` turns true. A batch in progress always completes.
pub async fn run_sqs_source<H, F>(
    backend: Backend,
    function: &'static str,
    queues: Vec<String>,
    batch_size: usize,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(LambdaEvent<SqsEvent>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<SqsBatchResponse, lambda_runtime::Error>> + Send + 'static,
{
    while !*shutdown.borrow() {
        let mut batch = None;
        for (i, queue) in queues.iter().enumerate() {
            let wait = if i + 1 == queues.len() { IDLE_WAIT } else { Duration::ZERO };
            match receive_up_to(backend.queue.as_ref(), queue, batch_size, wait).await {
                Ok(msgs) if !msgs.is_empty() => {
                    batch = Some((queue.clone(), msgs));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(function, %queue, error = %e, "receive failed");
                    let _ = tokio::time::timeout(Duration::from_secs(1), shutdown.changed()).await;
                }
            }
        }
        let Some((queue, messages)) = batch else { continue };
        let event = match sqs_event(&queue, &messages) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(function, error = %e, "cannot build the event; the messages will be received again");
                continue;
            }
        };
        // Run the invocation as its own task, so that a panic fails the invocation (as on Lambda) and
        // not the poller.
        let h = handler.clone();
        let twin = duplicate_delivery().then(|| {
            let (h, event) = (handler.clone(), event.clone());
            tokio::spawn(async move { h(LambdaEvent::new(event, Context::default())).await })
        });
        let outcome = tokio::spawn(async move { h(LambdaEvent::new(event, Context::default())).await }).await;
        // The twin's outcome does not matter: what it did must be what the first did.
        if let Some(twin) = twin {
            let _ = twin.await;
        }
        let failed: HashSet<String> = match outcome {
            Ok(Ok(response)) => response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect(),
            Ok(Err(e)) => {
                tracing::error!(function, %queue, error = %e, "invocation failed; the whole batch will be received again");
                continue;
            }
            Err(e) => {
                tracing::error!(function, %queue, error = %e, "invocation panicked; the whole batch will be received again");
                continue;
            }
        };
        if !failed.is_empty() {
            tracing::warn!(function, %queue, failed = failed.len(), "messages reported as failed come back after their visibility timeout");
        }
        let done: Vec<String> = messages.iter().filter(|m| !failed.contains(&m.message_id)).map(|m| m.receipt_handle.clone()).collect();
        let deletes = done.chunks(MAX_BATCH).map(|chunk| backend.queue.delete_batch(&queue, chunk.to_vec()));
        for outcome in futures::future::join_all(deletes).await {
            if let Err(e) = outcome {
                tracing::error!(function, %queue, error = %e, "delete failed; processed messages will be received again");
            }
        }
    }
}

/// Invokes `handler` with a scheduled event every `every`, until `shutdown` turns true.
pub async fn run_schedule<H, F>(backend: Backend, rule: &'static str, every: Duration, handler: Arc<H>, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(LambdaEvent<CloudWatchEvent>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Value, lambda_runtime::Error>> + Send + 'static,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let event = match scheduled_event(rule, backend.clock.now()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(rule, error = %e, "cannot build the scheduled event");
                continue;
            }
        };
        let h = handler.clone();
        match tokio::spawn(async move { h(LambdaEvent::new(event, Context::default())).await }).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(rule, error = %e, "scheduled invocation failed"),
            Err(e) => tracing::error!(rule, error = %e, "scheduled invocation panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use granary_embedded::{Embedded, EmbeddedOptions};
    use granary_ports::{OutgoingMessage, QueueSpec, Resources};
    use std::sync::Mutex;

    #[tokio::test]
    async fn queues_are_served_strictly_by_priority() {
        let dir = tempfile::tempdir().unwrap();
        let queues = ["high", "normal", "low"];
        let resources = Resources { queues: queues.iter().map(|q| QueueSpec::new(*q)).collect(), ..Resources::default() };
        let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
        // LOW and NORMAL are queued first: HIGH still goes first.
        for q in ["low", "normal", "high"] {
            for chunk in 0..5 {
                let batch = (0..10).map(|i| OutgoingMessage::new(format!("{q}-{}", chunk * 10 + i))).collect();
                backend.queue.send_batch(q, batch).await.unwrap();
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let log = seen.clone();
        let handler = Arc::new(move |e: LambdaEvent<SqsEvent>| {
            let log = log.clone();
            async move {
                let mut l = log.lock().unwrap();
                for r in e.payload.records {
                    l.push(r.body.unwrap_or_default());
                }
                Ok(SqsBatchResponse::default())
            }
        });
        let poller =
            tokio::spawn(run_sqs_source(backend.clone(), "test", queues.iter().map(|q| q.to_string()).collect(), 10, handler, stop_rx));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while seen.lock().unwrap().len() < 150 {
            assert!(std::time::Instant::now() < deadline, "not every message was delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        poller.await.unwrap();
        let order: Vec<String> = seen.lock().unwrap().iter().map(|b| b.split('-').next().unwrap().to_owned()).collect();
        let rank = |q: &str| queues.iter().position(|x| *x == q).unwrap();
        assert!(order.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "served out of priority order: {order:?}");
        for q in queues {
            assert_eq!(backend.queue.depth(q).await.unwrap().total(), 0, "{q} drained: every batch deleted after success");
        }
    }

    #[tokio::test]
    async fn a_batch_over_ten_is_gathered_from_several_receives_and_deleted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let resources = Resources { queues: vec![QueueSpec::new("q")], ..Resources::default() };
        let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
        for chunk in 0..4 {
            let batch = (0..10).map(|i| OutgoingMessage::new(format!("{}", chunk * 10 + i))).collect();
            backend.queue.send_batch("q", batch).await.unwrap();
        }
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let log = batches.clone();
        let handler = Arc::new(move |e: LambdaEvent<SqsEvent>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(e.payload.records.iter().map(|r| r.body.clone().unwrap_or_default()).collect::<Vec<_>>());
                Ok(SqsBatchResponse::default())
            }
        });
        let poller = tokio::spawn(run_sqs_source(backend.clone(), "test", vec!["q".into()], 25, handler, stop_rx));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() < 40 {
            assert!(std::time::Instant::now() < deadline, "not every message was delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        poller.await.unwrap();
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![25, 15], "batches of up to 25 from receives of up to 10");
        let mut seen: Vec<String> = batches.lock().unwrap().concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 40, "each message once");
        assert_eq!(backend.queue.depth("q").await.unwrap().total(), 0, "every message of the batches deleted");
    }

    #[test]
    fn scheduled_event_has_eventbridge_shape() {
        let e = scheduled_event("granary-outbox-relay", chrono::Utc::now()).unwrap();
        assert_eq!(e.detail_type.as_deref(), Some("Scheduled Event"));
        assert_eq!(e.source.as_deref(), Some("aws.events"));
    }
}
