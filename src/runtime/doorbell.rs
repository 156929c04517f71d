//! The control thread's doorbell: an eventfd that the API servers, the
//! Docker follower and the announcements' listener ring when they queue
//! work for it, so that it sleeps in poll(2) instead of waking to look.

use std::sync::Arc;

/// Wakes the control thread when work is queued for it.
pub struct Doorbell(pub nix::sys::eventfd::EventFd);

impl Doorbell {
    pub fn new() -> std::io::Result<Arc<Doorbell>> {
        Ok(Arc::new(Doorbell(nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?)))
    }

    pub fn ring(&self) {
        let _ = self.0.write(1);
    }

    pub fn clear(&self) {
        let _ = self.0.read();
    }
}
