//! A plain HTTP GET from inside a network namespace (the agent serves metrics there in tests).

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use anyhow::Result;

use crate::netns::{in_netns, NetNs};

/// The body of the response to `GET path` from `addr` inside `ns` (headers dropped).
pub fn get(ns: &NetNs, addr: &str, path: &str) -> Result<String> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or(response))
    })
}
