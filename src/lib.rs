//! Parlor: a small self-hosted real-time chat server.
//!
//! # Layout
//!
//! - [`protocol`]: the JSON frames of the wire protocol and the validation of names and text.
//! - [`store`]: the only user of SQLite — opening the file, schema, typed queries.
//! - [`hub`]: the one thread that owns the store, rooms, presence, sessions and rate limits.
//! - [`ws`]: the WebSocket listener and each connection's reader and writer threads.
//! - [`outbox`]: how frames reach a connection's socket (at once, or queued for its writer).
//! - `post`: the thread that carries out the hub's frames and closes for each batch.
//! - [`admission`]: who may open a WebSocket (Origin allowlist, socket caps).
//! - [`http`]: tiny_http serving the embedded page and `/healthz`, behind a bounded front.
//! - [`tls`]: rustls sessions shared by a connection's two threads.
//! - `random`: session tokens and CSP nonces from the operating system's generator.
//!
//! Threads talk through crossbeam channels: connections send [`hub::Event`]s
//! to the hub; the hub hands each batch's encoded frames to the post, which
//! puts them in each connection's bounded [`outbox::Outbox`]. Nothing shares
//! chat state behind a lock (an outbox's lock guards only its socket queue).

#![forbid(unsafe_code)]

pub mod admission;
pub mod http;
pub mod hub;
pub mod outbox;
mod post;
pub mod protocol;
mod random;
pub mod store;
pub mod tls;
pub mod ws;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything `parlor` can be told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the HTTP listener that serves the page.
    pub http_addr: String,
    /// Address of the WebSocket listener.
    pub ws_addr: String,
    /// The SQLite database file.
    pub db_path: PathBuf,
    /// Most distinct users online at once.
    pub max_users: usize,
    /// Most messages one user may send in any one-second window.
    pub messages_per_second: u32,
    /// Most joins into another room one user may make in any 60 s window.
    pub room_switches_per_minute: u32,
    /// Browser origins allowed to open a WebSocket besides the page's own.
    pub allow_origins: Vec<String>,
    /// Most open WebSocket sockets; None: four per user plus 16.
    pub max_connections: Option<usize>,
    /// Most open WebSocket sockets from one IP address; None: two per user
    /// plus 8.
    pub max_connections_per_ip: Option<usize>,
    /// PEM certificate chain and private key: serve HTTPS and WSS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            http_addr: "127.0.0.1:8080".into(),
            ws_addr: "127.0.0.1:8081".into(),
            db_path: PathBuf::from("parlor.db"),
            max_users: 10,
            messages_per_second: 10,
            room_switches_per_minute: 5,
            allow_origins: Vec::new(),
            max_connections: None,
            max_connections_per_ip: None,
            tls: None,
        }
    }
}

/// Errors that stop Parlor from starting, or end a connection.
#[derive(Debug)]
pub enum Error {
    /// A listener could not be bound. Ends start-up.
    Bind { addr: String, message: String },
    /// The database file could not be opened or is not Parlor's. Ends
    /// start-up; the file is left untouched.
    Database { path: PathBuf, message: String },
    /// The TLS certificate or key could not be used. Ends start-up.
    Tls { path: PathBuf, message: String },
    /// A thread could not be started. Ends start-up.
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, message } => write!(f, "cannot listen on {addr}: {message}"),
            Error::Database { path, message } => {
                write!(f, "database {}: {message}", path.display())
            }
            Error::Tls { path, message } => write!(f, "TLS file {}: {message}", path.display()),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// A running Parlor. Dropping it without [`Server::shutdown`] leaves the
/// threads running until the process exits.
pub struct Server {
    secure: bool,
    http: http::HttpServer,
    ws: ws::Listener,
    hub_tx: crossbeam_channel::Sender<hub::Event>,
    hub_thread: JoinHandle<()>,
}

