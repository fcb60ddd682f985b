//! A small memcached client over tokio TCP, speaking the classic text protocol: `gets`,
//! `add`, `cas`, `set`, `delete`, nothing else.
//!
//! - One [`Server`] per configured address, each with a pool of idle connections; a request
//!   takes one (or connects), and gives it back only after a complete, well-formed exchange.
//!   A connection that saw an error, an error reply, or whose future was dropped (a timeout)
//!   is closed, so no reply is ever read by the wrong request.
//! - A pooled connection that fails at once (the server restarted, or closed an idle
//!   connection) empties that server's pool; a `gets` or `delete` is then sent once more on
//!   a fresh connection (repeating them changes nothing). A storage command (`add`, `set`,
//!   `cas`) is never sent twice: the server may have run it before the reply was lost, and a
//!   repeat would answer `NOT_STORED`/`EXISTS` for a write that happened. It fails instead
//!   (a `503`), and the next request finds a fresh connection.
//! - A key goes to the server [`Servers::pick`] chooses: rendezvous hashing (the highest
//!   SHA-256 of address and key), so every application instance listing the same addresses
//!   picks the same server, and removing one server moves only the keys it held.
//! - Transport failures are `io::Error`s; a reply that breaks the protocol is
//!   [`Failure::Protocol`]. No timeout here: the provider bounds whole operations.

use std::fmt;
use std::io;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Idle connections kept per server.
const MAX_IDLE: usize = 32;
/// The longest reply line read (a `VALUE` header is far shorter).
const MAX_LINE: usize = 1024;
/// The largest value accepted from a server (memcached's own default limit is 1 MiB).
const MAX_VALUE: usize = 64 << 20;

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server cannot be reached, or the connection broke.
    Io(io::Error),
    /// The server answered something the protocol does not allow here, or an error reply.
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "memcached connection failed: {e}"),
            Failure::Protocol(reply) => write!(f, "memcached protocol error: {reply}"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Io(e) => Some(e),
            Failure::Protocol(_) => None,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

type Exchange<T> = std::result::Result<T, Failure>;

/// What a storage command (`add`, `cas`, `set`) answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: `add` found the key taken.
    NotStored,
    /// `EXISTS`: `cas` found the item changed since its `gets`.
    Exists,
    /// `NOT_FOUND`: `cas` found no item.
    NotFound,
}

/// A storage command.
#[derive(Clone, Copy, Debug)]
pub(super) enum Store {
    Add,
    Set,
    Cas(u64),
}

/// An item read by `gets`: its value and its CAS token.
pub(super) struct Item {
    pub(super) value: Vec<u8>,
    pub(super) cas: u64,
}

/// One memcached server: its address and its idle connections.
pub(super) struct Server {
    addr: String,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// What a request expects back.
#[derive(Clone, Copy)]
enum Expect {
    /// `gets`: `END`, or one `VALUE` and `END`.
    Item,
    /// Every other command: one status line.
    Line,
}

enum Reply {
    Item(Option<Item>),
    Line(String),
}

impl Server {
    fn new(addr: String) -> Self {
        Server {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<BufReader<TcpStream>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connect(&self) -> io::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }

    /// Sends `command` and reads its reply, on a pooled connection or a new one; `repeatable`
    /// commands are sent once more on a fresh connection when a pooled one fails.
    async fn request(&self, command: &[u8], expect: Expect, repeatable: bool) -> Exchange<Reply> {
        let pooled = self.idle().pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let reply = match exchange(&mut conn, command, expect).await {
            Err(Failure::Io(_)) if reused && repeatable => {
                // Most likely the server restarted or dropped an idle connection: the other
                // idle ones are as stale. Try once more on a fresh connection.
                self.idle().clear();
                conn = self.connect().await?;
                exchange(&mut conn, command, expect).await?
            }
            Err(e @ Failure::Io(_)) if reused => {
                self.idle().clear();
                return Err(e);
            }
            other => other?,
        };
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(reply)
    }
}

/// Writes `command`, then reads one complete reply. Any error leaves `conn` unusable.
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    command: &[u8],
    expect: Expect,
) -> Exchange<Reply> {
    conn.get_mut().write_all(command).await?;
    let line = read_line(conn).await?;
    match expect {
        Expect::Line => Ok(Reply::Line(line)),
        Expect::Item if line == "END" => Ok(Reply::Item(None)),
        Expect::Item => {
            let (len, cas) = parse_value_header(&line)?;
            let mut value = vec![0; len + 2];
            conn.read_exact(&mut value).await?;
            if !value.ends_with(b"\r\n") {
                return Err(Failure::Protocol("value not followed by CRLF".into()));
            }
            value.truncate(len);
            let end = read_line(conn).await?;
            if end != "END" {
                return Err(unexpected(&end));
            }
            Ok(Reply::Item(Some(Item { value, cas })))
        }
    }
}

/// One reply line without its CRLF; an error reply is a [`Failure::Protocol`].
async fn read_line(conn: &mut BufReader<TcpStream>) -> Exchange<String> {
    let mut line = Vec::with_capacity(64);
    let limited = &mut (&mut *conn).take(MAX_LINE as u64);
    limited.read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(Failure::Protocol("reply line too long or cut short".into()));
    }
    line.truncate(line.len() - 2);
    let line =
        String::from_utf8(line).map_err(|_| Failure::Protocol("reply line is not UTF-8".into()))?;
    if line == "ERROR" || line.starts_with("CLIENT_ERROR") || line.starts_with("SERVER_ERROR") {
        return Err(Failure::Protocol(line));
    }
    Ok(line)
}

