//! The `outbox-relay` Lambda: EventBridge scheduled events to [`outbox_relay::OutboxRelay`].

fn main() {
    granary_lambda::init_logging();
    // The AWS implementation of the ports is the next foundation slice; until it lands this function
    // runs inside granary-local only.
    tracing::error!("outbox-relay has no AWS backend in this build; run it through granary-local");
    std::process::exit(78);
}
