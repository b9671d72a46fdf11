//! Mapping SDK errors to port errors, transient ones (throttling, 5xx, network) apart.

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
pub(crate) fn port_error<E, R>(what: &str, e: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = format!("{what}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(se) => {
            let c = se.err().code().unwrap_or_default();
            if TRANSIENT.contains(&c) {
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
