//! Stands in for the identity provider and API Gateway's JWT authorizer: an RS256 key in the data
//! directory signs tokens, its JWKS is served, and bearer tokens are validated the way the authorizer
//! does (signature, `alg`, issuer, audience, expiry) before the claims reach a handler in API Gateway's
//! form.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::Path;

/// The issuer granary-local puts in its tokens.
pub const ISSUER: &str = "granary-local";
/// The audience granary-local puts in its tokens and requires.
pub const AUDIENCE: &str = "granary";

/// Why a token is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send 'Authorization: Bearer <token>' (see 'granary-local token')")]
    Missing,
    /// Signature, algorithm, issuer, audience or expiry is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The key, and what is derived from it.
pub struct LocalIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
    groups_claim: String,
    /// Tokens already verified, with their claims and expiry: an RS256 verification is the largest
    /// cost of a small request (a fifth of the runner's CPU under load), and a client sends the same
    /// token again and again. Only a token byte for byte the same is found, and its expiry is checked
    /// at each use.
    verified: std::sync::Mutex<HashMap<String, (Claims, i64)>>,
}

/// Claims in API Gateway's form, by name.
type Claims = HashMap<String, String>;

/// Most tokens kept verified; the cache starts over when full.
const MAX_VERIFIED: usize = 10_000;

fn key_error(path: &Path, e: impl std::fmt::Display) -> String {
    format!("signing key {}: {e}", path.display())
}

impl LocalIssuer {
    /// The secret signing order tokens, made (64 random hex characters) in `<data_dir>/keys` the first
    /// time; `GRANARY_ORDER_TOKEN_SECRET` set in the environment wins.
    pub fn order_token_secret(data_dir: &Path) -> Result<String, String> {
        let dir = data_dir.join("keys");
        let path = dir.join("order-token.secret");
        if !path.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| key_error(&dir, e))?;
            let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            let tmp = dir.join(format!("order-token.secret.{}", std::process::id()));
            std::fs::write(&tmp, secret).map_err(|e| key_error(&tmp, e))?;
            let _ = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
        }
        std::fs::read_to_string(&path).map(|s| s.trim().to_owned()).map_err(|e| key_error(&path, e))
    }

    /// Loads the key of `data_dir`, creating it on first use (the first process to create it wins).
    pub fn load_or_create(data_dir: &Path, groups_claim: &str) -> Result<Self, String> {
        let dir = data_dir.join("keys");
        let path = dir.join("jwt-rs256.pem");
        if !path.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| key_error(&dir, e))?;
            let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| key_error(&path, e))?;
            let pem = key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).map_err(|e| key_error(&path, e))?;
            let tmp = dir.join(format!("jwt-rs256.pem.{}", std::process::id()));
            std::fs::write(&tmp, pem.as_bytes()).map_err(|e| key_error(&tmp, e))?;
            let _ = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
        }
        let pem = std::fs::read_to_string(&path).map_err(|e| key_error(&path, e))?;
        let private = RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|e| key_error(&path, e))?;
        let public = RsaPublicKey::from(&private);
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let kid = n.chars().take(16).collect::<String>();
        Ok(Self {
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| key_error(&path, e))?,
            decoding: DecodingKey::from_rsa_components(&n, &e).map_err(|e| key_error(&path, e))?,
            jwk: json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e }),
            kid,
            groups_claim: groups_claim.to_owned(),
            verified: std::sync::Mutex::default(),
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// A token for `user` in `groups`, valid `ttl_secs`.
    pub fn mint(&self, user: &str, groups: &[String], ttl_secs: u64, now: i64) -> Result<String, String> {
        let mut claims = Map::new();
        claims.insert("iss".into(), ISSUER.into());
        claims.insert("aud".into(), AUDIENCE.into());
        claims.insert("sub".into(), user.into());
        if user.contains('@') {
            claims.insert("email".into(), user.into());
        }
        claims.insert(self.groups_claim.clone(), json!(groups));
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + i64::try_from(ttl_secs).unwrap_or(i64::MAX / 4)).into());
        claims.insert("token_use".into(), "id".into());
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Validates a bearer token and returns its claims as API Gateway passes them to a Lambda.
    pub fn verify(&self, authorization: Option<&str>) -> Result<HashMap<String, String>, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let now = chrono::Utc::now().timestamp();
        if let Some((claims, exp)) = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(token) {
            if *exp > now {
                return Ok(claims.clone());
            }
            return Err(AuthError::Invalid("ExpiredSignature".into()));
        }
        // Only RS256 is accepted: a token declaring `none` or HS256 fails here, before any key is used.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let claims: HashMap<String, String> = data.claims.into_iter().map(|(k, v)| (k, api_gateway_claim(&v))).collect();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(token.to_owned(), (claims.clone(), exp));
        Ok(claims)
    }
}

/// A claim as API Gateway's JWT authorizer hands it over: strings as they are, arrays as `[a b]`,
/// everything else as its JSON text.
fn api_gateway_claim(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect();
            format!("[{}]", parts.join(" "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_is_taken_again_until_it_expires_and_a_forged_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = LocalIssuer::load_or_create(dir.path(), "cognito:groups").unwrap();
        let now = chrono::Utc::now().timestamp();
        let token = issuer.mint("ann@example.org", &["s2".into()], 2, now).unwrap();
        let header = format!("Bearer {token}");
        assert_eq!(issuer.verify(Some(&header)).unwrap()["sub"], "ann@example.org");
        assert_eq!(issuer.verify(Some(&header)).unwrap()["sub"], "ann@example.org", "from the cache");
        // A token differing in one byte of its signature is verified on its own, and refused.
        let mut forged = header.clone();
        let at = forged.len() - 10;
        let flipped = if &forged[at..=at] == "A" { "B" } else { "A" };
        forged.replace_range(at..=at, flipped);
        assert!(issuer.verify(Some(&forged)).is_err());
        // Once expired, the cached one is refused too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while issuer.verify(Some(&header)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepted 10 s after its expiry");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(chrono::Utc::now().timestamp() >= now + 2, "refused only once expired");
    }

    #[test]
    fn claims_take_api_gateway_form() {
        assert_eq!(api_gateway_claim(&json!(["admin", "producer"])), "[admin producer]");
        assert_eq!(api_gateway_claim(&json!(1700000000)), "1700000000");
        assert_eq!(api_gateway_claim(&json!("x")), "x");
    }
}
