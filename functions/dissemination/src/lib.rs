//! `dissemination`: delivers each notification (`{metadata: {action, sessionOwner, session, requestId,
//! requestOwner}, payload: feature, recipients?}`) to each recipient that wants it: an SQS queue, or a
//! webhook POSTed the body signed with the recipient's secret, or an SNS topic (AWS backend). Every delivery carries the
//! notification's deterministic id (`<urn>:<action>:<requestId>`) so a receiver drops a redelivery,
//! and is recorded once per feature and recipient.
//!
//! Recipients fail alone: the ones a delivery failed for get a copy of the notification of their own,
//! delayed with exponential backoff (attributes `granary.recipients`, `granary.attempt`), while the
//! others are done. After `GRANARY_NOTIFICATION_ATTEMPTS` attempts the copy goes to the notification
//! dead-letter queue with its reason, and the request to ERROR / REMOTE_NOTIFICATION_ERROR with the
//! notification kept, so that an admin's retry sends it again. A webhook whose URL the outbound policy
//! refuses goes there at its first attempt: every other attempt would be refused the same way.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use granary_domain::dissemination::{EVENT_ID_HEADER, NotificationFacts, Recipient, SIGNATURE_HEADER, Target, notification_id, sign};
use granary_lambda::outbound::{OutboundHttp, Refusal, Timeouts, describe};
use granary_lambda::{Config, sqs};
use granary_ports::{Backend, NoTopics, OutgoingMessage, Topics};
use granary_stores::StoreError;
use granary_stores::dissemination::{Delivery, DisseminationLog, RecipientCache, RecipientStore};
use granary_stores::outbox::OutboxEvent;
use granary_stores::recovery::Recovery;
use granary_stores::requests::Parked;
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The attribute naming the recipients a retried copy is for (comma-separated labels).
pub const ATTR_RECIPIENTS: &str = "granary.recipients";
/// The attribute counting a copy's attempts.
pub const ATTR_ATTEMPT: &str = "granary.attempt";
/// The attribute naming why a notification was dead-lettered.
pub const ATTR_REASON: &str = "granary.dead-letter.reason";

/// The handler and what it needs, built once per cold start.
#[derive(Debug)]
pub struct Dissemination {
    backend: Backend,
    /// The plain ports, for recipients' own queues.
    unguarded: Backend,
    config: Config,
    recipients: RecipientCache,
    log: DisseminationLog,
    recovery: Recovery,
    /// For webhooks, held to the outbound policy and built at its first use.
    http: OutboundHttp,
    /// For SNS topics (none can be reached until [`Dissemination::with_topics`]).
    topics: Arc<dyn Topics>,
    attempts: u32,
    first_delay: Duration,
    dead_letter_queue: String,
}

/// Why a delivery failed, and whether trying again could change it.
struct Failure {
    reason: String,
    /// The outbound policy refused the webhook's URL: the same URL will be refused at every attempt.
    permanent: bool,
}

impl Failure {
    fn transient(reason: String) -> Self {
        Self { reason, permanent: false }
    }
}

/// What became of one notification.
enum Fate {
    Done(Vec<OutboxEvent>),
    Retry(String),
}

impl Dissemination {
    /// The handler over `backend`: recipients read again every `GRANARY_MODEL_CACHE_SECS`, at most
    /// `GRANARY_NOTIFICATION_ATTEMPTS` (default 6) attempts per recipient, the first retry after
    /// `GRANARY_NOTIFICATION_RETRY_SECS` (default 5) and each next one twice later (at most 15 minutes).
    pub fn new(backend: Backend, config: Config) -> Result<Self, String> {
        use granary_lambda::config::env_number;
        let ttl = env_number("GRANARY_MODEL_CACHE_SECS", 30u64)?;
        let attempts = env_number("GRANARY_NOTIFICATION_ATTEMPTS", 6u32)?;
        let first_delay = Duration::from_secs(env_number("GRANARY_NOTIFICATION_RETRY_SECS", 5u64)?);
        Self::with_settings(backend, config, Duration::from_secs(ttl), attempts, first_delay)
    }

