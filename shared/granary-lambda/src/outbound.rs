//! The HTTP client for URLs users and admins give Granary (file sources, webhooks), held to the
//! outbound policy (`granary_domain::outbound`): a URL is checked before anything is sent, every host
//! name is resolved by a resolver that hands the connector only addresses it checked (so a name that
//! resolves to an internal address, or rebinds to one, is refused before a connection), every redirect
//! is checked the same way, and proxies from the environment are ignored, since a proxy would resolve
//! the name where the check cannot see it.
//!
//! The client is built at its first use: reading the machine's CA certificates costs a cold start
//! milliseconds that an invocation with no such URL need not pay.

use granary_domain::outbound::OutboundPolicy;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Redirects followed at most, as reqwest's default policy does.
const MAX_REDIRECTS: usize = 10;

/// How a client times out.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// Between two reads of the body (a source that stalls), if any.
    pub read: Option<Duration>,
    /// For the whole exchange, if any.
    pub total: Option<Duration>,
}

/// Why a redirect from `from` (the URL answered with it) to `to` is not followed, if it is not: `to` is
/// outside the policy, or it leaves HTTPS for plain HTTP (the request, a signed webhook body among
/// them, would then travel in the clear).
fn redirect_refusal(policy: &OutboundPolicy, from: Option<&url::Url>, to: &url::Url) -> Option<String> {
    if let Some(from) = from.filter(|f| f.scheme() == "https" && to.scheme() != "https") {
        return Some(format!("redirected from {from} to {to}: a redirect may not leave HTTPS"));
    }
    policy.check_url(to).err().map(|e| format!("redirected to {to}: {e}"))
}

/// A lazily built HTTP client held to an outbound policy.
#[derive(Debug)]
pub struct OutboundHttp {
    policy: Arc<OutboundPolicy>,
    timeouts: Timeouts,
    client: OnceLock<reqwest::Client>,
}

impl OutboundHttp {
    /// A client for `policy` with `timeouts`, built when first used.
    pub fn new(policy: OutboundPolicy, timeouts: Timeouts) -> Self {
        Self { policy: Arc::new(policy), timeouts, client: OnceLock::new() }
    }

    /// The policy it holds to.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let policy = self.policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match redirect_refusal(&policy, attempt.previous().last(), attempt.url()) {
                None => attempt.follow(),
                Some(e) => attempt.error(e),
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.timeouts.connect)
            .redirect(redirects)
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: self.policy.clone() }));
        if let Some(read) = self.timeouts.read {
            builder = builder.read_timeout(read);
        }
        if let Some(total) = self.timeouts.total {
            builder = builder.timeout(total);
        }
        let built = builder.build().map_err(|e| format!("cannot build the HTTP client: {}", describe(&e)))?;
        Ok(self.client.get_or_init(|| built))
    }

    /// A request of `method` to `url`, once the URL passed the policy; `Err` names why it did not (or
    /// why no client could be built), and nothing was sent.
    pub fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, Refusal> {
        let parsed = url::Url::parse(url).map_err(|e| Refusal::Refused(format!("not a URL: {e}")))?;
        self.policy.check_url(&parsed).map_err(Refusal::Refused)?;
        Ok(self.client().map_err(Refusal::Client)?.request(method, parsed))
    }
}

/// Why a request was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL is not allowed (or not a URL): the same URL will never be.
    #[error("{0}")]
    Refused(String),
    /// The client could not be built (the machine's certificates): another try may work.
    #[error("{0}")]
    Client(String),
}

