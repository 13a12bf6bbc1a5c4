//! Violation events from the kernel ring buffer: decoded, named, kept in a bounded ring for the
//! introspection API, and written as one structured log line each.

use std::collections::VecDeque;

use eniguard_common::guard::{ViolationEvent, REASON_NAMES};
use serde::Serialize;

use super::datapath::{addr_of, Names};

/// A violation with names instead of ids.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub timestamp_ns: u64,
    pub namespace: String,
    pub pod: String,
    pub reason: &'static str,
    pub verdict: &'static str,
    pub src: String,
    pub dst: String,
    pub ifindex: u32,
    pub observed_vlan: u32,
    pub expected_vlan: u32,
    pub expected_eni: String,
    pub actual_eni: String,
    pub expected_security_groups: Vec<String>,
    pub actual_security_groups: Vec<String>,
}

/// Decodes one ring-buffer record; `None` if it is not a whole event.
pub fn decode(bytes: &[u8]) -> Option<ViolationEvent> {
    if bytes.len() < std::mem::size_of::<ViolationEvent>() {
        return None;
    }
    // SAFETY: length checked; ViolationEvent is plain data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ViolationEvent>()) })
}

pub fn name(event: &ViolationEvent, names: &Names) -> Violation {
    let (namespace, pod) = names.pods.name(event.pod_id).cloned().unwrap_or_default();
    let eni = |id| names.enis.name(id).cloned().unwrap_or_default();
    let sgs = |id| names.sg_sets.name(id).cloned().unwrap_or_default();
    Violation {
        timestamp_ns: event.timestamp_ns,
        namespace,
        pod,
        reason: REASON_NAMES.get(event.reason as usize).copied().unwrap_or("unknown"),
        verdict: if event.dropped != 0 { "dropped" } else { "passed" },
        src: addr_of(&event.src).to_string(),
        dst: addr_of(&event.dst).to_string(),
        ifindex: event.ifindex,
        observed_vlan: event.observed_vlan,
        expected_vlan: event.expected_vlan,
        expected_eni: eni(event.expected_eni_id),
        actual_eni: eni(event.actual_eni_id),
        expected_security_groups: sgs(event.expected_sg_set_id),
        actual_security_groups: sgs(event.actual_sg_set_id),
    }
}

/// The most recent violations, oldest dropped first.
#[derive(Debug)]
pub struct RecentEvents {
    capacity: usize,
    events: VecDeque<Violation>,
}

impl RecentEvents {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, events: VecDeque::with_capacity(capacity) }
    }

    pub fn push(&mut self, v: Violation) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(v);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.events.iter()
    }
}
