//! Roles as modules.
//!
//! A node bears the roles in its certificate. Every role is announced and placed on its ring,
//! whether or not this node has a module for it, so third-party software can bear a role beside
//! a node. A role with a module gets a [`RoleContext`]: the node's current view (status and
//! rings, replaced whole on every newer status), the node's overlay handle for publishing, and
//! a cancellation token for shutdown. The SIP roles plug in here.

use std::sync::Arc;

use onehop_overlay::client::EventClient;
use onehop_overlay::identity::Identity;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::view::View;

/// What a role module is given when the node starts it.
#[derive(Clone)]
pub struct RoleContext {
    /// The node's view; `borrow()` for the current one, `changed()` to wait for the next.
    pub view: watch::Receiver<Arc<View>>,
    /// The node's sessions with the event servers.
    pub overlay: EventClient,
    /// The node's identity (name, kind, roles).
    pub identity: Arc<Identity>,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

/// A role's implementation.
pub trait RoleModule: Send {
    /// The role it implements.
    fn role(&self) -> &str;
    /// Starts the role's tasks; the returned task ends after `ctx.shutdown` is cancelled.
    fn start(self: Box<Self>, ctx: RoleContext) -> tokio::task::JoinHandle<anyhow::Result<()>>;
}

/// The built-in module for a role, if this node has one. Roles without a module are still
/// announced and take their share of the ring.
pub fn built_in(_role: &str) -> Option<Box<dyn RoleModule>> {
    None
}
