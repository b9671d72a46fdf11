//! HTTP answers: JSON bodies and RFC 9457 problem+json errors that name what is wrong.

use lambda_http::{Body, Response};
use serde::Serialize;

/// A JSON response.
pub fn json<T: Serialize>(status: u16, body: &T) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise response: {e}\"}}"));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(text))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// A problem+json response: `title` says what kind of problem, `detail` what exactly, `errors` every
/// individual error with its path.
pub fn problem(status: u16, title: &str, detail: &str, errors: &[String]) -> Response<Body> {
    let mut body = serde_json::json!({ "type": "about:blank", "title": title, "status": status, "detail": detail });
    if !errors.is_empty() {
        body["errors"] = serde_json::json!(errors);
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .body(Body::Text(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// 400 with every error.
pub fn bad_request(detail: &str, errors: &[String]) -> Response<Body> {
    problem(400, "Bad Request", detail, errors)
}

/// 401: no identity where one is required.
pub fn unauthorized() -> Response<Body> {
    problem(401, "Unauthorized", "a valid bearer token is required", &[])
}

/// 403: known caller, not allowed.
pub fn forbidden(detail: &str) -> Response<Body> {
    problem(403, "Forbidden", detail, &[])
}

/// 404: no such thing (or not visible to the caller).
pub fn not_found(detail: &str) -> Response<Body> {
    problem(404, "Not Found", detail, &[])
}

/// 503: a dependency is temporarily unavailable; the client may retry.
pub fn unavailable(detail: &str) -> Response<Body> {
    problem(503, "Service Unavailable", detail, &[])
}

/// The request body as text, whatever encoding API Gateway used.
pub fn body_text(body: &Body) -> Result<&str, String> {
    match body {
        Body::Empty => Ok(""),
        Body::Text(t) => Ok(t),
        Body::Binary(b) => std::str::from_utf8(b).map_err(|e| format!("body is not UTF-8: {e}")),
        _ => Err("unsupported body".into()),
    }
}
