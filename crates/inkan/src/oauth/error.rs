//! The authorization server's one error type, mapped in one place to the
//! bodies of RFC 6749 §5.2 / RFC 7591 §3.2.2 (JSON) or, for authorization
//! requests that must not be redirected, to an HTML page for the person at
//! the browser.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// Seconds a client should wait before retrying after store trouble.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Unknown or expired client, or bad credentials. `basic` says the client
    /// tried HTTP Basic, which RFC 6749 §5.2 answers with `WWW-Authenticate`.
    #[error("{description}")]
    InvalidClient { description: String, basic: bool },
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    UnsupportedResponseType(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
    #[error("too many registrations from this address; retry later")]
    RateLimited,
    #[error("request body too large")]
    PayloadTooLarge,
    /// Store trouble: fail closed with 503, never with 401 or 400, so that
    /// clients keep their tokens and retry.
    #[error("{0}")]
    Unavailable(#[from] StoreError),
}

impl OAuthError {
    pub fn invalid_client(description: impl Into<String>, basic: bool) -> Self {
        OAuthError::InvalidClient {
            description: description.into(),
            basic,
        }
    }

    /// The `error` code registered for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::PayloadTooLarge => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::UnsupportedResponseType(_) => "unsupported_response_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::AccessDenied(_) => "access_denied",
            OAuthError::InvalidRedirectUri(_) => "invalid_redirect_uri",
            OAuthError::InvalidClientMetadata(_) => "invalid_client_metadata",
            OAuthError::RateLimited => "too_many_requests",
            OAuthError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            OAuthError::AccessDenied(_) => StatusCode::FORBIDDEN,
            OAuthError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client (or person) is told. Store details stay in the log.
    pub fn description(&self) -> String {
        match self {
            OAuthError::Unavailable(_) => "the token store is unavailable; retry shortly".into(),
            other => other.to_string(),
        }
    }

    fn log(&self) {
        if let OAuthError::Unavailable(cause) = self {
            tracing::error!(error = %cause, "authorization server: store unavailable");
        }
    }

    /// The same failure as an HTML page, for authorization requests whose
    /// client or redirect URI could not be trusted (RFC 6749 §4.1.2.1 forbids
    /// redirecting those).
    pub fn into_page(self) -> Response {
        self.log();
        let mut response = crate::pages::error_page(
            self.status(),
            "This sign-in request cannot continue",
            &self.description(),
        );
        if matches!(self, OAuthError::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: String,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        self.log();
        let body = ErrorBody {
            error: self.code(),
            error_description: self.description(),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        match self {
            OAuthError::InvalidClient { basic: true, .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"inkan\", charset=\"UTF-8\""),
                );
            }
            OAuthError::Unavailable(_) | OAuthError::RateLimited => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn store_trouble_is_503_with_retry_after_and_hides_the_cause() {
        let response =
            OAuthError::from(StoreError("redis: connection refused".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body = body_of(response).await;
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            !body["error_description"]
                .as_str()
                .unwrap()
                .contains("redis")
        );

        let page = OAuthError::from(StoreError("x".into())).into_page();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(page.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn invalid_client_is_401_and_challenges_only_basic_users() {
        let basic = OAuthError::invalid_client("bad", true).into_response();
        assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
        assert!(basic.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(body_of(basic).await["error"], "invalid_client");
        let post = OAuthError::invalid_client("bad", false).into_response();
        assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
        assert!(!post.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
