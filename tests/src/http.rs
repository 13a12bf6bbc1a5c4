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
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

/// The body of a response (headers dropped).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or(response, |(_, b)| b)
}

/// The whole response to `GET path` from `addr` inside `ns`.
pub fn get_in(ns: &NetNs, addr: &str, path: &str) -> Result<String> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    in_netns(ns, move || request("GET", &addr, &path))
}

/// The body of the response to `GET path` from `addr` inside `ns`.
pub fn get(ns: &NetNs, addr: &str, path: &str) -> Result<String> {
    get_in(ns, addr, path).map(|r| body(&r).to_owned())
}
