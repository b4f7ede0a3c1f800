//! The bearer token that admin API writes require when `--admin-token` is set.
//!
//! The comparison runs in constant time for tokens of the right length
//! (`subtle::ConstantTimeEq`), so response timing does not tell an attacker
//! how many leading bytes of a guess were right. Only the token's length can
//! leak, and `--admin-token` refuses tokens shorter than 16 characters.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::admin::{AdminState, ApiError};

/// The configured token.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        AdminToken(token.into())
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Middleware on every route: with a token configured, refuse requests that
/// change something (any method but GET, HEAD and OPTIONS) without
/// `Authorization: Bearer <token>` (401). Reads stay open.
pub async fn guard_writes(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if let Some(token) = state
        .token
        .as_ref()
        .filter(|_| !reads.contains(request.method()))
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let bearer = given.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let detail = match bearer {
            None if given.is_none() => {
                "this gateway's admin API requires `Authorization: Bearer <token>` for changes \
                 (the token given to the gateway as --admin-token / SHOAL_ADMIN_TOKEN)"
            }
            None => "the Authorization header must be `Bearer <token>`",
            Some(b) if !token.matches(b.trim()) => {
                "the bearer token is not this gateway's --admin-token"
            }
            Some(_) => return Ok(next.run(request).await),
        };
        let mut response = axum::response::IntoResponse::into_response(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            detail,
        ));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"shoal-admin\""),
        );
        return Ok(response);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let token = AdminToken::new("0123456789abcdef");
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcde"));
        assert!(!token.matches("0123456789abcdef0"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(..)", "never logged");
    }
}
