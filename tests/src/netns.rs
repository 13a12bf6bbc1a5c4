//! Named network namespaces that delete themselves (and every link in them) when dropped.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Runs a command and returns its stdout, failing with the command line and stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Deleted on drop only when this value created it.
    owned: bool,
}

impl NetNs {
    /// Creates `name`, replacing a leftover namespace of the same name from a crashed run.
    pub fn create(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_owned(), owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on a namespace someone else owns (not deleted on drop).
    pub fn existing(name: &str) -> Self {
        Self { name: name.to_owned(), owned: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace. nsenter (not `ip netns exec`) keeps
    /// the host's /sys, so the program can pin under /sys/fs/bpf.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg(program);
        cmd
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        sh(self.cmd(program).args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(|_| ())
    }

    /// `ip -j link show dev IFACE`, the link's object.
    pub fn link(&self, iface: &str) -> Result<serde_json::Value> {
        let out = self.ip(&["-j", "link", "show", "dev", iface])?;
        let mut v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0].take())
    }

    pub fn mac(&self, iface: &str) -> Result<String> {
        self.link(iface)?["address"].as_str().map(str::to_owned).context("no MAC address in `ip -j link`")
    }

    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let index = self.link(iface)?["ifindex"].as_u64().context("no ifindex in `ip -j link`")?;
        Ok(u32::try_from(index)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
        }
    }
}

/// A veth pair with one end in each namespace, IPv4-addressed, IPv6 off (so that no router
/// solicitations or MLD reports add packets a test did not send), static neighbours (no ARP).
pub struct Link<'a> {
    pub ns: &'a NetNs,
    pub name: String,
    pub addr: String,
}

pub fn veth_pair<'a>(a: Link<'a>, b: Link<'a>, prefix_len: u8) -> Result<()> {
    sh(Command::new("ip").args([
        "-n",
        a.ns.name(),
        "link",
        "add",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        &b.name,
        "netns",
        b.ns.name(),
    ]))?;
    for l in [&a, &b] {
        l.ns.sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", l.name), "1")?;
        l.ns.ip(&["addr", "add", &format!("{}/{prefix_len}", l.addr), "dev", &l.name])?;
        l.ns.ip(&["link", "set", &l.name, "up"])?;
    }
    let (mac_a, mac_b) = (a.ns.mac(&a.name)?, b.ns.mac(&b.name)?);
    a.ns.ip(&["neigh", "replace", &b.addr, "lladdr", &mac_b, "dev", &a.name, "nud", "permanent"])?;
    b.ns.ip(&["neigh", "replace", &a.addr, "lladdr", &mac_a, "dev", &b.name, "nud", "permanent"])?;
    Ok(())
}

/// Runs `f` on a thread that has entered `ns` (setns affects only the calling thread).
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", ns.name()))?
}

/// Listens on 127.0.0.1 inside `ns` and relays every connection to `target` (in the caller's
/// namespace): how a process in a node namespace reaches the simulator's APIs on the host's
/// loopback, as an instance reaches IMDS and the regional endpoints. Returns the address inside
/// `ns` and the relay task.
pub async fn relay_into(
    ns: &NetNs,
    target: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let std_listener = in_netns(ns, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let addr = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((addr, task))
}
