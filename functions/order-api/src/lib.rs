//! `order-api`: orders over HTTP, under REGARDS's paths.
//!
//! - `POST /user/orders` `{label, onSuccessUrl}` (both optional): the caller's basket becomes an order,
//!   answered at once in PENDING (201); the basket is emptied and kept with the order, and order-create
//!   expands it from a queue. 400 for an empty basket or a label over 50 characters; 409 for a label
//!   the caller already used.
//! - `GET /user/orders?size=&page=`: the caller's orders, newest first.
//! - `GET /user/orders/{orderId}`: one order with its suborders; 404 for anyone but its owner and admins.
//! - `POST /orders/search?size=&page=` `{owner, status}` (admins): every order, newest first.
//! - `GET /user/quota`, `GET /quotas/{user}` (admins), `PUT /quotas/{user}` (admins): a user's quota of
//!   stored files and bytes made available per rolling period (-1: no limit). Its consumption comes with
//!   suborder dispatch.
//!
//! - `GET /orders/{orderId}/files/available?size=&page=`: the files downloadable now or again.
//! - `GET|HEAD /orders/files/{fileId}`: 202 while PENDING, 422 in error, otherwise a redirect to a fresh
//!   short-lived signed URL; GET records the download (see [`downloads`]).
//!
//! - `GET /user/orders/{orderId}/metalink/download`, and `GET /user/orders/metalink/download?orderToken=`
//!   without a user token: the order's Metalink 4 document; `GET|HEAD
//!   /orders/public/files/{fileId}?orderToken=`: a file, as above (see [`links`]).
//!
//! Order ids are UUIDs (version 7, time-ordered), not REGARDS's numbers: no counter shared by every
//! order creation, and ids that cannot be guessed.

pub mod actions;
pub mod downloads;
pub mod links;
pub mod openapi;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use downloads::Access;
use granary_domain::dispatch::percent_completed;
use granary_domain::order::{OrderAction, OrderStatus, Quota, allowed_actions, check_label, default_label};
use granary_lambda::http::{
    bad_request, body_text, conflict, forbidden, json, not_found, optional_object, percent_decode, unauthorized, unavailable,
};
use granary_lambda::{Config, Identity};
use granary_ports::{Backend, Cursor, Item};
use granary_stores::baskets::BasketStore;
use granary_stores::fulfilment::Fulfilment;
use granary_stores::orders::{Created, OrderStore, QuotaStore};
use granary_stores::outbox::OutboxEvent;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How often a creation is redone when the basket keeps changing under it.
const MAX_ATTEMPTS: usize = 5;

/// A user named in a path, as the identity provider's claims could name one (`sub`, an e-mail): 1
/// to 256 characters, valid UTF-8, no control character, `/` or `\`.
fn user_param(raw: &str) -> Result<String, Box<Response<Body>>> {
    let user = percent_decode(raw);
    let ok = !user.trim().is_empty()
        && user.chars().count() <= 256
        && !user.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | '\u{FFFD}'));
    if ok {
        return Ok(user);
    }
    let shown: String = user.chars().take(64).collect();
    Err(Box::new(bad_request(
        "invalid user",
        &[format!("user: {shown:?} must be 1 to 256 characters of valid UTF-8, none a control character, '/' or '\\'")],
    )))
}

/// REGARDS's OrderRequest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderRequest {
    /// At most 50 characters, unique among the caller's orders; default `Order of <date>`.
    #[serde(default)]
    pub label: Option<String>,
    /// A URL to tell when the order is done, kept with it.
    #[serde(default)]
    pub on_success_url: Option<String>,
}

/// Filters of the admins' order search.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderSearch {
    /// Orders of this user only.
    #[serde(default)]
    pub owner: Option<String>,
    /// Orders in this status only.
    #[serde(default)]
    pub status: Option<OrderStatus>,
}

/// A link to an action allowed in the order's current state.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Link {
    /// The action: pause, resume, delete, remove, restart, retry, download.
    pub rel: String,
    /// Where.
    pub href: String,
}

/// One suborder as an order shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuborderAnswer {
    /// Its number in the order.
    pub number: u64,
    /// The dataset its files come from.
    pub dataset_ipid: String,
    /// INTERNAL (stored files) or EXTERNAL (referenced files).
    pub kind: String,
    /// WAITING, RUNNING, DONE, ...
    pub state: String,
    /// Files in it.
    pub files_count: u64,
    /// Their bytes.
    pub files_size: u64,
}

