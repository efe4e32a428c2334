//! The `parlor` command: parses the command line into a [`Config`], starts
//! logging and the server, and stops cleanly on SIGINT or SIGTERM.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use lexopt::Arg::{Long, Short, Value};
use parlor::{Config, ExportOptions, ScrapeAccess};

const USAGE: &str = "\
Parlor: a small self-hosted real-time chat server.

Usage: parlor [OPTIONS]
       parlor backup [--db PATH] DEST    copy the database consistently, also while
                                         Parlor runs; DEST must not exist
       parlor export [--db PATH] [--room NAME]... [--format jsonl|markdown]
                     [--since YYYY-MM-DD] DEST
                                         write the history of live rooms (all, or each
                                         --room) to the new file DEST, also while Parlor
                                         runs; --since: from that day on (UTC)
       parlor conformance-echo [--ws ADDR] [--max-message BYTES]
                                         echo every WebSocket message back through
                                         Parlor's connection code (for Autobahn)

Options:
  --http ADDR                      page listener (default 127.0.0.1:8080)
  --ws ADDR                        WebSocket listener (default 127.0.0.1:8081)
  --db PATH                        SQLite database file (default ./parlor.db)
  --max-users N                    most distinct users online at once (default 10)
  --messages-per-second N          per-user send limit (default 10)
  --room-switches-per-minute N     per-user room switch limit (default 5)
  --requests-per-second N          request units each user earns per second
                                   (default 20; a ping costs 1, a page of 50
                                   messages 3)
  --request-burst N                request units that may be spent at once
                                   (default 200)
  --max-rooms N                    most live rooms (default 100)
  --room-changes-per-10-minutes N  rooms one user may create or delete in
                                   10 minutes (default 10)
  --new-users-per-ip-per-hour N    new usernames one IP address may sign in
                                   with in an hour (default 20)
  --max-users-per-ip N             most users signed in from one IP address
                                   (default: no limit)
  --presence-grace SECONDS         how long a dropped connection's session, room and
                                   presence wait for the page to come back (default 5;
                                   0: sign out at once)
  --join-code CODE                 a new sign-in needs this code (the page asks
                                   once, or takes it from ?code=CODE); also
                                   PARLOR_JOIN_CODE (default: none needed)
  --allow-origin URL               also accept WebSockets from pages at this origin
                                   (repeatable; e.g. https://chat.example.org)
  --public-host NAME               also answer requests for this host name
                                   (repeatable; IP addresses, localhost and the
                                   --allow-origin hosts are always answered)
  --max-connections N              most open WebSockets (default 4 per user + 16)
  --max-connections-per-ip N       most open WebSockets per IP (default 2 per user + 8)
  --tls-cert FILE --tls-key FILE  serve HTTPS and WSS with this PEM certificate
                                   chain and private key
  --metrics                        serve Prometheus metrics at /metrics on the page
                                   port, to loopback clients only
  --metrics-from CIDR              let clients in this range read /metrics instead
                                   (repeatable; e.g. 10.0.0.0/8 or 192.0.2.7)
  --no-auto-checkpoint             leave WAL checkpoints to Litestream, which replicates
                                   the database; never without it (the WAL would grow
                                   for ever)
  --log-level LEVEL                error, warn, info, debug or trace (default info;
                                   RUST_LOG is used when this is not given)
  -h, --help                       print this help
  -V, --version                    print the version
";

enum Action {
    Run(Box<Config>, Option<log::LevelFilter>),
    Backup {
        db: PathBuf,
        dest: PathBuf,
    },
    Export {
        db: PathBuf,
        dest: PathBuf,
        options: ExportOptions,
    },
    Echo {
        ws: String,
        max_message: usize,
    },
    Help,
    Version,
}

fn parse_args<I>(args: I) -> Result<Action, String>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = Config::default();
    let mut level = None;
    let (mut tls_cert, mut tls_key) = (None, None);
    let (mut metrics, mut metrics_from) = (false, Vec::new());
    let mut first = true;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let flag = match arg {
            Long(name) => format!("--{name}"),
            Short(letter) => format!("-{letter}"),
            Value(word) if first && word == "backup" => return parse_backup(parser),
            Value(word) if first && word == "export" => return parse_export(parser),
            Value(word) if first && word == "conformance-echo" => return parse_echo(parser),
            Value(word) => return Err(format!("unknown argument {word:?} (see --help)")),
        };
        first = false;
        match flag.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            "--http" => config.http_addr = value(&mut parser, &flag)?,
            "--ws" => config.ws_addr = value(&mut parser, &flag)?,
            "--db" => config.db_path = path(&mut parser, &flag)?,
            "--max-users" => config.max_users = positive(&mut parser, &flag)?,
            "--messages-per-second" => config.messages_per_second = positive(&mut parser, &flag)?,
            "--room-switches-per-minute" => {
                config.room_switches_per_minute = positive(&mut parser, &flag)?
            }
            "--requests-per-second" => config.requests_per_second = positive(&mut parser, &flag)?,
            "--request-burst" => config.request_burst = positive(&mut parser, &flag)?,
            "--max-rooms" => config.max_rooms = positive(&mut parser, &flag)?,
            "--room-changes-per-10-minutes" => {
                config.room_changes_per_10_minutes = positive(&mut parser, &flag)?
            }
            "--new-users-per-ip-per-hour" => {
                config.new_users_per_ip_per_hour = positive(&mut parser, &flag)?
            }
            "--max-users-per-ip" => config.max_users_per_ip = Some(positive(&mut parser, &flag)?),
            "--join-code" => config.join_code = Some(join_code(&value(&mut parser, &flag)?)?),
            "--tls-cert" => tls_cert = Some(path(&mut parser, &flag)?),
            "--tls-key" => tls_key = Some(path(&mut parser, &flag)?),
            "--allow-origin" => config.allow_origins.push(value(&mut parser, &flag)?),
            "--public-host" => config.public_hosts.push(host_name(&mut parser, &flag)?),
            "--max-connections" => config.max_connections = Some(positive(&mut parser, &flag)?),
            "--max-connections-per-ip" => {
                config.max_connections_per_ip = Some(positive(&mut parser, &flag)?)
            }
            "--no-auto-checkpoint" => config.auto_checkpoint = false,
            "--presence-grace" => {
                let raw = value(&mut parser, &flag)?;
                config.presence_grace = match raw.parse::<u32>() {
                    Ok(seconds) if seconds <= 3600 => Duration::from_secs(seconds.into()),
                    _ => {
                        return Err(format!(
                            "--presence-grace must be a whole number of seconds from 0 to 3600, not {raw:?}"
                        ));
                    }
                }
            }
            "--metrics" => metrics = true,
            "--metrics-from" => {
                let raw = value(&mut parser, &flag)?;
                metrics_from.push(raw.parse().map_err(|e| format!("{flag}: {e}"))?)
            }
            "--log-level" => {
                let raw = value(&mut parser, &flag)?;
                level = Some(log::LevelFilter::from_str(&raw).map_err(|_| {
                    format!("--log-level must be error, warn, info, debug or trace, not {raw:?}")
                })?)
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if config.join_code.is_none()
        && let Some(code) = std::env::var_os("PARLOR_JOIN_CODE")
    {
        let code = code
            .into_string()
            .map_err(|_| "PARLOR_JOIN_CODE must be text".to_string())?;
        config.join_code = Some(join_code(&code)?);
    }
    config.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    config.metrics = match (metrics, metrics_from.is_empty()) {
        (false, true) => None,
        (false, false) => return Err("--metrics-from needs --metrics".into()),
        (true, true) => Some(ScrapeAccess::loopback()),
        (true, false) => Some(ScrapeAccess::ranges(metrics_from)),
    };
    Ok(Action::Run(Box::new(config), level))
}

/// Checks a join code: 1–128 characters, no control characters, not only
/// spaces (people type it, and it travels in a link).
fn join_code(code: &str) -> Result<String, String> {
    let len = code.chars().count();
    if !(1..=parlor::protocol::MAX_JOIN_CODE_CHARS).contains(&len)
        || code.chars().any(char::is_control)
        || code.trim().is_empty()
    {
        return Err(format!(
            "a join code is 1 to {} characters, not only spaces, without control characters",
            parlor::protocol::MAX_JOIN_CODE_CHARS
        ));
    }
    Ok(code.to_string())
}

fn parse_backup(mut parser: lexopt::Parser) -> Result<Action, String> {
    let mut db = Config::default().db_path;
    let mut dest = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let flag = match arg {
            Long(name) => format!("--{name}"),
            Short(letter) => format!("-{letter}"),
            Value(_) if dest.is_some() => return Err("backup takes one destination".into()),
            Value(path) => {
                dest = Some(path.into());
                continue;
            }
        };
        match flag.as_str() {
            "--db" => db = path(&mut parser, &flag)?,
            other => return Err(format!("unknown backup argument {other:?} (see --help)")),
        }
    }
    let dest = dest.ok_or("backup needs a destination file: parlor backup [--db PATH] DEST")?;
    Ok(Action::Backup { db, dest })
}

