//! Stands in for API Gateway's HTTP API: matches a route, runs the JWT authorizer, builds the version
//! 2.0 event a Lambda receives, has `lambda_http` turn it into the request a handler sees, and maps
//! the handler's response back to HTTP.

use crate::auth::{AuthError, LocalIssuer};
use axum::body::Bytes;
use base64::Engine;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// The function a route integrates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `feature-api`.
    FeatureApi,
    /// `basket-api`.
    BasketApi,
    /// `order-api`.
    OrderApi,
}

/// One route of the HTTP API, as declared for API Gateway.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template with `{param}` segments.
    pub template: &'static str,
    /// The integrated function.
    pub target: Target,
    /// Whether the JWT authorizer guards the route.
    pub authorized: bool,
}

/// Every route, most specific first (literal segments before parameters).
pub const ROUTES: &[Route] = &[
    Route { method: "POST", template: "/features", target: Target::FeatureApi, authorized: true },
    Route { method: "PATCH", template: "/features", target: Target::FeatureApi, authorized: true },
    Route { method: "DELETE", template: "/features", target: Target::FeatureApi, authorized: true },
    Route { method: "POST", template: "/features/notifications", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/features/requests", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/features/requests/{requestId}", target: Target::FeatureApi, authorized: true },
    Route { method: "POST", template: "/features/requests/{requestId}/retry", target: Target::FeatureApi, authorized: true },
    Route { method: "DELETE", template: "/features/requests/{requestId}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/features/sessions/{sessionOwner}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/features/sessions/{sessionOwner}/{session}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/features/{urn}", target: Target::FeatureApi, authorized: true },
    Route { method: "PUT", template: "/models/{name}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/models/{name}", target: Target::FeatureApi, authorized: true },
    Route { method: "PUT", template: "/storage-locations/{name}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/storage-locations", target: Target::FeatureApi, authorized: true },
    Route { method: "PUT", template: "/recipients/{label}", target: Target::FeatureApi, authorized: true },
    Route { method: "DELETE", template: "/recipients/{label}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/recipients", target: Target::FeatureApi, authorized: true },
    Route { method: "PUT", template: "/notification-settings", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/datasets", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/datasets/{dataset}/products", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/products/{urn}", target: Target::FeatureApi, authorized: true },
    Route { method: "GET", template: "/public/datasets", target: Target::FeatureApi, authorized: false },
    Route { method: "GET", template: "/public/datasets/{dataset}/products", target: Target::FeatureApi, authorized: false },
    Route { method: "GET", template: "/public/products/{urn}", target: Target::FeatureApi, authorized: false },
    Route { method: "GET", template: "/order/basket", target: Target::BasketApi, authorized: true },
    Route { method: "DELETE", template: "/order/basket", target: Target::BasketApi, authorized: true },
    Route { method: "POST", template: "/order/basket/selection", target: Target::BasketApi, authorized: true },
    Route { method: "POST", template: "/order/basket/selection/upload", target: Target::BasketApi, authorized: true },
    Route { method: "DELETE", template: "/order/basket/dataset/{datasetSelectionId}", target: Target::BasketApi, authorized: true },
    Route {
        method: "DELETE",
        template: "/order/basket/dataset/{datasetSelectionId}/{itemsSelectionDate}",
        target: Target::BasketApi,
        authorized: true,
    },
    Route {
        method: "PUT",
        template: "/order/basket/dataset/{datasetSelectionId}/updateFileFilters",
        target: Target::BasketApi,
        authorized: true,
    },
    Route {
        method: "PUT",
        template: "/order/basket/dataset/{datasetSelectionId}/updateProcessing",
        target: Target::BasketApi,
        authorized: true,
    },
    Route { method: "POST", template: "/user/orders", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/orders", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/orders/{orderId}", target: Target::OrderApi, authorized: true },
    Route { method: "POST", template: "/orders/search", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/quota", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/quotas/{user}", target: Target::OrderApi, authorized: true },
    Route { method: "PUT", template: "/quotas/{user}", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/orders/{orderId}/files/available", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/orders/files/{fileId}", target: Target::OrderApi, authorized: true },
    Route { method: "HEAD", template: "/orders/files/{fileId}", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/orders/{orderId}/metalink/download", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/orders/{orderId}/download", target: Target::OrderApi, authorized: true },
    Route { method: "PUT", template: "/user/orders/pause/{orderId}", target: Target::OrderApi, authorized: true },
    Route { method: "PUT", template: "/user/orders/resume/{orderId}", target: Target::OrderApi, authorized: true },
    Route { method: "DELETE", template: "/user/orders/{orderId}", target: Target::OrderApi, authorized: true },
    Route { method: "DELETE", template: "/user/orders/remove/{orderId}", target: Target::OrderApi, authorized: true },
    Route { method: "POST", template: "/user/orders/{orderId}/restart", target: Target::OrderApi, authorized: true },
    Route { method: "PUT", template: "/user/orders/{orderId}/retry", target: Target::OrderApi, authorized: true },
    Route { method: "GET", template: "/user/orders/metalink/download", target: Target::OrderApi, authorized: false },
    Route { method: "GET", template: "/orders/public/files/{fileId}", target: Target::OrderApi, authorized: false },
    Route { method: "HEAD", template: "/orders/public/files/{fileId}", target: Target::OrderApi, authorized: false },
];

/// The OpenAPI document of every route served.
pub fn openapi_document() -> Value {
    granary_lambda::openapi::document(&[feature_api::openapi::OPERATIONS, basket_api::openapi::OPERATIONS, order_api::openapi::OPERATIONS])
}

/// The route serving `method` and `path`, with its path parameters.
pub fn match_route(method: &str, path: &str) -> Option<(&'static Route, HashMap<String, String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES.iter().filter(|r| r.method == method).find_map(|r| {
        let parts: Vec<&str> = r.template.trim_matches('/').split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (p, s) in parts.iter().zip(&segments) {
            match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if !s.is_empty() => {
                    params.insert(name.to_owned(), (*s).to_owned());
                }
                Some(_) => return None,
                None if p == s => {}
                None => return None,
            }
        }
        Some((r, params))
    })
}

