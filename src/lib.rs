//! Parlor: a small self-hosted real-time chat server.
//!
//! # Layout
//!
//! One process, std threads, no async runtime. The file tree is the
//! architecture; arrows point one way (`lib` → listeners, hub, post;
//! connections → hub by events only; hub → store; hub → post only through
//! the mail sink it is handed).
//!
//! - [`protocol`]: every JSON frame of the wire protocol, and every rule
//!   that needs no state (names, text, ids, page sizes), as pure functions.
//! - [`store`]: the only user of SQLite: the file, the schema, typed
//!   queries, edits and deletions (`edits`), the search index (`search`),
//!   and the snapshot an export reads.
//! - `hub/`: the one thread that owns the store and all chat state; one file
//!   per job (`sessions`, `rooms`, `messages`, `reading`, `history`,
//!   `edits`, `search`, `limits`, `outgoing`). It never touches a socket.
//! - `vocab`: what the hub, the post and the connections say to each other
//!   (`ConnId`, `Event`, `Mail`, `MailSink`), and the slots that bound what
//!   is in flight between them (`Slots`, `Permit`).
//! - `post`: the thread that carries each batch's mail to the connections'
//!   routes; `outbox`: a connection's queue, bounded in frames and bytes and
//!   sharing a pool of bytes with all others, and its direct sends;
//!   `frame`: a server frame encoded once for all its recipients.
//! - `pages`: the thread that reads and sends the `history` pages the hub
//!   hands it through its mail (a page can be megabytes; the hub does not
//!   wait for it), with a read-only store of its own; post → pages by
//!   channel, pages → post for the routes.
//! - `ws`: the WebSocket accept loop and each connection's reader and writer
//!   threads; `admission`: who may open a WebSocket, and which host names
//!   the page and the WebSocket answer to.
//! - `front`: the bounded relay in front of tiny_http, and who is behind
//!   each relayed connection; `http`: the page, `/healthz` and `/metrics`.
//! - `metrics`: the counters an operator scrapes, and who may scrape them;
//!   a leaf the hub, the post, the connections and `http` count into.
//! - [`net`]: the plain-or-TLS stream and socket helpers; `tls`: the
//!   certificate and sessions; `random`: tokens and nonces.
//! - `export`: history written out as JSON Lines or Markdown ([`export`]).
//! - `error`: [`Error`], the crate's error type.
//!
//! Threads talk through crossbeam channels: connections send `Event`s to
//! the hub; the hub hands each batch's `Mail` to the post, which puts each
//! frame in its connection's bounded outbox. Nothing shares chat state
//! behind a lock (an outbox's lock guards only its socket queue; the routes'
//! lock only the map of outboxes).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod error;
mod export;
mod frame;
mod front;
mod http;
mod hub;
mod metrics;
pub mod net;
mod outbox;
mod pages;
mod post;
pub mod protocol;
mod random;
pub mod store;
mod tls;
mod vocab;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

pub use error::Error;
pub use export::{ExportFormat, ExportOptions, ExportSummary, UtcDay};
pub use metrics::{IpRange, ScrapeAccess};

