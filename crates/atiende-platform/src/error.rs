//! The one mapping from service errors to gRPC statuses.
//!
//! Each service's domain errors are `thiserror` enums that convert into
//! [`ApiError`], a deliberately small set of outcomes. `From<ApiError> for
//! tonic::Status` is the only place that builds a status: bad input becomes
//! `INVALID_ARGUMENT` with a `google.rpc.BadRequest` listing every offending
//! field, and internal failures are logged with an id while the caller sees
//! only that id — never a message from a database or a library.

use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One field of a request that is not acceptable, and why. Descriptions say
/// what is expected; they never echo the value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects field violations while a request is parsed, so that the caller
/// learns about every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value of a successful parse; records the violation otherwise.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// The parsed value when nothing was recorded. Combine several parsed
    /// fields with `Option::zip`.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match (self.0.is_empty(), value) {
            (true, Some(value)) => Ok(value),
            (true, None) => Err(ApiError::internal(
                "a field failed to parse without a violation",
            )),
            (false, _) => Err(ApiError::InvalidArgument(self.0)),
        }
    }
}

/// What went wrong, as a caller needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request has invalid fields")]
    InvalidArgument(Vec<FieldViolation>),
    /// The reason names what is wrong with the credentials (expired, wrong
    /// audience, ...), never their content.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    /// The object does not exist, or belongs to another agency: callers
    /// cannot tell the two apart.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("rate limit exceeded")]
    ResourceExhausted { retry_after: Duration },
    #[error("the service is temporarily unavailable")]
    Unavailable,
    #[error("not implemented yet")]
    Unimplemented,
    /// A failure of ours. The source is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(source.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Unimplemented => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if connection_lost(&error) {
            tracing::warn!(error = %DisplayChain(&error), "database unavailable");
            return Self::Unavailable;
        }
        Self::internal(error)
    }
}

/// Whether the database could not be reached, or dropped the connection:
/// worth a retry. A server that shuts down (or ends an idle session) says so
/// on the connection before closing it (SQLSTATE 57P01–57P05), and failed
/// connections are class 08; pooled connections are not pinged before use,
/// so after a restart these reach the request that meets a dead one.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "57P05")
        }),
        _ => false,
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let code = error.code();
        match error {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                let message = format!("invalid fields: {}", fields.join(", "));
                Status::with_error_details(code, message, details)
            }
            ApiError::ResourceExhausted { retry_after } => {
                let details = ErrorDetails::with_retry_info(Some(retry_after));
                Status::with_error_details(code, "rate limit exceeded", details)
            }
            ApiError::Internal(source) => {
                let incident = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(%incident, error = %DisplayChain(source.as_ref()), "internal error");
                Status::new(code, format!("internal error (incident {incident})"))
            }
            other => Status::new(code, other.to_string()),
        }
    }
}

/// Displays an error with its chain of sources, for logs.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(inner) = source {
            write!(f, ": {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database's error with a SQLSTATE, as the server sends it.
    #[derive(Debug)]
    struct ServerSaid(&'static str);

    impl std::fmt::Display for ServerSaid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for ServerSaid {}

    impl sqlx::error::DatabaseError for ServerSaid {
        fn message(&self) -> &str {
            "server said"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_lost_database_connection_is_unavailable_other_database_errors_internal() {
        let code_of = |error: sqlx::Error| Status::from(ApiError::from(error)).code();
        // A server shutting down or restarting, an admin ending the
        // session, a connection failure: retry.
        for sqlstate in ["57P01", "57P02", "57P03", "08006", "08001"] {
            let error = sqlx::Error::Database(Box::new(ServerSaid(sqlstate)));
            assert_eq!(code_of(error), Code::Unavailable, "{sqlstate}");
        }
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(code_of(sqlx::Error::Io(io)), Code::Unavailable);
        assert_eq!(code_of(sqlx::Error::PoolTimedOut), Code::Unavailable);
        // A unique violation or a syntax error is a bug, not an outage.
        for sqlstate in ["23505", "42601"] {
            let error = sqlx::Error::Database(Box::new(ServerSaid(sqlstate)));
            assert_eq!(code_of(error), Code::Internal, "{sqlstate}");
        }
    }

    #[test]
    fn invalid_argument_lists_every_field_as_bad_request_violations() {
        let mut v = Violations::new();
        v.add("display_name", "must not be empty");
        v.add("scopes", "unknown scope");
        let status = Status::from(v.finish_with(Some(())).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["display_name", "scopes"]);
    }

    #[test]
    fn internal_errors_hide_their_source() {
        let status = Status::from(ApiError::internal("relation \"secret_table\" missing"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret_table"));
    }
}