/// REGARDS's OrderDto.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderAnswer {
    /// The order's id (a UUID).
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// Its label.
    pub label: String,
    /// ISO-8601.
    pub creation_date: String,
    /// ISO-8601, once expanded.
    pub expiration_date: Option<String>,
    /// PENDING, RUNNING, PAUSED, EXPIRED, FAILED, DONE_WITH_WARNING, DONE, DELETED, ERROR.
    pub status: String,
    /// When it entered its status, ISO-8601.
    pub status_date: String,
    /// Files available (or done with) out of all, in percent.
    pub percent_completed: i64,
    /// Files ordered.
    pub files_count: u64,
    /// Their bytes.
    pub files_size: u64,
    /// Files ready to download.
    pub available_files_count: u64,
    /// Files in error.
    pub files_in_error_count: u64,
    /// Whether files wait for the owner to download them.
    pub waiting_for_user: bool,
    /// Why it ended as it did, when it says.
    pub message: Option<String>,
    /// Warnings of its expansion (files larger than a suborder may be).
    pub warnings: Vec<String>,
    /// Per dataset: products, files, bytes ordered.
    pub dataset_tasks: Value,
    /// Its suborders (on `GET /user/orders/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suborders: Option<Vec<SuborderAnswer>>,
    /// The actions allowed now.
    pub links: Vec<Link>,
}

/// A user's quota of stored files made available per rolling period.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaAnswer {
    /// The user.
    pub user: String,
    /// The limits in force.
    #[serde(flatten)]
    pub quota: Quota,
    /// Whether an admin set them (otherwise the deployment's default, `GRANARY_QUOTA_*`).
    pub custom: bool,
}

/// A page of orders, in REGARDS's paged shape.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OrderPage {
    /// The orders, newest first.
    pub content: Vec<OrderAnswer>,
    /// `{size, numberOfElements}`.
    pub metadata: Value,
    /// `next` when more may follow.
    pub links: Vec<Link>,
}

/// The error of a route, answered as problem+json.
pub(crate) type RouteResult = Result<Response<Body>, Response<Body>>;

pub(crate) fn unavailable_on(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "storage failure");
    unavailable("storage is temporarily unavailable; retry later")
}

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct OrderApi {
    backend: Backend,
    config: Config,
    orders: OrderStore,
    baskets: BasketStore,
    quotas: QuotaStore,
    fulfilment: Fulfilment,
}

