//! The node: the startup sequence and the loops (issue 10). So far the one decision the #2792 fix
//! hangs on, as a pure function: which signal to send the VPC Resource Controller next.

pub mod signals;