/// An error with its causes, `a: b: c`: reqwest's own message says only "error sending request".
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Resolves with the system's resolver and keeps only the addresses the policy allows, so the
/// connector never sees another; a name with none left is an error naming the refused address.
struct CheckedResolver {
    policy: Arc<OutboundPolicy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_addr(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on `ip` answering every request with `answer`, counting the connections it accepts.
    async fn server(ip: &str, answer: String) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, count)
    }

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    fn http(internal: &str, hosts: Option<&str>) -> OutboundHttp {
        let policy = OutboundPolicy::parse(None, hosts, Some(internal)).unwrap();
        OutboundHttp::new(policy, Timeouts { connect: Duration::from_secs(2), read: None, total: Some(Duration::from_secs(5)) })
    }

    async fn get(http: &OutboundHttp, url: &str) -> Result<String, String> {
        let request = http.request(reqwest::Method::GET, url).map_err(|e| e.to_string())?;
        let response = request.send().await.map_err(|e| describe(&e))?;
        Ok(response.text().await.unwrap())
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_before_any_connection() {
        let (addr, count) = server("127.0.0.1", OK.into()).await;
        let cloud = http("", None);
        let e = get(&cloud, &format!("http://{addr}/f")).await.unwrap_err();
        assert!(e.contains("loopback address Granary may not connect to"), "{e}");
        // A name resolving to the address: refused by the resolver, before the connector.
        let e = get(&cloud, &format!("http://localhost:{}/f", addr.port())).await.unwrap_err();
        assert!(e.contains("localhost is") && e.contains("loopback"), "{e}");
        assert_eq!(count.load(Ordering::SeqCst), 0, "no connection was made");

        // Allowed networks connect, to the checked address.
        assert_eq!(get(&http("127.0.0.1/32", None), &format!("http://localhost:{}/f", addr.port())).await.unwrap(), "ok");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn every_redirect_is_checked_again() {
        // 127.0.0.2 is loopback too (Linux answers the whole 127/8) but outside the allowed network.
        let (target, target_count) = server("127.0.0.2", OK.into()).await;
        let (to_address, _) = server("127.0.0.1", redirect_to(&format!("http://{target}/x"))).await;
        let one_machine_but_127_0_0_1 = http("127.0.0.1/32", None);
        let e = get(&one_machine_but_127_0_0_1, &format!("http://{to_address}/f")).await.unwrap_err();
        assert!(e.contains("redirected to http://127.0.0.2") && e.contains("may not connect"), "{e}");

        let (to_metadata, _) = server("127.0.0.1", redirect_to("http://169.254.169.254/latest/meta-data/")).await;
        let e = get(&one_machine_but_127_0_0_1, &format!("http://{to_metadata}/f")).await.unwrap_err();
        assert!(e.contains("link-local"), "{e}");

        let (to_name, _) = server("127.0.0.1", redirect_to(&format!("http://other.invalid:{}/x", target.port()))).await;
        let e = get(&http("*", Some("127.0.0.1")), &format!("http://{to_name}/f")).await.unwrap_err();
        assert!(e.contains("host other.invalid is not one Granary may connect to"), "{e}");
        assert_eq!(target_count.load(Ordering::SeqCst), 0, "no redirect reached the refused target");

        // A redirect inside the policy is followed.
        let e = get(&http("*", None), &format!("http://{to_address}/f")).await.unwrap();
        assert_eq!(e, "ok");
        assert_eq!(target_count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn causes_are_spelled_out_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("10.0.0.1 is refused"));
        assert_eq!(describe(&e), "outer: 10.0.0.1 is refused");
    }

    #[test]
    fn a_redirect_may_not_leave_https() {
        let any = OutboundPolicy::default();
        let url = |u: &str| url::Url::parse(u).unwrap();
        let down = redirect_refusal(&any, Some(&url("https://hooks.example.org/a")), &url("http://hooks.example.org/a"));
        assert!(down.is_some_and(|e| e.contains("may not leave HTTPS")));
        assert_eq!(redirect_refusal(&any, Some(&url("https://a.example.org/")), &url("https://b.example.org/")), None);
        assert_eq!(redirect_refusal(&any, Some(&url("http://a.example.org/")), &url("https://b.example.org/")), None, "upgrading is fine");
        assert_eq!(redirect_refusal(&any, Some(&url("http://a.example.org/")), &url("http://b.example.org/")), None);
        let cloud = OutboundPolicy::parse(None, None, Some("")).unwrap();
        assert!(redirect_refusal(&cloud, None, &url("http://10.0.0.1/")).is_some(), "the policy holds without a previous URL");
        assert!(
            redirect_refusal(&cloud, Some(&url("http://a.example.org/")), &url("http://10.0.0.1/"))
                .is_some_and(|e| e.contains("redirected to"))
        );
    }
}
