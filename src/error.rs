//! The crate's error type: why Parlor could not start (or a backup or an
//! export could not be made). Each variant keeps its cause as [`std::error::Error::source`]
//! and says what it ends. Errors while running are handled where they
//! happen and logged once at the top of their thread: a connection's end its
//! own (`ws`), a failed storage call as a `storage_error` reply (`hub`).
//! Errors a user caused are `error` frames with a stable code (see
//! `protocol::ErrorCode`), never logged as server errors.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why Parlor could not start, or a backup or an export could not be made.
#[derive(Debug)]
pub enum Error {
    /// A listener could not be bound. Ends start-up.
    Bind {
        /// The address as given on the command line.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// The database file could not be opened, is not Parlor's, is newer than
    /// this Parlor, or could not be copied. Ends start-up (or the backup);
    /// the file is left untouched.
    Database {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it, for people.
        message: String,
        /// The SQLite or I/O error underneath, if there was one.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The TLS certificate or key could not be used. Ends start-up.
    Tls {
        /// The certificate or key file.
        path: PathBuf,
        /// What is wrong with it, for people.
        message: String,
        /// The parse or rustls error underneath, if there was one.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An export's file could not be created or written. Ends the export;
    /// nothing is left at the path.
    Export {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong, for people.
        message: String,
        /// The I/O error underneath, if there was one.
        source: Option<io::Error>,
    },
    /// A socket or thread could not be set up. Ends start-up.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Database { path, message, .. } => {
                write!(f, "database {}: {message}", path.display())
            }
            Error::Tls { path, message, .. } => {
                write!(f, "TLS file {}: {message}", path.display())
            }
            Error::Export { path, message, .. } => write!(f, "{}: {message}", path.display()),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } => Some(source),
            Error::Database { source, .. } | Error::Tls { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Error::Export { source, .. } => source
                .as_ref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Error::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_keep_their_cause() {
        let bind = Error::Bind {
            addr: "127.0.0.1:1".into(),
            source: io::Error::new(io::ErrorKind::AddrInUse, "in use"),
        };
        assert_eq!(bind.to_string(), "cannot listen on 127.0.0.1:1: in use");
        assert_eq!(bind.source().unwrap().to_string(), "in use");
        let io = Error::from(io::Error::other("no threads"));
        assert_eq!(io.source().unwrap().to_string(), "no threads");
        let database = Error::Database {
            path: "x.db".into(),
            message: "it is not a Parlor database".into(),
            source: None,
        };
        assert_eq!(
            database.to_string(),
            "database x.db: it is not a Parlor database"
        );
        assert!(database.source().is_none());
    }
}
