//! eniguard's eBPF programs. Built for bpfel-unknown-none by agent/build.rs (aya-build).
#![no_std]
#![no_main]

mod counter;
mod guard;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}

/// GPL-compatible licence: needed for the GPL-only helpers (ring buffer output, ktime).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
