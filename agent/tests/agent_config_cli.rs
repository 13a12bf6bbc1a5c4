//! `eniguard agent --print-config`: the configuration in effect, from upstream's variables; a bad
//! value stops the agent with the variable, the value and what was expected.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::process::Command;

fn agent(vars: &[(&str, &str)]) -> (i32, String, String) {
    agent_with(vars, &[])
}

fn agent_with(vars: &[(&str, &str)], flags: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eniguard"))
        .env_clear()
        .envs(vars.iter().copied())
        .args(["agent", "--print-config"])
        .args(flags)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_every_variable_with_the_value_in_effect() {
    let (code, out, err) = agent(&[("WARM_IP_TARGET", "5"), ("ENABLE_PREFIX_DELEGATION", "true")]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Every variable, then the five host paths.
    assert_eq!(lines.len(), eniguard::config::VARIABLES.len() + 5, "{out}");
    for want in [
        "WARM_IP_TARGET=5",
        "ENABLE_PREFIX_DELEGATION=true",
        "WARM_ENI_TARGET=1",
        "AWS_VPC_K8S_CNI_BACKING_STORE=/var/run/aws-node/ipam.json",
        "ENIGUARD_GUARD_MODE=monitor",
    ] {
        assert!(lines.contains(&want), "missing {want}:\n{out}");
    }
}

#[test]
fn a_bad_value_exits_non_zero_naming_it() {
    let (code, out, err) = agent(&[("WARM_ENI_TARGET", "lots")]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("WARM_ENI_TARGET=`lots`: expected an integer"), "{err}");
}

#[test]
fn host_paths_have_upstream_like_defaults_and_flags_override_them() {
    let (code, out, err) = agent(&[]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "--cni-conf-dir=/etc/cni/net.d",
        "--cni-bin-dir=/opt/cni/bin",
        "--run-dir=/run/eniguard",
        "--pin-dir=/sys/fs/bpf/eniguard",
        "--aws-node-run-dir=/var/run/aws-node",
    ] {
        assert!(out.lines().any(|l| l == want), "missing {want}:\n{out}");
    }
    let (code, out, err) =
        agent_with(&[], &["--run-dir", "/tmp/node1/run", "--pin-dir", "/sys/fs/bpf/node1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l == "--run-dir=/tmp/node1/run") && out.contains("--pin-dir=/sys/fs/bpf/node1"),
        "{out}"
    );
    // Upstream's HOST_CNI_BIN_PATH and HOST_CNI_CONFDIR_PATH when the flags are not given; the
    // flags win when both are.
    let upstream =
        [("HOST_CNI_BIN_PATH", "/host/opt/cni/bin"), ("HOST_CNI_CONFDIR_PATH", "/host/etc/cni/net.d")];
    let (code, out, err) = agent(&upstream);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "--cni-bin-dir=/host/opt/cni/bin"), "{out}");
    assert!(out.lines().any(|l| l == "--cni-conf-dir=/host/etc/cni/net.d"), "{out}");
    let (code, out, err) = agent_with(&upstream, &["--cni-bin-dir", "/opt/cni/bin"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "--cni-bin-dir=/opt/cni/bin"), "{out}");
    assert!(out.lines().any(|l| l == "--cni-conf-dir=/host/etc/cni/net.d"), "{out}");
}
