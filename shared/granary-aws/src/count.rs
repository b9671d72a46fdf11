//! Counting every HTTP request the SDK clients send, by service, so benchmarks can report AWS requests
//! per unit of work.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A service whose requests are counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Service {
    DynamoDb,
    Sqs,
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    S3,
}

/// Requests sent so far, by service (every attempt, retries included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// DynamoDB requests.
    pub dynamodb: u64,
    /// SQS requests.
    pub sqs: u64,
    /// S3 requests.
    pub s3: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.dynamodb + self.sqs + self.s3
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;
    fn sub(self, rhs: Self) -> Self {
        RequestCounts { dynamodb: self.dynamodb - rhs.dynamodb, sqs: self.sqs - rhs.sqs, s3: self.s3 - rhs.s3 }
    }
}

/// A shared counter; clone it into [`crate::AwsOptions`] and read it after the work.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    counts: Arc<[AtomicU64; 3]>,
}

impl RequestCounter {
    /// The counts so far.
    pub fn get(&self) -> RequestCounts {
        RequestCounts {
            dynamodb: self.counts[0].load(Ordering::Relaxed),
            sqs: self.counts[1].load(Ordering::Relaxed),
            s3: self.counts[2].load(Ordering::Relaxed),
        }
    }

    pub(crate) fn interceptor(&self, service: Service) -> CountingInterceptor {
        CountingInterceptor { counter: self.clone(), service }
    }
}

/// The SDK interceptor that counts each request just before it is sent.
#[derive(Debug)]
pub(crate) struct CountingInterceptor {
    counter: RequestCounter,
    service: Service,
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "GranaryRequestCounter"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.counter.counts[self.service as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
