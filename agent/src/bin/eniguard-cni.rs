//! `eniguard-cni`: the CNI plugin, called by the container runtime with the command and its
//! parameters in the environment and the network configuration on stdin; a result or an error as
//! JSON on stdout, nothing else there. Logs go to `pluginLogFile` (upstream's convention;
//! `stderr` or unset: standard error). What each command does: `eniguard::cni::plugin`.

use std::io::{Read as _, Write as _};

use eniguard::cni::{
    client::{CallError, Client},
    plugin::Plugin,
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
        Err(e) => {
            log::warn!("{e}");
            (e.to_json(&version), 1)
        }
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing else can report a failed write to stdout: the runtime sees the exit code.
    let _ = writeln!(stdout, "{}", out.0);
    drop(stdout);
    std::process::exit(out.1);
}

/// Logs to the configured file (appending; its directory is created), else to stderr.
fn init_logging(conf: &NetConf, env: &Env) {
    let level = match conf.plugin_log_level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("error") => log::LevelFilter::Error,
        Some("warn") | Some("warning") => log::LevelFilter::Warn,
        Some("info") => log::LevelFilter::Info,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Debug, // upstream's default level
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format_timestamp_millis();
    if let Some(path) = conf.plugin_log_file.as_deref().filter(|p| !p.is_empty() && *p != "stderr") {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    let _ = builder.try_init();
    log::debug!("{:?} container {} netns {} if {}", env.command, env.container_id, env.netns, env.if_name);
}

/// The command's output (None: success without output), or the error to print.
fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let env = Env::parse(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(&requested_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    init_logging(&conf, &env);
    let socket = conf.agent_socket.clone().unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::INTERNAL, format!("eniguard-cni: {e}")))?;
    let client = Client::new(&socket);
    if env.command == Command::Status {
        return runtime.block_on(status(&client)).map(|()| None);
    }
    runtime.block_on(async {
        let (conn, host, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::new(code::INTERNAL, format!("eniguard-cni: netlink: {e}")))?;
        tokio::spawn(conn);
        Plugin { env, conf, client, host }.run().await
    })
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
