//! Calling functions Granary does not own (a configured processing's Lambda function).

use crate::{PortError, PortResult};
use async_trait::async_trait;

/// Invokes a function synchronously with a JSON event and returns its JSON answer.
#[async_trait]
pub trait Functions: Send + Sync + std::fmt::Debug {
    /// Invokes `function` (a name or ARN) with `payload`. A function that fails answers
    /// [`PortError::Backend`] with its error; throttling and network trouble are
    /// [`PortError::Unavailable`].
    async fn invoke(&self, function: &str, payload: &[u8]) -> PortResult<Vec<u8>>;
}

/// Where no function can be called (one machine, no AWS): every call says so.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFunctions;

#[async_trait]
impl Functions for NoFunctions {
    async fn invoke(&self, function: &str, _payload: &[u8]) -> PortResult<Vec<u8>> {
        Err(PortError::Backend(format!("Lambda function {function} cannot be called on this backend: configure the process as a command")))
    }
}
