//! Debian's containerd (CRI plugin + runc) inside a simulated node's network namespace, as a
//! node runs it under the kubelet: all of its state under one directory of the test's (socket,
//! root, state, runc root, the pods' netns mounts), the CRI plugin's CNI directories pointing at
//! what the agent installed, cgroupfs, overlayfs, and two images built here and imported with
//! `ctr` (nothing is pulled): a sandbox image holding a static pause program and a busybox image
//! from `busybox-static`.
//!
//! Stopping it ([`Containerd::stop`], or a drop) kills containerd, then what it leaves behind on
//! purpose (shims, the pods' processes), unmounts what is mounted under its directory, removes
//! the pods' cgroups and the directory: nothing of it stays on the machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::{
    cri::{Cri, PodSpec},
    netns::{sh, NetNs},
    process::Daemon,
};

/// The sandbox ("pause") image's reference.
pub const PAUSE_IMAGE: &str = "localhost/eniguard-test/pause:1";
/// The image the tests' containers run: busybox-static's `/bin/busybox`, with its applets.
pub const BUSYBOX_IMAGE: &str = "localhost/eniguard-test/busybox:1";
/// Debian's CNI plugins; the CRI plugin runs `loopback` for every pod.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
/// The cgroup v1 hierarchies whose directories runc creates for a pod.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One containerd serving CRI on a unix socket under `dir`.
pub struct Containerd {
    /// Where the CRI client's connection lives; [`Containerd::block_on`] runs calls on it.
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub cri: Cri,
    node: NetNs,
    /// cgroupfs parent of every pod this runtime starts (`/<name>`).
    cgroup_parent: String,
}

impl Containerd {
    /// Starts containerd in `node` with its state under `dir`, the CNI plugins in `cni_bin_dir`
    /// (Debian's `loopback` is copied in when missing, as a node's bin dir has it) and the
    /// network configuration in `cni_conf_dir`; imports the two images. Waits until CRI answers.
    pub fn start(node: &NetNs, dir: &Path, cni_bin_dir: &Path, cni_conf_dir: &Path) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let loopback = cni_bin_dir.join("loopback");
        if !loopback.exists() {
            fs::create_dir_all(cni_bin_dir)?;
            fs::copy(Path::new(DEBIAN_CNI_DIR).join("loopback"), &loopback)
                .context("Debian's loopback plugin (containernetworking-plugins)")?;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cri = {
            let _in_rt = rt.enter();
            Cri::connect(&dir.join("containerd.sock"))?
        };
        let mut c = Self {
            rt,
            daemon: None,
            dir: dir.to_owned(),
            socket: dir.join("containerd.sock"),
            cri,
            node: NetNs::existing(node.name()),
            cgroup_parent: format!("/{name}"),
        };
        fs::write(dir.join("config.toml"), c.config(cni_bin_dir, cni_conf_dir))?;
        c.launch()?;
        for (image, archive) in images(&dir.join("images"))? {
            sh(Command::new("ctr")
                .arg("--address")
                .arg(&c.socket)
                .args(["-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs"])
                .arg(&archive))
            .with_context(|| format!("ctr images import {image}"))?;
        }
        Ok(c)
    }

    /// A pod of this runtime (its cgroups under the runtime's parent).
    pub fn pod(&self, namespace: &str, name: &str, uid: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            cgroup_parent: self.cgroup_parent.clone(),
            annotations: Default::default(),
        }
    }

    /// Runs a CRI call (or any future) on the runtime that holds the client's connection.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// containerd's log (its stderr), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn config(&self, cni_bin_dir: &Path, cni_conf_dir: &Path) -> String {
        let d = self.dir.display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[{cri_opt}]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [{cri}.cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            sock = self.socket.display(),
            cri_opt = "plugins.\"io.containerd.internal.v1.opt\"",
            bin = cni_bin_dir.display(),
            conf = cni_conf_dir.display(),
        )
    }

    /// Starts the daemon and waits until CRI answers.
    fn launch(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("containerd.log"))?;
        let mut cmd = self.node.cmd("containerd");
        cmd.arg("--config").arg(self.dir.join("config.toml")).stderr(log);
        self.daemon = Some(Daemon::spawn(&mut cmd)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A fresh client: the lazy channel may have cached a failed dial.
            let cri = {
                let _in_rt = self.rt.enter();
                Cri::connect(&self.socket)?
            };
            match self.rt.block_on(cri.version()) {
                Ok(_) => {
                    self.cri = cri;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("containerd did not answer CRI within 30 s: {e:#}\n{}", self.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops containerd alone (its shims and pods keep running, as on a node whose containerd
    /// restarts), then starts it again with the same configuration and state.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            d.terminate()?;
        }
        self.launch()
    }

    /// Stops everything this runtime started; see the module doc. Fails, after cleaning what it
    /// could, when something stayed behind.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            let _ = d.terminate();
        }
        // Shims name the socket they serve; the pods' processes are in the pods' cgroups.
        let marker = self.socket.display().to_string();
        for _ in 0..50 {
            let mut pids = processes_with_arg(&marker);
            pids.extend(cgroup_pids(&self.cgroup_parent));
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) of processes this runtime started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut mounts = mounts_under(&self.dir);
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in &mounts {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes())?;
            // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        remove_cgroups(&self.cgroup_parent);
        let left = (
            processes_with_arg(&marker),
            cgroup_pids(&self.cgroup_parent),
            mounts_under(&self.dir),
            cgroup_dirs(&self.cgroup_parent),
        );
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        ensure!(
            left.0.is_empty() && left.1.is_empty() && left.2.is_empty() && left.3.is_empty(),
            "containerd left behind: shims {:?}, pod processes {:?}, mounts {:?}, cgroups {:?}",
            left.0,
            left.1,
            left.2,
            left.3
        );
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.teardown();
        }
    }
}

