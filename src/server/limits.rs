//! Connection limits: at most `max_connections_per_client` open connections
//! from one client address (the global bound is a semaphore in the accept
//! loop), and a backoff for an accept loop that fails (EMFILE) instead of
//! spinning and flooding the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct PerClient {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection; dropping it frees the client's slot.
pub struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when it has too many.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Waits between failed accepts: from 5 ms doubling to 1 s, reset by a
/// success. Only the first failure of a run is worth a warning.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

const FIRST_WAIT: Duration = Duration::from_millis(5);
const LONGEST_WAIT: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// Record a failure; the wait before the next accept, and whether this
    /// failure starts a run (log it) or continues one (stay quiet).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.failures == 0;
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(16);
        let wait = FIRST_WAIT.saturating_mul(1u32 << shift).min(LONGEST_WAIT);
        (wait, first)
    }

    /// Record a success; how many failures the run that ended had.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_counted_and_freed() {
        let limits = PerClient::new(2);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert!(limits.admit(ip).is_none());
        assert!(limits.admit(other).is_some());
        drop(a);
        assert_eq!(limits.open(ip), 1);
        assert!(limits.admit(ip).is_some());
    }

    #[test]
    fn backoff_grows_to_a_bound_and_resets() {
        let mut b = AcceptBackoff::default();
        let (w1, first) = b.failed();
        assert!(first);
        assert_eq!(w1, FIRST_WAIT);
        let (w2, first) = b.failed();
        assert!(!first);
        assert_eq!(w2, FIRST_WAIT * 2);
        for _ in 0..100 {
            assert!(b.failed().0 <= LONGEST_WAIT);
        }
        assert_eq!(b.failed().0, LONGEST_WAIT);
        assert_eq!(b.succeeded(), 103);
        assert!(b.failed().1);
    }
}
