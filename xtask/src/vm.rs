//! `cargo xtask vm-test`: the privileged datapath tests on other kernels, under qemu.
//!
//! Production nodes run Amazon Linux 2 (5.10) and AL2023 (6.1, 6.12); this machine runs 6.18
//! without 802.1Q. For each kernel line a Debian kernel package is downloaded once (private apt
//! configuration built from this machine's own Debian sources, so nothing is hard-coded), its
//! modules resolved with modprobe, and a small initramfs built: busybox, the host's ip, tc,
//! bpftool, nsenter and ping with their libraries, the agent and the test harness. `/init` loads
//! the modules, runs the harness and prints its summary line, which the host reads off the serial
//! console. The README's Development section (`cargo xtask vm-test`) says which kernels and why.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{output_of, run, which},
    counts::{parse_summary, Counts},
};

/// A kernel line: a preferred package (pinned ABI) and the pattern of its replacements.
struct Kernel {
    label: &'static str,
    suite: &'static str,
    preferred: &'static str,
    /// Newest package matching `linux-image-{prefix}*-cloud-amd64` when the preferred one is gone.
    prefix: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        label: "5.10",
        suite: "bullseye-security",
        preferred: "linux-image-5.10.0-46-cloud-amd64",
        prefix: "5.10.0-",
    },
    Kernel {
        label: "6.1",
        suite: "bookworm-security",
        preferred: "linux-image-6.1.0-56-cloud-amd64",
        prefix: "6.1.0-",
    },
    Kernel {
        label: "6.12",
        suite: "trixie",
        preferred: "linux-image-6.12.117+deb13-cloud-amd64",
        prefix: "6.12.",
    },
];

/// cls_u32: the foreign filter of `guard_apply_is_all_or_nothing`.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "cls_u32", "8021q"];
const HOST_TOOLS: &[&str] = &["ip", "tc", "bpftool", "nsenter", "ping"];
/// Privileged tests worth running on every kernel (the datapath; TCX ones skip themselves).
pub const VM_TESTS: &[&str] = &["tc_counter", "guard_", "cni_branch"];
const VM_TIMEOUT: Duration = Duration::from_secs(900);

/// Whether this machine can run the matrix; `Err(reason)` otherwise.
pub fn available() -> std::result::Result<(), String> {
    for tool in ["qemu-system-x86_64", "apt-get", "dpkg", "modprobe", "depmod", "cpio", "busybox"] {
        if which(tool).is_none() {
            return Err(format!("{tool} is not installed (cargo xtask setup installs it)"));
        }
    }
    Ok(())
}

/// Boots each kernel with the harness built at `harness` and the agent at `agent`; returns the
/// counts over all kernels.
pub fn run_matrix(agent: &Path, harness: &Path, filters: &[&str]) -> Result<Counts> {
    let cache = cache_dir()?;
    let mut total = Counts::default();
    for kernel in KERNELS {
        let started = Instant::now();
        let result = (|| -> Result<Counts> {
            let (vmlinuz, modules, kver) = fetch_kernel(&cache, kernel)?;
            let initrd = build_initramfs(&cache, kernel, &modules, &kver, agent, harness, filters)?;
            match boot(&vmlinuz, &initrd, kernel) {
                // The guest kernel itself died (seen once on 6.12 under KVM: an int3 trap while
                // it patched a static branch in the receive path). That is the VM's failure, not
                // a test result: boot it once more, saying so; a second panic fails the kernel.
                Err(e) if kernel_panicked(&initrd) => {
                    let kept = initrd.with_extension("panic.log");
                    fs::copy(initrd.with_extension("console.log"), &kept)?;
                    println!(
                        "vm {}: the guest kernel panicked ({e:#}; console kept at {}); booting it once more",
                        kernel.label,
                        kept.display()
                    );
                    boot(&vmlinuz, &initrd, kernel)
                }
                other => other,
            }
        })();
        match result {
            Ok(c) => {
                println!(
                    "vm {}: {} passed, {} failed, {} skipped ({:.0} s)",
                    kernel.label,
                    c.passed,
                    c.failed,
                    c.skipped,
                    started.elapsed().as_secs_f64()
                );
                total.add(c);
            }
            Err(e) => {
                println!("vm {}: FAILED to run: {e:#}", kernel.label);
                total.failed += 1;
            }
        }
    }
    Ok(total)
}

fn cache_dir() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("vm");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The Debian archive and security URIs this machine's apt already uses.
fn debian_uris() -> Result<(String, String)> {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sources") || name.ends_with(".list") {
                text.push('\n');
                text.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    // deb822 `URIs:` fields and one-line `deb [opts] URI suite` entries; comments ignored.
    let mut uris: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("URIs:") {
            uris.extend(rest.split_whitespace());
        } else if let Some(rest) = line.strip_prefix("deb ") {
            uris.extend(rest.split_whitespace().find(|w| w.contains("://")));
        }
    }
    uris.retain(|u| u.contains("debian"));
    let security =
        uris.iter().find(|u| u.contains("security")).context("no Debian security URI in apt sources")?;
    let main =
        uris.iter().find(|u| !u.contains("security")).context("no Debian archive URI in apt sources")?;
    Ok((main.trim_end_matches('/').to_owned(), security.trim_end_matches('/').to_owned()))
}

