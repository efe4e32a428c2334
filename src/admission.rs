//! Who may open a WebSocket: the Origin allowlist checked on every handshake,
//! the host names the page and the WebSocket answer to, and the caps on
//! sockets (in all, per IP address, and still handshaking) that keep a flood
//! of idle or slow connections from crowding out people.
//!
//! The socket table is connection bookkeeping shared by the accept thread and
//! the connection threads, so it sits behind a mutex held for a few map
//! operations at a time; chat state never does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

/// Which browser origins may open a WebSocket.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// `--allow-origin` values, normalized (lowercase, no trailing slash).
    explicit: Vec<String>,
    /// The page's listener: its port, and its address unless unspecified.
    /// None: any origin may connect (the conformance echo server).
    http: Option<SocketAddr>,
}

impl OriginPolicy {
    pub fn new(http: SocketAddr, explicit: &[String]) -> OriginPolicy {
        OriginPolicy {
            explicit: explicit.iter().map(|o| normalize(o)).collect(),
            http: Some(http),
        }
    }

    /// Lets every origin in; only for servers that serve no page.
    pub fn any() -> OriginPolicy {
        OriginPolicy {
            explicit: Vec::new(),
            http: None,
        }
    }

    /// Whether a handshake with this `Origin` (None: not a browser) and this
    /// `Host` header may proceed.
    ///
    /// By default a browser origin must be the page itself: scheme http or
    /// https, the page's port, and the address the page listens on (a
    /// loopback listener also answers to `localhost`, `127.0.0.1` and
    /// `[::1]`). A page listening on all interfaces is reached under names
    /// Parlor cannot know, so there the origin's host must be the host the
    /// WebSocket request itself was sent to.
    pub fn allows(&self, origin: Option<&str>, host_header: Option<&str>) -> bool {
        let (Some(origin), Some(http)) = (origin, self.http) else {
            return true;
        };
        let origin = normalize(origin);
        if self.explicit.contains(&origin) {
            return true;
        }
        let Some((host, port)) = split_origin(&origin) else {
            return false;
        };
        if port != http.port() {
            return false;
        }
        let ip = http.ip();
        let loopback_alias = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
        if ip.is_loopback() {
            return loopback_alias;
        }
        if !ip.is_unspecified() {
            return host == bracketed(ip);
        }
        loopback_alias
            || host_header.and_then(|h| split_host(&h.to_ascii_lowercase()).map(|(h, _)| h == host))
                == Some(true)
    }
}

/// Which names the page and the WebSocket answer to, in the `Host` header:
/// the defence against DNS rebinding, where a hostile web site points its
/// own name at Parlor's address, so that a visitor's browser treats Parlor
/// as part of that site (the Origin check passes: the page and the
/// WebSocket seem to share the attacker's origin). IP literals and
/// `localhost` are always answered, as Vite's `server.allowedHosts` and
/// Django's `ALLOWED_HOSTS` do: a rebinding attack needs a name the
/// attacker controls.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// `--public-host` names and the hosts of `--allow-origin` origins,
    /// normalized (lowercase, no trailing dot). None: every name is
    /// answered (the conformance echo server, which serves no page).
    names: Option<Vec<String>>,
}

impl HostPolicy {
    pub fn new(public_hosts: &[String], allow_origins: &[String]) -> HostPolicy {
        let origin_hosts = allow_origins.iter().filter_map(|origin| {
            let origin = normalize(origin);
            split_origin(&origin).map(|(host, _)| host.to_string())
        });
        let names = public_hosts
            .iter()
            .cloned()
            .chain(origin_hosts)
            .map(|name| host_key(&name))
            .collect();
        HostPolicy { names: Some(names) }
    }

    /// Answers every name; only for servers that serve no page.
    pub fn any() -> HostPolicy {
        HostPolicy { names: None }
    }

