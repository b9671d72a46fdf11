//! Ordered files over HTTP: the list of an order's downloadable files, and each file's download. A
//! download link is always a Granary URL: it checks the caller, records the download, and redirects to
//! a fresh short-lived signed URL (S3 presigned in the cloud, a signed local URL on one machine), so a
//! link handed out earlier never outlives the caller's right to it.

use crate::{Link, OrderApi, RouteResult, next_link, page_error, paging, unavailable_on};
use granary_domain::catalog::ProductFile;
use granary_domain::dispatch::{Source, file_id, parse_file_id, source_of};
use granary_domain::order::{FileState, OrderStatus};
use granary_lambda::Identity;
use granary_lambda::http::{bad_request, json, not_found, problem};
use granary_ports::Item;
use granary_stores::orders::file_sk;
use granary_stores::zips::ZipState;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use std::time::Duration;

/// One ordered file as the order's file list shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderFileAnswer {
    /// Its id in download URLs (`<order>.<suborder>.<index>`).
    pub id: String,
    /// The product it belongs to (URN).
    pub ip_id: String,
    /// The product's providerId.
    pub product_id: String,
    /// PENDING, AVAILABLE, DOWNLOADED, ERROR, ...
    pub state: String,
    /// Why it is in error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_error: Option<String>,
    /// Its description (name, size, checksum, type).
    #[serde(flatten)]
    pub file: ProductFile,
    /// Its Granary download URL.
    pub download: String,
}

/// A page of an order's files.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OrderFilePage {
    /// The files.
    pub content: Vec<OrderFileAnswer>,
    /// `{size, numberOfElements}`.
    pub metadata: serde_json::Value,
    /// `next` when more may follow.
    pub links: Vec<Link>,
}

/// Whether an order's files can be downloaded in `status` (not once it is deleted or expired).
fn downloadable(status: Option<&str>) -> bool {
    !matches!(status.and_then(OrderStatus::parse), Some(OrderStatus::Deleted | OrderStatus::Expired) | None)
}

/// The file as the list shows it.
pub(crate) fn file_answer(order_id: &str, item: &Item) -> Option<OrderFileAnswer> {
    let file: ProductFile = serde_json::from_value(item.get("file")?.clone()).ok()?;
    let (suborder, index) = parse_sk(&item.key.sk)?;
    let id = file_id(order_id, suborder, index);
    Some(OrderFileAnswer {
        download: format!("/orders/files/{id}"),
        id,
        ip_id: item.get_str("urn").unwrap_or_default().to_owned(),
        product_id: item.get_str("providerId").unwrap_or_default().to_owned(),
        state: item.get_str("state").unwrap_or_default().to_owned(),
        download_error: item.get_str("cause").map(str::to_owned),
        file,
    })
}