impl OrderApi {
    /// The handler over `backend`, configured by `config`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let orders = OrderStore::new(&config.orders_table, &config.requests_table);
        let baskets = BasketStore::new(&config.orders_table);
        let quotas = QuotaStore::new(&config.orders_table);
        let fulfilment =
            Fulfilment::new(&config.orders_table, &config.requests_table, &config.suborder_dispatch_queue, &config.order_events_queue);
        let zips = granary_stores::zips::ZipStore::new(&config.orders_table);
        let grants = [baskets.grants(), quotas.grants(), fulfilment.grants(), zips.grants()]
            .into_iter()
            .fold(orders.grants(), granary_ports::access::Grants::and)
            .send(&config.order_create_queue)
            // Signed download URLs carry the right to read stored files and staged zips; on one
            // machine the zip is streamed from the stored files.
            .bucket(&config.staging_bucket, granary_ports::access::Access::Read)
            .and(config.location_grants(&[granary_ports::access::Access::Read]));
        Self { orders, baskets, quotas, fulfilment, backend: granary_ports::access::guard(backend, "order-api", grants), config }
    }

    /// Answers one API Gateway (HTTP API) request.
    pub async fn handle(&self, req: Request) -> Result<Response<Body>, lambda_http::Error> {
        Ok(self.route(req).await.unwrap_or_else(|problem| problem))
    }

    async fn route(&self, req: Request) -> RouteResult {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // Routes an order token opens, without the user's token.
        let order_token = req.query_string_parameters().first("orderToken").map(str::to_owned);
        match (req.method().as_str(), segments.as_slice()) {
            ("GET", ["user", "orders", "metalink", "download"]) => {
                let order_id = self.token_order(order_token.as_deref()).map_err(links::LinkError::response)?;
                let order = self.accessible_order(&Access::Token(order_id.clone()), &order_id).await?;
                return self.metalink(&order, &req).await;
            }
            (method @ ("GET" | "HEAD"), ["orders", "public", "files", id]) => {
                let order_id = self.token_order(order_token.as_deref()).map_err(links::LinkError::response)?;
                return self.download(Access::Token(order_id), id, method == "HEAD").await;
            }
            _ => {}
        }
        let identity = Identity::from_request(&req, &self.config.groups_claim).ok_or_else(unauthorized)?;
        match (req.method().as_str(), segments.as_slice()) {
            ("POST", ["user", "orders"]) => self.create(&identity, &req).await,
            ("GET", ["user", "orders"]) => self.list(&identity, &req, Some(identity.user.as_str())).await,
            ("GET", ["user", "orders", id]) => self.get(&identity, id).await,
            ("GET", ["user", "quota"]) => self.quota(&identity.user).await,
            ("GET", ["quotas", user]) => {
                if !identity.is_admin() {
                    return Err(forbidden("reading another user's quota needs the admin group"));
                }
                self.quota(&user_param(user).map_err(|p| *p)?).await
            }
            ("PUT", ["quotas", user]) => self.set_quota(&identity, &user_param(user).map_err(|p| *p)?, &req).await,
            ("GET", ["orders", id, "files", "available"]) => self.available_files(&identity, id, &req).await,
            ("GET", ["orders", "files", id]) => self.download(Access::User(&identity), id, false).await,
            ("HEAD", ["orders", "files", id]) => self.download(Access::User(&identity), id, true).await,
            ("PUT", ["user", "orders", "pause", id]) => self.act(&identity, id, OrderAction::Pause, &req).await,
            ("PUT", ["user", "orders", "resume", id]) => self.act(&identity, id, OrderAction::Resume, &req).await,
            ("DELETE", ["user", "orders", "remove", id]) => self.act(&identity, id, OrderAction::Remove, &req).await,
            ("DELETE", ["user", "orders", id]) => self.act(&identity, id, OrderAction::Delete, &req).await,
            ("POST", ["user", "orders", id, "restart"]) => self.act(&identity, id, OrderAction::Restart, &req).await,
            ("PUT", ["user", "orders", id, "retry"]) => self.act(&identity, id, OrderAction::Retry, &req).await,
            // Granary-local streams it; behind API Gateway (no streaming, 6 MB) a worker builds it.
            ("GET", ["user", "orders", id, "download"]) => self.staged_zip(&identity, id).await,
            ("GET", ["user", "orders", id, "metalink", "download"]) => {
                let order = self.visible_order(&identity, id).await?;
                self.metalink(&order, &req).await
            }
            ("POST", ["orders", "search"]) => {
                if !identity.is_admin() {
                    return Err(forbidden("searching every order needs the admin group"));
                }
                self.list(&identity, &req, None).await
            }
            (method, _) => Err(not_found(&format!("no route {method} {path}"))),
        }
    }

    /// The body's OrderRequest (none: the defaults), its label checked; or what is wrong with it.
    fn order_request(req: &Request) -> Result<OrderRequest, Box<Response<Body>>> {
        let request: OrderRequest = optional_object(req.body(), "OrderRequest")?.unwrap_or_default();
        if let Some(label) = &request.label {
            check_label(label).map_err(|e| Box::new(bad_request("invalid order", &[e])))?;
        }
        Ok(request)
    }

    async fn create(&self, identity: &Identity, req: &Request) -> RouteResult {
        let request = Self::order_request(req).map_err(|p| *p)?;
        for _ in 0..MAX_ATTEMPTS {
            let (basket, version) = self.baskets.read(&self.backend, &identity.user).await.map_err(unavailable_on)?;
            if basket.is_empty() {
                return Err(bad_request(
                    "the basket is empty",
                    &["basket: select products before ordering (POST /order/basket/selection)".into()],
                ));
            }
            if let Some(answer) = self.place(identity, &basket, Some(version), &request).await? {
                return Ok(answer);
            }
        }
        Err(unavailable("the basket kept changing; retry"))
    }

    /// Places an order of `basket` (the user's, read at `version`, emptied with it; or, with `None`,
    /// an old order's copy): 201 with it, 409 for a label taken, `None` when the basket changed.
    pub(crate) async fn place(
        &self,
        identity: &Identity,
        basket: &granary_domain::basket::Basket,
        version: Option<i64>,
        request: &OrderRequest,
    ) -> Result<Option<Response<Body>>, Response<Body>> {
        let now = self.backend.clock.now_ms();
        let label = request.label.clone().unwrap_or_else(|| default_label(DateTime::from_timestamp_millis(now).unwrap_or_default()));
        let order_id = uuid::Uuid::now_v7().to_string();
        let event = OutboxEvent {
            event_id: format!("{order_id}:EXPAND"),
            queue: self.config.order_create_queue.clone(),
            body: serde_json::json!({ "orderId": order_id }).to_string(),
        };
        let extra = request.on_success_url.iter().map(|u| ("frontendUrl", Value::from(u.clone()))).collect();
        match self.orders.create(&self.backend, &order_id, &label, basket, version, extra, event).await.map_err(unavailable_on)? {
            Created::Order(item, events) => {
                // Sent now; the relay sends it later if this fails.
                if let Err(e) = self.orders.outbox().flush(&self.backend, &events).await {
                    tracing::warn!(error = %e, order_id, "expansion message left to the outbox relay");
                }
                tracing::info!(order_id, owner = %identity.user, "order created");
                Ok(Some(json(201, &answer(&item, None, identity.is_admin()))))
            }
            Created::LabelTaken => Err(conflict(&format!("you already have an order labelled {label:?} (LABEL_NOT_UNIQUE_FOR_OWNER)"))),
            Created::BasketChanged => Ok(None),
        }
    }

    async fn quota(&self, user: &str) -> RouteResult {
        let custom = self.quotas.get(&self.backend, user).await.map_err(unavailable_on)?;
        let answer = QuotaAnswer { user: user.to_owned(), quota: custom.unwrap_or(self.config.default_quota), custom: custom.is_some() };
        Ok(json(200, &answer))
    }

    async fn set_quota(&self, identity: &Identity, user: &str, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("setting quotas needs the admin group"));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        let quota: Quota = serde_json::from_str(text).map_err(|e| bad_request("the body is not a quota", &[format!("body: {e}")]))?;
        quota.check().map_err(|errors| bad_request("invalid quota", &errors))?;
        self.quotas.put(&self.backend, user, &quota, &identity.user).await.map_err(unavailable_on)?;
        Ok(json(200, &QuotaAnswer { user: user.to_owned(), quota, custom: true }))
    }

    async fn get(&self, identity: &Identity, order_id: &str) -> RouteResult {
        let missing = || not_found(&format!("no order {order_id}"));
        let Some(item) = self.orders.get(&self.backend, order_id).await.map_err(unavailable_on)? else { return Err(missing()) };
        if !identity.is_admin() && item.get_str("owner") != Some(identity.user.as_str()) {
            return Err(missing());
        }
        // While PENDING the expansion is still writing them: none are shown until it is done.
        let suborders = if item.get_str("status") == Some(OrderStatus::Pending.as_str()) {
            vec![]
        } else {
            self.orders.suborders(&self.backend, order_id).await.map_err(unavailable_on)?
        };
        let suborders = suborders
            .iter()
            .map(|s| SuborderAnswer {
                number: s.get_i64("number").unwrap_or(0) as u64,
                dataset_ipid: s.get_str("datasetIpid").unwrap_or_default().to_owned(),
                kind: s.get_str("kind").unwrap_or_default().to_owned(),
                state: s.get_str("state").unwrap_or_default().to_owned(),
                files_count: s.get_i64("filesCount").unwrap_or(0) as u64,
                files_size: s.get_i64("filesSize").unwrap_or(0) as u64,
            })
            .collect();
        Ok(json(200, &answer(&item, Some(suborders), identity.is_admin())))
    }

    /// A page of orders, newest first: `owner`'s, or with `None` (admins) every order matching the
    /// search body.
    async fn list(&self, identity: &Identity, req: &Request, owner: Option<&str>) -> RouteResult {
        let mut errors = Vec::new();
        let (size, after) = paging(req, 20, 500, &mut errors);
        let search: OrderSearch = match owner {
            None => optional_object(req.body(), "OrderSearch").map_err(|p| *p)?.unwrap_or_default(),
            Some(_) => OrderSearch::default(),
        };
        if !errors.is_empty() {
            return Err(bad_request("invalid order listing", &errors));
        }
        let owner = owner.or(search.owner.as_deref());
        let mut content = Vec::new();
        let mut cursor = after;
        // A status filter skips orders: read on until the page is full or the orders end.
        let next = loop {
            let (items, next) = self.orders.list(&self.backend, owner, cursor.clone(), size - content.len()).await.map_err(page_error)?;
            content.extend(
                items
                    .iter()
                    .filter(|i| search.status.is_none_or(|s| i.get_str("status") == Some(s.as_str())))
                    .map(|i| answer(i, None, identity.is_admin())),
            );
            match next {
                Some(c) if content.len() < size => cursor = Some(c),
                other => break other,
            }
        };
        let base = if owner.is_some() && search.owner.is_none() { "/user/orders" } else { "/orders/search" };
        let links = next.map(|c| next_link(base, size, &c)).into_iter().collect();
        let metadata = serde_json::json!({ "size": size, "numberOfElements": content.len() });
        Ok(json(200, &OrderPage { content, metadata, links }))
    }
}

