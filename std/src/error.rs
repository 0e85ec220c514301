//! One error type with a stable numeric code per kind.

use cuframes_core::{ErrorCode, ReadError, RegisterError, ValidateError};
use std::fmt;

/// A cuframes error: a stable [`ErrorCode`] (shared with C and Python) and
/// a message saying what happened.
///
/// ```
/// use cuframes::{Error, ErrorCode};
/// let e = Error::new(ErrorCode::Timeout, "no frame within 5 ms");
/// assert_eq!(e.code() as i32, 1);
/// assert_eq!(e.to_string(), "timed out: no frame within 5 ms");
/// ```
#[derive(Debug)]
pub struct Error {
    code: ErrorCode,
    message: String,
    source: Option<std::io::Error>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// An operating-system error, classified (not found, permission, other).
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let code = match err.kind() {
            NotFound => ErrorCode::NotFound,
            PermissionDenied => ErrorCode::Permission,
            AlreadyExists => ErrorCode::AlreadyExists,
            _ => ErrorCode::Io,
        };
        Self {
            code,
            message: format!("{context}: {err}"),
            source: Some(err),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message without the code's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<ValidateError> for Error {
    fn from(e: ValidateError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<RegisterError> for Error {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::NoRecord => Self::new(ErrorCode::Capacity, "every subscriber record is taken"),
            RegisterError::Taken | RegisterError::Lost => Self::new(
                ErrorCode::Capacity,
                "the subscriber record was taken by another registration",
            ),
            RegisterError::HoldBudget => Self::new(
                ErrorCode::Capacity,
                "not enough slots for this subscriber's max_held (slot_count >= sum of max_held + 2)",
            ),
            RegisterError::InvalidArgument => Self::new(ErrorCode::InvalidArgument, "max_held must be 1..=64"),
            RegisterError::Closed => Self::new(ErrorCode::Closed, "stream closed"),
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::WouldBlock => Self::new(ErrorCode::WouldBlock, "no new frame yet"),
            ReadError::Closed => Self::new(ErrorCode::Closed, "publisher closed the stream"),
            ReadError::HoldLimit => Self::new(
                ErrorCode::Capacity,
                "already holding max_held frames; release one",
            ),
            ReadError::Evicted => Self::new(
                ErrorCode::PublisherGone,
                "subscriber record is gone (deregistered, or freed by hostile memory); reconnect",
            ),
            ReadError::Lagged => Self::new(
                ErrorCode::Lagged,
                "this lossless subscriber lagged past the publisher's block timeout: the frames \
                 in between were skipped (counted as dropped); reading goes on from the newest frame",
            ),
            ReadError::Corrupt => {
                Self::new(ErrorCode::Corrupt, "shared memory contradicts the protocol")
            }
        }
    }
}
