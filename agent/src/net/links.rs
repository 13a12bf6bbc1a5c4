//! Link notifications (RTM_NEWLINK / RTM_DELLINK on RTNLGRP_LINK) for this network namespace,
//! through rtnetlink: the guard re-attaches when an interface it watches is created, re-created or
//! removed.

use futures::{channel::mpsc::UnboundedReceiver, StreamExt as _};
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{link::LinkAttribute, link::LinkMessage, RouteNetlinkMessage},
    sys::{AsyncSocket as _, SocketAddr},
};

#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("netlink link watch: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink link watch: the connection closed")]
    Closed,
}

/// What happened to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (state, name, ...). Index 0 and no name: notifications were lost
    /// (the socket overran); re-resolve everything.
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

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

pub struct LinkWatch {
    messages: Messages,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LinkWatch {
    /// Subscribes to link notifications. Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, LinkWatchError> {
        let (mut connection, _handle, messages) = rtnetlink::new_connection()?;
        connection.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(Self { messages, connection: tokio::spawn(connection) })
    }

    /// The next batch of link events (at least one): waits for one, then takes every
    /// notification already queued, so that a burst is one batch and nothing piles up.
    pub async fn next(&mut self) -> Result<Vec<LinkEvent>, LinkWatchError> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            let (msg, _) = self.messages.next().await.ok_or(LinkWatchError::Closed)?;
            batch.extend(event(msg.payload));
            self.take_queued(&mut batch);
        }
        Ok(batch)
    }

    /// Like [`Self::next`], then waits `settle` (a veth pair is created, renamed and set up in
    /// a few notifications) and takes what came meanwhile too.
    pub async fn next_settled(
        &mut self,
        settle: std::time::Duration,
    ) -> Result<Vec<LinkEvent>, LinkWatchError> {
        let mut batch = self.next().await?;
        tokio::time::sleep(settle).await;
        self.take_queued(&mut batch);
        Ok(batch)
    }

    fn take_queued(&mut self, batch: &mut Vec<LinkEvent>) {
        while let Ok((msg, _)) = self.messages.try_recv() {
            batch.extend(event(msg.payload));
        }
    }
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
}

/// The event a notification carries; anything else is skipped.
pub fn event(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            Some(LinkEvent::New { ifindex: l.header.index, name: name_of(&l)? })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
            Some(LinkEvent::Removed { ifindex: l.header.index, name: name_of(&l)? })
        }
        NetlinkPayload::Overrun(_) => Some(LinkEvent::New { ifindex: 0, name: String::new() }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    #[test]
    fn new_removed_and_overrun() {
        let new = NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link(7, "eniabc")));
        assert_eq!(event(new), Some(LinkEvent::New { ifindex: 7, name: "eniabc".into() }));
        let del = NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link(3, "eth1")));
        assert_eq!(event(del), Some(LinkEvent::Removed { ifindex: 3, name: "eth1".into() }));
        assert_eq!(
            event(NetlinkPayload::Overrun(Vec::new())),
            Some(LinkEvent::New { ifindex: 0, name: String::new() })
        );
        let nameless = NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        assert_eq!(event(nameless), None);
    }
}