    /// Whether a request with this `Host` header (None: there is none, so
    /// it is not from a browser) may be answered.
    pub fn allows(&self, host_header: Option<&str>) -> bool {
        let (Some(header), Some(names)) = (host_header, &self.names) else {
            return true;
        };
        let header = header.trim().to_ascii_lowercase();
        let Some((host, _port)) = split_host(&header) else {
            return false;
        };
        let host = host_key(host);
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let is_ip = match literal {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => host.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        is_ip || host == "localhost" || names.contains(&host)
    }

    /// The one line a refused request is answered with (status 421).
    pub fn refusal(host_header: Option<&str>) -> String {
        let name = host_header
            .and_then(|h| split_host(h.trim()))
            .map(|(host, _)| host_key(host))
            .filter(|h| {
                h.len() <= 253
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            });
        match name {
            Some(name) => format!(
                "Parlor does not answer to the name {name}; if that is its name, start it with --public-host {name}\n"
            ),
            None => {
                "Parlor does not answer to this host name; name its host with --public-host NAME\n"
                    .into()
            }
        }
    }
}

/// A host name as compared: lowercase, without the trailing dot of a fully
/// qualified name.
fn host_key(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    host.strip_suffix('.').unwrap_or(&host).to_string()
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `http://host:port` or `https://host` → (host, port).
fn split_origin(origin: &str) -> Option<(&str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_host(rest)?;
    Some((host, port.unwrap_or(default_port)))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port).
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

/// Caps on open WebSocket sockets.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Sockets open at once.
    pub total: usize,
    /// Sockets open at once from one IP address.
    pub per_ip: usize,
    /// Sockets that may be open at once without a signed-in user (still in
    /// the handshake, or handshaken but not yet welcomed); past this one of
    /// them is dropped to make room, so idle connections cannot lock others
    /// out.
    pub handshaking: usize,
}

/// The open sockets, shared by the accept thread (which admits) and the
/// connection threads (whose [`Admitted`] guards leave on drop).
#[derive(Clone)]
pub struct SocketTable {
    inner: Arc<Mutex<Table>>,
    limits: SocketLimits,
}

#[derive(Default)]
struct Table {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Sockets without a signed-in user yet (in the handshake, or waiting
    /// for a welcome), oldest first by admission number, with a handle to
    /// shut them down when room is needed.
    handshaking: BTreeMap<u64, (IpAddr, TcpStream)>,
    /// Sockets dropped to make room: already counted out, so their guards
    /// must not count them out again.
    evicted: HashSet<u64>,
    next: u64,
}

/// A socket's place in the table; dropping it frees the place.
pub struct Admitted {
    table: Arc<Mutex<Table>>,
    ip: IpAddr,
    number: u64,
}

impl SocketTable {
    pub fn new(limits: SocketLimits) -> SocketTable {
        SocketTable {
            inner: Arc::default(),
            limits,
        }
    }

