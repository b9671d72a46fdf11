//! basket-api's operations in the OpenAPI document (see [`granary_lambda::openapi`]).

use crate::BasketAnswer;
use granary_domain::basket::{BasketSelectionRequest, FileSelectionDescription};
use granary_lambda::openapi::{Operation, schema};

/// A processing choice for a dataset selection, kept as given: `{processBusinessId, parameters}`.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct ProcessDatasetDescription(serde_json::Value);

/// A text file of product ids (URNs or providerIds), one per line.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct IdsFile(String);

/// Every operation basket-api serves.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "GET",
        path: "/order/basket",
        summary: "The caller's basket (REGARDS's BasketDto): per dataset, the dated selections with objects, files and bytes counted",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: None,
        ok: (200, schema::<BasketAnswer>),
        problems: &[],
    },
    Operation {
        method: "DELETE",
        path: "/order/basket",
        summary: "Empty the caller's basket",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: None,
        ok: (204, schema::<BasketAnswer>),
        problems: &[],
    },
    Operation {
        method: "POST",
        path: "/order/basket/selection",
        summary: "Add a selection: products by URN or providerId (entityIdsToInclude), or a dataset's search (datasetUrn, searchParameters as the product search takes them) less entityIdsToExclude; ids that match nothing the caller may see are listed in unmatchedIds",
        who: "any authenticated user (datasets their groups open)",
        query: &[],
        body: Some(schema::<BasketSelectionRequest>),
        ok: (200, schema::<BasketAnswer>),
        problems: &[400, 404],
    },
    Operation {
        method: "POST",
        path: "/order/basket/selection/upload",
        summary: "Add the products of a text file of ids, one URN or providerId per line (multipart/form-data part 'file', or a text/plain body), at most GRANARY_BASKET_UPLOAD_MAX_LINES lines",
        who: "any authenticated user",
        query: &[],
        body: Some(schema::<IdsFile>),
        ok: (200, schema::<BasketAnswer>),
        problems: &[400],
    },
    Operation {
        method: "DELETE",
        path: "/order/basket/dataset/{datasetSelectionId}",
        summary: "Remove a dataset selection",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: None,
        ok: (200, schema::<BasketAnswer>),
        problems: &[400, 404],
    },
    Operation {
        method: "DELETE",
        path: "/order/basket/dataset/{datasetSelectionId}/{itemsSelectionDate}",
        summary: "Remove one dated selection (its date as ISO-8601, as the basket shows it); the dataset selection goes with its last one",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: None,
        ok: (200, schema::<BasketAnswer>),
        problems: &[400, 404],
    },
    Operation {
        method: "PUT",
        path: "/order/basket/dataset/{datasetSelectionId}/updateFileFilters",
        summary: "Set the file filters of a dataset selection (file types, a regular expression file names must match); an empty body removes them; 409 when it has processing",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: Some(schema::<FileSelectionDescription>),
        ok: (200, schema::<BasketAnswer>),
        problems: &[400, 404, 409],
    },
    Operation {
        method: "PUT",
        path: "/order/basket/dataset/{datasetSelectionId}/updateProcessing",
        summary: "Set the processing of a dataset selection; an empty body removes it; 409 when it has file filters",
        who: "any authenticated user (their own basket)",
        query: &[],
        body: Some(schema::<ProcessDatasetDescription>),
        ok: (200, schema::<BasketAnswer>),
        problems: &[400, 404, 409],
    },
];
