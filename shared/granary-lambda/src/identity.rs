//! Who calls: read only from the JWT authorizer claims API Gateway puts in the request context.

use lambda_http::RequestExt;
use std::collections::HashMap;

/// The group that may do everything.
pub const ADMIN_GROUP: &str = "admin";
/// The group that may submit features.
pub const PRODUCER_GROUP: &str = "producer";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `email` claim, else `sub`.
    pub user: String,
    /// Roles and access groups.
    pub groups: Vec<String>,
}

impl Identity {
    /// The caller of a request that went through the JWT authorizer, or `None` for an anonymous one.
    pub fn from_request(req: &lambda_http::Request, groups_claim: &str) -> Option<Self> {
        let ctx = req.request_context_ref()?;
        let claims = &ctx.authorizer()?.jwt.as_ref()?.claims;
        Self::from_claims(claims, groups_claim)
    }

    /// The caller named by claims in API Gateway's form (every value a string; arrays as `[a b]`).
    pub fn from_claims(claims: &HashMap<String, String>, groups_claim: &str) -> Option<Self> {
        let user = claims.get("email").or_else(|| claims.get("sub")).filter(|u| !u.is_empty())?.clone();
        let groups = claims.get(groups_claim).map(|g| parse_claim_list(g)).unwrap_or_default();
        Some(Self { user, groups })
    }

    /// Whether the caller is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.in_group(ADMIN_GROUP)
    }

    /// Whether the caller may submit features.
    pub fn is_producer(&self) -> bool {
        self.is_admin() || self.in_group(PRODUCER_GROUP)
    }
}

/// Splits a list claim as API Gateway flattens it: `[a b c]`, a JSON array, or a comma-separated string.
pub fn parse_claim_list(value: &str) -> Vec<String> {
    let v = value.trim();
    if let Ok(list) = serde_json::from_str::<Vec<String>>(v) {
        return list;
    }
    let inner = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
    inner.split([' ', ',']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_claims_in_every_form() {
        assert_eq!(parse_claim_list("[admin producer]"), vec!["admin", "producer"]);
        assert_eq!(parse_claim_list(r#"["a","b c"]"#), vec!["a", "b c"]);
        assert_eq!(parse_claim_list("a,b"), vec!["a", "b"]);
        assert!(parse_claim_list("[]").is_empty());
    }

    #[test]
    fn user_is_email_else_sub() {
        let mut c = HashMap::from([("sub".to_owned(), "u-1".to_owned())]);
        assert_eq!(Identity::from_claims(&c, "cognito:groups").unwrap().user, "u-1");
        c.insert("email".into(), "ann@example.org".into());
        c.insert("cognito:groups".into(), "[producer]".into());
        let id = Identity::from_claims(&c, "cognito:groups").unwrap();
        assert_eq!(id.user, "ann@example.org");
        assert!(id.is_producer() && !id.is_admin());
        assert!(Identity::from_claims(&HashMap::new(), "g").is_none());
    }
}