    /// Admits a new socket, first dropping sockets without a signed-in user
    /// where that makes room. None: no room; close it.
    ///
    /// Which one goes: when this address is at its own cap, its oldest;
    /// otherwise the oldest of the address holding the most of them, so a
    /// crowd of idle sockets from a few addresses makes room for everyone
    /// else before it costs anyone else a place.
    pub fn admit(&self, stream: &TcpStream, ip: IpAddr) -> Option<Admitted> {
        let mut table = self
            .inner
            .lock()
            .expect("BUG: no panics while the table is locked");
        let per_ip = |t: &Table| t.per_ip.get(&ip).copied().unwrap_or(0);
        while table.handshaking.len() >= self.limits.handshaking
            || table.total >= self.limits.total
            || per_ip(&table) >= self.limits.per_ip
        {
            let from_same_ip = per_ip(&table) >= self.limits.per_ip;
            let target = if from_same_ip {
                Some(ip)
            } else {
                crowded_ip(&table.handshaking)
            };
            let victim = table
                .handshaking
                .iter()
                .find(|(_, (victim_ip, _))| Some(*victim_ip) == target)
                .map(|(n, _)| *n);
            let victim = victim?;
            let (victim_ip, socket) = table.handshaking.remove(&victim).expect("BUG: just found");
            // Its thread sees the socket fail and gives its place back; count
            // it gone now so the loop can make progress.
            let _ = socket.shutdown(Shutdown::Both);
            table.evicted.insert(victim);
            table.leave(victim_ip);
        }
        let number = table.next;
        table.next += 1;
        table.total += 1;
        *table.per_ip.entry(ip).or_default() += 1;
        if let Ok(handle) = stream.try_clone() {
            table.handshaking.insert(number, (ip, handle));
        }
        Some(Admitted {
            table: self.inner.clone(),
            ip,
            number,
        })
    }
}

/// The address holding the most sockets in `evictable` (the oldest such
/// address when several hold as many).
fn crowded_ip(evictable: &BTreeMap<u64, (IpAddr, TcpStream)>) -> Option<IpAddr> {
    let mut counts: HashMap<IpAddr, (usize, u64)> = HashMap::new();
    for (number, (ip, _)) in evictable {
        counts.entry(*ip).or_insert((0, *number)).0 += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, (count, oldest))| (*count, std::cmp::Reverse(*oldest)))
        .map(|(ip, _)| ip)
}

impl Table {
    fn leave(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl Admitted {
    /// The socket is in use for good (signed in, or not for chat at all): it
    /// can no longer be evicted.
    pub fn handshake_done(&self) {
        self.signed_in_handle().signed_in();
    }

    /// What marks the socket as in use for good later, from another thread
    /// (the post, when the hub has welcomed its user).
    pub fn signed_in_handle(&self) -> SignedIn {
        SignedIn {
            table: self.table.clone(),
            number: self.number,
        }
    }
}

/// Marks an admitted socket as signed in: it can no longer be evicted.
pub struct SignedIn {
    table: Arc<Mutex<Table>>,
    number: u64,
}

impl SignedIn {
    /// A handle on no table (for tests of what carries it).
    #[cfg(test)]
    pub fn detached() -> SignedIn {
        SignedIn {
            table: Arc::default(),
            number: 0,
        }
    }

    /// The socket's user has been welcomed.
    pub fn signed_in(&self) {
        let mut table = self
            .table
            .lock()
            .expect("BUG: no panics while the table is locked");
        table.handshaking.remove(&self.number);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self
            .table
            .lock()
            .expect("BUG: no panics while the table is locked");
        table.handshaking.remove(&self.number);
        if !table.evicted.remove(&self.number) {
            table.leave(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn idle_handshakes_are_evicted_oldest_first_and_caps_hold() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let table = SocketTable::new(SocketLimits {
            total: 100,
            per_ip: 100,
            handshaking: 64,
        });
        let mut clients = Vec::new();
        let mut guards = Vec::new();
        for _ in 0..64 + 10 {
            clients.push(TcpStream::connect(addr).unwrap());
            let (server_side, _) = listener.accept().unwrap();
            guards.push((
                table.admit(&server_side, ip).expect("room is made"),
                server_side,
            ));
        }
        let t = table.inner.lock().unwrap();
        assert_eq!(t.handshaking.len(), 64);
        assert_eq!(t.total, 64);
        // The oldest were shut down.
        assert!(!t.handshaking.contains_key(&0));
        drop(t);
        drop(guards);
        let t = table.inner.lock().unwrap();
        assert_eq!((t.total, t.per_ip.len(), t.evicted.len()), (0, 0, 0));
    }

    #[test]
    fn established_sockets_are_never_evicted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let table = SocketTable::new(SocketLimits {
            total: 3,
            per_ip: 2,
            handshaking: 64,
        });
        let mut keep = Vec::new();
        for _ in 0..2 {
            let _c = TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            let guard = table.admit(&s, ip).unwrap();
            guard.handshake_done();
            keep.push((guard, s, _c));
        }
        let _c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        assert!(table.admit(&s, ip).is_none(), "per-IP cap");
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(
            table.admit(&s, other).is_some(),
            "another address still gets in"
        );
        keep.pop();
        assert!(
            table.admit(&s, ip).is_some(),
            "a place freed by a guard is reused"
        );
    }

    #[test]
    fn idle_sockets_go_from_the_most_crowded_address_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let table = SocketTable::new(SocketLimits {
            total: 6,
            per_ip: 4,
            handshaking: 64,
        });
        let mut keep = Vec::new();
        let mut admit = |ip: &str| {
            let client = TcpStream::connect(addr).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let guard = table.admit(&server_side, ip.parse().unwrap());
            let admitted = guard.is_some();
            keep.push((guard, server_side, client));
            admitted
        };
        // A real client, then two crowds of idle sockets fill the server.
        assert!(admit("192.0.2.9"));
        for _ in 0..3 {
            assert!(admit("192.0.2.1"));
        }
        for _ in 0..2 {
            assert!(admit("192.0.2.2"));
        }
        // Another newcomer: the most crowded address makes room, not the
        // real client, although its socket is the oldest.
        assert!(admit("192.0.2.3"));
        let t = table.inner.lock().unwrap();
        assert!(
            t.handshaking.contains_key(&0),
            "the real client was evicted"
        );
        assert_eq!(
            t.per_ip.get(&"192.0.2.1".parse::<IpAddr>().unwrap()),
            Some(&2)
        );
    }

    fn policy(http: &str, explicit: &[&str]) -> OriginPolicy {
        let explicit: Vec<String> = explicit.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(http.parse().unwrap(), &explicit)
    }

    #[test]
    fn loopback_pages_accept_their_aliases_only() {
        let p = policy("127.0.0.1:8080", &[]);
        assert!(p.allows(None, None));
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "HTTP://LOCALHOST:8080/",
        ] {
            assert!(p.allows(Some(ok), None), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:8080.evil.example",
            "http://127.0.0.1:9999",
            "http://localhost",
            "null",
            "file://",
            "http://user@127.0.0.1:8080",
        ] {
            assert!(!p.allows(Some(bad), Some("127.0.0.1:8081")), "{bad}");
        }
    }

    #[test]
    fn explicit_origins_are_exact() {
        let p = policy("127.0.0.1:8080", &["https://chat.example.org/"]);
        assert!(p.allows(Some("https://chat.example.org"), None));
        assert!(!p.allows(Some("https://chat.example.org.evil"), None));
        assert!(!p.allows(Some("http://chat.example.org"), None));
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_named() {
        let p = HostPolicy::new(
            &["chat.lan".into(), "Parlor.Example.".into()],
            &["https://chat.example.org".into(), "null".into()],
        );
        for ok in [
            None,
            Some("127.0.0.1:8080"),
            Some("192.168.1.5"),
            Some("[::1]:8081"),
            Some("[fe80::1]"),
            Some("localhost:8080"),
            Some("LOCALHOST."),
            Some("chat.lan:8080"),
            Some("CHAT.LAN"),
            Some("parlor.example:8081"),
            Some("parlor.example."),
            Some("chat.example.org"),
        ] {
            assert!(p.allows(ok), "{ok:?}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "chat.lan.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "2130706433x",
            "[::1",
            "",
            ":8080",
            "chat.lan:http",
        ] {
            assert!(!p.allows(Some(bad)), "{bad}");
        }
        assert!(HostPolicy::any().allows(Some("rebind.attacker.example")));
    }

    #[test]
    fn a_refused_host_is_told_the_flag_to_add() {
        assert_eq!(
            HostPolicy::refusal(Some("Chat.Home:8080")),
            "Parlor does not answer to the name chat.home; if that is its name, start it with --public-host chat.home\n"
        );
        let hostile = HostPolicy::refusal(Some("<script>x</script>"));
        assert!(!hostile.contains('<') && hostile.contains("--public-host NAME"));
    }

    #[test]
    fn all_interfaces_match_the_requested_host() {
        let p = policy("0.0.0.0:8080", &[]);
        assert!(p.allows(Some("http://chat.lan:8080"), Some("chat.lan:8081")));
        assert!(p.allows(Some("http://192.168.1.5:8080"), Some("192.168.1.5:8081")));
        assert!(!p.allows(Some("http://evil.example:8080"), Some("chat.lan:8081")));
        assert!(!p.allows(Some("http://chat.lan:8080"), None));
        let specific = policy("192.168.1.5:8080", &[]);
        assert!(specific.allows(Some("http://192.168.1.5:8080"), Some("x")));
        assert!(!specific.allows(Some("http://localhost:8080"), Some("x")));
    }
}