/// Suborder and index of a file's sort key (`F#nnnnnn#nnnnn`).
fn parse_sk(sk: &str) -> Option<(u32, u64)> {
    let mut parts = sk.strip_prefix("F#")?.split('#');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Who asks for an order's files.
pub(crate) enum Access<'a> {
    /// A user (its owner or an admin).
    User(&'a Identity),
    /// Whoever holds a token opening this order.
    Token(String),
}

impl OrderApi {
    /// The order, when `identity` may see it.
    pub(crate) async fn visible_order(&self, identity: &Identity, order_id: &str) -> Result<Item, Response<Body>> {
        self.accessible_order(&Access::User(identity), order_id).await
    }

    /// The order, when `access` opens it; 404 otherwise (its existence is not told).
    pub(crate) async fn accessible_order(&self, access: &Access<'_>, order_id: &str) -> Result<Item, Response<Body>> {
        let missing = || not_found(&format!("no order {order_id}"));
        let item = self.orders.get(&self.backend, order_id).await.map_err(unavailable_on)?.ok_or_else(missing)?;
        let allowed = match access {
            Access::User(identity) => identity.is_admin() || item.get_str("owner") == Some(identity.user.as_str()),
            Access::Token(opened) => opened == order_id,
        };
        if !allowed {
            return Err(missing());
        }
        Ok(item)
    }

    /// `GET /orders/{orderId}/files/available`: the files that can be downloaded now (AVAILABLE) or
    /// again (DOWNLOADED), in suborder order.
    pub(crate) async fn available_files(&self, identity: &Identity, order_id: &str, req: &Request) -> RouteResult {
        let order = self.visible_order(identity, order_id).await?;
        let mut errors = Vec::new();
        let (size, mut cursor) = paging(req, 100, 1000, &mut errors);
        if !errors.is_empty() {
            return Err(bad_request("invalid file listing", &errors));
        }
        let mut content = Vec::new();
        let next = if downloadable(order.get_str("status")) {
            loop {
                let (items, next) =
                    self.orders.files(&self.backend, order_id, None, cursor.clone(), size - content.len()).await.map_err(page_error)?;
                content.extend(
                    items
                        .iter()
                        .filter(|i| matches!(i.get_str("state"), Some("AVAILABLE" | "DOWNLOADED")))
                        .filter_map(|i| file_answer(order_id, i)),
                );
                match next {
                    Some(c) if content.len() < size => cursor = Some(c),
                    other => break other,
                }
            }
        } else {
            None
        };
        let links = next.map(|c| next_link(&format!("/orders/{order_id}/files/available"), size, &c)).into_iter().collect();
        let metadata = serde_json::json!({ "size": size, "numberOfElements": content.len() });
        Ok(json(200, &OrderFilePage { content, metadata, links }))
    }

    /// `GET` or `HEAD /orders/files/{fileId}`: 202 while PENDING, 422 in error, otherwise a redirect to a
    /// fresh signed URL (GET records the download: the file becomes DOWNLOADED, and its suborder and
    /// order follow; HEAD only tests availability and answers 200).
    pub(crate) async fn download(&self, access: Access<'_>, id: &str, head: bool) -> RouteResult {
        let missing = || not_found(&format!("no ordered file {id}"));
        let (order_id, suborder, index) = parse_file_id(id).ok_or_else(missing)?;
        let order = self.accessible_order(&access, order_id).await.map_err(|_| missing())?;
        if !downloadable(order.get_str("status")) {
            return Err(missing());
        }
        let item =
            self.fulfilment.file(&self.backend, order_id, &file_sk(suborder, index)).await.map_err(unavailable_on)?.ok_or_else(missing)?;
        let state = item.get_str("state").unwrap_or_default();
        if state == FileState::Pending.as_str() {
            return Err(problem(202, "Accepted", &format!("file {id} is PENDING: not available yet; ask again later"), &[]));
        }
        if !matches!(state, "AVAILABLE" | "DOWNLOADED") {
            let cause = item.get_str("cause").unwrap_or("no cause recorded");
            return Err(problem(422, "Unprocessable Content", &format!("file {id} is in {state}: {cause}"), &[]));
        }
        let file: ProductFile = item.get("file").and_then(|f| serde_json::from_value(f.clone()).ok()).ok_or_else(missing)?;
        let url = match source_of(&file, &self.config.locations()) {
            Source::Online { bucket, key } | Source::Nearline { bucket, key } => self
                .backend
                .blobs
                .signed_get_url(&bucket, &key, Duration::from_secs(self.config.download_url_secs))
                .await
                .map_err(unavailable_on)?,
            // Referenced files and those an external service holds are read where they are.
            Source::Reference | Source::Service { .. } if file.url.starts_with("https://") || file.url.starts_with("http://") => {
                file.url.clone()
            }
            _ => return Err(problem(422, "Unprocessable Content", &format!("file {id} has no URL to download it from"), &[])),
        };
        if head {
            return Ok(Response::builder().status(200).body(Body::Empty).unwrap_or_default());
        }
        // A repeated download settles too: a crash after the first one's write must not keep a slot.
        if state == FileState::Downloaded.as_str()
            || self.fulfilment.downloaded(&self.backend, order_id, &item).await.map_err(unavailable_on)?
        {
            let events = self.fulfilment.settle(&self.backend, order_id, suborder).await.map_err(unavailable_on)?;
            if let Err(e) = self.fulfilment.outbox().flush(&self.backend, &events).await {
                tracing::warn!(error = %e, "dispatch nudge left to the outbox relay");
            }
        }
        Ok(Response::builder().status(302).header("location", url).body(Body::Empty).unwrap_or_default())
    }
}

pub use granary_stores::archive::ZipPlan;

impl OrderApi {
    /// The zip plan of order `order_id` for `identity` (404 for anyone but its owner and admins, and
    /// once it is deleted or expired); see [`granary_stores::archive::plan`].
    pub async fn zip_plan(&self, identity: &Identity, order_id: &str) -> Result<ZipPlan, Response<Body>> {
        let order = self.visible_order(identity, order_id).await?;
        if !downloadable(order.get_str("status")) {
            return Err(not_found(&format!("order {order_id} can no longer be downloaded")));
        }
        granary_stores::archive::plan(&self.backend, &self.orders, order_id, &self.config.locations()).await.map_err(unavailable_on)
    }

    /// Records the download of the files of `plan` written whole (`written`, indexes into it).
    pub async fn zip_served(&self, plan: &ZipPlan, written: &[usize]) -> Result<(), granary_stores::StoreError> {
        let files: Vec<&Item> = written.iter().filter_map(|&i| plan.files.get(i)).collect();
        let events = self.fulfilment.record_downloads(&self.backend, &plan.order_id, &files).await?;
        if let Err(e) = self.fulfilment.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, "dispatch nudge left to the outbox relay");
        }
        Ok(())
    }

    /// `GET /user/orders/{orderId}/download` behind API Gateway: 202 while suborder-dispatch builds the
    /// zip of the files available now into the staging bucket, then a redirect to it (once; the next
    /// request builds a new one), or 204 when there was nothing to put in it.
    pub(crate) async fn staged_zip(&self, identity: &Identity, order_id: &str) -> RouteResult {
        let order = self.visible_order(identity, order_id).await?;
        if !downloadable(order.get_str("status")) {
            return Err(not_found(&format!("order {order_id} can no longer be downloaded")));
        }
        let zips = granary_stores::zips::ZipStore::new(&self.config.orders_table);
        let state = zips.state(&self.backend, order_id).await.map_err(unavailable_on)?;
        let building = || problem(202, "Accepted", &format!("the zip of order {order_id} is being built; ask again in a few seconds"), &[]);
        match &state {
            ZipState::Building(_) => return Err(building()),
            ZipState::Ready(id, key) => {
                let url = self
                    .backend
                    .blobs
                    .signed_get_url(&self.config.staging_bucket, key, Duration::from_secs(self.config.download_url_secs))
                    .await
                    .map_err(unavailable_on)?;
                zips.consume(&self.backend, order_id, *id).await.map_err(unavailable_on)?;
                return Ok(Response::builder().status(302).header("location", url).body(Body::Empty).unwrap_or_default());
            }
            ZipState::Empty(id) => {
                zips.consume(&self.backend, order_id, *id).await.map_err(unavailable_on)?;
                return Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default());
            }
            ZipState::None => {}
        }
        let zip_id = self.backend.clock.now_ms();
        if zips.start(&self.backend, order_id, &state, zip_id).await.map_err(unavailable_on)? {
            let job = granary_stores::outbox::OutboxEvent {
                event_id: format!("zip:{order_id}:{zip_id}"),
                queue: self.config.suborder_dispatch_queue.clone(),
                body: serde_json::json!({ "zip": { "orderId": order_id, "zipId": zip_id } }).to_string(),
            };
            // A lost message leaves the build to time out; the next request starts another.
            self.fulfilment.outbox().flush(&self.backend, &[job]).await.map_err(unavailable_on)?;
        }
        Err(building())
    }

    /// The backend the zip's blobs are read from.
    pub fn backend(&self) -> &granary_ports::Backend {
        &self.backend
    }
}
