//! The one place where proxy failures become HTTP answers: a Kubernetes `Status` object with the code
//! API clients (kubectl, client-go) know how to read.
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;

// Clone: one hub answer (or failure) is shared by every request that waited for the same look-up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not supported")]
    MethodNotAllowed(String),
    #[error("cluster {0:?} has no connected tunnel")]
    NoTunnel(String),
    /// Too many failed authentications from the caller's address; `retry_after` in whole seconds.
    #[error("too many failed authentication attempts from this address; retry in {retry_after}s")]
    TooManyRequests { retry_after: u64 },
    /// A generic message only: the detail (a hub apiserver error) is logged, never sent to the caller.
    #[error("{0}")]
    Unavailable(String),
    #[error("spoke {cluster:?}: {reason}")]
    BadGateway { cluster: String, reason: String },
    #[error("spoke {0:?} did not answer in time")]
    GatewayTimeout(String),
}

impl ProxyError {
    pub fn code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoTunnel(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::BadRequest(_) => "BadRequest",
            Self::NotFound(_) => "NotFound",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::NoTunnel(_) | Self::Unavailable(_) => "ServiceUnavailable",
            Self::BadGateway { .. } => "InternalError",
            Self::GatewayTimeout(_) => "Timeout",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = status_response(self.code(), self.reason(), &self.to_string());
        if let Self::TooManyRequests { retry_after } = self {
            // client-go waits this long before it retries a 429.
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        }
        response
    }
}

pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    status_full(code, reason, message).map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// The answer of a connection over `--proxy-max-connections` (the listener adds `Retry-After`).
pub fn too_many_connections() -> Response<Full<Bytes>> {
    status_full(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the hub proxy is at its connection limit, try again later",
    )
}

fn status_full(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_body_is_a_kubernetes_status() {
        let response = ProxyError::NoTunnel("a".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], 503);
        assert_eq!(status["reason"], "ServiceUnavailable");
        assert!(status["message"].as_str().unwrap().contains("\"a\""));
    }
}
