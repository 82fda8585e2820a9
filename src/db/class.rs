//! Whose fault a database failure is: the one classification the worker, the relay and the HTTP
//! side share. The rule (docs/RELIABILITY.md, "Whose fault a failure is") is that a message is
//! blamed only for what is provably its own: the database refused its data, and would refuse it
//! on a healthy system. Everything else, known or not, is the system's fault and waits.

/// What a failure means for the work that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another writer got in the way (serialization failure, deadlock, a unique violation from a
    /// concurrent insert): the same work, tried again, sees the other's result.
    Conflict,
    /// The database refused the data itself (a data exception, an integrity violation other than
    /// a concurrent insert): the same message fails on a healthy system. A message is
    /// dead-lettered for it only alone, once its batch was split down to it.
    Refused,
    /// The system's fault: the database unavailable, misconfigured or in a state the program
    /// does not expect. The same work succeeds once the system is mended: it waits and retries,
    /// and no message is dead-lettered for it.
    System(SystemFault),
}

/// Why the system cannot do the work now; the label of `/readyz`'s fault and of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemFault {
    /// The database cannot be reached or is restarting (08xxx, 57P0x, I/O, TLS, a protocol
    /// error, the pool closed).
    Unavailable,
    /// The database is out of resources (53xxx) or its host failed an operation (58xxx).
    Resources,
    /// A wait ran past its bound: a statement timeout or a lock not available (57014, 55P03), no
    /// pool connection in time, a commit or a batch past the worker's own bound.
    Timeout,
    /// The database accepts no writes (25006): a standby, a failover in progress, or
    /// `default_transaction_read_only`.
    ReadOnly,
    /// The worker's role may not do what it must (42501 insufficient privilege, 28xxx invalid
    /// authorization).
    Privilege,
    /// The schema is not the one the program was built for (42P01 undefined table, 42703
    /// undefined column, 42883 undefined function, 3D000 no such database, 3F000 no such
    /// schema, 0A000 feature not supported, 42xxx in general).
    Schema,
    /// A row the program cannot read back (a value written by a newer version, a type changed).
    Undecodable,
    /// Anything else (XX000 internal error, a SQLSTATE this program does not know): blamed on
    /// the system, never on a message.
    Other,
}

impl SystemFault {
    /// Every fault, in declaration order (metrics export each from the start).
    pub const ALL: [SystemFault; 8] = [
        Self::Unavailable,
        Self::Resources,
        Self::Timeout,
        Self::ReadOnly,
        Self::Privilege,
        Self::Schema,
        Self::Undecodable,
        Self::Other,
    ];

    /// The stable name of the fault, in `/readyz` and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "database_unavailable",
            Self::Resources => "database_out_of_resources",
            Self::Timeout => "database_timeout",
            Self::ReadOnly => "database_read_only",
            Self::Privilege => "insufficient_privilege",
            Self::Schema => "schema_mismatch",
            Self::Undecodable => "undecodable_row",
            Self::Other => "database_error",
        }
    }
}

/// Classifies a database error.
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    use SystemFault::*;
    let fault = match error {
        sqlx::Error::Database(db) => return classify_sqlstate(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Timeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Unavailable,
        sqlx::Error::PoolTimedOut => Timeout,
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::RowNotFound => Undecodable,
        _ => Other,
    };
    ErrorClass::System(fault)
}

/// Classifies a SQLSTATE: the table of docs/RELIABILITY.md.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    use SystemFault::*;
    let class = code.get(..2).unwrap_or("");
    let fault = match (class, code) {
        (_, "40001" | "40P01" | "23505") => return ErrorClass::Conflict,
        ("22" | "23", _) => return ErrorClass::Refused,
        (_, "57014" | "55P03") => Timeout,
        (_, "25006") => ReadOnly,
        (_, "42501") | ("28", _) => Privilege,
        ("08" | "57", _) => Unavailable,
        ("53" | "58", _) => Resources,
        ("42" | "3D" | "3F" | "0A", _) => Schema,
        _ => Other,
    };
    ErrorClass::System(fault)
}

/// The error of a database wait that ran past the process's own bound (`database.stall_timeout`):
/// the server did not answer at all.
pub fn stalled(what: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} got no answer from the database within database.stall_timeout"),
    ))
}

