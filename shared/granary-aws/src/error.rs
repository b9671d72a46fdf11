//! Mapping SDK errors to port errors, transient ones (throttling, 5xx, network) apart.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use granary_ports::PortError;

/// Error codes AWS uses for throttling and passing server trouble: retry later.
const TRANSIENT: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TransactionConflictException",
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "SlowDown",
    "RequestThrottled",
    "KMS.ThrottlingException",
    "TooManyRequestsException",
    "ServiceException",
];

/// Error codes that say a named thing does not exist.
const NOT_FOUND: &[&str] =
    &["ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchKey", "NoSuchBucket", "NotFound"];

/// The service error code, if the call reached the service.
pub(crate) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// A port error for a failed call `what`.
pub(crate) fn port_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = format!("{what}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(se) => {
            let c = se.err().code().unwrap_or_default();
            // A server error or too many requests is passing trouble whatever its code says (SQS
            // answers 500 InternalError, S3 500 InternalError, codes not every service shares).
            let status = se.raw().status().as_u16();
            if TRANSIENT.contains(&c) || status >= 500 || status == 429 {
                PortError::Unavailable(detail)
            } else if NOT_FOUND.contains(&c) {
                PortError::NotFound(detail)
            } else {
                PortError::Backend(detail)
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => PortError::Unavailable(detail),
        _ => PortError::Backend(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::operation::send_message::SendMessageError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answered(status: u16, code: &str) -> PortError {
        let err = SendMessageError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        port_error("SendMessage", SdkError::service_error(err, raw))
    }

    #[test]
    fn server_errors_and_throttling_are_transient_whatever_their_code() {
        assert!(answered(500, "InternalError").is_transient(), "SQS's and S3's 500");
        assert!(answered(503, "SomethingNew").is_transient());
        assert!(answered(429, "TooMany").is_transient());
        assert!(answered(400, "RequestThrottled").is_transient(), "throttling by code");
        assert!(answered(400, "ProvisionedThroughputExceededException").is_transient());
        assert!(matches!(answered(400, "InvalidParameterValue"), PortError::Backend(_)), "a client error is not retried");
        assert!(matches!(answered(400, "AWS.SimpleQueueService.NonExistentQueue"), PortError::NotFound(_)));
    }
}
