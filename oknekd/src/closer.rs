//! Closing fds off the loop thread.
//!
//! Closing can block: the last reference to a TCP socket with SO_LINGER and unsent data waits
//! for the linger time, and an agent can hand the daemon such a socket over the hook socket
//! (SCM_RIGHTS), or leave it queued in a connection the daemon then closes. Every fd that came
//! from an agent — received fds the daemon does not keep, and hook connections — is therefore
//! closed here, on one small thread, so the loop never waits for a close.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Fds waiting to be closed; beyond this the loop closes inline (the closer is stuck on many
/// lingering sockets already, which the per-uid connection limits make hard to reach).
const QUEUE: usize = 4096;

fn sender() -> Option<&'static SyncSender<OwnedFd>> {
    static SENDER: OnceLock<Option<SyncSender<OwnedFd>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<OwnedFd>(QUEUE);
            std::thread::Builder::new()
                .name("oknekd-closer".into())
                .spawn(move || {
                    for fd in rx {
                        drop(fd);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Closes `fd` on the closer thread.
pub fn close_later(fd: impl Into<OwnedFd>) {
    let fd = fd.into();
    match sender() {
        Some(tx) => match tx.try_send(fd) {
            Ok(()) => {}
            Err(TrySendError::Full(fd) | TrySendError::Disconnected(fd)) => drop(fd),
        },
        None => drop(fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_eventually() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        close_later(a);
        let mut buf = [0u8; 1];
        // The peer sees EOF once the closer thread dropped it.
        use std::io::Read;
        let mut b = b;
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 0);
    }
}
