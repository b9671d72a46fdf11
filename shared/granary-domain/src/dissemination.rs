//! Telling recipients about features: who they are (label, target, whether they acknowledge, whether
//! they block, what they want), what a notification says, which recipients it goes to, and how a
//! webhook call is signed.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// The header carrying a webhook call's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Granary-Signature";
/// The header carrying a notification's deterministic id.
pub const EVENT_ID_HEADER: &str = "X-Granary-Event-Id";

/// Actions a notification reports (REGARDS's FeatureManagementAction, COPY aside).
pub const ACTIONS: [&str; 5] = ["CREATED", "UPDATED", "DELETED", "ALREADY_DELETED", "NOTIFIED"];

/// Where a recipient's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Target {
    /// An SQS queue (its name, or its URL).
    Queue {
        /// The queue.
        queue: String,
    },
    /// An HTTPS endpoint, POSTed the notification, signed (http only on 127.0.0.1 or localhost).
    Webhook {
        /// The URL.
        url: String,
    },
    /// An SNS topic (on the AWS backend), published the notification with its id as the message
    /// attribute `granary.event.id`.
    Sns {
        /// The topic ARN.
        #[serde(rename = "topicArn")]
        topic_arn: String,
    },
}

/// Which notifications a recipient receives; an empty list lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipientFilter {
    /// Actions (CREATED, UPDATED, DELETED, ALREADY_DELETED, NOTIFIED).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Entity types (DATA, DATASET, ...).
    #[serde(default)]
    pub entity_types: Vec<String>,
    /// Data models.
    #[serde(default)]
    pub models: Vec<String>,
    /// Sessions, as `<sessionOwner>/<session>` or a session owner alone.
    #[serde(default)]
    pub sessions: Vec<String>,
}

/// A recipient as an admin defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recipient {
    /// Where its notifications go.
    pub target: Target,
    /// Whether it acknowledges what it receives (otherwise a delivery counts as acknowledged).
    #[serde(default)]
    pub ack_required: bool,
    /// Whether a request waits for its acknowledgement.
    #[serde(default)]
    pub blocking: bool,
    /// What it receives.
    #[serde(default)]
    pub filter: RecipientFilter,
    /// The webhook signing secret (write only: never shown back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Checks a recipient definition; every problem is named.
pub fn check_recipient(label: &str, r: &Recipient) -> Vec<String> {
    let mut errors = Vec::new();
    if label.is_empty() || label.len() > 128 || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        errors.push(format!("label: {label:?} must be 1 to 128 letters, digits, '_', '-' or '.'"));
    }
    match &r.target {
        Target::Queue { queue } if queue.trim().is_empty() => errors.push("target.queue: must not be blank".into()),
        Target::Webhook { url } => match url::Url::parse(url) {
            Err(e) => errors.push(format!("target.url: {url:?} is not a URL: {e}")),
            Ok(u) => {
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                    errors.push(format!("target.url: {url:?} must be https (http only on 127.0.0.1 or localhost)"));
                }
                if r.secret.as_deref().is_none_or(|s| s.len() < 16) {
                    errors.push("secret: a webhook needs a signing secret of at least 16 characters".into());
                }
            }
        },
        Target::Sns { topic_arn } => {
            // arn:<partition>:sns:<region>:<12-digit account>:<topic name, 1 to 256 of [A-Za-z0-9_-]>. A FIFO
            // topic (`.fifo`) would need a message group for every publication: not offered.
            let parts: Vec<&str> = topic_arn.splitn(6, ':').collect();
            let name = parts.get(5).copied().unwrap_or_default();
            let valid = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "sns"
                && !parts[3].is_empty()
                && parts[4].len() == 12
                && parts[4].bytes().all(|b| b.is_ascii_digit())
                && (1..=256).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                errors.push(format!(
                    "target.topicArn: {topic_arn:?} is not the ARN of a standard SNS topic (arn:aws:sns:<region>:<account>:<topic>)"
                ));
            }
        }
        Target::Queue { .. } => {}
    }
    for a in &r.filter.actions {
        if !ACTIONS.contains(&a.as_str()) {
            errors.push(format!("filter.actions: {a:?} is not one of {}", ACTIONS.join(", ")));
        }
    }
    if r.blocking && !r.ack_required {
        errors.push("blocking: a blocking recipient must acknowledge (ackRequired true)".into());
    }
    errors
}

/// What a notification is about, as the filter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationFacts<'a> {
    /// Its action.
    pub action: &'a str,
    /// The feature's entity type.
    pub entity_type: &'a str,
    /// The feature's model.
    pub model: &'a str,
    /// The feature's session owner.
    pub session_owner: &'a str,
    /// The feature's session.
    pub session: &'a str,
}

impl<'a> NotificationFacts<'a> {
    /// The facts of a notification `{metadata: {action, sessionOwner, session}, payload: feature}`.
    pub fn of(notification: &'a Value) -> Self {
        let text = |p: &str| notification.pointer(p).and_then(Value::as_str).unwrap_or_default();
        Self {
            action: text("/metadata/action"),
            entity_type: text("/payload/entityType"),
            model: text("/payload/model"),
            session_owner: text("/metadata/sessionOwner"),
            session: text("/metadata/session"),
        }
    }
}