/// `size` (1 to `max`, `default` when absent) and `page` (a cursor this API handed out) of a listing;
/// what is wrong goes to `errors`.
pub(crate) fn paging(req: &Request, default: usize, max: usize, errors: &mut Vec<String>) -> (usize, Option<Cursor>) {
    let params = req.query_string_parameters();
    let size = match params.first("size").map(str::parse::<usize>) {
        None => default,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => {
            errors.push(format!("size: must be 1 to {max}"));
            default
        }
    };
    let page = params.first("page").and_then(|p| {
        let cursor = URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| String::from_utf8(b).ok()).map(Cursor);
        if cursor.is_none() {
            errors.push("page: not a cursor this API handed out".into());
        }
        cursor
    });
    (size, page)
}

/// The answer to a failed page read: 400 for a cursor the store refuses, 503 otherwise.
pub(crate) fn page_error(e: granary_stores::StoreError) -> Response<Body> {
    match e {
        granary_stores::StoreError::Port(granary_ports::PortError::Invalid(e)) => bad_request("invalid page", &[format!("page: {e}")]),
        e => unavailable_on(e),
    }
}

/// The `next` link of a page read from `base` (a path without a query).
pub(crate) fn next_link(base: &str, size: usize, cursor: &Cursor) -> Link {
    Link { rel: "next".into(), href: format!("{base}?size={size}&page={}", URL_SAFE_NO_PAD.encode(&cursor.0)) }
}