/// `work`, unless `deadline` passes first: then an error saying that `what` stalled. For the
/// waits before a commit (the commit is bounded apart: cut short, its fate would be unknown);
/// the connection of work cut short is left mid-statement, so the caller closes it (see
/// [`unusable_connection`]).
pub async fn within<T>(
    deadline: tokio::time::Instant,
    what: &str,
    work: impl Future<Output = sqlx::Result<T>>,
) -> sqlx::Result<T> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(stalled(what)))
}

/// Whether the connection that met `error` should be closed rather than tested and reused: it
/// may be stuck mid-statement (the database unreachable or silent), or it reaches a read-only
/// server (a demoted primary: the next connection may reach the new one).
pub fn unusable_connection(error: &sqlx::Error) -> bool {
    matches!(
        classify(error),
        ErrorClass::System(SystemFault::Timeout | SystemFault::Unavailable | SystemFault::ReadOnly)
    )
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// Failures that retrying the same work can cure: anything but a refusal of the data.
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error) != ErrorClass::Refused
}

#[cfg(test)]
mod tests {
    use super::{ErrorClass::*, SystemFault::*, *};

    /// One row per line of the table in docs/RELIABILITY.md.
    #[test]
    fn each_sqlstate_class_is_blamed_as_the_table_says() {
        let table: &[(&str, ErrorClass)] = &[
            // A concurrent writer: tried again.
            ("40001", Conflict),
            ("40P01", Conflict),
            ("23505", Conflict),
            // The message's own data.
            ("22001", Refused),
            ("22021", Refused),
            ("22P02", Refused),
            ("22P05", Refused),
            ("23502", Refused),
            ("23503", Refused),
            ("23514", Refused),
            // The system's.
            ("42501", System(Privilege)),
            ("28000", System(Privilege)),
            ("28P01", System(Privilege)),
            ("42P01", System(Schema)),
            ("42703", System(Schema)),
            ("42883", System(Schema)),
            ("3D000", System(Schema)),
            ("3F000", System(Schema)),
            ("0A000", System(Schema)),
            ("25006", System(ReadOnly)),
            ("57014", System(Timeout)),
            ("55P03", System(Timeout)),
            ("08006", System(Unavailable)),
            ("57P01", System(Unavailable)),
            ("57P03", System(Unavailable)),
            ("53300", System(Resources)),
            ("58030", System(Resources)),
            ("XX000", System(Other)),
            ("P0001", System(Other)),
            ("", System(Other)),
            ("99ZZZ", System(Other)),
        ];
        for (code, class) in table {
            assert_eq!(classify_sqlstate(code), *class, "SQLSTATE {code:?}");
        }
    }

    #[test]
    fn errors_without_a_sqlstate_are_the_systems() {
        let io = sqlx::Error::Io(std::io::Error::other("connection reset"));
        assert_eq!(classify(&io), System(Unavailable));
        assert_eq!(classify(&stalled("a commit")), System(Timeout));
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), System(Timeout));
        assert_eq!(classify(&sqlx::Error::PoolClosed), System(Unavailable));
        assert_eq!(classify(&sqlx::Error::WorkerCrashed), System(Unavailable));
        let decode = sqlx::Error::Decode("a newer version's value".into());
        assert_eq!(classify(&decode), System(Undecodable));
        let column = sqlx::Error::ColumnNotFound("settings".into());
        assert_eq!(classify(&column), System(Undecodable));
        assert_eq!(classify(&sqlx::Error::RowNotFound), System(Undecodable));
        let config = sqlx::Error::Configuration("bad".into());
        assert_eq!(classify(&config), System(Other));
        assert!(!is_transient(&sqlx::Error::Database(Box::new(FakeDb(
            "23514"
        )))));
        assert!(is_transient(&sqlx::Error::Database(Box::new(FakeDb(
            "42501"
        )))));
        assert_eq!(
            classify(&sqlx::Error::Database(Box::new(FakeDb("42501")))),
            System(Privilege)
        );
    }

    /// A database error carrying only a SQLSTATE.
    #[derive(Debug)]
    struct FakeDb(&'static str);

    impl std::fmt::Display for FakeDb {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for FakeDb {}

    impl sqlx::error::DatabaseError for FakeDb {
        fn message(&self) -> &str {
            "fake"
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
}
