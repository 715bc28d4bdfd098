//! This node's sockets, by group: the local half of every channel layer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;
use super::metrics::LayerMetrics;
use crate::session::Outbound;

pub type SocketId = u64;

/// A socket's inbox, as the registry sees it.
#[derive(Clone)]
pub struct Member {
    pub id: SocketId,
    pub outbox: mpsc::Sender<Outbound>,
    /// Cancelled when the socket must close: here, when its queue overflows (the writer
    /// sends 1013), and with the node's shutdown token, whose child it is (1012).
    pub stop: CancellationToken,
}

#[derive(Default)]
struct Groups {
    members: HashMap<String, HashMap<SocketId, Member>>,
    /// socket → its groups, so a closing socket leaves them all at once.
    joined: HashMap<SocketId, HashSet<String>>,
    /// The sockets showing each group's room: `Event::Viewers` goes to these alone. Every
    /// member of a busy room would otherwise be woken for each arrival and departure in it
    /// (everyone is a member of `#hi`, and every connect passes through it), only to drop
    /// the event: quadratic in the room's size.
    viewers: HashMap<String, HashMap<SocketId, Member>>,
    /// socket → the group whose room it shows.
    viewing: HashMap<SocketId, String>,
}

impl Groups {
    fn stop_viewing(&mut self, socket: SocketId) {
        if let Some(group) = self.viewing.remove(&socket)
            && let Some(sockets) = self.viewers.get_mut(&group)
        {
            sockets.remove(&socket);
            if sockets.is_empty() {
                self.viewers.remove(&group);
            }
        }
    }
}

#[derive(Default)]
pub struct Registry {
    groups: RwLock<Groups>,
    next_id: AtomicU64,
    slow_consumers: AtomicU64,
    metrics: LayerMetrics,
}

impl Registry {
    pub fn next_socket_id(&self) -> SocketId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds the socket to `group`; true when it is the group's first socket on this node.
    pub fn join(&self, group: &str, member: &Member) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups
            .joined
            .entry(member.id)
            .or_default()
            .insert(group.to_owned());
        let sockets = groups.members.entry(group.to_owned()).or_default();
        let first = sockets.is_empty();
        sockets.insert(member.id, member.clone());
        first
    }

    /// The socket now shows the room of `group` (which it joined), and no other.
    pub fn view(&self, group: &str, member: &Member) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.stop_viewing(member.id);
        groups.viewing.insert(member.id, group.to_owned());
        groups
            .viewers
            .entry(group.to_owned())
            .or_default()
            .insert(member.id, member.clone());
    }

    /// Removes the socket from every group; returns the groups it left empty on this node.
    pub fn leave_all(&self, socket: SocketId) -> Vec<String> {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.stop_viewing(socket);
        let Some(joined) = groups.joined.remove(&socket) else {
            return Vec::new();
        };
        let mut emptied = Vec::new();
        for group in joined {
            if let Some(sockets) = groups.members.get_mut(&group) {
                sockets.remove(&socket);
                if sockets.is_empty() {
                    groups.members.remove(&group);
                    emptied.push(group);
                }
            }
        }
        emptied
    }

    /// Groups with at least one socket on this node.
    pub fn groups(&self) -> Vec<String> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.members.keys().cloned().collect()
    }

    /// True when at least one socket on this node is in `group`.
    pub fn has_group(&self, group: &str) -> bool {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.members.contains_key(group)
    }

    pub fn group_count(&self) -> usize {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.members.len()
    }

    pub fn metrics(&self) -> &LayerMetrics {
        &self.metrics
    }

    pub fn socket_count(&self) -> usize {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.joined.len()
    }

    /// How many sockets were cut off for falling behind, since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Queues `event` for every local socket in `group`. Never waits: a socket whose queue
    /// is full is marked lagging and will be closed, so one slow reader cannot hold up a room.
    pub fn deliver(&self, group: &str, event: Arc<Event>) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let audience = match &*event {
            Event::Viewers { .. } => &groups.viewers,
            _ => &groups.members,
        };
        let Some(sockets) = audience.get(group) else {
            return;
        };
        self.offer(sockets.values(), &event);
    }

    /// Queues `event` once for every socket on this node, whatever groups it joined.
    pub fn deliver_all(&self, event: Arc<Event>) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashSet::new();
        let everyone = groups
            .members
            .values()
            .flat_map(|sockets| sockets.values())
            .filter(|member| seen.insert(member.id));
        self.offer(everyone, &event);
    }

    fn offer<'a>(&self, members: impl Iterator<Item = &'a Member>, event: &Arc<Event>) {
        let mut queued = 0;
        for member in members {
            match member.outbox.try_send(Outbound::Event(event.clone())) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) if !member.stop.is_cancelled() => {
                    self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    member.stop.cancel();
                }
                Err(_) => {}
            }
        }
        self.metrics.frames_out.fetch_add(queued, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(registry: &Registry) -> (Member, mpsc::Receiver<Outbound>) {
        let (outbox, inbox) = mpsc::channel(8);
        let member = Member {
            id: registry.next_socket_id(),
            outbox,
            stop: CancellationToken::new(),
        };
        (member, inbox)
    }

    #[test]
    fn who_is_here_goes_only_to_sockets_showing_the_room() {
        let registry = Registry::default();
        let (viewer, mut viewer_inbox) = member(&registry);
        let (elsewhere, mut elsewhere_inbox) = member(&registry);
        for m in [&viewer, &elsewhere] {
            registry.join("room:r", m);
            registry.join("room:s", m);
        }
        registry.view("room:r", &viewer);
        registry.view("room:s", &elsewhere);
        let viewers = Event::Viewers {
            room: Arc::from("r"),
            frame: Default::default(),
        };
        registry.deliver("room:r", Arc::new(viewers));
        registry.deliver("room:r", Arc::new(Event::Resync));
        assert!(
            matches!(viewer_inbox.try_recv(), Ok(Outbound::Event(e)) if matches!(*e, Event::Viewers { .. }))
        );
        assert!(
            matches!(viewer_inbox.try_recv(), Ok(Outbound::Event(e)) if matches!(*e, Event::Resync))
        );
        assert!(
            matches!(elsewhere_inbox.try_recv(), Ok(Outbound::Event(e)) if matches!(*e, Event::Resync))
        );
        assert!(elsewhere_inbox.try_recv().is_err());
        // Moving on, or closing, ends the showing.
        registry.view("room:s", &viewer);
        registry.leave_all(elsewhere.id);
        let groups = registry.groups.read().unwrap();
        assert_eq!(groups.viewers["room:s"].len(), 1);
        assert!(!groups.viewers.contains_key("room:r"));
    }
}