fn iso(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The order item as REGARDS's OrderDto.
pub(crate) fn answer(item: &Item, suborders: Option<Vec<SuborderAnswer>>, admin: bool) -> OrderAnswer {
    let id = item.get_str("orderId").unwrap_or_default().to_owned();
    let status = item.get_str("status").and_then(OrderStatus::parse).unwrap_or(OrderStatus::Pending);
    let count = |name: &str| item.get_i64(name).unwrap_or(0).max(0) as u64;
    let available = count("availableFilesCount");
    let links = allowed_actions(status, available, admin)
        .into_iter()
        .map(|rel| {
            let href = match rel {
                "pause" => format!("/user/orders/pause/{id}"),
                "resume" => format!("/user/orders/resume/{id}"),
                "delete" => format!("/user/orders/{id}"),
                "remove" => format!("/user/orders/remove/{id}"),
                "restart" => format!("/user/orders/{id}/restart"),
                "retry" => format!("/user/orders/{id}/retry"),
                _ => format!("/user/orders/{id}/download"),
            };
            Link { rel: rel.to_owned(), href }
        })
        .collect();
    OrderAnswer {
        owner: item.get_str("owner").unwrap_or_default().to_owned(),
        label: item.get_str("label").unwrap_or_default().to_owned(),
        creation_date: iso(item.get_i64("createdAt")).unwrap_or_default(),
        expiration_date: iso(item.get_i64("expiresAt")),
        status: status.as_str().to_owned(),
        status_date: iso(item.get_i64("statusDate")).unwrap_or_default(),
        percent_completed: if status == OrderStatus::Pending {
            0
        } else {
            percent_completed(
                item.get_i64("filesCount").unwrap_or(0),
                item.get_i64("madeAvailable").unwrap_or(0),
                item.get_i64("filesInErrorCount").unwrap_or(0),
            )
        },
        files_count: count("filesCount"),
        files_size: count("filesSize"),
        available_files_count: available,
        files_in_error_count: count("filesInErrorCount"),
        waiting_for_user: available > 0,
        message: item.get_str("message").map(str::to_owned),
        warnings: item.get("warnings").and_then(|w| serde_json::from_value(w.clone()).ok()).unwrap_or_default(),
        dataset_tasks: item.get("datasetTasks").cloned().unwrap_or(Value::Array(vec![])),
        suborders,
        links,
        id,
    }
}
