//! The pod sandbox's process for the tests' containerd: it holds the pod's namespaces, reaps
//! orphans (it is PID 1 of the pod), and exits on SIGINT or SIGTERM. Built statically by the
//! tests' harness (`rustc -C target-feature=+crt-static`), with no crate but std.

use std::os::raw::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(status: c_int) -> !;
}

extern "C" fn quit(_: c_int) {
    // SAFETY: async-signal-safe.
    unsafe { _exit(0) }
}

extern "C" fn reap(_: c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { waitpid(-1, std::ptr::null_mut(), WNOHANG) } > 0 {}
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("pause: expected to run as PID 1 of a pod sandbox");
    }
    // SAFETY: installing handlers that only call async-signal-safe functions.
    unsafe {
        signal(SIGINT, quit);
        signal(SIGTERM, quit);
        signal(SIGCHLD, reap);
        loop {
            pause();
        }
    }
}
