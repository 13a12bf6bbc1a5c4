//! `eniguard-cni`: the CNI plugin, called by the container runtime with the command and its
//! parameters in the environment and the network configuration on stdin; a result or an error as
//! JSON on stdout, nothing else there. It talks to the agent over its local API.
//!
//! Built so far: VERSION, and STATUS (cheap: one request to the agent; code 50 "network is not
//! ready" while the agent is down, starting or out of addresses). ADD, DEL, CHECK and GC come with
//! the pod plumbing (issue 11) and are refused until then with code 4, naming the command.

use std::io::{Read as _, Write as _};

use eniguard::cni::{
    client::{CallError, Client},
    spec::{code, requested_version, version_reply, CniError, Command, Env, NetConf, DEFAULT_AGENT_SOCKET},
};

fn main() {
    let mut stdin = Vec::new();
    let version = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => requested_version(&stdin),
        Err(_) => "1.1.0".to_owned(),
    };
    let out = match run(&stdin) {
        Ok(Some(v)) => (v, 0),
        Ok(None) => return,
        Err(e) => (e.to_json(&version), 1),
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing else can report a failed write to stdout: the runtime sees the exit code.
    let _ = writeln!(stdout, "{}", out.0);
    drop(stdout);
    std::process::exit(out.1);
}

/// The command's output (None: success without output), or the error to print.
fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let env = Env::parse(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(&requested_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    let socket = conf.agent_socket.clone().unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::INTERNAL, format!("eniguard-cni: {e}")))?;
    match env.command {
        Command::Status => runtime.block_on(status(&Client::new(&socket))).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_COMMAND={other:?}: eniguard-cni does not implement it yet (VERSION and STATUS only)"
            ),
        )),
    }
}

/// STATUS: the agent must answer and have an address to give.
async fn status(client: &Client) -> Result<(), CniError> {
    let not_ready = |why: String| CniError::new(code::NOT_AVAILABLE, format!("network is not ready: {why}"));
    match client.status().await {
        Ok(s) if s.ready && s.available > 0 => Ok(()),
        Ok(_) => Err(not_ready("the node has no free pod address right now".into())),
        Err(CallError::Api(e)) => Err(not_ready(e.message)),
        Err(e) => Err(not_ready(e.to_string())),
    }
}
