//! Views of SQS events as handlers need them, and their partial batch answers.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use granary_ports::ReceivedMessage;
use serde_json::{Map, Value, json};

/// The attribute delayed-release puts on a parked request it sends back to its queue, so that ingest
/// processes it instead of parking it again.
pub const ATTR_RELEASED: &str = "granary.released";

/// The string value of message attribute `name`.
pub fn attribute<'a>(message: &'a SqsMessage, name: &str) -> Option<&'a str> {
    message.message_attributes.get(name).and_then(|a| a.string_value.as_deref())
}

/// The answer that asks SQS to retry only the messages whose ids are given.
pub fn batch_response(failed_message_ids: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed_message_ids
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// The SQS event for a received batch, exactly as Lambda's event source mapping delivers it.
pub fn sqs_event(queue: &str, messages: &[ReceivedMessage]) -> Result<SqsEvent, String> {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attrs: Map<String, Value> = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    (k.clone(), json!({ "stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String" }))
                })
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "md5OfBody": "",
                "attributes": {
                    "ApproximateReceiveCount": m.receive_count.to_string(),
                    "SentTimestamp": m.sent_at_ms.to_string(),
                    "SenderId": "granary-local",
                    "ApproximateFirstReceiveTimestamp": m.sent_at_ms.to_string(),
                },
                "messageAttributes": attrs,
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:local:000000000000:{queue}"),
                "awsRegion": "local",
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).map_err(|e| format!("cannot build SqsEvent: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn sqs_event_carries_attributes_as_lambda_does() {
        let m = ReceivedMessage {
            message_id: "m1".into(),
            receipt_handle: "1.1".into(),
            body: "{}".into(),
            attributes: BTreeMap::from([("regards.request.id".to_owned(), "r1".to_owned())]),
            receive_count: 2,
            sent_at_ms: 5,
        };
        let e = sqs_event("feature-high", &[m]).unwrap();
        let r = &e.records[0];
        assert_eq!(r.message_id.as_deref(), Some("m1"));
        assert_eq!(r.message_attributes["regards.request.id"].string_value.as_deref(), Some("r1"));
        assert_eq!(r.attributes["ApproximateReceiveCount"], "2");
        assert_eq!(r.event_source_arn.as_deref(), Some("arn:aws:sqs:local:000000000000:feature-high"));
    }
}
