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

/// An RFC 9457 problem+json body: `title` says what kind of problem, `detail` what exactly, `errors`
/// every individual error with its path.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say it all.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What exactly is wrong.
    pub detail: String,
    /// Every error, each naming its path (absent when there is only the detail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A problem+json response (see [`Problem`]).
pub fn problem(status: u16, title: &str, detail: &str, errors: &[String]) -> Response<Body> {
    let body = Problem { problem_type: "about:blank".into(), title: title.into(), status, detail: detail.into(), errors: errors.to_vec() };
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .body(Body::Text(serde_json::to_string(&body).unwrap_or_default()))
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

/// 409: the target is not in a state that allows the change.
pub fn conflict(detail: &str) -> Response<Body> {
    problem(409, "Conflict", detail, &[])
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

/// A JSON object body of type `T`, or `None` when the request has none (empty, or white space only).
/// A body that is not UTF-8, not JSON, not an object or not a `what` is the 400 naming why: a
/// malformed body never falls back to a default.
pub fn optional_object<T: serde::de::DeserializeOwned>(body: &Body, what: &str) -> Result<Option<T>, Box<Response<Body>>> {
    let refuse = |e: String| Box::new(bad_request(&format!("the body is not a {what}"), &[format!("body: {e}")]));
    let text = match body {
        Body::Empty => return Ok(None),
        body => body_text(body).map_err(refuse)?,
    };
    let start = text.trim_start();
    if start.is_empty() {
        return Ok(None);
    }
    if !start.starts_with('{') {
        return Err(refuse("must be a JSON object".into()));
    }
    serde_json::from_str(text).map(Some).map_err(|e| refuse(e.to_string()))
}

/// The request a `lambda_http` handler receives from API Gateway's HTTP API for `method` `path?query`
/// with `body`, called by `caller` (`(user, groups)`, whose claims the JWT authorizer passes on) or
/// anonymously: what tests and tools hand to a handler in process.
pub fn apigw_request(method: &str, path: &str, query: &str, body: Option<&str>, caller: Option<(&str, &[&str])>) -> lambda_http::Request {
    let params: serde_json::Map<String, serde_json::Value> =
        url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), serde_json::Value::from(v.into_owned()))).collect();
    let mut context = serde_json::json!({
        "accountId": "000000000000", "apiId": "test", "domainName": "localhost", "domainPrefix": "test",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
        "requestId": "test", "routeKey": "$default", "stage": "$default", "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0,
    });
    if let Some((user, groups)) = caller {
        context["authorizer"] =
            serde_json::json!({"jwt": {"claims": {"sub": user, "cognito:groups": format!("[{}]", groups.join(" "))}, "scopes": null}});
    }
    let mut event = serde_json::json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"content-type": "application/json"}, "requestContext": context, "isBase64Encoded": false,
    });
    if !params.is_empty() {
        event["queryStringParameters"] = serde_json::Value::Object(params);
    }
    if let Some(b) = body {
        event["body"] = serde_json::Value::from(b);
    }
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event lambda_http reads")
}

/// Decodes `%XX` escapes in a path segment: URNs, dates and e-mail addresses may arrive encoded.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