/// Opens the database, binds both listeners and starts every thread. Returns
/// once the listeners are bound, so port 0 works and the addresses are known.
pub fn start(config: Config) -> Result<Server, Error> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::TlsConfig::load(cert, key)?),
        None => None,
    };
    let store = store::Store::open(&config.db_path)?;
    let ws_listener = std::net::TcpListener::bind(&config.ws_addr).map_err(|e| Error::Bind {
        addr: config.ws_addr.clone(),
        message: e.to_string(),
    })?;
    let ws_addr = ws_listener.local_addr()?;
    let http = http::HttpServer::start(&config.http_addr, ws_addr.port(), tls.clone())?;

    // The hub's one inbox: every connection thread and the post hold a
    // sender; the hub exits on `Event::Shutdown`.
    let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
    let post = post::Post::start(hub_tx.clone())?;
    let hub = hub::Hub::new(store, &config).map_err(|e| Error::Database {
        path: config.db_path.clone(),
        message: e.to_string(),
    })?;
    let hub_thread = std::thread::Builder::new()
        .name("hub".into())
        .spawn(move || {
            // Without its hub Parlor can only refuse everyone: end the
            // process, loudly, so a supervisor restarts it.
            let run = std::panic::AssertUnwindSafe(|| hub.run(hub_rx, post));
            if std::panic::catch_unwind(run).is_err() {
                log::error!("the hub thread panicked; exiting");
                std::process::exit(70);
            }
        })?;
    let origins = admission::OriginPolicy::new(http.addr(), &config.allow_origins);
    let limits = admission::SocketLimits {
        total: config.max_connections.unwrap_or(config.max_users * 4 + 16),
        per_ip: config
            .max_connections_per_ip
            .unwrap_or(config.max_users * 2 + 8),
        handshaking: 64,
    };
    warn_if_few_files(limits.total);
    let ws = ws::Listener::start(
        ws_listener,
        ws::Settings::chat(hub_tx.clone(), tls, origins, limits),
    )?;
    let secure = config.tls.is_some();
    let (web, socket) = if secure {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    log::info!(
        "parlor {} listening: page {web}://{} , websocket {socket}://{ws_addr} , database {}",
        env!("CARGO_PKG_VERSION"),
        http.addr(),
        config.db_path.display()
    );
    Ok(Server {
        secure,
        http,
        ws,
        hub_tx,
        hub_thread,
    })
}

/// File descriptors one WebSocket connection holds (the reader's socket
/// and the writer's clone, which its outbox shares).
const FILES_PER_CONNECTION: u64 = 2;

/// Logs a warning when the open-file limit cannot hold `connections`
/// WebSockets (plus the page's 64 connections and the database), since
/// accepting then fails at run time. Linux only; elsewhere it says nothing.
fn warn_if_few_files(connections: usize) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files_limit(&limits))
    else {
        return;
    };
    let needed = connections as u64 * FILES_PER_CONNECTION + 2 * 64 + 32;
    if soft < needed {
        log::warn!(
            "the open-file limit is {soft}, but {connections} WebSockets need about {needed}; \
             raise it (ulimit -n {needed}, or LimitNOFILE={needed} under systemd) \
             or lower --max-connections"
        );
    }
}

/// The soft "Max open files" limit from the text of `/proc/self/limits`.
fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Starts a WebSocket server that echoes every message back through Parlor's
/// own connection code (reader and writer threads, close handling), for
/// protocol conformance suites. Messages up to `max_message` bytes.
pub fn start_echo(ws_addr: &str, max_message: usize) -> Result<ws::Listener, Error> {
    let listener = std::net::TcpListener::bind(ws_addr).map_err(|e| Error::Bind {
        addr: ws_addr.to_string(),
        message: e.to_string(),
    })?;
    let settings = ws::Settings {
        handler: ws::Handler::Echo,
        tls: None,
        origins: admission::OriginPolicy::any(),
        limits: admission::SocketLimits {
            total: 1024,
            per_ip: 1024,
            handshaking: 1024,
        },
        max_message,
    };
    Ok(ws::Listener::start(listener, settings)?)
}

impl Server {
    /// Where the page is served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Where WebSocket clients connect.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.addr()
    }

    /// The URL a person opens in a browser.
    pub fn url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}/", self.http_addr())
    }

    /// The WebSocket URL clients connect to.
    pub fn ws_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.ws_addr())
    }

    /// Stops accepting, commits what is in flight, closes every WebSocket
    /// with 1001 and waits for the hub to finish. The ports are free when
    /// this returns.
    pub fn shutdown(self) {
        self.ws.stop();
        self.http.stop();
        // The hub may already be gone if it panicked; there is nothing left
        // to tell it then.
        let _ = self.hub_tx.send(hub::Event::Shutdown);
        if self.hub_thread.join().is_err() {
            log::error!("hub thread panicked");
        }
        log::info!("parlor stopped");
    }
}

/// Milliseconds since the Unix epoch on the server's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             94621                94621                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(super::open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(super::open_files_limit(unlimited), Some(u64::MAX));
        assert_eq!(super::open_files_limit("Max processes 5 5\n"), None);
    }
}
