//! Link notifications (RTM_NEWLINK / RTM_DELLINK on RTNLGRP_LINK) for this network namespace:
//! the guard re-attaches when an interface it watches is created, re-created or removed.

use std::{io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

use tokio::io::{unix::AsyncFd, Interest};

#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("netlink link watch: {0}")]
    Io(#[from] io::Error),
}

/// What happened to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (state, name, ...).
    New {
        ifindex: u32,
        name: String,
    },
    Removed {
        ifindex: u32,
        name: String,
    },
}

impl LinkEvent {
    pub fn name(&self) -> &str {
        match self {
            Self::New { name, .. } | Self::Removed { name, .. } => name,
        }
    }
}

pub struct LinkWatch {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTMGRP_LINK: u32 = 1;
const IFLA_IFNAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

impl LinkWatch {
    /// Subscribes to link notifications. Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, LinkWatchError> {
        // SAFETY: plain socket syscalls; the fd is owned right after creation.
        let fd = unsafe {
            let raw = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error().into());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = RTMGRP_LINK;
            let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            if libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), len) != 0 {
                return Err(io::Error::last_os_error().into());
            }
            fd
        };
        // SAFETY: the OwnedFd stays open, and the same fd, for as long as the AsyncFd owns it.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { fd, buf: vec![0; 64 * 1024] })
    }

    /// The next batch of link events (at least one).
    pub async fn next(&mut self) -> Result<Vec<LinkEvent>, LinkWatchError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let fd = guard.get_inner().as_raw_fd();
            // SAFETY: reading into a buffer we own, within its length.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                // ENOBUFS: notifications were lost; callers re-resolve everything anyway.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    return Ok(vec![LinkEvent::New { ifindex: 0, name: String::new() }]);
                }
                return Err(e.into());
            }
            let events = parse(&self.buf[..n as usize]);
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// Parses a netlink datagram of link messages; anything else or malformed is skipped.
pub fn parse(mut data: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        let msg = &data[NLMSG_HDRLEN..len];
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK) && msg.len() >= IFINFOMSG_LEN {
            let ifindex = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]) as u32;
            if let Some(name) = ifname(&msg[IFINFOMSG_LEN..]) {
                events.push(if kind == RTM_NEWLINK {
                    LinkEvent::New { ifindex, name }
                } else {
                    LinkEvent::Removed { ifindex, name }
                });
            }
        }
        data = &data[align4(len).min(data.len())..];
    }
    events
}

fn ifname(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == IFLA_IFNAME {
            let value = &attrs[4..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return String::from_utf8(value[..end].to_vec()).ok();
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, ifindex: i32, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name_len = name.len() + 1;
        attr.extend_from_slice(&((4 + name_len) as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut ifi = vec![0u8; IFINFOMSG_LEN];
        ifi[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let len = NLMSG_HDRLEN + ifi.len() + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(ifi);
        m.extend(attr);
        m
    }

    #[test]
    fn parses_new_and_removed_links_in_one_datagram() {
        let mut d = message(RTM_NEWLINK, 7, "eniabc");
        d.extend(message(RTM_DELLINK, 3, "eth1"));
        d.extend(message(24, 1, "ignored")); // RTM_NEWROUTE
        assert_eq!(
            parse(&d),
            vec![
                LinkEvent::New { ifindex: 7, name: "eniabc".into() },
                LinkEvent::Removed { ifindex: 3, name: "eth1".into() }
            ]
        );
    }

    #[test]
    fn malformed_input_yields_nothing() {
        assert!(parse(&[1, 2, 3]).is_empty());
        let mut d = message(RTM_NEWLINK, 7, "eniabc");
        d[0] = 200; // length beyond the datagram
        assert!(parse(&d).is_empty());
    }
}