/// Requests waiting for the hub, all connections together (each connection
/// also has a few of its own, see `ws`). Past this, readers wait for the hub
/// to catch up, so a crowd of clients flooding requests cannot grow the
/// hub's queue with the number of connections. About one batch.
const HUB_QUEUE: usize = 1024;

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
    /// Request units one user (or connection before it signs in) earns per
    /// second; a ping costs 1, a page of 50 messages 3 (see the README).
    pub requests_per_second: u32,
    /// Request units that may be spent at once after a quiet while.
    pub request_burst: u32,
    /// Rooms one user may create or delete in any 10-minute window.
    pub room_changes_per_10_minutes: u32,
    /// Most live rooms.
    pub max_rooms: usize,
    /// New usernames one IP address may sign in with in any hour.
    pub new_users_per_ip_per_hour: u32,
    /// Most users signed in at once from one IP address; None: no limit.
    pub max_users_per_ip: Option<usize>,
    /// What a new sign-in must carry; None: anyone who can open the page
    /// may sign in.
    pub join_code: Option<String>,
    /// Browser origins allowed to open a WebSocket besides the page's own;
    /// their host names are also answered (see `public_hosts`).
    pub allow_origins: Vec<String>,
    /// Host names the page and the WebSocket answer to in the `Host`
    /// header, besides IP addresses, `localhost` and the hosts of
    /// `allow_origins`; any other name gets 421 (DNS rebinding).
    pub public_hosts: Vec<String>,
    /// Most open WebSocket sockets; None: four per user plus 16.
    pub max_connections: Option<usize>,
    /// Most open WebSocket sockets from one IP address; None: two per user
    /// plus 8.
    pub max_connections_per_ip: Option<usize>,
    /// PEM certificate chain and private key: serve HTTPS and WSS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `GET /metrics` on the page port, for these clients; None: not served
    /// (404).
    pub metrics: Option<ScrapeAccess>,
    /// Whether SQLite checkpoints the WAL after commits, as it does by
    /// default; false leaves checkpoints to a replicator (Litestream).
    pub auto_checkpoint: bool,
    /// How long a session (room, presence) outlives a lost connection, for
    /// the page to resume it without anyone seeing a leave and a join.
    pub presence_grace: std::time::Duration,
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
            requests_per_second: 20,
            request_burst: 200,
            room_changes_per_10_minutes: 10,
            max_rooms: 100,
            new_users_per_ip_per_hour: 20,
            max_users_per_ip: None,
            join_code: None,
            allow_origins: Vec::new(),
            public_hosts: Vec::new(),
            max_connections: None,
            max_connections_per_ip: None,
            tls: None,
            metrics: None,
            auto_checkpoint: true,
            presence_grace: std::time::Duration::from_secs(5),
        }
    }
}

/// A running Parlor. Dropping it without [`Server::shutdown`] leaves the
/// threads running until the process exits.
pub struct Server {
    secure: bool,
    http: http::HttpServer,
    ws: ws::Listener,
    /// To the hub, like every connection thread's copy; [`Server::shutdown`]
    /// sends `Shutdown` on it.
    hub_tx: crossbeam_channel::Sender<vocab::Event>,
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
    if !config.auto_checkpoint {
        store
            .leave_checkpoints_to_others()
            .map_err(|e| Error::Database {
                path: config.db_path.clone(),
                message: format!("cannot turn automatic checkpoints off: {e}"),
                source: Some(Box::new(e)),
            })?;
        log::info!(
            "database: automatic checkpoints are off; Litestream (or another replicator) must checkpoint"
        );
    }
    let ws_listener = bind(&config.ws_addr)?;
    let ws_addr = ws_listener.local_addr()?;
    let hosts = admission::HostPolicy::new(&config.public_hosts, &config.allow_origins);
    let metrics = metrics::Metrics::new();
    let site = http::Site {
        ws_port: ws_addr.port(),
        metrics: metrics.clone(),
        scrape: config.metrics.clone(),
        hosts: hosts.clone(),
    };
    let http = http::HttpServer::start(&config.http_addr, site, tls.clone())?;