fn parse_export(mut parser: lexopt::Parser) -> Result<Action, String> {
    let mut db = Config::default().db_path;
    let mut dest = None;
    let mut options = ExportOptions::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let flag = match arg {
            Long(name) => format!("--{name}"),
            Short(letter) => format!("-{letter}"),
            Value(_) if dest.is_some() => return Err("export takes one destination".into()),
            Value(path) => {
                dest = Some(path.into());
                continue;
            }
        };
        match flag.as_str() {
            "--db" => db = path(&mut parser, &flag)?,
            "--room" => options.rooms.push(value(&mut parser, &flag)?),
            "--format" => {
                let raw = value(&mut parser, &flag)?;
                options.format = raw.parse().map_err(|e| format!("{flag}: {e}"))?;
            }
            "--since" => {
                let raw = value(&mut parser, &flag)?;
                options.since = Some(raw.parse().map_err(|e| format!("{flag}: {e}"))?);
            }
            other => return Err(format!("unknown export argument {other:?} (see --help)")),
        }
    }
    let dest = dest.ok_or("export needs a destination file: parlor export [OPTIONS] DEST")?;
    Ok(Action::Export { db, dest, options })
}

fn parse_echo(mut parser: lexopt::Parser) -> Result<Action, String> {
    let mut ws = "127.0.0.1:9001".to_string();
    let mut max_message = 16 * 1024 * 1024;
    let unknown = |arg: &dyn std::fmt::Debug| {
        format!("unknown conformance-echo argument {arg:?} (see --help)")
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let flag = match arg {
            Long(name) => format!("--{name}"),
            Short(letter) => format!("-{letter}"),
            Value(word) => return Err(unknown(&word)),
        };
        match flag.as_str() {
            "--ws" => ws = value(&mut parser, &flag)?,
            "--max-message" => max_message = positive(&mut parser, &flag)?,
            other => return Err(unknown(&other)),
        }
    }
    Ok(Action::Echo { ws, max_message })
}

