//! `eniguard-cni` called as a runtime calls it: environment and stdin in, JSON on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should panic with its location
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

fn plugin(env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eniguard-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap_or(-1), serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null))
}

#[test]
fn version_lists_what_the_plugin_speaks() {
    let (code, out) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn errors_are_json_on_stdout_with_the_spec_codes() {
    let (code, out) =
        plugin(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/opt/cni/bin")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 4);
    assert_eq!(out["cniVersion"], "1.0.0");
    assert!(out["msg"].as_str().unwrap().contains("CNI_CONTAINERID CNI_NETNS CNI_IFNAME"), "{out}");
    let (_, out) = plugin(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
        r#"{"cniVersion":"9.9.9","name":"n","type":"eniguard-cni"}"#,
    );
    assert_eq!(out["code"], 1, "{out}");
    let (_, out) = plugin(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")], "{broken");
    assert_eq!(out["code"], 6, "{out}");
}

#[test]
fn status_without_an_agent_says_the_network_is_not_ready() {
    let conf = r#"{"cniVersion":"1.1.0","name":"eniguard","type":"eniguard-cni","agentSocket":"/nonexistent/eniguard.sock"}"#;
    let (code, out) = plugin(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")], conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 50, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.starts_with("network is not ready: ") && msg.contains("/nonexistent/eniguard.sock"), "{msg}");
}
