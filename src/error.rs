//! The crate's error type. Each variant keeps its cause as
//! [`std::error::Error::source`] and says what it ends: start-up, the whole
//! server, or one connection. Errors a user caused are not here: they become
//! `error` frames with a stable code (see `protocol::ErrorCode`).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why Parlor could not start, or why a connection or a storage call ended.
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
    /// A storage call failed while running (full disk, read-only file, I/O
    /// error). Ends nothing: the request gets `storage_error`, and the hub
    /// goes on serving what it can.
    Storage(rusqlite::Error),
    /// The WebSocket handshake or protocol failed. Ends that connection.
    WebSocket(tungstenite::Error),
    /// A socket or thread could not be set up. Ends start-up, or the one
    /// connection it was for.
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
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::WebSocket(e) => write!(f, "WebSocket: {e}"),
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
            Error::Storage(e) => Some(e),
            Error::WebSocket(e) => Some(e),
            Error::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Storage(e)
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Error {
        Error::WebSocket(e)
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
        let storage = Error::from(rusqlite::Error::InvalidQuery);
        assert!(storage.source().is_some());
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