    // The hub's one inbox. Senders: every connection thread (through
    // `ws::Settings`), the post and `Server`; the receiver is the hub's, and
    // the hub exits on `Event::Shutdown` (or once every sender is gone).
    // Unbounded, because no one may ever wait to tell the hub something:
    // the hub waits for the post when it hands over a batch (the mail
    // channel holds one), so a post waiting for room in the hub's inbox to
    // report `TooSlow` could deadlock them. Yet bounded by what may be in it:
    // - requests and bad frames: each carries a permit, a slot of its
    //   connection's and one of `hub_slots`, which its reader takes before
    //   sending and the hub gives back by dropping the event; at most
    //   HUB_QUEUE wait, whatever the number of connections;
    // - `Connected` and `Disconnected`: one each per connection (and open
    //   connections are capped), never waited for, never lost;
    // - `TooSlow`: at most one per connection (the post closes a full
    //   outbox, and a closed outbox takes everything silently);
    // - one `Shutdown`.
    // When the hub ends, dropping its receiver drops what the channel holds
    // at once (crossbeam does for unbounded channels), giving the permits
    // back, so readers waiting for a slot wake and find the hub gone.
    let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
    let hub_slots = vocab::Slots::new(HUB_QUEUE);
    let routes = post::Routes::default();
    let (pages, pages_tx) = pages::Pages::start(
        &config.db_path,
        routes.clone(),
        hub_tx.clone(),
        metrics.clone(),
    )?;
    let mut post = post::Post::start(routes.clone(), hub_tx.clone(), pages_tx, metrics.clone())?;
    let settings = hub::Settings {
        max_users: config.max_users,
        max_users_per_ip: config.max_users_per_ip,
        max_rooms: config.max_rooms,
        join_code: config.join_code.clone(),
        presence_grace: config.presence_grace,
        limits: hub::LimitSettings {
            messages_per_second: config.messages_per_second,
            room_switches_per_minute: config.room_switches_per_minute,
            requests_per_second: config.requests_per_second,
            request_burst: config.request_burst,
            room_changes_per_10_minutes: config.room_changes_per_10_minutes,
            new_users_per_ip_per_hour: config.new_users_per_ip_per_hour,
        },
        metrics: metrics.clone(),
    };
    let hub = hub::Hub::new(store, &settings).map_err(|e| Error::Database {
        path: config.db_path.clone(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let hub_thread = std::thread::Builder::new()
        .name("hub".into())
        .spawn(move || {
            // Without its hub Parlor can only refuse everyone: end the
            // process, loudly, so a supervisor restarts it.
            let run = std::panic::AssertUnwindSafe(|| hub.run(hub_rx, &mut post));
            if std::panic::catch_unwind(run).is_err() {
                log::error!("the hub thread panicked; exiting");
                std::process::exit(70);
            }
            post.stop();
            pages.stop();
        })?;
    let origins = admission::OriginPolicy::new(http.addr(), &config.allow_origins);
    let limits = admission::SocketLimits {
        total: config.max_connections.unwrap_or(config.max_users * 4 + 16),
        per_ip: config
            .max_connections_per_ip
            .unwrap_or(config.max_users * 2 + 8),
        handshaking: 64,
    };
    net::warn_if_few_files(limits.total);
    let ws = ws::Listener::start(
        ws_listener,
        ws::Settings::chat(
            hub_tx.clone(),
            hub_slots,
            routes,
            outbox::Pool::new(outbox::POOL_BYTES),
            tls,
            origins,
            hosts,
            limits,
            metrics,
        ),
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

fn bind(addr: &str) -> Result<std::net::TcpListener, Error> {
    std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Writes a consistent copy of the Parlor database at `db` to `dest`, which
/// must not exist, while a server may keep running on it.
pub fn backup(db: &Path, dest: &Path) -> Result<(), Error> {
    store::backup(db, dest)
}

/// Writes the history of the live rooms `options` chooses, from one
/// consistent snapshot of the Parlor database at `db`, to `dest`, which must
/// not exist, while a server may keep running on the database.
pub fn export(db: &Path, dest: &Path, options: &ExportOptions) -> Result<ExportSummary, Error> {
    export::write(db, dest, options)
}

/// A WebSocket server that echoes every message back (see [`start_echo`]).
pub struct EchoServer(ws::Listener);

impl EchoServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// Starts a WebSocket server that echoes every message back through Parlor's
/// own connection code (reader and writer threads, close handling), for
/// protocol conformance suites. Messages up to `max_message` bytes.
pub fn start_echo(ws_addr: &str, max_message: usize) -> Result<EchoServer, Error> {
    let listener = bind(ws_addr)?;
    let settings = ws::Settings {
        handler: ws::Handler::Echo,
        tls: None,
        origins: admission::OriginPolicy::any(),
        hosts: admission::HostPolicy::any(),
        limits: admission::SocketLimits {
            total: 1024,
            per_ip: 1024,
            handshaking: 1024,
        },
        max_message,
    };
    Ok(EchoServer(ws::Listener::start(listener, settings)?))
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
        let _ = self.hub_tx.send(vocab::Event::Shutdown);
        if self.hub_thread.join().is_err() {
            log::error!("hub thread panicked");
        }
        log::info!("parlor stopped");
    }
}
