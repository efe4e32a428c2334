//! The `parlor` command: parses the command line into a [`Config`], starts
//! logging and the server, and stops cleanly on SIGINT or SIGTERM.

use std::process::ExitCode;
use std::str::FromStr;

use parlor::Config;

const USAGE: &str = "\
Parlor: a small self-hosted real-time chat server.

Usage: parlor [OPTIONS]
       parlor backup [--db PATH] DEST    copy the database consistently, also while
                                         Parlor runs; DEST must not exist
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
  --allow-origin URL               also accept WebSockets from pages at this origin
                                   (repeatable; e.g. https://chat.example.org)
  --max-connections N              most open WebSockets (default 4 per user + 16)
  --max-connections-per-ip N       most open WebSockets per IP (default 2 per user + 8)
  --tls-cert FILE --tls-key FILE  serve HTTPS and WSS with this PEM certificate
                                   chain and private key
  --log-level LEVEL                error, warn, info, debug or trace (default info;
                                   RUST_LOG is used when this is not given)
  -h, --help                       print this help
  -V, --version                    print the version
";

enum Action {
    Run(Config, Option<log::LevelFilter>),
    Backup {
        db: std::path::PathBuf,
        dest: std::path::PathBuf,
    },
    Echo {
        ws: String,
        max_message: usize,
    },
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Action, String> {
    let mut config = Config::default();
    let mut level = None;
    let (mut tls_cert, mut tls_key): (Option<std::path::PathBuf>, _) = (None, None);
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("backup") => {
            args.next();
            return parse_backup(args);
        }
        Some("conformance-echo") => {
            args.next();
            return parse_echo(args);
        }
        _ => {}
    }
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            "--http" => config.http_addr = value("--http")?,
            "--ws" => config.ws_addr = value("--ws")?,
            "--db" => config.db_path = value("--db")?.into(),
            "--max-users" => config.max_users = positive("--max-users", &value("--max-users")?)?,
            "--messages-per-second" => {
                config.messages_per_second =
                    positive("--messages-per-second", &value("--messages-per-second")?)?
            }
            "--room-switches-per-minute" => {
                config.room_switches_per_minute = positive(
                    "--room-switches-per-minute",
                    &value("--room-switches-per-minute")?,
                )?
            }
            "--tls-cert" => tls_cert = Some(value("--tls-cert")?.into()),
            "--tls-key" => tls_key = Some(value("--tls-key")?.into()),
            "--allow-origin" => config.allow_origins.push(value("--allow-origin")?),
            "--max-connections" => {
                config.max_connections =
                    Some(positive("--max-connections", &value("--max-connections")?)?)
            }
            "--max-connections-per-ip" => {
                config.max_connections_per_ip = Some(positive(
                    "--max-connections-per-ip",
                    &value("--max-connections-per-ip")?,
                )?)
            }
            "--log-level" => {
                let raw = value("--log-level")?;
                level = Some(log::LevelFilter::from_str(&raw).map_err(|_| {
                    format!("--log-level must be error, warn, info, debug or trace, not {raw:?}")
                })?)
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    config.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(Action::Run(config, level))
}

fn parse_backup(args: impl Iterator<Item = String>) -> Result<Action, String> {
    let mut db = Config::default().db_path;
    let mut dest = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = args.next().ok_or("--db needs a value")?.into(),
            flag if flag.starts_with("--db=") => db = flag["--db=".len()..].into(),
            flag if flag.starts_with('-') => {
                return Err(format!("unknown backup argument {flag:?} (see --help)"));
            }
            _ if dest.is_some() => return Err("backup takes one destination".into()),
            path => dest = Some(path.into()),
        }
    }
    let dest = dest.ok_or("backup needs a destination file: parlor backup [--db PATH] DEST")?;
    Ok(Action::Backup { db, dest })
}

fn parse_echo(args: impl Iterator<Item = String>) -> Result<Action, String> {
    let mut ws = "127.0.0.1:9001".to_string();
    let mut max_message = 16 * 1024 * 1024;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ws" => ws = args.next().ok_or("--ws needs a value")?,
            "--max-message" => {
                max_message = positive(
                    "--max-message",
                    &args.next().ok_or("--max-message needs a value")?,
                )?
            }
            other => {
                return Err(format!(
                    "unknown conformance-echo argument {other:?} (see --help)"
                ));
            }
        }
    }
    Ok(Action::Echo { ws, max_message })
}

fn positive<T: FromStr + PartialOrd + Default>(name: &str, raw: &str) -> Result<T, String> {
    match raw.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!(
            "{name} must be a positive whole number, not {raw:?}"
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

fn main() -> ExitCode {
    let (config, level) = match parse_args(std::env::args().skip(1)) {
        Ok(Action::Run(config, level)) => (config, level),
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

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().map(|s| s.to_string()))? {
            Action::Run(config, _) => Ok(config),
            _ => Err("not a run".into()),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let config = run(&[]).unwrap();
        assert_eq!(config.http_addr, "127.0.0.1:8080");
        assert_eq!(config.ws_addr, "127.0.0.1:8081");
        assert_eq!(config.max_users, 10);
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
        assert_eq!(config.db_path, std::path::PathBuf::from("x.db"));
    }

    #[test]
    fn bad_arguments_say_why() {
        assert!(run(&["--max-users", "0"]).unwrap_err().contains("positive"));
        assert!(
            run(&["--max-users", "ten"])
                .unwrap_err()
                .contains("positive")
        );
        assert!(run(&["--db"]).unwrap_err().contains("needs a value"));
        assert!(
            run(&["--frobnicate"])
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(
            run(&["--log-level", "loud"])
                .unwrap_err()
                .contains("--log-level")
        );
        assert!(matches!(
            parse_args(["--help".to_string()]),
            Ok(Action::Help)
        ));
    }
}