    /// The handler reading recipients again every `ttl`, trying each at most `attempts` times, the
    /// first retry after `first_delay`.
    pub fn with_settings(backend: Backend, config: Config, ttl: Duration, attempts: u32, first_delay: Duration) -> Result<Self, String> {
        let attempts = attempts.max(1);
        let recipients = RecipientCache::new(RecipientStore::new(&config.features_table), ttl);
        let log = DisseminationLog::new(&config.features_table, &config.requests_table, &config.response_queue);
        let recovery = Recovery::new(&config.requests_table, &config.response_queue);
        let dead_letter_queue =
            granary_lambda::config::env_or("GRANARY_NOTIFICATION_DEAD_LETTER_QUEUE", "feature-notification-dead-letter");
        let grants = recipients.grants().and(log.grants()).and(recovery.grants()).send(&config.notification_queue).send(&dead_letter_queue);
        Ok(Self {
            // Recipients' own queues are theirs to grant (README): delivered to with the plain port.
            unguarded: backend.clone(),
            backend: granary_ports::access::guard(backend, "dissemination", grants),
            recipients,
            log,
            recovery,
            dead_letter_queue,
            http: OutboundHttp::new(
                config.outbound(),
                Timeouts { connect: Duration::from_secs(5), read: None, total: Some(Duration::from_secs(15)) },
            ),
            config,
            attempts,
            first_delay,
            topics: Arc::new(NoTopics),
        })
    }

    /// The same handler, publishing to recipients' SNS topics through `topics`.
    pub fn with_topics(mut self, topics: Arc<dyn Topics>) -> Self {
        self.topics = topics;
        self
    }

