//! What the node knows of the network: the status it holds and the rings built from it.

use std::sync::Arc;

use onehop_overlay::ring::Rings;
use onehop_overlay::status::NetworkStatus;

/// An immutable snapshot: a status and its rings. Swapped whole when a newer status arrives.
#[derive(Debug, Default)]
pub struct View {
    /// The status held, if any has arrived.
    pub status: Option<Arc<NetworkStatus>>,
    /// One ring per role, built from `status`.
    pub rings: Rings,
}

impl View {
    /// The view after `status`, if it supersedes `self`'s; rings are rebuilt only when the
    /// member list changed.
    pub fn apply(&self, status: NetworkStatus, points: u32) -> Option<Arc<View>> {
        self.apply_shared(Arc::new(status), points)
    }

    /// [`View::apply`] for a status shared with its follower: the rings change in place for
    /// the members that changed ([`Rings::update`]), and are kept as they are when no
    /// member did.
    pub fn apply_shared(&self, status: Arc<NetworkStatus>, points: u32) -> Option<Arc<View>> {
        if !status.supersedes(self.status.as_deref()) {
            return None;
        }
        let rings = match &self.status {
            Some(old) if old.members == status.members => self.rings.clone(),
            Some(old) => self.rings.update(old, &status, points),
            None => Rings::from_status(&status, points),
        };
        Some(Arc::new(View {
            status: Some(status),
            rings,
        }))
    }
}
