//! The pipeline-proof classifier: counts packets and bytes per CPU and lets every packet pass.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    btf_maps::PerCpuArray,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use eniguard_common::PacketCounter;

#[btf_map]
static TC_COUNTER_V1: PerCpuArray<PacketCounter, 1> = PerCpuArray::new();

#[classifier]
pub fn tc_count(ctx: TcContext) -> i32 {
    if let Some(counter) = TC_COUNTER_V1.get_ptr_mut(0) {
        // SAFETY: the slot belongs to this CPU and the program cannot be preempted by itself.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(ctx.len());
        }
    }
    TC_ACT_OK
}