/// The value of `flag`, given as `flag VALUE` or `flag=VALUE`.
fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|_| format!("{flag} needs a value"))?
        .into_string()
        .map_err(|raw| format!("{flag} must be valid UTF-8, not {raw:?}"))
}

/// The value of `flag` as a path, which need not be UTF-8.
fn path(parser: &mut lexopt::Parser, flag: &str) -> Result<PathBuf, String> {
    parser
        .value()
        .map(PathBuf::from)
        .map_err(|_| format!("{flag} needs a value"))
}

/// The value of `flag` as a host name: letters, digits, `-` and `.`, no
/// scheme or port (IP addresses need no flag).
fn host_name(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let raw = value(parser, flag)?;
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    match ok {
        true => Ok(raw),
        false => Err(format!(
            "{flag} must be a host name such as chat.example.org (no scheme or port), not {raw:?}"
        )),
    }
}

/// The value of `flag` as a whole number above zero.
fn positive<T: FromStr + PartialOrd + Default>(
    parser: &mut lexopt::Parser,
    flag: &str,
) -> Result<T, String> {
    let raw = value(parser, flag)?;
    match raw.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!(
            "{flag} must be a positive whole number, not {raw:?}"
        )),
    }
}

fn init_logging(level: Option<log::LevelFilter>) {
    let logger = simple_logger::SimpleLogger::new().with_level(log::LevelFilter::Info);
    let logger = match level {
        Some(level) => logger.with_level(level),
        None => logger.env(),
    };
    logger
        .init()
        .expect("BUG: the logger is set once, first thing");
}

