//! Host-side interface names as upstream derives them (pkg/networkutils/names.go), so that
//! upstream's network-policy agent and eniguard's audit mode find a pod's veth: the prefix
//! (AWS_VPC_K8S_CNI_VETHPREFIX, `eni` by default; `vlan` for strict-mode branch pods) and the
//! first 11 hex digits of SHA-1("<namespace>.<pod>").

use sha1::{Digest as _, Sha1};

use crate::config::EnforcingMode;

/// The host veth prefix of branch-ENI pods in strict mode (upstream's), whatever the node's
/// AWS_VPC_K8S_CNI_VETHPREFIX; the plugin names the veth with it and the guard watches it.
pub const STRICT_VETH_PREFIX: &str = "vlan";

/// The prefix of a pod's host veth: upstream's `vlan` for a branch-ENI pod in strict mode, the
/// node's AWS_VPC_K8S_CNI_VETHPREFIX for every other pod. The plugin names the veth with it and
/// the guard looks for it: both call this.
pub fn host_veth_prefix(branch: Option<EnforcingMode>, node_prefix: &str) -> &str {
    match branch {
        Some(EnforcingMode::Strict) => STRICT_VETH_PREFIX,
        Some(EnforcingMode::Standard) | None => node_prefix,
    }
}

/// The host end of a pod's veth.
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// Whether `name` is shaped like a pod's host veth with `prefix` (the prefix, then 11 hex digits).
pub fn is_host_veth_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|h| h.len() == 11 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_recognised() {
        assert!(is_host_veth_name(&host_veth_name("eni", "default", "web"), "eni"));
        assert!(is_host_veth_name("vlan4d5f75c480c", "vlan"));
        assert!(!is_host_veth_name("eth1", "eni"));
        assert!(!is_host_veth_name("vlan.eth.5", "vlan"));
        assert!(!is_host_veth_name("eni68caf03a5f", "eni"));
        assert!(!is_host_veth_name("eni68caf03a5fZ", "eni"));
    }

    #[test]
    fn strict_branch_pods_get_the_vlan_prefix_and_everyone_else_the_nodes() {
        assert_eq!(host_veth_prefix(Some(EnforcingMode::Strict), "eni"), "vlan");
        assert_eq!(host_veth_prefix(Some(EnforcingMode::Standard), "cali"), "cali");
        assert_eq!(host_veth_prefix(None, "cali"), "cali");
    }

    #[test]
    fn names_are_the_prefix_and_eleven_hex_digits_of_the_pods_sha1() {
        // Expected values from `hashlib.sha1(b"default.web").hexdigest()[:11]`.
        assert_eq!(host_veth_name("eni", "default", "web"), "eni68caf03a5f4");
        assert_eq!(host_veth_name("vlan", "kube-system", "coredns-5d78c9869d-abcde"), "vlan4d5f75c480c");
        // Linux allows 15 characters: a 4-character prefix is the most that fits.
        assert!(host_veth_name("vlan", "a", "b").len() <= 15);
    }
}
