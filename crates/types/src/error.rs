use std::fmt;

/// The one error vocabulary of Tether. Each code maps to exactly one gRPC code
/// and one HTTP status, so the gRPC API and the REST bridge never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    /// The database has no room to write: gRPC RESOURCE_EXHAUSTED, HTTP 507.
    InsufficientStorage,
    Aborted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The numeric gRPC status code (google.rpc.Code).
    pub const fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::DeadlineExceeded => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::AlreadyExists => 6,
            ErrorCode::PermissionDenied => 7,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::InsufficientStorage => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::Aborted => 10,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
            ErrorCode::Unauthenticated => 16,
        }
    }

    /// The HTTP status the REST bridge answers with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            // Not Google's 400: the request is well formed and conflicts with
            // the current state (a finished job, the last admin token, no
            // node that could ever fit), which is what 409 says; 400 stays
            // for input that is wrong whatever the state.
            ErrorCode::FailedPrecondition => 409,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::Aborted => 409,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::DeadlineExceeded => 504,
        }
    }

    /// Every code, for lookups by name.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::ResourceExhausted,
        ErrorCode::InsufficientStorage,
        ErrorCode::Aborted,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code named `name` (see [`ErrorCode::as_str`]).
    pub fn parse(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The gRPC metadata key that carries [`ErrorCode::as_str`] beside the
    /// status, for codes that share a gRPC code (RESOURCE_EXHAUSTED is both a
    /// rate limit, HTTP 429, and a full disk, HTTP 507).
    pub const METADATA_KEY: &'static str = "tether-error-code";

    /// The code for a numeric gRPC status, if it is one of ours. Where two
    /// codes share a gRPC code, the more common one.
    pub const fn from_grpc(code: i32) -> Option<ErrorCode> {
        Some(match code {
            3 => ErrorCode::InvalidArgument,
            4 => ErrorCode::DeadlineExceeded,
            5 => ErrorCode::NotFound,
            6 => ErrorCode::AlreadyExists,
            7 => ErrorCode::PermissionDenied,
            8 => ErrorCode::ResourceExhausted,
            9 => ErrorCode::FailedPrecondition,
            10 => ErrorCode::Aborted,
            13 => ErrorCode::Internal,
            14 => ErrorCode::Unavailable,
            16 => ErrorCode::Unauthenticated,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::Aborted => "aborted",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a caller can act on: a code and a message safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_error_status() {
        for code in ErrorCode::ALL {
            assert!(code.grpc_code() > 0 && code.grpc_code() <= 16);
            assert!(code.http_status() >= 400, "{code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::InsufficientStorage.http_status(), 507);
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        for code in 0..20 {
            if let Some(c) = ErrorCode::from_grpc(code) {
                assert_eq!(c.grpc_code(), code);
                assert_ne!(c, ErrorCode::InsufficientStorage, "429 stays the answer to a plain RESOURCE_EXHAUSTED");
            }
        }
        assert_eq!(ErrorCode::PermissionDenied.grpc_code(), 7);
    }
}
