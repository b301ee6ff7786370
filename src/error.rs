//! The one error type clients see: a small stable [`ErrorKind`] (status + `errcode`), a human
//! sentence, and the cause kept apart for the logs.
//!
//! Every error body, everywhere: `{"errcode": "SY_…", "error": "<human sentence>"}`.
//! 5xx are logged at error level with the cause chain; 4xx at debug.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadJson,
    InvalidParam,
    MissingHeader,
    BadHeader,
    StaleRequest,
    UnknownKey,
    BadSignature,
    LimitExceeded,
    UsernameTaken,
    AlreadyMember,
    BadCredentials,
    UnknownToken,
    MissingToken,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    Overloaded,
    Unavailable,
    Internal,
    /// An ID-CSR that is not one (400).
    BadCsr,
    /// A sign-in challenge that is unknown, expired or used (401).
    BadChallenge,
    /// A certificate presented for a sign-in that is not trusted (401).
    BadCert,
    /// A certificate in a request body that is not trusted (400, `SY_BAD_CERT` too).
    CertInput,
    /// A sensitive action without the right solution (403).
    SensitiveAction,
    /// A message without its author's signature where one is required (400).
    SignatureRequired,
    /// A message whose author's signature does not check (400, `SY_BAD_SIGNATURE` too).
    MessageSignature,
    /// The thing to create exists already (409).
    AlreadyExists,
    /// A Merkle proof that does not verify, or a checkpoint inconsistent with one already
    /// accepted (422, C2SP tlog-witness).
    BadProof,
    /// A cluster node asked to commit that does not lead (503; the forwarder asks the
    /// database who leads and tries there).
    NotLeader,
    /// The request cannot be served in the server's present configuration (409).
    Conflict,
    /// A body of a type the route does not take (415).
    UnsupportedMediaType,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadJson
            | ErrorKind::InvalidParam
            | ErrorKind::MissingHeader
            | ErrorKind::BadHeader
            | ErrorKind::BadCsr
            | ErrorKind::CertInput
            | ErrorKind::SignatureRequired
            | ErrorKind::MessageSignature => StatusCode::BAD_REQUEST,
            ErrorKind::BadChallenge | ErrorKind::BadCert => StatusCode::UNAUTHORIZED,
            ErrorKind::SensitiveAction => StatusCode::FORBIDDEN,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::BadProof => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::MissingToken
            | ErrorKind::StaleRequest
            | ErrorKind::UnknownKey
            | ErrorKind::BadSignature => StatusCode::UNAUTHORIZED,
            ErrorKind::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::UsernameTaken | ErrorKind::AlreadyMember => StatusCode::CONFLICT,
            ErrorKind::BadCredentials | ErrorKind::UnknownToken => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::NotLeader => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn errcode(self) -> &'static str {
        match self {
            ErrorKind::BadJson => "SY_BAD_JSON",
            ErrorKind::InvalidParam => "SY_INVALID_PARAM",
            ErrorKind::MissingHeader => "SY_MISSING_HEADER",
            ErrorKind::BadHeader => "SY_BAD_HEADER",
            ErrorKind::StaleRequest => "SY_STALE_REQUEST",
            ErrorKind::UnknownKey => "SY_UNKNOWN_KEY",
            ErrorKind::BadSignature => "SY_BAD_SIGNATURE",
            ErrorKind::LimitExceeded => "SY_LIMIT_EXCEEDED",
            ErrorKind::UsernameTaken => "SY_USERNAME_TAKEN",
            ErrorKind::AlreadyMember => "SY_ALREADY_MEMBER",
            ErrorKind::BadCredentials => "SY_BAD_CREDENTIALS",
            ErrorKind::UnknownToken => "SY_UNKNOWN_TOKEN",
            ErrorKind::MissingToken => "SY_MISSING_TOKEN",
            ErrorKind::Forbidden => "SY_FORBIDDEN",
            ErrorKind::NotFound => "SY_NOT_FOUND",
            ErrorKind::MethodNotAllowed => "SY_METHOD_NOT_ALLOWED",
            ErrorKind::TooLarge => "SY_TOO_LARGE",
            ErrorKind::Overloaded => "SY_OVERLOADED",
            ErrorKind::Unavailable => "SY_UNAVAILABLE",
            ErrorKind::Internal => "SY_INTERNAL",
            ErrorKind::BadCsr => "SY_BAD_CSR",
            ErrorKind::BadChallenge => "SY_BAD_CHALLENGE",
            ErrorKind::BadCert | ErrorKind::CertInput => "SY_BAD_CERT",
            ErrorKind::SensitiveAction => "SY_SENSITIVE_ACTION",
            ErrorKind::SignatureRequired => "SY_SIGNATURE_REQUIRED",
            ErrorKind::MessageSignature => "SY_BAD_SIGNATURE",
            ErrorKind::AlreadyExists => "SY_ALREADY_EXISTS",
            ErrorKind::BadProof => "SY_BAD_PROOF",
            ErrorKind::NotLeader => "SY_NOT_LEADER",
            ErrorKind::Conflict => "SY_CONFLICT",
            ErrorKind::UnsupportedMediaType => "SY_BAD_CONTENT_TYPE",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// Seconds for `Retry-After` (429 and 503 always carry one; 1 s unless set).
    pub retry_after: Option<u64>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Sets `Retry-After` (seconds, at least 1).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Keeps `cause` for the logs; the client sees only `message`.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(cause));
        self
    }

    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::new(
            ErrorKind::Internal,
            "the server failed to handle this request",
        )
        .with_cause(cause)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.errcode(), self.message)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errcode: &'a str,
    error: &'a str,
}

/// Renders an error and its causes on one line for the logs, leaving out a cause whose text
/// the message already includes.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(errcode = self.kind.errcode(), error = %chain(self), "request failed");
        } else {
            tracing::debug!(errcode = self.kind.errcode(), error = %chain(self), "request rejected");
        }
        let mut response = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            let seconds = self.retry_after.unwrap_or(1).max(1);
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            errcode: self.kind.errcode(),
            error: &self.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn body_has_errcode_and_sentence_but_not_the_cause() {
        let err = ApiError::internal(std::io::Error::other("disk secret"));
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = response.into_body().try_into_bytes().expect("bytes");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["errcode"], "SY_INTERNAL");
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            chain(&err),
            "SY_INTERNAL: the server failed to handle this request: disk secret"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on x: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let err = Bind {
            source: std::io::Error::other("in use"),
        };
        assert_eq!(chain(&err), "cannot listen on x: in use");
    }
}
