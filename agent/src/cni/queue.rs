//! DELs the agent could not hear (it was down, restarting or still starting): the plugin tears
//! the host side down itself, returns success (the kubelet may never retry a DEL, upstream
//! #2350) and leaves the release here, `<run dir>/del-queue/<key hash>.json`, for the agent to do
//! once it is ready and on every pod-GC scan after (Cilium's deletion queue works the same way).
//! A queued DEL releases only an allocation made before it was queued: a retried ADD of the same
//! key after it keeps its address. At most [`MAX_QUEUED`] entries: past that the DEL fails and the
//! kubelet retries it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use super::api::DelRequest;

pub const QUEUE_DIR: &str = "del-queue";
pub const MAX_QUEUED: usize = 256;

/// One queued DEL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub request: DelRequest,
    /// Unix nanoseconds when the plugin queued it.
    pub queued_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the DEL queue {0} is full ({MAX_QUEUED} entries): the agent has been down too long")]
    Full(PathBuf),
    #[error("the DEL queue {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The queue beside the agent's socket.
pub fn dir_of(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/")).join(QUEUE_DIR)
}

fn file_name(r: &DelRequest) -> String {
    let digest = Sha1::digest(format!("{}\n{}\n{}", r.network_name, r.container_id, r.if_name).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

/// Queues `request` (written to a temporary file and renamed: the agent never reads half).
pub fn enqueue(dir: &Path, request: &DelRequest, queued_at: u64) -> Result<PathBuf, QueueError> {
    let io = |source| QueueError::Io { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(file_name(request));
    if !path.exists() && pending(dir).len() >= MAX_QUEUED {
        return Err(QueueError::Full(dir.to_owned()));
    }
    let body = serde_json::to_vec(&Queued { request: request.clone(), queued_at }).unwrap_or_default();
    let tmp = dir.join(format!(".{}.tmp", file_name(request)));
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// Every queued DEL with its file; unreadable entries are skipped (and left for a person).
pub fn pending(dir: &Path) -> Vec<(PathBuf, Queued)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Queued)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let q = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, q))
        })
        .collect();
    out.sort_by_key(|(_, q)| q.queued_at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_dels_round_trip_and_the_queue_is_bounded() {
        let dir = std::env::temp_dir().join(format!("eniguard-queue-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let req = |cid: &str| DelRequest {
            client_version: "x".into(),
            network_name: "aws-cni".into(),
            container_id: cid.into(),
            if_name: "eth0".into(),
            pod_namespace: None,
            pod_name: None,
        };
        enqueue(&dir, &req("a"), 2).unwrap();
        enqueue(&dir, &req("b"), 1).unwrap();
        enqueue(&dir, &req("a"), 3).unwrap(); // the same key: one entry, the newer time
        let got = pending(&dir);
        assert_eq!(
            got.iter().map(|(_, q)| (q.request.container_id.as_str(), q.queued_at)).collect::<Vec<_>>(),
            [("b", 1), ("a", 3)]
        );
        for i in 0..MAX_QUEUED - 2 {
            enqueue(&dir, &req(&format!("c{i}")), 9).unwrap();
        }
        assert!(matches!(enqueue(&dir, &req("over"), 9), Err(QueueError::Full(_))));
        assert!(enqueue(&dir, &req("a"), 10).is_ok(), "an entry already queued can be rewritten");
        assert_eq!(dir_of(Path::new("/run/eniguard/eniguard.sock")), Path::new("/run/eniguard/del-queue"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