impl RecipientFilter {
    /// Whether a notification with `facts` passes.
    pub fn accepts(&self, facts: &NotificationFacts<'_>) -> bool {
        let within = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        within(&self.actions, facts.action)
            && within(&self.entity_types, facts.entity_type)
            && within(&self.models, facts.model)
            && (self.sessions.is_empty()
                || self.sessions.iter().any(|s| match s.split_once('/') {
                    Some((owner, session)) => owner == facts.session_owner && session == facts.session,
                    None => s == facts.session_owner,
                }))
    }
}

/// The signature header value of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex_encode(&mac.finalize().into_bytes()))
}

/// Whether `signature` is `body`'s under `secret` (what a receiver checks), in constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else { return false };
    let Some(bytes) = hex_decode(hex) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The deterministic id of the notification of `urn` for `action` by request `request_id`.
pub fn notification_id(urn: &str, action: &str, request_id: &str) -> String {
    format!("{urn}:{action}:{request_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webhook(url: &str) -> Recipient {
        Recipient {
            target: Target::Webhook { url: url.into() },
            ack_required: false,
            blocking: false,
            filter: RecipientFilter::default(),
            secret: Some("0123456789abcdef".into()),
        }
    }

    #[test]
    fn definitions_are_checked_naming_each_problem() {
        assert!(check_recipient("mirror-eu", &webhook("https://mirror.example.org/hook")).is_empty());
        assert!(check_recipient("local", &webhook("http://127.0.0.1:9000/hook")).is_empty());
        let mut bad = webhook("http://mirror.example.org/hook");
        bad.secret = None;
        bad.blocking = true;
        bad.filter.actions = vec!["PUBLISHED".into()];
        let errors = check_recipient("a b", &bad);
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("label:") && errors[1].contains("must be https") && errors[2].starts_with("secret:"));
        assert!(errors[3].contains("PUBLISHED") && errors[4].starts_with("blocking:"));
        let parsed: Result<Recipient, _> = serde_json::from_value(json!({"target": {"type": "ftp", "url": "x"}}));
        assert!(parsed.is_err());
    }

    #[test]
    fn an_sns_target_needs_a_topic_arn() {
        let sns = |arn: &str| Recipient { target: Target::Sns { topic_arn: arn.into() }, secret: None, ..webhook("https://x.example.org") };
        for good in ["arn:aws:sns:eu-west-1:123456789012:granary", "arn:aws-cn:sns:cn-north-1:123456789012:a_b-c"] {
            assert!(check_recipient("t", &sns(good)).is_empty(), "{good}");
        }
        for bad in [
            "granary",
            "arn:aws:sqs:eu-west-1:123456789012:granary",
            "arn:aws:sns:eu-west-1:1234:granary",
            "arn:aws:sns::123456789012:granary",
            "arn:aws:sns:eu-west-1:123456789012:",
            "arn:aws:sns:eu-west-1:123456789012:a/b",
            "arn:aws:sns:eu-west-1:123456789012:ordered.fifo",
        ] {
            let errors = check_recipient("t", &sns(bad));
            assert!(errors.len() == 1 && errors[0].starts_with("target.topicArn:"), "{bad}: {errors:?}");
        }
        let parsed: Recipient =
            serde_json::from_value(json!({"target": {"type": "sns", "topicArn": "arn:aws:sns:eu-west-1:123456789012:t"}})).unwrap();
        assert_eq!(parsed.target, Target::Sns { topic_arn: "arn:aws:sns:eu-west-1:123456789012:t".into() });
    }

    #[test]
    fn filters_let_through_what_they_name() {
        let n = json!({"metadata": {"action": "CREATED", "sessionOwner": "s2", "session": "day1"},
                       "payload": {"entityType": "DATA", "model": "S2_L1C"}});
        let facts = NotificationFacts::of(&n);
        assert!(RecipientFilter::default().accepts(&facts));
        let f = |actions: &[&str], sessions: &[&str]| RecipientFilter {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            ..RecipientFilter::default()
        };
        assert!(f(&["CREATED", "UPDATED"], &["s2"]).accepts(&facts));
        assert!(f(&[], &["s2/day1"]).accepts(&facts));
        assert!(!f(&["DELETED"], &[]).accepts(&facts));
        assert!(!f(&[], &["s2/day2"]).accepts(&facts));
        let models = RecipientFilter { models: vec!["S1_GRD".into()], ..RecipientFilter::default() };
        assert!(!models.accepts(&facts));
    }

    #[test]
    fn signatures_verify_and_a_changed_body_or_secret_does_not() {
        let sig = sign("0123456789abcdef", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify("0123456789abcdef", b"{\"a\":1}", &sig));
        assert!(!verify("0123456789abcdef", b"{\"a\":2}", &sig));
        assert!(!verify("another secret!!", b"{\"a\":1}", &sig));
        assert!(!verify("0123456789abcdef", b"{\"a\":1}", "sha256=zz"));
    }
}