/// Makes a SIGBUS say why it ends the process. SQLite keeps the WAL index
/// in the `-shm` file beside the database, memory-mapped; when that file
/// can no longer be written through the mapping (made immutable, or
/// truncated, under the running server) the next access raises SIGBUS,
/// which would end Parlor with nothing logged. Nothing can be recovered at
/// that point (the fault is inside SQLite, holding its locks), so the
/// handler writes one line to standard error, where the log goes, and lets
/// the signal end the process as before, for a supervisor to see. (It
/// takes the place of the handler Rust's runtime sets to report stack
/// overflows, which on Linux arrive as SIGSEGV, not SIGBUS.)
///
/// Keeping the WAL index in the heap instead (`PRAGMA locking_mode =
/// EXCLUSIVE` before the first WAL access, or the `unix-excl` VFS) would
/// avoid the mapping, and a read-only `-shm` would become `storage_error`
/// like a read-only database; but then no other process may open the
/// database while Parlor runs, which ends `parlor backup` of a live server.
fn report_sigbus() {
    extern "C" fn on_sigbus(_signal: libc::c_int) {
        const LINE: &[u8] = b"ERROR [parlor] storage: SIGBUS: a memory-mapped file failed, most \
likely the database's -shm file (made read-only or immutable, or truncated, while Parlor \
ran); stopping. Make the database, -wal and -shm files writable again and restart Parlor.\n";
        // SAFETY: write, signal and raise are async-signal-safe
        // (signal-safety(7)), and LINE is a static buffer of that length.
        // SIGBUS is blocked while this handler runs, so the raised one is
        // delivered, with the default action, as the handler returns.
        unsafe {
            libc::write(libc::STDERR_FILENO, LINE.as_ptr().cast(), LINE.len());
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            libc::raise(libc::SIGBUS);
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_sigbus;
    // SAFETY: the handler makes only async-signal-safe calls.
    let previous = unsafe { libc::signal(libc::SIGBUS, handler as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        log::warn!("cannot watch for SIGBUS; a failing -shm file would end Parlor silently");
    }
}

fn main() -> ExitCode {
    let (config, level) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Action::Run(config, level)) => (*config, level),
        Ok(Action::Backup { db, dest }) => {
            return match parlor::backup(&db, &dest) {
                Ok(()) => {
                    println!("Backed up {} to {}.", db.display(), dest.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("parlor: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Action::Export { db, dest, options }) => {
            return match parlor::export(&db, &dest, &options) {
                Ok(summary) => {
                    let rooms = match summary.rooms {
                        1 => "1 room".to_string(),
                        n => format!("{n} rooms"),
                    };
                    println!(
                        "Exported {} message(s) from {rooms} to {}.",
                        summary.messages,
                        dest.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("parlor: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Action::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("parlor {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Action::Echo { ws, max_message }) => {
            init_logging(None);
            return match parlor::start_echo(&ws, max_message) {
                Ok(listener) => {
                    println!(
                        "Echoing WebSocket messages on ws://{}/ (Ctrl-C stops).",
                        listener.addr()
                    );
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    eprintln!("parlor: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(message) => {
            eprintln!("parlor: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging(level);
    report_sigbus();

    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        log::warn!("cannot handle SIGINT/SIGTERM ({e}); stop Parlor with SIGKILL");
    }
    let server = match parlor::start(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("{e}");
            eprintln!("parlor: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Parlor is running. Open {} in your browser (WebSocket on {}).",
        server.url(),
        server.ws_url()
    );
    let _ = stop_rx.recv();
    log::info!("stopping (signal received)");
    server.shutdown();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor::ExportFormat;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args)? {
            Action::Run(config, _) => Ok(*config),
            _ => Err("not a run".into()),
        }
    }

    fn backup(args: &[&str]) -> Result<(PathBuf, PathBuf), String> {
        match parse_args(args)? {
            Action::Backup { db, dest } => Ok((db, dest)),
            _ => Err("not a backup".into()),
        }
    }

    fn export(args: &[&str]) -> Result<(PathBuf, PathBuf, ExportOptions), String> {
        match parse_args(args)? {
            Action::Export { db, dest, options } => Ok((db, dest, options)),
            _ => Err("not an export".into()),
        }
    }

    fn echo(args: &[&str]) -> Result<(String, usize), String> {
        match parse_args(args)? {
            Action::Echo { ws, max_message } => Ok((ws, max_message)),
            _ => Err("not an echo".into()),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let config = run(&[]).unwrap();
        assert_eq!(config.http_addr, "127.0.0.1:8080");
        assert_eq!(config.ws_addr, "127.0.0.1:8081");
        assert_eq!(config.max_users, 10);
        assert!(config.auto_checkpoint);
        assert!(!run(&["--no-auto-checkpoint"]).unwrap().auto_checkpoint);
        assert_eq!(
            run(&["--presence-grace", "0"]).unwrap().presence_grace,
            Duration::ZERO
        );
        assert_eq!(
            run(&["--presence-grace=30"]).unwrap().presence_grace,
            Duration::from_secs(30)
        );
        assert!(run(&["--presence-grace", "-1"]).is_err());
        assert!(run(&["--presence-grace", "soon"]).is_err());
        let config = run(&[
            "--http",
            "0.0.0.0:80",
            "--ws=0.0.0.0:81",
            "--max-users",
            "3",
            "--db",
            "x.db",
        ])
        .unwrap();
        assert_eq!(config.http_addr, "0.0.0.0:80");
        assert_eq!(config.ws_addr, "0.0.0.0:81");
        assert_eq!(config.max_users, 3);
        assert_eq!(config.db_path, PathBuf::from("x.db"));
    }

    #[test]
    fn flag_value_and_flag_equals_value_agree() {
        let spaced = run(&[
            "--ws",
            "0.0.0.0:81",
            "--max-connections",
            "7",
            "--allow-origin",
            "https://a.example",
            "--allow-origin",
            "https://b.example",
            "--public-host",
            "chat.lan",
            "--public-host",
            "Chat.Example.org.",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        let joined = run(&[
            "--ws=0.0.0.0:81",
            "--max-connections=7",
            "--allow-origin=https://a.example",
            "--allow-origin=https://b.example",
            "--public-host=chat.lan",
            "--public-host=Chat.Example.org.",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
        ])
        .unwrap();
        for config in [spaced, joined] {
            assert_eq!(config.ws_addr, "0.0.0.0:81");
            assert_eq!(config.max_connections, Some(7));
            assert_eq!(
                config.allow_origins,
                ["https://a.example", "https://b.example"]
            );
            assert_eq!(config.public_hosts, ["chat.lan", "Chat.Example.org."]);
            assert_eq!(config.tls, Some(("c.pem".into(), "k.pem".into())));
        }
        assert!(matches!(
            parse_args(["--log-level=debug"]),
            Ok(Action::Run(_, Some(log::LevelFilter::Debug)))
        ));
    }

    #[test]
    fn backup_takes_a_database_and_one_destination() {
        let default_db = Config::default().db_path;
        assert_eq!(
            backup(&["backup", "copy.db"]).unwrap(),
            (default_db, "copy.db".into())
        );
        let cases: [&[&str]; 3] = [
            &["backup", "--db", "x.db", "copy.db"],
            &["backup", "--db=x.db", "copy.db"],
            &["backup", "copy.db", "--db", "x.db"],
        ];
        for args in cases {
            assert_eq!(
                backup(args).unwrap(),
                ("x.db".into(), "copy.db".into()),
                "{args:?}"
            );
        }
        assert!(backup(&["backup"]).unwrap_err().contains("destination"));
        assert!(
            backup(&["backup", "a.db", "b.db"])
                .unwrap_err()
                .contains("one destination")
        );
        assert!(
            backup(&["backup", "--db"])
                .unwrap_err()
                .contains("--db needs a value")
        );
        assert!(
            backup(&["backup", "--ws=x", "copy.db"])
                .unwrap_err()
                .contains("unknown backup argument \"--ws\"")
        );
        // The subcommand comes first; later it is a stray word.
        assert!(
            run(&["--db", "x.db", "backup", "copy.db"])
                .unwrap_err()
                .contains("unknown argument \"backup\"")
        );
    }

    #[test]
    fn export_takes_rooms_a_format_a_day_and_one_destination() {
        let (db, dest, options) = export(&["export", "out.jsonl"]).unwrap();
        assert_eq!((db, dest), (Config::default().db_path, "out.jsonl".into()));
        assert_eq!(options, ExportOptions::default());
        assert_eq!(options.format, ExportFormat::JsonLines);
        let spaced = [
            "export",
            "--db",
            "x.db",
            "--room",
            "general",
            "--room",
            "Design",
            "--format",
            "markdown",
            "--since",
            "2025-11-25",
            "out.md",
        ];
        let joined = [
            "export",
            "out.md",
            "--db=x.db",
            "--room=general",
            "--room=Design",
            "--format=markdown",
            "--since=2025-11-25",
        ];
        for args in [&spaced[..], &joined[..]] {
            let (db, dest, options) = export(args).unwrap();
            assert_eq!((db, dest), ("x.db".into(), "out.md".into()), "{args:?}");
            assert_eq!(options.rooms, ["general", "Design"]);
            assert_eq!(options.format, ExportFormat::Markdown);
            assert_eq!(options.since, Some("2025-11-25".parse().unwrap()));
        }
        let error = |args: &[&str]| export(args).unwrap_err();
        assert!(error(&["export"]).contains("needs a destination"));
        assert!(error(&["export", "a", "b"]).contains("one destination"));
        assert!(error(&["export", "--format", "csv", "o"]).starts_with("--format: the format is"));
        assert!(error(&["export", "--since", "2025-02-30", "o"]).starts_with("--since: a date"));
        assert!(error(&["export", "--since=yesterday", "o"]).contains("\"yesterday\""));
        assert!(error(&["export", "--room"]).contains("--room needs a value"));
        assert!(error(&["export", "--ws=x", "o"]).contains("unknown export argument \"--ws\""));
    }

    #[test]
    fn conformance_echo_flags() {
        assert_eq!(
            echo(&["conformance-echo"]).unwrap(),
            ("127.0.0.1:9001".into(), 16 * 1024 * 1024)
        );
        let cases: [&[&str]; 2] = [
            &[
                "conformance-echo",
                "--ws",
                "127.0.0.1:0",
                "--max-message",
                "5",
            ],
            &["conformance-echo", "--ws=127.0.0.1:0", "--max-message=5"],
        ];
        for args in cases {
            assert_eq!(echo(args).unwrap(), ("127.0.0.1:0".into(), 5), "{args:?}");
        }
        assert!(
            echo(&["conformance-echo", "--max-message=0"])
                .unwrap_err()
                .contains("--max-message must be a positive whole number")
        );
        assert!(
            echo(&["conformance-echo", "--ws"])
                .unwrap_err()
                .contains("--ws needs a value")
        );
        assert!(
            echo(&["conformance-echo", "--db", "x.db"])
                .unwrap_err()
                .contains("unknown conformance-echo argument \"--db\"")
        );
        assert!(
            echo(&["conformance-echo", "extra"])
                .unwrap_err()
                .contains("unknown conformance-echo argument \"extra\"")
        );
    }

    #[test]
    fn metrics_are_off_loopback_only_or_for_the_ranges_given() {
        assert_eq!(run(&[]).unwrap().metrics, None);
        assert_eq!(
            run(&["--metrics"]).unwrap().metrics,
            Some(ScrapeAccess::loopback())
        );
        let ranges = ["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let given = Some(ScrapeAccess::ranges(ranges.to_vec()));
        let spaced = [
            "--metrics",
            "--metrics-from",
            "10.0.0.0/8",
            "--metrics-from",
            "::1",
        ];
        assert_eq!(run(&spaced).unwrap().metrics, given);
        let joined = [
            "--metrics-from=10.0.0.0/8",
            "--metrics-from=::1",
            "--metrics",
        ];
        assert_eq!(run(&joined).unwrap().metrics, given);
        assert!(
            run(&["--metrics-from", "10.0.0.0/8"])
                .unwrap_err()
                .contains("--metrics-from needs --metrics")
        );
        let bad = run(&["--metrics", "--metrics-from", "10.0.0.0/40"]).unwrap_err();
        assert!(
            bad.starts_with("--metrics-from: \"10.0.0.0/40\" is not"),
            "{bad}"
        );
        assert!(
            run(&["--metrics", "--metrics-from"])
                .unwrap_err()
                .contains("needs a value")
        );
    }

    #[test]
    fn join_codes_are_checked() {
        let config = run(&["--join-code", "tea at five"]).unwrap();
        assert_eq!(config.join_code.as_deref(), Some("tea at five"));
        assert!(
            run(&["--join-code", " "])
                .unwrap_err()
                .contains("join code")
        );
        assert!(
            run(&["--join-code=a\tb"])
                .unwrap_err()
                .contains("join code")
        );
        let long = "x".repeat(129);
        assert!(run(&["--join-code", &long]).is_err());
    }

    #[test]
    fn bad_arguments_say_why() {
        assert!(run(&["--max-users", "0"]).unwrap_err().contains("positive"));
        assert!(
            run(&["--max-users", "ten"])
                .unwrap_err()
                .contains("positive")
        );
        assert!(run(&["--max-users=-1"]).unwrap_err().contains("positive"));
        assert!(run(&["--db"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--ws="]).is_ok_and(|c| c.ws_addr.is_empty()));
        assert!(
            run(&["--http"])
                .unwrap_err()
                .contains("--http needs a value")
        );
        assert!(
            run(&["--frobnicate"])
                .unwrap_err()
                .contains("unknown argument \"--frobnicate\"")
        );
        assert!(
            run(&["--frobnicate=3"])
                .unwrap_err()
                .contains("unknown argument \"--frobnicate\"")
        );
        assert!(
            run(&["-x"])
                .unwrap_err()
                .contains("unknown argument \"-x\"")
        );
        assert!(
            run(&["chat"])
                .unwrap_err()
                .contains("unknown argument \"chat\"")
        );
        assert!(
            run(&["--log-level", "loud"])
                .unwrap_err()
                .contains("--log-level")
        );
        for bad in ["https://chat.lan", "chat.lan:8080", "", "[::1]", "a b"] {
            assert!(
                run(&["--public-host", bad])
                    .unwrap_err()
                    .contains("--public-host must be a host name"),
                "{bad}"
            );
        }
        assert!(
            run(&["--tls-cert", "c.pem"])
                .unwrap_err()
                .contains("go together")
        );
        assert!(matches!(parse_args(["--help"]), Ok(Action::Help)));
        assert!(matches!(parse_args(["-h"]), Ok(Action::Help)));
        assert!(matches!(parse_args(["--version"]), Ok(Action::Version)));
        assert!(matches!(parse_args(["-V"]), Ok(Action::Version)));
    }
}