/// What the stand-in answers without calling a function.
pub enum Gate {
    /// Call the function with this event.
    Invoke(Target, Value),
    /// Answer at once.
    Answer(StatusCode, Value),
}

fn problem(status: StatusCode, detail: &str) -> Gate {
    Gate::Answer(
        status,
        json!({ "type": "about:blank", "title": status.canonical_reason().unwrap_or(""), "status": status.as_u16(), "detail": detail }),
    )
}

/// Routes and authorizes a request, building the API Gateway v2 event for its function.
pub fn gate(
    issuer: &LocalIssuer,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    now_ms: i64,
) -> Gate {
    let Some((route, params)) = match_route(method.as_str(), path) else {
        return problem(StatusCode::NOT_FOUND, &format!("no route {method} {path}"));
    };
    let claims = if route.authorized {
        match issuer.verify(headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
            Ok(c) => Some(c),
            Err(e @ (AuthError::Missing | AuthError::Invalid(_))) => return problem(StatusCode::UNAUTHORIZED, &e.to_string()),
        }
    } else {
        None
    };
    let route_key = format!("{} {}", route.method, route.template);
    let mut hdrs = Map::new();
    for name in headers.keys() {
        let joined: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        hdrs.insert(name.as_str().to_owned(), Value::from(joined.join(",")));
    }
    let query_params: Map<String, Value> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), Value::from(v.into_owned()))).collect();
    let (body_value, is_b64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (Value::from(text), false),
        Err(_) => (Value::from(base64::engine::general_purpose::STANDARD.encode(body)), true),
    };
    let time = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let mut context = json!({
        "accountId": "000000000000",
        "apiId": "granary-local",
        "domainName": headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost"),
        "domainPrefix": "granary-local",
        "http": {
            "method": method.as_str(),
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": headers.get(http::header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
        },
        "requestId": uuid::Uuid::now_v7().to_string(),
        "routeKey": route_key,
        "stage": "$default",
        "time": time.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
        "timeEpoch": now_ms,
    });
    if let Some(claims) = claims {
        context["authorizer"] = json!({ "jwt": { "claims": claims, "scopes": null } });
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query.unwrap_or(""),
        "headers": hdrs,
        "requestContext": context,
        "isBase64Encoded": is_b64,
    });
    if !query_params.is_empty() {
        event["queryStringParameters"] = Value::Object(query_params);
    }
    if !params.is_empty() {
        event["pathParameters"] = json!(params);
    }
    if !body_value.is_null() {
        event["body"] = body_value;
    }
    Gate::Invoke(route.target, event)
}

/// The request a `lambda_http` handler receives for `event`, built by `lambda_http` itself.
pub fn into_request(event: &Value) -> Result<lambda_http::Request, String> {
    lambda_http::request::from_str(&event.to_string()).map_err(|e| format!("API Gateway event rejected by lambda_http: {e}"))
}

/// A handler's response as HTTP.
pub fn into_http(response: lambda_http::Response<lambda_http::Body>) -> axum::response::Response {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    let mut out = axum::response::Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_literals_before_parameters() {
        let (r, p) = match_route("GET", "/features/requests/abc").unwrap();
        assert_eq!(r.template, "/features/requests/{requestId}");
        assert_eq!(p["requestId"], "abc");
        let (r, p) = match_route("GET", "/features/URN:FEATURE:DATA:t:x:V1").unwrap();
        assert_eq!(r.template, "/features/{urn}");
        assert_eq!(p["urn"], "URN:FEATURE:DATA:t:x:V1");
        assert!(match_route("DELETE", "/features/x").is_none());
        assert!(match_route("GET", "/nothing").is_none());
    }
}
