//! The one EC2 change that can leak if the agent dies half-way: creating an ENI and attaching it.
//! Before CreateNetworkInterface the agent notes that a creation is under way, then the new ENI's
//! id, and clears the note once the ENI is attached with DeleteOnTermination. A restarted agent
//! finishes or undoes what the note names (see [`super::startup`]): an attached ENI gets its
//! DeleteOnTermination, an unattached one is deleted, and when the id never came back, this
//! instance's unattached `aws-K8S-` ENIs are. A normal start reads a missing file and makes no
//! call.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The ENI, once EC2 has answered.
    pub eni: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("ENI journal {}: {source}", path.display())]
pub struct JournalError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(run_dir: &Path) -> Self {
        Self { path: run_dir.join("pending-eni.json") }
    }

    fn err(&self, source: impl Into<std::io::Error>) -> JournalError {
        JournalError { path: self.path.clone(), source: source.into() }
    }

    /// Notes `p` durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, p: &Pending) -> Result<(), JournalError> {
        use std::io::Write as _;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec(p).map_err(|e| self.err(e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.err(e))?;
        f.write_all(&body).and_then(|()| f.sync_all()).map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        // The rename is durable only once the directory is.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.err(e))
    }

    /// What a previous run left; a note that cannot be parsed counts as "id unknown".
    pub fn read(&self) -> Option<Pending> {
        let bytes = std::fs::read(&self.path).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    pub fn clear(&self) -> Result<(), JournalError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_clear() {
        let dir = std::env::temp_dir().join(format!("journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let j = Journal::new(&dir);
        assert_eq!(j.read(), None);
        j.write(&Pending::default()).unwrap();
        assert_eq!(j.read(), Some(Pending { eni: None }));
        j.write(&Pending { eni: Some("eni-1".into()) }).unwrap();
        assert_eq!(j.read().unwrap().eni.as_deref(), Some("eni-1"));
        std::fs::write(dir.join("pending-eni.json"), b"{broken").unwrap();
        assert_eq!(j.read(), Some(Pending { eni: None }), "unreadable: the id is unknown");
        j.clear().unwrap();
        j.clear().unwrap();
        assert_eq!(j.read(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