    /// Handles one SQS batch; only notifications that hit a failure of Granary's own storage are retried
    /// by SQS (a recipient's failure is retried by a delayed copy).
    ///
    /// The batch's notifications are delivered at once rather than one after the other: each waits
    /// mostly on its recipients and on its own writes, which are independent (two notifications of
    /// one feature and recipient racing are ordered by the delivery record's conditional write; a
    /// standard queue keeps no order anyway, and receivers tell notifications apart by id).
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut failed = Vec::new();
        let mut events = Vec::new();
        let fates = futures::future::join_all(event.payload.records.iter().map(|msg| self.disseminate(msg))).await;
        for (msg, fate) in event.payload.records.iter().zip(fates) {
            match fate {
                Fate::Done(e) => events.extend(e),
                Fate::Retry(error) => {
                    tracing::warn!(message_id = ?msg.message_id, %error, "notification not handled; SQS will redeliver it");
                    failed.push(msg.message_id.clone().unwrap_or_default());
                }
            }
        }
        if let Err(e) = self.recovery.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, "events left to the outbox relay");
        }
        Ok(sqs::batch_response(failed))
    }

    async fn disseminate(&self, msg: &SqsMessage) -> Fate {
        let text = msg.body.as_deref().unwrap_or_default();
        let body: Value = match serde_json::from_str::<Value>(text) {
            Ok(b) if b.get("payload").is_some() && b.get("metadata").is_some() => b,
            Ok(_) => return self.dead_letter(msg, "not a notification: it needs metadata and payload".into()).await,
            Err(e) => return self.dead_letter(msg, format!("body is not JSON: {e}")).await,
        };
        let field = |p: &str| body.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        let urn = field("/payload/urn");
        let request_id = field("/metadata/requestId");
        let event_id = sqs::attribute(msg, "granary.event.id")
            .map(str::to_owned)
            .unwrap_or_else(|| notification_id(&urn, &field("/metadata/action"), &request_id));
        let attempt: u32 = sqs::attribute(msg, ATTR_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
        let recipients = match self.recipients.get(&self.backend).await {
            Ok(r) => r,
            Err(e) => return Fate::Retry(e.to_string()),
        };
        let facts = NotificationFacts::of(&body);
        let named: Option<Vec<String>> =
            sqs::attribute(msg, ATTR_RECIPIENTS).map(|r| r.split(',').map(str::to_owned).collect()).or_else(|| {
                body.get("recipients").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            });
        // The blocking recipients feature-ingest held the request for: delivered to whatever this
        // function's (cached) view of their filters, so that their acknowledgement can release it.
        let blocked_by: Vec<String> = body
            .pointer("/metadata/blockedBy")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let targets: Vec<&(String, Recipient)> = recipients
            .all
            .iter()
            .filter(|(label, r)| match &named {
                Some(labels) => labels.contains(label),
                None => r.filter.accepts(&facts) || blocked_by.contains(label),
            })
            .collect();
        let session = match (body.pointer("/metadata/sessionOwner"), body.pointer("/metadata/session")) {
            (Some(Value::String(owner)), Some(Value::String(session))) => Some((owner.as_str(), session.as_str())),
            _ => None,
        };
        let mut failures = Vec::new();
        for (label, recipient) in targets {
            // Recorded first: an acknowledgement racing the send then finds its delivery (a send that
            // fails is tried again by a copy, which finds the record and only sends).
            let holds_request = blocked_by.contains(label);
            let delivery = Delivery { urn: &urn, label, recipient, event_id: &event_id, request_id: &request_id, holds_request, session };
            if let Err(e) = self.log.delivered(&self.backend, &delivery).await {
                return Fate::Retry(e.to_string());
            }
            match self.deliver(recipient, text, &event_id).await {
                Ok(()) => tracing::info!(%label, %event_id, "notification delivered"),
                Err(e) => failures.push((label.clone(), e)),
            }
        }
        let mut events = Vec::new();
        if !blocked_by.is_empty() && !request_id.is_empty() {
            // A recipient that holds the request but is gone (or no longer blocks) holds it no more.
            match self.log.release_if_acknowledged(&self.backend, &request_id).await {
                Ok(e) => events.extend(e),
                Err(e) => return Fate::Retry(e.to_string()),
            }
        }
        if failures.is_empty() {
            if sqs::attribute(msg, sqs::ATTR_RELEASED).is_some() && !request_id.is_empty() {
                // An admin's retry of a request whose notification had failed: done now.
                match self.recovery.notification_delivered(&self.backend, &request_id).await {
                    Ok(e) => events.extend(e),
                    Err(e) => return Fate::Retry(e.to_string()),
                }
            }
            return Fate::Done(events);
        }
        for (label, failure) in &failures {
            tracing::warn!(%event_id, attempt = attempt + 1, recipient = %label, reason = %failure.reason, "notification not delivered");
        }
        let copy_for = |labels: &[String]| {
            OutgoingMessage::new(text).attribute("granary.event.id", event_id.clone()).attribute(ATTR_RECIPIENTS, labels.join(","))
        };
        // Recipients refused by the outbound policy are given up at once (another attempt would be
        // refused the same way); the others are tried again until the attempts run out.
        let last = attempt + 1 >= self.attempts;
        let (given_up, retried): (Vec<_>, Vec<_>) = failures.into_iter().partition(|(_, f)| last || f.permanent);
        if !given_up.is_empty() {
            let labels: Vec<String> = given_up.iter().map(|(l, _)| l.clone()).collect();
            let reasons: Vec<String> = given_up.iter().map(|(l, f)| format!("recipient {l}: {}", f.reason)).collect();
            let reason = if last {
                format!("not delivered after {} attempts: {}", attempt + 1, reasons.join("; "))
            } else {
                format!("refused, not retried: {}", reasons.join("; "))
            };
            match self.give_up(copy_for(&labels), &request_id, &event_id, &labels, reason).await {
                Ok(e) => events.extend(e),
                Err(e) => return Fate::Retry(e),
            }
        }
        if !retried.is_empty() {
            let labels: Vec<String> = retried.iter().map(|(l, _)| l.clone()).collect();
            // Each next attempt twice later, at most SQS's 15 minutes.
            let delay = self.first_delay.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(900));
            let copy = copy_for(&labels).attribute(ATTR_ATTEMPT, (attempt + 1).to_string()).delayed(delay);
            if let Err(e) = self.backend.queue.send_batch(&self.config.notification_queue, vec![copy]).await {
                return Fate::Retry(e.to_string());
            }
        }
        Fate::Done(events)
    }

    /// Ends a notification for `labels`: its request in error, with the notification kept so an
    /// admin's retry sends it again, and `copy` in the dead-letter queue with `reason`.
    async fn give_up(
        &self,
        copy: OutgoingMessage,
        request_id: &str,
        event_id: &str,
        labels: &[String],
        reason: String,
    ) -> Result<Vec<OutboxEvent>, String> {
        let text = copy.body.clone();
        let mut events = Vec::new();
        if !request_id.is_empty() {
            let mut attributes = BTreeMap::new();
            attributes.insert("granary.event.id".to_owned(), event_id.to_owned());
            attributes.insert(ATTR_RECIPIENTS.to_owned(), labels.join(","));
            let kept = Parked { due_at: 0, queue: self.config.notification_queue.clone(), body: text, attributes };
            match self.recovery.record_notification_failed(&self.backend, request_id, vec![reason.clone()], &kept).await {
                Ok(e) => events.extend(e),
                Err(e) if e.is_transient() => return Err(e.to_string()),
                Err(e) => tracing::error!(%request_id, error = %e, "request not marked in error"),
            }
        }
        self.dead_letter_copy(copy, reason).await.map_err(|e| e.to_string())?;
        Ok(events)
    }

    async fn deliver(&self, recipient: &Recipient, body: &str, event_id: &str) -> Result<(), Failure> {
        match &recipient.target {
            Target::Queue { queue } => {
                // A queue URL names its queue last.
                let name = queue.rsplit('/').next().unwrap_or(queue);
                let message = OutgoingMessage::new(body).attribute("granary.event.id", event_id);
                self.unguarded.queue.send_batch(name, vec![message]).await.map(drop).map_err(|e| Failure::transient(e.to_string()))
            }
            Target::Webhook { url } => {
                let signature = sign(recipient.secret.as_deref().unwrap_or_default(), body.as_bytes());
                // A webhook the outbound policy forbids is refused before anything is sent.
                let request = self
                    .http
                    .request(reqwest::Method::POST, url)
                    .map_err(|e| Failure { permanent: matches!(e, Refusal::Refused(_)), reason: format!("cannot call {url}: {e}") })?;
                let response = request
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header(EVENT_ID_HEADER, event_id)
                    .body(body.to_owned())
                    .send()
                    .await
                    .map_err(|e| Failure::transient(format!("cannot reach {url}: {}", describe(&e))))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(Failure::transient(format!("{url} answered {}", response.status())))
                }
            }
            Target::Sns { topic_arn } => {
                // Subscribers filter on, and drop redeliveries by, the same attribute a queue gets.
                self.topics.publish(topic_arn, body, &[("granary.event.id", event_id)]).await.map_err(|e| Failure::transient(e.to_string()))
            }
        }
    }

    async fn dead_letter(&self, msg: &SqsMessage, reason: String) -> Fate {
        tracing::warn!(message_id = ?msg.message_id, %reason, "notification dropped to the dead-letter queue");
        match self.dead_letter_copy(OutgoingMessage::new(msg.body.clone().unwrap_or_default()), reason).await {
            Ok(()) => Fate::Done(vec![]),
            Err(e) => Fate::Retry(e.to_string()),
        }
    }

    async fn dead_letter_copy(&self, message: OutgoingMessage, reason: String) -> Result<(), StoreError> {
        let mut message = message.attribute(ATTR_REASON, reason);
        message.delay = None;
        self.backend.queue.send_batch(&self.dead_letter_queue, vec![message]).await?;
        Ok(())
    }
}
