//! Links that work without the user's token: an order token (a JWT signed with
//! `GRANARY_ORDER_TOKEN_SECRET`, naming the order and expiring with it, as REGARDS's `orderToken`)
//! authorises the public metalink and file routes, so `aria2c -M order.metalink` needs no header. The
//! metalink lists every file that can be downloaded, each with its size, checksum and public Granary
//! URL; each URL still checks the token and redirects to a fresh signed URL.

use crate::downloads::file_answer;
use crate::{OrderApi, RouteResult, unavailable_on};
use chrono::{DateTime, SecondsFormat, Utc};
use granary_domain::metalink::{MetalinkFile, metalink, safe_path};
use granary_domain::order::OrderStatus;
use granary_lambda::http::{not_found, problem, unavailable};
use granary_ports::Item;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};

/// Most files one metalink lists (an API Gateway answer is at most 6 MB).
pub const MAX_METALINK_FILES: usize = 10_000;

/// The claims of an order token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderClaims {
    /// The order it opens.
    order_id: String,
    /// Its owner.
    sub: String,
    /// The order's expiration (epoch seconds).
    exp: i64,
}

/// The base URL the caller reached the API at (links must be absolute for a downloader).
pub(crate) fn base_url(req: &Request) -> String {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let host = header("host").unwrap_or("localhost");
    let scheme = header("x-forwarded-proto").unwrap_or(if host.starts_with("127.0.0.1") || host.starts_with("localhost") {
        "http"
    } else {
        "https"
    });
    format!("{scheme}://{host}")
}

/// Why an order link cannot be made or read.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// No signing key is configured.
    Unconfigured,
    /// The token is missing, forged or expired.
    Refused(String),
    /// Signing failed.
    Signing(String),
}

impl LinkError {
    /// The answer it makes.
    pub(crate) fn response(self) -> Response<Body> {
        match self {
            LinkError::Unconfigured => unavailable("order links are not configured (GRANARY_ORDER_TOKEN_SECRET)"),
            LinkError::Refused(why) => problem(401, "Unauthorized", &why, &[]),
            LinkError::Signing(e) => unavailable_on(e),
        }
    }
}

impl OrderApi {
    fn token_secret(&self) -> Result<&[u8], LinkError> {
        let secret = self.config.order_token_secret.as_bytes();
        if secret.len() < 32 {
            tracing::error!("GRANARY_ORDER_TOKEN_SECRET is unset or shorter than 32 bytes: order links are off");
            return Err(LinkError::Unconfigured);
        }
        Ok(secret)
    }

    /// A token opening `order` until it expires.
    pub(crate) fn order_token(&self, order: &Item) -> Result<String, LinkError> {
        let claims = OrderClaims {
            order_id: order.get_str("orderId").unwrap_or_default().to_owned(),
            sub: order.get_str("owner").unwrap_or_default().to_owned(),
            exp: order.get_i64("expiresAt").unwrap_or(0) / 1000,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(self.token_secret()?))
            .map_err(|e| LinkError::Signing(e.to_string()))
    }

    /// The order a token opens, or why not.
    pub(crate) fn token_order(&self, token: Option<&str>) -> Result<String, LinkError> {
        let token = token.ok_or_else(|| LinkError::Refused("orderToken is required".into()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<OrderClaims>(token, &DecodingKey::from_secret(self.token_secret()?), &validation)
            .map(|t| t.claims.order_id)
            .map_err(|e| LinkError::Refused(format!("orderToken is not valid: {e}")))
    }

    /// The order's metalink: 404 while PENDING and once FAILED, DELETED or EXPIRED (REGARDS's rule);
    /// 204 when no file can be downloaded yet.
    pub(crate) async fn metalink(&self, order: &Item, req: &Request) -> RouteResult {
        let order_id = order.get_str("orderId").unwrap_or_default().to_owned();
        let status = order.get_str("status").and_then(OrderStatus::parse);
        if matches!(status, None | Some(OrderStatus::Pending | OrderStatus::Failed | OrderStatus::Deleted | OrderStatus::Expired)) {
            return Err(not_found(&format!("order {order_id} has no metalink in {}", status.map_or("its state", |s| s.as_str()))));
        }
        let token = self.order_token(order).map_err(LinkError::response)?;
        let base = base_url(req);
        let mut files = Vec::new();
        let mut cursor = None;
        'pages: loop {
            let (items, next) = self.orders.files(&self.backend, &order_id, None, cursor, 1000).await.map_err(unavailable_on)?;
            for f in items.iter().filter(|i| matches!(i.get_str("state"), Some("AVAILABLE" | "DOWNLOADED"))) {
                let Some(a) = file_answer(&order_id, f) else { continue };
                files.push(MetalinkFile {
                    name: safe_path(&[&a.product_id, &a.file.filename]),
                    size: a.file.size,
                    algorithm: a.file.algorithm.clone(),
                    checksum: a.file.checksum.clone(),
                    url: format!("{base}/orders/public/files/{}?orderToken={token}", a.id),
                });
                if files.len() >= MAX_METALINK_FILES {
                    tracing::warn!(order_id, "metalink cut at {MAX_METALINK_FILES} files");
                    break 'pages;
                }
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if files.is_empty() {
            return Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default());
        }
        let now = DateTime::<Utc>::from_timestamp_millis(self.backend.clock.now_ms()).unwrap_or_default();
        let doc = metalink(&files, &now.to_rfc3339_opts(SecondsFormat::Secs, true));
        Ok(Response::builder()
            .status(200)
            .header("content-type", "application/metalink4+xml")
            .header("content-disposition", format!("attachment;filename=order_{order_id}_{}.metalink", now.format("%Y%m%d%H%M%S")))
            .body(Body::Text(doc))
            .unwrap_or_default())
    }
}
