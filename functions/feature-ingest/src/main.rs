//! The `feature-ingest` Lambda: SQS batches from the feature queues to [`feature_ingest::FeatureIngest`].

fn main() {
    granary_lambda::init_logging();
    // The AWS implementation of the ports (DynamoDB, SQS, S3) is the next foundation slice; until it
    // lands this function runs inside granary-local only, which wires the handler to the embedded backend.
    tracing::error!("feature-ingest has no AWS backend in this build; run it through granary-local");
    std::process::exit(78);
}
