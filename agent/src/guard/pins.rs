//! Layout of eniguard's pins under bpffs: one directory of our own, one subfolder per kind.
//!
//! ```text
//! /sys/fs/bpf/eniguard/maps/<MAP_NAME_Vn>    maps, versioned by layout
//! /sys/fs/bpf/eniguard/links/<hook>-<iface>  TCX links, re-used by a restarted agent ('.' → ':')
//! ```

use std::path::{Path, PathBuf};

use super::GuardError;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/eniguard";

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Pin of the link that attaches a program of kind `hook` to `iface`.
    pub fn link(&self, iface: &str, hook: &str) -> PathBuf {
        // bpffs refuses names with dots; interface names never contain ':', so this is injective.
        self.root.join("links").join(format!("{hook}-{}", iface.replace('.', ":")))
    }

    /// Creates the directory tree; fails clearly when its filesystem is not bpffs.
    pub fn create(&self) -> Result<(), GuardError> {
        let maps = self.root.join("maps");
        for dir in [&maps, &self.root.join("links")] {
            std::fs::create_dir_all(dir).map_err(|source| GuardError::Bpffs { path: dir.clone(), source })?;
        }
        if !is_bpffs(&maps) {
            return Err(GuardError::NotBpffs(maps));
        }
        Ok(())
    }

    /// Removes every pin and the directories (clean shutdown).
    pub fn remove(&self) -> Result<(), GuardError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GuardError::Bpffs { path: self.root.clone(), source }),
        }
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}
