//! What the node knows of the network: the status it holds and the rings built from it.

use std::sync::Arc;

use onehop_overlay::ring::Rings;
use onehop_overlay::status::NetworkStatus;

/// An immutable snapshot: a status and its rings. Swapped whole when a newer status arrives.
#[derive(Debug, Default)]
pub struct View {
    /// The status held, if any has arrived.
    pub status: Option<NetworkStatus>,
    /// One ring per role, built from `status`.
    pub rings: Rings,
}

impl View {
    /// The view after `status`, if it supersedes `self`'s; rings are rebuilt only when the
    /// member list changed.
    pub fn apply(&self, status: NetworkStatus, points: u32) -> Option<Arc<View>> {
        if !status.supersedes(self.status.as_ref()) {
            return None;
        }
        let rings = match &self.status {
            Some(old) if old.members == status.members => self.rings.clone(),
            _ => Rings::from_status(&status, points),
        };
        Some(Arc::new(View {
            status: Some(status),
            rings,
        }))
    }
}
