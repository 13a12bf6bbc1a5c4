//! Plain HTTP/1.1 requests for tests: to the simulator's control endpoint on the host's
//! loopback, and to the agent's endpoints inside a node namespace.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use anyhow::Result;

use crate::netns::{in_netns, NetNs};

/// The whole response (status line, headers, body) to `METHOD path` at `addr`, in this namespace.
pub fn request(method: &str, addr: &str, path: &str) -> Result<String> {
    request_with(method, addr, path, "")
}

/// [`request`] with more header lines (each ending in `\r\n`); `addr` is `host:port` or
/// `unix:PATH`.
pub fn request_with(method: &str, addr: &str, path: &str, headers: &str) -> Result<String> {
    let host = if addr.starts_with("unix:") { "localhost" } else { addr };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    match addr.strip_prefix("unix:") {
        Some(socket) => {
            let mut s = std::os::unix::net::UnixStream::connect(socket)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(head.as_bytes())?;
            s.read_to_string(&mut response)?;
        }
        None => {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(head.as_bytes())?;
            s.read_to_string(&mut response)?;
        }
    }
    Ok(response)
}

/// The body of a response (headers dropped).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or(response, |(_, b)| b)
}

/// The whole response to `GET path` from `addr` inside `ns`.
pub fn get_in(ns: &NetNs, addr: &str, path: &str) -> Result<String> {
    get_in_with(ns, addr, path, "")
}

/// [`get_in`] with more header lines.
pub fn get_in_with(ns: &NetNs, addr: &str, path: &str, headers: &str) -> Result<String> {
    let (addr, path, headers) = (addr.to_owned(), path.to_owned(), headers.to_owned());
    in_netns(ns, move || request_with("GET", &addr, &path, &headers))
}

/// The body of the response to `GET path` from `addr` inside `ns`.
pub fn get(ns: &NetNs, addr: &str, path: &str) -> Result<String> {
    get_in(ns, addr, path).map(|r| body(&r).to_owned())
}