/// Processes whose command line has `arg` as one of its arguments.
fn processes_with_arg(arg: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The cgroup v1 hierarchies (or the v2 root) that hold `parent`.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut dirs = Vec::new();
    for entry in fs::read_dir(CGROUP_ROOT).into_iter().flatten().flatten() {
        let d = entry.path().join(rel);
        if d.is_dir() {
            dirs.push(d);
        }
    }
    let v2 = Path::new(CGROUP_ROOT).join(rel);
    if v2.join("cgroup.procs").exists() {
        dirs.push(v2);
    }
    dirs
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), out);
        }
    }
}

fn cgroup_pids(parent: &str) -> Vec<i32> {
    let mut all = Vec::new();
    for d in cgroup_dirs(parent) {
        walk(&d, &mut all);
    }
    let mut pids: Vec<i32> = all
        .iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn remove_cgroups(parent: &str) {
    for d in cgroup_dirs(parent) {
        let mut all = Vec::new();
        walk(&d, &mut all);
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in all {
            let _ = fs::remove_dir(p);
        }
    }
}

/// Mount points at or under `dir` (from this process's mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The sandbox and busybox images as OCI archives under `dir`, built once per directory.
fn images(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    fs::create_dir_all(dir)?;
    let pause = dir.join("pause");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/pause.rs");
    sh(Command::new("rustc")
        .args(["-C", "target-feature=+crt-static", "-C", "opt-level=s", "-C", "strip=symbols", "-o"])
        .arg(&pause)
        .arg(&source))
    .context("building the static pause program")?;
    let busybox = Path::new("/bin/busybox");
    ensure!(busybox.exists(), "no /bin/busybox: install busybox-static (`cargo xtask setup`)");
    let pause_root = rootfs(dir, "pause", &[(&pause, "pause")])?;
    let busybox_root = rootfs(dir, "busybox", &[(busybox, "bin/busybox")])?;
    // Its applets as links, as busybox images have them (`sleep`, `ping`, `ip`, ... on PATH).
    for applet in sh(Command::new(busybox).arg("--list"))?.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", busybox_root.join("bin").join(applet))?;
    }
    Ok(vec![
        (PAUSE_IMAGE, oci_archive(dir, PAUSE_IMAGE, &pause_root, &["/pause"])?),
        (BUSYBOX_IMAGE, oci_archive(dir, BUSYBOX_IMAGE, &busybox_root, &["/bin/sh"])?),
    ])
}

/// An image's root directory under `dir` holding `files` (source, path in the image) and the
/// directories a runtime mounts over.
fn rootfs(dir: &Path, name: &str, files: &[(&Path, &str)]) -> Result<PathBuf> {
    let root = dir.join(format!("{name}.rootfs"));
    let _ = fs::remove_dir_all(&root);
    for (source, target) in files {
        let dest = root.join(target);
        fs::create_dir_all(dest.parent().context("image path")?)?;
        fs::copy(source, &dest).with_context(|| format!("copying {}", source.display()))?;
    }
    for d in ["dev", "proc", "sys", "etc", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    Ok(root)
}

/// Writes `bytes` as a blob of an OCI layout rooted at `layout`; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<serde_json::Value> {
    let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    fs::create_dir_all(path.parent().context("blob dir")?)?;
    fs::write(path, bytes)?;
    Ok(serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-layer OCI image archive named `reference` holding `root`, whose entrypoint is
/// `entrypoint` and PATH `/bin`.
fn oci_archive(dir: &Path, reference: &str, root: &Path, entrypoint: &[&str]) -> Result<PathBuf> {
    let name = reference.rsplit('/').next().unwrap_or(reference).replace(':', "-");
    let layout = dir.join(format!("{name}.oci"));
    let _ = fs::remove_dir_all(&layout);
    let layer = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .stderr(Stdio::inherit())
        .output()
        .context("tar")?;
    ensure!(layer.status.success(), "tar of {} failed", root.display());
    let layer_desc = blob(&layout, "application/vnd.oci.image.layer.v1.tar", &layer.stdout)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let config_desc =
        blob(&layout, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc =
        blob(&layout, "application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes())?;
    manifest_desc["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    manifest_desc["annotations"] = serde_json::json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": reference.rsplit(':').next().unwrap_or("latest"),
    });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = dir.join(format!("{name}.tar"));
    sh(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).args([
        "oci-layout",
        "index.json",
        "blobs",
    ]))?;
    let _ = fs::remove_dir_all(root);
    Ok(archive)
}
