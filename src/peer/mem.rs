//! An in-memory [`PeerNetwork`] for tests: nodes register their handler on a
//! shared hub, calls are direct async calls, and links can be cut and healed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tessera_proto::peer::peer_frame::Body;

use super::{NodeId, PeerError, PeerHandler, PeerNetwork};

/// The shared "wire" of an in-memory cluster.
#[derive(Default)]
pub struct MemHub {
    handlers: Mutex<HashMap<NodeId, Arc<dyn PeerHandler>>>,
    /// Unordered pairs of nodes that cannot reach each other.
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Ordered (caller, callee) pairs whose next call is handled by the
    /// callee and then broken before the reply reaches the caller.
    lose_reply: Mutex<HashSet<(NodeId, NodeId)>>,
}

fn pair(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl MemHub {
    pub fn new() -> Arc<MemHub> {
        Arc::new(MemHub::default())
    }

    /// Attach a node; its network handle is returned.
    pub fn join(self: &Arc<Self>, node: NodeId, handler: Arc<dyn PeerHandler>) -> MemNetwork {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.clone(), handler);
        MemNetwork {
            me: node,
            hub: self.clone(),
        }
    }

    /// Detach a node (it crashed): calls to it fail.
    pub fn leave(&self, node: &NodeId) {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    pub fn cut(&self, a: &NodeId, b: &NodeId) {
        self.cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pair(a, b));
    }

    /// The next call from `from` to `to` reaches `to` and is handled, then
    /// the connection breaks before the reply is back (as when a socket dies
    /// with the response in flight).
    pub fn lose_next_reply(&self, from: &NodeId, to: &NodeId) {
        self.lose_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((from.clone(), to.clone()));
    }

    fn reply_lost(&self, from: &NodeId, to: &NodeId) -> bool {
        self.lose_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(from.clone(), to.clone()))
    }

    pub fn heal_all(&self) {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn handler(&self, from: &NodeId, to: &NodeId) -> Result<Arc<dyn PeerHandler>, PeerError> {
        if self
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pair(from, to))
        {
            return Err(PeerError::Unreachable(to.to_string(), "link cut".into()));
        }
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(to)
            .cloned()
            .ok_or_else(|| PeerError::Unreachable(to.to_string(), "not running".into()))
    }
}

/// One node's handle on a [`MemHub`].
pub struct MemNetwork {
    me: NodeId,
    hub: Arc<MemHub>,
}

#[async_trait::async_trait]
impl PeerNetwork for MemNetwork {
    async fn call(&self, to: &NodeId, body: Body) -> Result<Body, PeerError> {
        let target = self.hub.handler(&self.me, to)?;
        if let Ok(me) = self.hub.handler(to, &self.me) {
            target.observe_clock(&self.me, me.clock_reading());
        }
        let reply = target.handle(self.me.clone(), body).await;
        // The link may have been cut while the request was in flight: the
        // peer acted on it, its answer is lost.
        if self.hub.handler(to, &self.me).is_err() || self.hub.reply_lost(&self.me, to) {
            return Err(PeerError::Lost(
                to.to_string(),
                "connection lost with the reply in flight".into(),
            ));
        }
        match reply {
            Body::Error(error) => Err(PeerError::Remote {
                peer: to.to_string(),
                code: error.code,
                message: error.message,
            }),
            reply => Ok(reply),
        }
    }
}