fn apt(cache: &Path) -> Result<Command> {
    let root = cache.join("apt");
    let has_lists = fs::read_dir(root.join("lists"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with("Packages")))
        .unwrap_or(false);
    if !has_lists {
        for d in ["lists/partial", "cache/archives/partial", "state"] {
            fs::create_dir_all(root.join(d))?;
        }
        let (main, security) = debian_uris()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources: String = KERNELS
            .iter()
            .map(|k| {
                let uri = if k.suite.ends_with("-security") { &security } else { &main };
                format!("deb [signed-by={keyring}] {uri} {} main\n", k.suite)
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        fs::write(root.join("sources.list"), sources)?;
        let r = root.display();
        fs::write(
            root.join("apt.conf"),
            format!(
                "Dir::State \"{r}/state\";\nDir::State::Lists \"{r}/lists\";\nDir::Cache \"{r}/cache\";\n\
                 Dir::Etc::SourceList \"{r}/sources.list\";\nDir::Etc::SourceParts \"/nonexistent\";\n\
                 Dir::State::status \"{r}/state/status\";\nAPT::Architecture \"amd64\";\n"
            ),
        )?;
        fs::write(root.join("state/status"), "")?;
        let mut update = Command::new("apt-get");
        update.env("APT_CONFIG", root.join("apt.conf")).args(["-qq", "update"]);
        run(&mut update).context("apt-get update with the private configuration")?;
    }
    let mut cmd = Command::new("apt-get");
    cmd.env("APT_CONFIG", root.join("apt.conf"));
    Ok(cmd)
}

/// Downloads (once) and unpacks the kernel; returns vmlinuz, the unpacked root and the version.
fn fetch_kernel(cache: &Path, k: &Kernel) -> Result<(PathBuf, PathBuf, String)> {
    let root = cache.join(format!("kernel-{}", k.label));
    if let Some(found) = unpacked(&root)? {
        return Ok(found);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let mut names = vec![k.preferred.to_owned()];
    let pattern = format!("^linux-image-{}.*-cloud-amd64$", regex_escape(k.prefix));
    apt(cache)?; // writes the private configuration and updates its lists on first use
    let listed = output_of(Command::new("apt-cache").env("APT_CONFIG", cache.join("apt/apt.conf")).args([
        "search",
        "--names-only",
        &pattern,
    ]))
    .unwrap_or_default();
    let mut others: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.ends_with("-dbg") && !n.contains("unsigned"))
        .map(str::to_owned)
        .collect();
    others.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
    names.extend(others);
    let mut downloaded = None;
    for name in &names {
        let mut dl = apt(cache)?;
        dl.current_dir(&debs).args(["-qq", "download", name]).stdout(Stdio::null()).stderr(Stdio::null());
        if dl.status().map(|s| s.success()).unwrap_or(false) {
            downloaded = Some(name.clone());
            break;
        }
    }
    let name = downloaded.with_context(|| format!("no kernel package for {} in {}", k.label, k.suite))?;
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_"))))
        .context("downloaded .deb not found")?;
    let sha = output_of(Command::new("sha256sum").arg(&deb))?;
    println!("vm {}: {} sha256 {}", k.label, deb.display(), sha.split_whitespace().next().unwrap_or(""));
    fs::create_dir_all(&root)?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    unpacked(&root)?.context("the kernel package has no /boot/vmlinuz-*")
}

fn unpacked(root: &Path) -> Result<Option<(PathBuf, PathBuf, String)>> {
    let boot = root.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else { return Ok(None) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(kver) = name.strip_prefix("vmlinuz-") {
            return Ok(Some((e.path(), root.to_path_buf(), kver.to_owned())));
        }
    }
    Ok(None)
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.").replace('+', "\\+")
}

/// Orders package names by the numbers in them (newest ABI first after a reverse sort).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).collect()
}

fn build_initramfs(
    cache: &Path,
    k: &Kernel,
    kroot: &Path,
    kver: &str,
    agent: &Path,
    harness: &Path,
    filters: &[&str],
) -> Result<PathBuf> {
    let dir = cache.join(format!("initramfs-{}", k.label));
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "sbin", "lib/modules", "proc", "sys", "dev", "run", "tmp", "etc", "var/run"] {
        fs::create_dir_all(dir.join(d))?;
    }
    // busybox for the shell and the basics; its applets as symlinks.
    let busybox = which("busybox").context("busybox")?;
    fs::copy(&busybox, dir.join("bin/busybox"))?;
    for applet in [
        "sh", "mount", "insmod", "poweroff", "sysctl", "cat", "sleep", "mkdir", "echo", "ls", "ln", "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    // Host tools and our binaries, with their shared libraries.
    let mut binaries: Vec<(PathBuf, String)> = Vec::new();
    for tool in HOST_TOOLS {
        let path = which(tool).with_context(|| format!("{tool} is not installed"))?;
        binaries.push((path, format!("sbin/{tool}")));
    }
    binaries.push((agent.to_path_buf(), "bin/eniguard".into()));
    binaries.push((harness.to_path_buf(), "bin/privileged".into()));
    let mut libs = BTreeSet::new();
    for (src, dst) in &binaries {
        fs::copy(src, dir.join(dst)).with_context(|| format!("copying {}", src.display()))?;
        for lib in shared_libraries(src)? {
            libs.insert(lib);
        }
    }
    for lib in libs {
        let dst = dir.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(dst.parent().context("library without parent")?)?;
        fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
    }
    // Kernel modules in dependency order, decompressed.
    prepare_modules(kroot, kver)?;
    let mut insmods = Vec::new();
    for module in MODULES {
        let deps = output_of(Command::new("modprobe").arg("-d").arg(kroot).args([
            "-S",
            kver,
            "--show-depends",
            module,
        ]))
        .with_context(|| format!("resolving module {module} for {kver}"))?;
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ").map(|l| l.split_whitespace().next().unwrap_or(""))
            else {
                continue; // builtin
            };
            // modprobe -d prints absolute paths under the root it was given.
            let src = PathBuf::from(path);
            let base = src.file_name().context("module without name")?.to_string_lossy().into_owned();
            let name = base.trim_end_matches(".xz").trim_end_matches(".zst").to_owned();
            let dst = dir.join("lib/modules").join(&name);
            if insmods.contains(&name) {
                continue;
            }
            if base.ends_with(".xz") {
                fs::write(&dst, output_bytes(Command::new("xz").arg("-dc").arg(&src))?)?;
            } else if base.ends_with(".zst") {
                fs::write(&dst, output_bytes(Command::new("zstd").arg("-dcq").arg(&src))?)?;
            } else {
                fs::copy(&src, &dst)?;
            }
            insmods.push(name);
        }
    }
    let insmod_lines: String =
        insmods.iter().map(|m| format!("insmod /lib/modules/{m} 2>/dev/null\n")).collect();
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /run\nmount -t tmpfs tmp /tmp\nmkdir -p /sys/fs/bpf\n\
         mount -t bpf bpf /sys/fs/bpf\nmount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null\n\
         ln -s /bin/busybox /sbin/sysctl 2>/dev/null\n\
         {insmod_lines}\
         export PATH=/sbin:/bin ENIGUARD_BIN=/bin/eniguard RUST_BACKTRACE=0\n\
         echo VM-START $(cat /proc/sys/kernel/osrelease)\n\
         /bin/privileged {filters} 2>&1\n\
         echo VM-END\npoweroff -f\n",
        filters = filters.join(" ")
    );
    let init_path = dir.join("init");
    fs::write(&init_path, init)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let initrd = cache.join(format!("initramfs-{}.cpio.gz", k.label));
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        dir.display(),
        initrd.display()
    )))?;
    Ok(initrd)
}

fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// Packages ship modules without their index (made by depmod on install), and trixie's under
/// /usr/lib: give modprobe the layout it expects.
fn prepare_modules(kroot: &Path, kver: &str) -> Result<()> {
    if !kroot.join("lib/modules").exists() && kroot.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", kroot.join("lib"))?;
    }
    if !kroot.join("lib/modules").join(kver).join("modules.dep").exists() {
        run(Command::new("depmod").arg("-b").arg(kroot).arg(kver)).context("depmod")?;
    }
    Ok(())
}

/// Libraries `ldd` lists for `binary` (absolute paths, the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect())
}

fn kvm_usable() -> bool {
    let writable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    writable && (cpuinfo.contains(" vmx") || cpuinfo.contains(" svm"))
}

/// Whether the last boot's console (next to `initrd`) shows a kernel panic.
fn kernel_panicked(initrd: &Path) -> bool {
    fs::read_to_string(initrd.with_extension("console.log")).is_ok_and(|c| c.contains("Kernel panic"))
}

fn boot(vmlinuz: &Path, initrd: &Path, k: &Kernel) -> Result<Counts> {
    let mut cmd = Command::new("timeout");
    cmd.arg(VM_TIMEOUT.as_secs().to_string()).arg("qemu-system-x86_64");
    if kvm_usable() {
        cmd.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    cmd.args(["-m", "1G", "-smp", "2", "-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio"])
        .args(["-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"]);
    let out = cmd.stdin(Stdio::null()).output().context("starting qemu")?;
    let console = String::from_utf8_lossy(&out.stdout);
    let log = initrd.with_extension("console.log");
    fs::write(&log, console.as_bytes())?;
    let mut inside = false;
    let mut counts = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        // The console may prefix the first line with terminal escapes.
        if let Some((_, release)) = line.split_once("VM-START ") {
            inside = true;
            println!("vm {}: booted {release}", k.label);
            continue;
        }
        if line == "VM-END" {
            break;
        }
        if inside && (line.starts_with("test ") || line.starts_with("    ")) {
            println!("vm {}: {line}", k.label);
        }
        if let Some(c) = parse_summary(line) {
            counts = Some(c);
        }
    }
    counts.with_context(|| format!("no test summary on the console (log: {})", log.display()))
}
