//! Access to the API: bearer tokens with roles, JSON error bodies, and a JSON body reader
//! with a size limit.

use std::net::IpAddr;
use std::path::Path;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also approve and reject recommendations.
    Approver,
    /// Also pause, resume, pin and schedule overrides.
    Admin,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token name (recorded in the audit log).
    pub name: String,
    /// Role.
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: String,
}

/// The configured tokens.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<(String, Principal)>,
    anonymous_read: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

/// Equal without an early exit, so the time taken says nothing of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// No tokens: reads are open, writes refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// Tokens from `(token, name, role)` triples (the demo's and tests').
    pub fn from_list(list: Vec<(String, String, Role)>) -> Self {
        Self {
            entries: list
                .into_iter()
                .map(|(t, name, role)| (t, Principal { name, role }))
                .collect(),
            anonymous_read: false,
        }
    }

    /// Lets reads through without a token (writes still need one).
    pub fn with_anonymous_read(mut self, yes: bool) -> Self {
        self.anonymous_read = yes;
        self
    }

    /// Reads a tokens file: a YAML list of `{name, role, token}`.
    ///
    /// # Errors
    /// An unreadable file, bad YAML, a token shorter than 16 characters, a repeated name or
    /// token.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: Vec<TokenEntry> =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in list.iter().enumerate() {
            if t.token.len() < 16 {
                return Err(format!(
                    "{}: entry {i} ({}): token shorter than 16 characters",
                    path.display(),
                    t.name
                ));
            }
            if !seen.insert(t.name.clone()) || !seen.insert(format!("\0{}", t.token)) {
                return Err(format!(
                    "{}: entry {i} ({}): name or token repeated",
                    path.display(),
                    t.name
                ));
            }
        }
        Ok(Self::from_list(
            list.into_iter()
                .map(|t| (t.token, t.name, t.role))
                .collect(),
        ))
    }

    /// Whether any token is configured.
    pub fn configured(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Reads the request's bearer token, comparing it with each configured one once. The
    /// rate limiter does this for every request and hands the answer on to the handler
    /// (a request extension), so the comparison is not repeated.
    pub fn identify(&self, headers: &HeaderMap) -> Identity {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Identity::NoToken;
        };
        if !self.configured() {
            // Nothing to compare with: every request is judged as one without a token.
            return Identity::NoToken;
        }
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Identity::Invalid("missing bearer token");
        };
        self.entries
            .iter()
            .fold(None, |found, (t, p)| {
                if same(t.as_bytes(), token.as_bytes()) {
                    Some(p)
                } else {
                    found
                }
            })
            .map_or(Identity::Invalid("invalid token"), |p| {
                Identity::Token(p.clone())
            })
    }

    /// Who is calling, for per-caller limits: the valid token's name; for a request without
    /// a valid token, `anonymous` (a read let through without one) or `unauthenticated`
    /// (refused: no token where one is needed, or an invalid one) and the client's network
    /// (`peer`: the IPv4 address, or the IPv6 /64), so that one client without a token
    /// cannot spend the budget of every other, and guessing tokens from one network shares
    /// one budget whatever the tokens.
    pub fn caller(&self, id: &Identity, peer: Option<IpAddr>) -> String {
        let who = match (id, self.permit(id, Role::Viewer)) {
            (Identity::Token(p), _) => return format!("token:{}", p.name),
            (_, Ok(_)) => "anonymous",
            (_, Err(_)) => "unauthenticated",
        };
        match peer {
            None => who.to_string(),
            Some(IpAddr::V4(a)) => format!("{who}@{a}"),
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => format!("{who}@{v4}"),
                None => {
                    let s = a.segments();
                    format!("{who}@{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        }
    }

    /// The caller, if allowed `need`. Without tokens configured, reads are anonymous and
    /// writes are refused.
    ///
    /// # Errors
    /// 401 without a valid token, 403 when its role is below `need`.
    pub fn permit(&self, id: &Identity, need: Role) -> Result<Principal, ApiError> {
        let anonymous = || Principal {
            name: "anonymous".into(),
            role: Role::Viewer,
        };
        if need == Role::Viewer && self.anonymous_read && matches!(id, Identity::NoToken) {
            return Ok(anonymous());
        }
        if !self.configured() {
            return if need == Role::Viewer {
                Ok(anonymous())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "no API tokens are configured (api.tokens_file): writes are disabled",
                ))
            };
        }
        let principal = match id {
            Identity::NoToken => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token",
                ));
            }
            Identity::Invalid(why) => return Err(ApiError::new(StatusCode::UNAUTHORIZED, *why)),
            Identity::Token(p) => p,
        };
        if principal.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token's role does not allow that",
            ));
        }
        Ok(principal.clone())
    }
}

/// What a request's `Authorization` header says, read once per request by the rate limiter
/// ([`Tokens::identify`]) and taken by handlers as an extractor.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No header (or no tokens configured to compare it with).
    NoToken,
    /// A header that is not a configured bearer token: why, for the 401.
    Invalid(&'static str),
    /// A configured token's owner.
    Token(Principal),
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Every API route sits behind the rate limiter, which sets it; a route that did not
        // would refuse rather than let a request through unidentified.
        parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "request not identified")
        })
    }
}

/// An error answer: `{"error": "...", "status": N}`.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for a person. Says nothing of internals on 5xx.
    pub error: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            error: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

/// The largest body accepted; set per router.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON request body: 415 without `application/json`, 413 over the limit, 400 for
/// malformed JSON (depth bombs included), 422 for JSON of the wrong shape. The outcome is
/// kept rather than rejected at once, so handlers check the caller's token first (a request
/// without one is a 401 whatever its body).
pub struct JsonBody<T>(pub Result<T, ApiError>);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(JsonBody(parse(req).await))
    }
}

async fn parse<T: DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(16 * 1024, |l| l.0);
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {limit} bytes"),
            )
        })?;
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_without_a_valid_token_are_told_apart_by_network() {
        let tokens = Tokens::from_list(vec![(
            "a-token-of-sixteen".into(),
            "vera".into(),
            Role::Viewer,
        )]);
        let with = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            h
        };
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A valid token is its own budget, wherever it comes from.
        let named = tokens.caller(
            &tokens.identify(&with("a-token-of-sixteen")),
            v6("10.0.0.1"),
        );
        assert_eq!(named, "token:vera");
        assert_eq!(
            tokens.caller(
                &tokens.identify(&with("a-token-of-sixteen")),
                v6("10.0.0.2")
            ),
            named
        );
        // Without one: per IPv4 address, per IPv6 /64, a mapped IPv4 as IPv4.
        let bad = tokens.identify(&with("guess"));
        assert_eq!(
            tokens.caller(&bad, v6("10.0.0.1")),
            "unauthenticated@10.0.0.1"
        );
        assert_eq!(
            tokens.caller(&Identity::NoToken, v6("::ffff:10.0.0.1")),
            "unauthenticated@10.0.0.1"
        );
        assert_eq!(
            tokens.caller(&bad, v6("2001:db8:1:2:aaaa::1")),
            tokens.caller(&bad, v6("2001:db8:1:2:bbbb::9")),
        );
        assert_ne!(
            tokens.caller(&bad, v6("2001:db8:1:2::1")),
            tokens.caller(&bad, v6("2001:db8:1:3::1")),
        );
        // Reads open to all: anonymous, still per address.
        let open = Tokens::none();
        assert_eq!(
            open.caller(&Identity::NoToken, v6("10.0.0.3")),
            "anonymous@10.0.0.3"
        );
        assert_eq!(open.caller(&Identity::NoToken, None), "anonymous");
    }
}
