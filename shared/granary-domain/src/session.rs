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
    /// Went into error (its message kept failing, or a remote step timed out). `was_running`: it had
    /// been counted as a running request (parked, or waiting on the remote step); otherwise it is
    /// counted as a request now.
    Failed {
        /// It had been counted as running.
        was_running: bool,
    },
    /// Done, then in error after all (its notification kept failing): counted in error as well.
    FailedAfterDone,
    /// An admin retried it: out of error, running again.
    Retried,
    /// An admin deleted it while in error.
    DeletedInError,
    /// Done. `released`: it had been parked (and counted as running). `changed`: a product was
    /// created, updated or deleted (a deletion of an absent feature changes none).
    Done {
        /// It had been parked.
        released: bool,
        /// A product changed.
        changed: bool,
    },
}

/// The counter names of a kind: (requests, products, running, denied, in error).
fn names(kind: FeatureRequestType) -> [&'static str; 5] {
    match kind {
        FeatureRequestType::Creation => [
            "referencingRequests",
            "referencedProducts",
            "runningReferencingRequests",
            "deniedReferencingRequests",
            "inErrorReferencingRequests",
        ],
        FeatureRequestType::Patch => {
            ["updateRequests", "updatedProducts", "runningUpdateRequests", "deniedUpdateRequests", "inErrorUpdateRequests"]
        }
        FeatureRequestType::Deletion => {
            ["deleteRequests", "deletedProducts", "runningDeleteRequests", "deniedDeleteRequests", "inErrorDeleteRequests"]
        }
        FeatureRequestType::Notification => {
            ["notifyRequests", "notifyProducts", "runningNotifyRequests", "deniedNotifyRequests", "inErrorNotifyRequests"]
        }
    }
}

/// The increments an outcome makes.
pub fn increments(kind: FeatureRequestType, outcome: Outcome) -> Vec<(&'static str, i64)> {
    let [requests, products, running, denied, in_error] = names(kind);
    let mut out = Vec::new();
    match outcome {
        Outcome::Denied => out.push((denied, 1)),
        Outcome::DeniedAfterParking => {
            out.push((running, -1));
            out.push((denied, 1));
        }
        Outcome::Failed { was_running } => {
            out.push(if was_running { (running, -1) } else { (requests, 1) });
            out.push((in_error, 1));
        }
        Outcome::FailedAfterDone => out.push((in_error, 1)),
        Outcome::Retried => {
            out.push((in_error, -1));
            out.push((running, 1));
        }
        Outcome::DeletedInError => out.push((in_error, -1)),
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
            increments(FeatureRequestType::Creation, Outcome::Failed { was_running: false }),
            vec![("referencingRequests", 1), ("inErrorReferencingRequests", 1)]
        );
        assert_eq!(
            increments(FeatureRequestType::Deletion, Outcome::Failed { was_running: true }),
            vec![("runningDeleteRequests", -1), ("inErrorDeleteRequests", 1)]
        );
        assert_eq!(
            increments(FeatureRequestType::Notification, Outcome::Retried),
            vec![("inErrorNotifyRequests", -1), ("runningNotifyRequests", 1)]
        );
        assert_eq!(increments(FeatureRequestType::Patch, Outcome::DeletedInError), vec![("inErrorUpdateRequests", -1)]);
        assert_eq!(
            increments(FeatureRequestType::Patch, Outcome::DeniedAfterParking),
            vec![("runningUpdateRequests", -1), ("deniedUpdateRequests", 1)]
        );
        assert_eq!(all_counters().len(), 20, "five counters for each of the four kinds");
    }
}
