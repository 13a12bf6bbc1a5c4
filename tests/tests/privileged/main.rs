//! Integration tests that need root and the real kernel. Run by `cargo xtask test`.

mod agent;
mod aws_node;
#[path = "../common/clients.rs"]
mod clients;
mod cni;
mod containerd;
mod datapath_churn;
mod demo;
mod deploy;
mod guard;
mod harness;
mod ipv6;
mod live_guard;
mod sim_fabric;
mod tc_counter;
mod upstream;

use harness::Test;

fn main() -> std::process::ExitCode {
    // `cargo xtask demo [--keep]` runs the demo with this binary's helpers (see demo.rs).
    if std::env::args().any(|a| a == "--demo") {
        let keep = std::env::args().any(|a| a == "--keep");
        return harness::demo(|ctx| demo::run(ctx, keep));
    }
    harness::main(&[
        Test { name: "tc_counter_counts_over_tcx", run: tc_counter::counts_over_tcx },
        Test { name: "tc_counter_counts_over_netlink", run: tc_counter::counts_over_netlink },
        Test { name: "tc_counter_rejects_unknown_interface", run: tc_counter::rejects_unknown_interface },
        Test { name: "guard_correct_traffic_passes", run: guard::correct_traffic_passes },
        Test { name: "guard_wrong_eni", run: guard::wrong_eni },
        Test { name: "guard_sg_mismatch_incident", run: guard::sg_mismatch_incident },
        Test { name: "guard_wrong_vlan_and_tags", run: guard::wrong_vlan_and_tags },
        Test { name: "guard_unknown_interface", run: guard::unknown_interface },
        Test { name: "guard_spoofed_source", run: guard::spoofed_source },
        Test { name: "guard_follows_recreated_veth", run: guard::follows_recreated_veth },
        Test { name: "guard_real_vlan_subinterfaces", run: guard::real_vlan_subinterfaces },
        Test {
            name: "guard_enforce_drops_only_the_violating_pod",
            run: guard::enforce_drops_only_the_violating_pod,
        },
        Test { name: "guard_reload_on_sighup", run: guard::reload_on_sighup },
        Test { name: "guard_invalid_intent_changes_nothing", run: guard::invalid_intent_changes_nothing },
        Test { name: "guard_bpftool_shows_field_names", run: guard::bpftool_shows_field_names },
        Test { name: "guard_restart_lets_nothing_through_tcx", run: guard::restart_lets_nothing_through },
        Test {
            name: "guard_restart_lets_nothing_through_netlink",
            run: guard::restart_lets_nothing_through_netlink,
        },
        Test { name: "guard_coexists_with_other_programs_tcx", run: guard::coexists_tcx },
        Test { name: "guard_coexists_with_other_programs_netlink", run: guard::coexists_netlink },
        Test { name: "guard_judges_every_frame", run: guard::judges_every_frame },
        Test { name: "guard_ipv6_pods", run: guard::ipv6_pods },
        Test {
            name: "guard_failed_start_keeps_the_predecessor",
            run: guard::failed_start_keeps_the_predecessor,
        },
        Test {
            name: "guard_switches_mode_and_replaces_stale_pins",
            run: guard::switches_mode_and_replaces_stale_pins,
        },
        Test { name: "guard_apply_is_all_or_nothing", run: guard::apply_is_all_or_nothing },
        Test { name: "guard_update_voids_cached_passes", run: guard::update_voids_cached_passes },
        Test { name: "datapath_churn_5000_pods", run: datapath_churn::churn_5000_pods },
        Test { name: "datapath_diff_and_reread", run: datapath_churn::diff_and_reread },
        Test {
            name: "sim_fabric_follows_attachments_and_checks_sources",
            run: sim_fabric::follows_attachments_and_checks_sources,
        },
        Test {
            name: "sim_fabric_carries_ipv6_and_checks_its_sources",
            run: sim_fabric::carries_ipv6_and_checks_its_sources,
        },
        Test {
            name: "cni_ipv6_pod_reaches_the_vpc_router",
            run: sim_fabric::ipv6_pod_reaches_the_vpc_router,
        },
        Test { name: "sim_vpcsim_recovers_from_sigkill", run: sim_fabric::vpcsim_recovers_from_sigkill },
        Test { name: "agent_warm_pool_rows", run: agent::warm_pool_rows },
        Test { name: "agent_ipv6_node", run: ipv6::ipv6_node },
        Test { name: "agent_v6_egress", run: ipv6::v6_egress },
        Test { name: "agent_ipv6_branch_pod", run: ipv6::ipv6_branch_pod },
        Test { name: "agent_incident_order", run: agent::incident_order },
        Test { name: "agent_pre_fix_node", run: agent::pre_fix_node },
        Test { name: "agent_bad_input", run: agent::bad_input },
        Test { name: "agent_upstream_variables", run: agent::upstream_variables },
        Test { name: "agent_without_provisioning", run: agent::without_provisioning },
        Test { name: "agent_under_buckets_and_describe_lag", run: agent::under_buckets_and_describe_lag },
        Test { name: "agent_attach_past_a_lagging_imds", run: agent::attach_past_a_lagging_imds },
        Test { name: "agent_converges_under_faults", run: agent::converges_under_faults },
        Test { name: "agent_subnet_exhaustion", run: agent::subnet_exhaustion },
        Test { name: "agent_survives_kill_9", run: agent::survives_kill_9 },
        Test { name: "agent_follows_ec2_and_its_pods", run: agent::follows_ec2_and_its_pods },
        Test { name: "agent_cordoned_node_gets_no_new_eni", run: agent::cordoned_node_gets_no_new_eni },
        Test { name: "agent_local_api", run: agent::local_api },
        Test { name: "agent_unknown_type_and_shrink", run: agent::unknown_type_and_shrink },
        Test { name: "cni_pods_per_version", run: cni::pods_per_version },
        Test { name: "cni_bad_input", run: cni::bad_input },
        Test { name: "cni_debian_libcni", run: cni::debian_libcni },
        Test { name: "cni_external_snat", run: cni::external_snat },
        Test { name: "cni_node_port_local", run: cni::node_port_local },
        Test { name: "cni_network_policy_agent", run: cni::network_policy_agent },
        Test { name: "cni_subnet_discovery", run: cni::subnet_discovery },
        Test { name: "cni_upstream_metrics_and_introspection", run: upstream::metrics_and_introspection },
        Test { name: "cni_gc_of_gone_pods", run: cni::gc_of_gone_pods },
        Test { name: "cni_churn_with_kill_9", run: cni::churn_with_kill_9 },
        Test { name: "cni_branch_pods_strict_and_standard", run: cni::branch_pods_strict_and_standard },
        Test { name: "cni_sgp_branch_reply", run: cni::branch_pod_reply },
        Test { name: "containerd_pods_on_the_right_eni", run: containerd::pods_on_the_right_eni },
        Test { name: "containerd_del_sequence_is_idempotent", run: containerd::del_sequence_is_idempotent },
        Test { name: "containerd_annotation_and_bandwidth", run: containerd::annotation_and_bandwidth },
        Test { name: "containerd_disable_pod_v6", run: containerd::disable_pod_v6 },
        Test { name: "containerd_restart_keeps_pods", run: containerd::restart_keeps_pods },
        Test { name: "containerd_burst_with_kill_9", run: containerd::burst_with_kill_9 },
        Test { name: "containerd_judged_by_the_live_guard", run: containerd::guard_judges_containers },
        Test { name: "containerd_branch_pod", run: containerd::branch_pod },
        Test { name: "containerd_ipv6_pod", run: ipv6::containerd_ipv6_pod },
        Test { name: "containerd_audit_beside_aws_node", run: containerd::audit_beside_aws_node },
        // Named without `guard_`: the kernel matrix runs every test whose name contains it, and these
        // need the simulated VPC.
        Test { name: "live_maps_follow_pod_churn", run: live_guard::follows_pod_churn },
        Test {
            name: "live_pre_fix_pod_caught_and_enforce_survives_restarts",
            run: live_guard::catches_the_pre_fix_pod_and_enforce_survives_restarts,
        },
        Test { name: "live_audit_beside_aws_node", run: live_guard::audit_beside_aws_node },
        Test { name: "live_drift_is_caught", run: live_guard::drift_is_caught },
        Test { name: "live_ipv6_pods_judged", run: ipv6::live_pods_judged },
        Test { name: "live_audit_ipv6_node", run: ipv6::audit_ipv6_node },
        // Last: compares deploy/'s RBAC and IAM with what every test before it recorded.
        Test { name: "deploy_rbac_and_iam_equal_calls", run: deploy::rbac_and_iam_equal_calls },
    ])
}

/// True when the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}
