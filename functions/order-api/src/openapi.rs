//! order-api's operations in the OpenAPI document (see [`granary_lambda::openapi`]).

use crate::{OrderAnswer, OrderPage, OrderRequest, OrderSearch, QuotaAnswer};
use granary_domain::order::Quota;
use granary_lambda::openapi::{Operation, QueryParam, schema};

const PAGING: &[QueryParam] = &[
    QueryParam { name: "size", description: "orders per page, 1 to 500 (default 20)" },
    QueryParam { name: "page", description: "the cursor of the previous page's next link" },
];

/// Every operation order-api serves.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "POST",
        path: "/user/orders",
        summary: "Order the caller's basket: answered at once in PENDING, the basket emptied and kept with the order, expanded into suborders by order-create; 400 for an empty basket or a label over 50 characters, 409 for a label already used",
        who: "any authenticated user",
        query: &[],
        body: Some(schema::<OrderRequest>),
        ok: (201, schema::<OrderAnswer>),
        problems: &[400, 409],
    },
    Operation {
        method: "GET",
        path: "/user/orders",
        summary: "The caller's orders, newest first",
        who: "any authenticated user (their own orders)",
        query: PAGING,
        body: None,
        ok: (200, schema::<OrderPage>),
        problems: &[400],
    },
    Operation {
        method: "GET",
        path: "/user/orders/{orderId}",
        summary: "One order with its suborders, progress, counts, expiration date and the links of the actions allowed now",
        who: "its owner, admins",
        query: &[],
        body: None,
        ok: (200, schema::<OrderAnswer>),
        problems: &[404],
    },
    Operation {
        method: "POST",
        path: "/orders/search",
        summary: "Every order, newest first, filtered by owner and status",
        who: "admin",
        query: PAGING,
        body: Some(schema::<OrderSearch>),
        ok: (200, schema::<OrderPage>),
        problems: &[400, 403],
    },
    Operation {
        method: "GET",
        path: "/user/quota",
        summary: "The caller's quota of stored files and bytes made available per rolling period (-1: no limit)",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<QuotaAnswer>),
        problems: &[],
    },
    Operation {
        method: "GET",
        path: "/quotas/{user}",
        summary: "A user's quota: the one an admin set, else the deployment's default (custom false)",
        who: "admin",
        query: &[],
        body: None,
        ok: (200, schema::<QuotaAnswer>),
        problems: &[403],
    },
    Operation {
        method: "PUT",
        path: "/quotas/{user}",
        summary: "Set a user's quota {maxFiles, maxBytes, periodHours}; 400 naming each bad limit",
        who: "admin",
        query: &[],
        body: Some(schema::<Quota>),
        ok: (200, schema::<QuotaAnswer>),
        problems: &[400, 403],
    },
    Operation {
        method: "GET",
        path: "/user/quota",
        summary: "The caller's quota of stored files and bytes made available per rolling period (-1: no limit)",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<QuotaAnswer>),
        problems: &[],
    },
    Operation {
        method: "GET",
        path: "/quotas/{user}",
        summary: "A user's quota: the one an admin set, else the deployment's default (custom false)",
        who: "admin",
        query: &[],
        body: None,
        ok: (200, schema::<QuotaAnswer>),
        problems: &[403],
    },
    Operation {
        method: "PUT",
        path: "/quotas/{user}",
        summary: "Set a user's quota {maxFiles, maxBytes, periodHours}; 400 naming each bad limit",
        who: "admin",
        query: &[],
        body: Some(schema::<Quota>),
        ok: (200, schema::<QuotaAnswer>),
        problems: &[400, 403],
    },
];
