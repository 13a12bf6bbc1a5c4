//! Integration tests that need root and the real kernel. Run by `cargo xtask test`.

mod harness;
mod tc_counter;

use harness::Test;

fn main() -> std::process::ExitCode {
    harness::main(&[
        Test {
            name: "tc_counter_counts_over_tcx",
            run: tc_counter::counts_over_tcx,
        },
        Test {
            name: "tc_counter_counts_over_netlink",
            run: tc_counter::counts_over_netlink,
        },
        Test {
            name: "tc_counter_rejects_unknown_interface",
            run: tc_counter::rejects_unknown_interface,
        },
    ])
}
