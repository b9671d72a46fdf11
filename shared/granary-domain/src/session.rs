//! REGARDS's session counters (FeatureSessionProperty): what each request outcome adds to the
//! counters of its session.

use crate::FeatureRequestType;

/// What happened to a request, as far as its session's counters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused at registration.
    Denied,
    /// Granted and parked until its date.
    Parked,
    /// Refused when it came back from parking (its creation failed, say): no longer running.
    DeniedAfterParking,
    /// Done. `released`: it had been parked (and counted as running). `changed`: a product was
    /// created, updated or deleted (a deletion of an absent feature changes none).
    Done {
        /// It had been parked.
        released: bool,
        /// A product changed.
        changed: bool,
    },
}

/// The counter names of a kind: (requests, products, running, denied).
fn names(kind: FeatureRequestType) -> [&'static str; 4] {
    match kind {
        FeatureRequestType::Creation => {
            ["referencingRequests", "referencedProducts", "runningReferencingRequests", "deniedReferencingRequests"]
        }
        FeatureRequestType::Patch => ["updateRequests", "updatedProducts", "runningUpdateRequests", "deniedUpdateRequests"],
        FeatureRequestType::Deletion => ["deleteRequests", "deletedProducts", "runningDeleteRequests", "deniedDeleteRequests"],
        FeatureRequestType::Notification => ["notifyRequests", "notifyProducts", "runningNotifyRequests", "deniedNotifyRequests"],
    }
}

/// The increments an outcome makes.
pub fn increments(kind: FeatureRequestType, outcome: Outcome) -> Vec<(&'static str, i64)> {
    let [requests, products, running, denied] = names(kind);
    let mut out = Vec::new();
    match outcome {
        Outcome::Denied => out.push((denied, 1)),
        Outcome::DeniedAfterParking => {
            out.push((running, -1));
            out.push((denied, 1));
        }
        Outcome::Parked => {
            out.push((requests, 1));
            out.push((running, 1));
        }
        Outcome::Done { released, changed } => {
            if released {
                out.push((running, -1));
            } else {
                out.push((requests, 1));
            }
            if changed {
                out.push((products, 1));
            }
        }
    }
    out
}

/// Every counter name, for reading them back in a fixed order.
pub fn all_counters() -> Vec<&'static str> {
    [FeatureRequestType::Creation, FeatureRequestType::Patch, FeatureRequestType::Deletion, FeatureRequestType::Notification]
        .into_iter()
        .flat_map(names)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_creation_runs_then_counts_its_product() {
        let k = FeatureRequestType::Creation;
        assert_eq!(increments(k, Outcome::Parked), vec![("referencingRequests", 1), ("runningReferencingRequests", 1)]);
        assert_eq!(
            increments(k, Outcome::Done { released: true, changed: true }),
            vec![("runningReferencingRequests", -1), ("referencedProducts", 1)]
        );
        assert_eq!(
            increments(k, Outcome::Done { released: false, changed: true }),
            vec![("referencingRequests", 1), ("referencedProducts", 1)]
        );
        assert_eq!(
            increments(FeatureRequestType::Deletion, Outcome::Done { released: false, changed: false }),
            vec![("deleteRequests", 1)]
        );
        assert_eq!(increments(FeatureRequestType::Patch, Outcome::Denied), vec![("deniedUpdateRequests", 1)]);
        assert_eq!(
            increments(FeatureRequestType::Patch, Outcome::DeniedAfterParking),
            vec![("runningUpdateRequests", -1), ("deniedUpdateRequests", 1)]
        );
        assert_eq!(all_counters().len(), 16);
    }
}
