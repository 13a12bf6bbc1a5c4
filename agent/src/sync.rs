//! Locks and waits shared by the agent's modules.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

/// Locks `m`; a panic elsewhere while it was held does not poison it (every critical section
/// leaves the value consistent before anything in it can panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The waits between tries: `first`, doubling up to `max`, `tries` of them (None: forever), no
/// jitter (the callers wait for local state: a link, IMDS, an API object).
pub fn backoff(first: Duration, max: Duration, tries: Option<usize>) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    let b = backon::ExponentialBuilder::default().with_min_delay(first).with_max_delay(max).with_factor(2.0);
    match tries {
        Some(n) => b.with_max_times(n),
        None => b.without_max_times(),
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_stops() {
        let ms = |d: Duration| d.as_millis();
        let waits: Vec<_> =
            backoff(Duration::from_millis(100), Duration::from_millis(1000), Some(6)).map(ms).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(Duration::from_secs(1), Duration::from_secs(30), None).take(100).count(), 100);
    }
}