/// `VALUE <key> <flags> <bytes> <cas>`: the length and the CAS token.
fn parse_value_header(line: &str) -> Exchange<(usize, u64)> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [kind, _key, _flags, bytes, cas] = parts[..] else {
        return Err(unexpected(line));
    };
    let len: Option<usize> = bytes.parse().ok().filter(|len| *len <= MAX_VALUE);
    match (kind, len, cas.parse()) {
        ("VALUE", Some(len), Ok(cas)) => Ok((len, cas)),
        _ => Err(unexpected(line)),
    }
}

fn unexpected(line: &str) -> Failure {
    let mut shown: String = line.chars().take(80).collect();
    if shown.len() < line.len() {
        shown.push('…');
    }
    Failure::Protocol(format!("unexpected reply `{shown}`"))
}

/// The configured servers.
#[derive(Debug)]
pub(super) struct Servers(Vec<Server>);

impl Servers {
    /// `addrs` must not be empty.
    pub(super) fn new(addrs: Vec<String>) -> Self {
        Servers(addrs.into_iter().map(Server::new).collect())
    }

    /// The server holding `key`: the one whose SHA-256 of (address, key) is highest.
    fn pick(&self, key: &str) -> &Server {
        if let [only] = &self.0[..] {
            return only;
        }
        let score = |server: &&Server| {
            let digest = Sha256::new()
                .chain_update(server.addr.as_bytes())
                .chain_update([0])
                .chain_update(key.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first)
        };
        // `new` is given at least one address.
        self.0.iter().max_by_key(score).unwrap_or(&self.0[0])
    }

    /// The address `key` is stored at.
    pub(super) fn addr_of(&self, key: &str) -> &str {
        &self.pick(key).addr
    }

    /// `gets key`: the item, or `None`.
    pub(super) async fn gets(&self, key: &str) -> Exchange<Option<Item>> {
        let command = format!("gets {key}\r\n");
        match self
            .pick(key)
            .request(command.as_bytes(), Expect::Item, true)
            .await?
        {
            Reply::Item(item) => Ok(item),
            Reply::Line(line) => Err(unexpected(&line)),
        }
    }

    /// A storage command for `key` with `exptime` (memcached's convention) and `value`.
    pub(super) async fn store(
        &self,
        how: Store,
        key: &str,
        exptime: i64,
        value: &[u8],
    ) -> Exchange<Answer> {
        let len = value.len();
        let header = match how {
            Store::Add => format!("add {key} 0 {exptime} {len}\r\n"),
            Store::Set => format!("set {key} 0 {exptime} {len}\r\n"),
            Store::Cas(cas) => format!("cas {key} 0 {exptime} {len} {cas}\r\n"),
        };
        let mut command = Vec::with_capacity(header.len() + len + 2);
        command.extend_from_slice(header.as_bytes());
        command.extend_from_slice(value);
        command.extend_from_slice(b"\r\n");
        let line = self.line(key, &command, false).await?;
        match (how, line.as_str()) {
            (_, "STORED") => Ok(Answer::Stored),
            (Store::Add, "NOT_STORED") => Ok(Answer::NotStored),
            (Store::Cas(_), "EXISTS") => Ok(Answer::Exists),
            (Store::Cas(_), "NOT_FOUND") => Ok(Answer::NotFound),
            _ => Err(unexpected(&line)),
        }
    }

    /// `delete key`: whether there was an item.
    pub(super) async fn delete(&self, key: &str) -> Exchange<bool> {
        let line = self
            .line(key, format!("delete {key}\r\n").as_bytes(), true)
            .await?;
        match line.as_str() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            _ => Err(unexpected(&line)),
        }
    }

    async fn line(&self, key: &str, command: &[u8], repeatable: bool) -> Exchange<String> {
        match self
            .pick(key)
            .request(command, Expect::Line, repeatable)
            .await?
        {
            Reply::Line(line) => Ok(line),
            Reply::Item(_) => Err(Failure::Protocol("an item where a line was due".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_headers() {
        assert_eq!(parse_value_header("VALUE k 0 5 42").unwrap(), (5, 42));
        for bad in [
            "VALUE k 0 5",
            "VALUE k 0 x 1",
            "VALUE k 0 5 -1",
            "VALUES k 0 5 1",
            "VALUE k 0 99999999999 1",
        ] {
            assert!(parse_value_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let addrs: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:11211")).collect();
        let servers = Servers::new(addrs.clone());
        let reversed = Servers::new(addrs.iter().rev().cloned().collect());
        let fewer = Servers::new(addrs[..2].to_vec());
        let mut per_server = [0usize; 3];
        for n in 0..3_000 {
            let key = format!("sessioner:{n:064x}");
            let addr = servers.addr_of(&key);
            assert_eq!(addr, reversed.addr_of(&key), "the order of servers matters");
            let i = addrs.iter().position(|a| a == addr).unwrap();
            per_server[i] += 1;
            if i < 2 {
                assert_eq!(fewer.addr_of(&key), addr, "a key moved off a kept server");
            }
        }
        assert!(per_server.iter().all(|n| *n > 800), "{per_server:?}");
    }
}
