//! `eniguard checkpoint check FILE`: a checkpoint written by aws-node is accepted and summarised;
//! broken ones are rejected with the place and reason, exit 1, and never modified.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::{path::PathBuf, process::Command};

const UPSTREAM: &str = r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"3f1e0c0b7a2d","ifName":"eth0","ipv4":"10.0.1.5","allocationTimestamp":1732600000123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1"}},{"networkName":"aws-cni","containerID":"9a8b7c6d5e4f","ifName":"eth0","ipv4":"10.0.1.6","allocationTimestamp":1732600001000000000,"metadata":{"k8sPodNamespace":"kube-system","k8sPodName":"coredns-abc"}}]}"#;

fn check(name: &str, content: Option<&str>) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("eg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join(name);
    if let Some(c) = content {
        std::fs::write(&file, c).unwrap();
    }
    let before = std::fs::read(&file).ok();
    let out = Command::new(env!("CARGO_BIN_EXE_eniguard"))
        .args(["checkpoint", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(std::fs::read(&file).ok(), before, "check modified {name}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn accepts_an_upstream_checkpoint() {
    let (code, stdout, _) = check("good.json", Some(UPSTREAM));
    assert_eq!(code, 0);
    assert!(stdout.contains("valid vpc-cni-ipam/1 checkpoint"), "{stdout}");
    assert!(stdout.contains("allocations: 2") && stdout.contains("pods: 2"), "{stdout}");
    assert!(stdout.contains("addresses: 2 IPv4 (10.0.1.5 .. 10.0.1.6)"), "{stdout}");
}

#[test]
fn rejects_broken_checkpoints_precisely() {
    let cases = [
        ("truncated.json", UPSTREAM[..120].to_string(), "EOF while parsing"),
        ("notjson.json", "hello".to_string(), "not a valid checkpoint"),
        (
            "version.json",
            UPSTREAM.replace("ipam/1", "ipam/9"),
            "version: `vpc-cni-ipam/9`, expected `vpc-cni-ipam/1`",
        ),
        (
            "dup.json",
            UPSTREAM.replace("10.0.1.6", "10.0.1.5"),
            "allocations[1].ipv4: 10.0.1.5 is already allocated to allocations[0]",
        ),
        (
            "badip.json",
            UPSTREAM.replace("10.0.1.6", "10.0.1"),
            "allocations[1].ipv4: `10.0.1` is not an IPv4 address",
        ),
        ("corrupt.json", UPSTREAM.replace("\"ipv4\":\"10.0.1.5\"", "\"ipv4\":5"), "invalid type"),
    ];
    for (name, content, needle) in cases {
        let (code, _, stderr) = check(name, Some(&content));
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: `{needle}` not in: {stderr}");
    }
}

#[test]
fn a_missing_file_is_exit_2() {
    let (code, _, stderr) = check("missing.json", None);
    assert_eq!(code, 2);
    assert!(stderr.contains("no such file"), "{stderr}");
}
