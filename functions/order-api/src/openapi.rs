//! order-api's operations in the OpenAPI document (see [`granary_lambda::openapi`]).

use crate::{OrderAnswer, OrderPage, OrderRequest, OrderSearch};
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
];
