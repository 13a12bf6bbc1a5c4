//! `eniguard checkpoint check FILE`: validates a `vpc-cni-ipam/1` checkpoint (ours or aws-node's)
//! without changing it.
//!
//! Exit codes: 0 valid; 1 invalid (the message names the allocation and field, or the version,
//! or where the JSON breaks); 2 the file cannot be read (missing, permissions).

use std::{collections::BTreeSet, path::Path};

use eniguard::ipam::checkpoint::{Checkpoint, CheckpointError, VERSION};

/// Returns the exit code.
pub fn check(file: &Path) -> i32 {
    match Checkpoint::new(file).read() {
        Ok(None) => {
            eprintln!("{}: cannot read: no such file", file.display());
            2
        }
        Err(e @ CheckpointError::Read { .. }) => {
            eprintln!("{e}");
            2
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
        Ok(Some(contents)) => {
            let allocations = &contents.allocations;
            let pods: BTreeSet<_> = allocations.iter().map(|a| (&a.pod.namespace, &a.pod.name)).collect();
            let networks: BTreeSet<_> = allocations.iter().map(|a| a.key.network_name.as_str()).collect();
            let (low, high) =
                (allocations.iter().map(|a| a.ip).min(), allocations.iter().map(|a| a.ip).max());
            println!("{}: valid {VERSION} checkpoint", file.display());
            println!("allocations: {}", allocations.len());
            println!("pods: {}", pods.len());
            match (low, high) {
                (Some(l), Some(h)) => println!("addresses: {} IPv4 ({l} .. {h})", allocations.len()),
                _ => println!("addresses: 0"),
            }
            println!("networks: {}", networks.into_iter().collect::<Vec<_>>().join(", "));
            if !contents.cooling.is_empty() {
                println!("cooling down: {} released addresses", contents.cooling.len());
            }
            0
        }
    }
}
