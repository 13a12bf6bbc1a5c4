//! `vpcsim [SCENARIO.yaml]`: the simulated VPC and EKS node, for the demo and manual use.
//!
//! Starts the scenario (tests/scenarios/default.yaml when no file is given): the EC2 Query API,
//! one IMDS per node, the Kubernetes API and the VPC Resource Controller, on 127.0.0.1. As root
//! (and unless `--no-fabric`) every node is also a network namespace `<prefix>-node<i>` whose NICs
//! follow the attachments, wired to `<prefix>-vpc`. It prints the environment to use, writes it
//! to `<state-dir>/env` with the kubeconfig next to it, and runs until SIGINT or SIGTERM, then
//! removes its namespaces and files. Namespaces a run killed with SIGKILL left behind are removed
//! when the next run with the same prefix starts.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Parser;
use eniguard_tests::sim::{
    fabric,
    scenario::{Scenario, Sim},
};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "Simulated VPC, IMDS, Kubernetes API and VPC Resource Controller")]
struct Args {
    /// A scenario file (YAML; see tests/scenarios/). Without it, the default scenario.
    scenario: Option<PathBuf>,
    /// Where the kubeconfig and the env file go.
    #[arg(long, default_value = "/tmp/vpcsim")]
    state_dir: PathBuf,
    /// Name prefix of the fabric's network namespaces.
    #[arg(long, default_value = "vpcsim")]
    prefix: String,
    /// Run without namespaces (the APIs only; the default when not root).
    #[arg(long)]
    no_fabric: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scenario = match &args.scenario {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Scenario::parse(&text).with_context(|| path.display().to_string())?
        }
        None => Scenario::default_scenario(),
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let sim = if args.no_fabric || !root {
        if !args.no_fabric {
            eprintln!("vpcsim: not root, so no fabric (namespaces); the APIs only");
        }
        Sim::start(&scenario).await?
    } else {
        Sim::start_with_fabric(&scenario, &args.prefix).await?
    };

    std::fs::create_dir_all(&args.state_dir).with_context(|| args.state_dir.display().to_string())?;
    let kubeconfig = args.state_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig())?;
    let mut env = String::new();
    writeln!(env, "export AWS_ENDPOINT_URL_EC2={}", sim.ec2_url)?;
    writeln!(env, "export AWS_EC2_METADATA_SERVICE_ENDPOINT={}", sim.nodes[0].imds_url)?;
    writeln!(env, "export KUBECONFIG={}", kubeconfig.display())?;
    writeln!(env, "export AWS_REGION={}", scenario.region)?;
    writeln!(env, "export AWS_ACCESS_KEY_ID=AKIDVPCSIM AWS_SECRET_ACCESS_KEY=vpcsim")?;
    let env_file = args.state_dir.join("env");
    std::fs::write(&env_file, &env)?;
    print!("{env}");
    for (i, n) in sim.nodes.iter().enumerate() {
        let netns = match &sim.fabric {
            Some(_) => format!(" netns {}-node{i}", args.prefix),
            None => String::new(),
        };
        println!("# node {} instance {} imds {}{netns}", n.name, n.instance_id, n.imds_url);
        if let Some(e) = &n.inside {
            println!("#   inside its namespace: AWS_ENDPOINT_URL_EC2={} AWS_EC2_METADATA_SERVICE_ENDPOINT={} kube {}", e.ec2_url, e.imds_url, e.kube_url);
        }
    }
    println!("# faults: curl -X POST '$AWS_ENDPOINT_URL_EC2/_sim/throttle?action=AssignPrivateIpAddresses&count=3'");
    println!("# vpcsim ready (env in {}); stop with Ctrl-C", env_file.display());

    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    let had_fabric = sim.fabric.is_some();
    drop(sim);
    if had_fabric {
        fabric::remove_leftovers(&args.prefix)?;
    }
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&env_file);
    eprintln!("vpcsim: stopped; {} files removed", if had_fabric { "namespaces and" } else { "its" });
    Ok(())
}
