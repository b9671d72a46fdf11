//! Granary's domain: what features, URNs and feature requests are, and the rules they follow.
//! Pure functions and types only; no I/O, so every rule is unit-tested exhaustively.

pub mod basket;
pub mod body;
pub mod catalog;
pub mod dispatch;
pub mod dissemination;
pub mod feature;
pub mod file;
pub mod geometry;
pub mod metalink;
pub mod model;
pub mod order;
pub mod outbound;
pub mod processing;
pub mod request;
pub mod session;
pub mod storage;
pub mod urn;

pub use request::{
    CreationMetadata, FeatureCreationCollection, FeatureCreationRequestEvent, FeatureRequestEvent, FeatureRequestType, Priority,
    RequestState,
};
pub use urn::{EntityType, Urn, UrnError, entity_uuid};
