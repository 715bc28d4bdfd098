//! This node's sockets, by group: the local half of every channel layer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::metrics::LayerMetrics;
use super::outbound::Outbound;
use super::outbox::{Outbox, Pushed, Stop};
use super::{Event, ROOM_GROUP};
use crate::model::SocketId;

/// A socket, as the registry sees it: a subscriber to groups, with its id and its queue.
#[derive(Clone)]
pub struct Subscriber {
    pub id: SocketId,
    pub outbox: Arc<Outbox<Outbound>>,
}

impl Subscriber {
    pub fn new(id: SocketId, queue_capacity: usize) -> Self {
        Subscriber {
            id,
            outbox: Arc::new(Outbox::new(queue_capacity)),
        }
    }
}

/// A group's name, held once by the node however many of its sockets joined the group: a
/// string of its own per socket and group would be ~0.3 KB of every idle socket.
type GroupName = Arc<str>;

#[derive(Default)]
struct Groups {
    members: HashMap<GroupName, HashMap<SocketId, Subscriber>>,
    /// socket → its groups, so a closing socket leaves them all at once.
    joined: HashMap<SocketId, HashSet<GroupName>>,
    /// The sockets showing each group's room: `Event::Viewers` goes to these alone. Every
    /// member of a busy room would otherwise be woken for each arrival and departure in it
    /// (everyone is a member of `#hi`, and every connect passes through it), only to drop
    /// the event: quadratic in the room's size.
    viewers: HashMap<GroupName, HashMap<SocketId, Subscriber>>,
    /// socket → the group whose room it shows.
    viewing: HashMap<SocketId, GroupName>,
    /// Each room's group's stamp (see `Registry::stamp`).
    stamps: HashMap<GroupName, AtomicU64>,
    /// The node is shutting down: every socket is told to close, and so is any that joins.
    stopping: bool,
}

impl Groups {
    /// The node's name for `group`: the one its members already share, or a new one.
    fn name(&self, group: &str) -> GroupName {
        match self.members.get_key_value(group) {
            Some((name, _)) => name.clone(),
            None => Arc::from(group),
        }
    }

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
    next_stamp: AtomicU64,
    slow_consumers: AtomicU64,
    metrics: LayerMetrics,
}

impl Registry {
    pub fn next_socket_id(&self) -> SocketId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A stamp no group had before.
    fn next_stamp(&self) -> u64 {
        self.next_stamp.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn renew(&self, stamp: &AtomicU64) {
        stamp.store(self.next_stamp(), Ordering::Release);
    }

    /// A room's group's stamp while it has sockets on this node: taken afresh when the
    /// group gets its first socket here, when the layer starts receiving the group's
    /// events (`restamp`), and whenever a change to its room (a message, an edit or
    /// deletion, a resync) is delivered to it. The same stamp at two moments means the
    /// node followed the group throughout and delivered no change to it in between, so
    /// what was read of its room in the store at the first is still the room at the second.
    pub fn stamp(&self, group: &str) -> Option<u64> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups
            .stamps
            .get(group)
            .map(|stamp| stamp.load(Ordering::Acquire))
    }

    /// Gives `group` a new stamp: the layer now receives what others publish to it, which
    /// it may not have before (a subscription that was not yet confirmed).
    pub fn restamp(&self, group: &str) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        if let Some(stamp) = groups.stamps.get(group) {
            self.renew(stamp);
        }
    }

    /// Adds the socket to `group`; true when it is the group's first socket on this node.
    pub fn join(&self, group: &str, member: &Subscriber) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        if groups.stopping {
            member.outbox.stop(Stop::Shutdown);
        }
        let name = groups.name(group);
        groups
            .joined
            .entry(member.id)
            .or_default()
            .insert(name.clone());
        let sockets = groups.members.entry(name.clone()).or_default();
        let first = sockets.is_empty();
        sockets.insert(member.id, member.clone());
        // Only rooms are read from the store as a page: no other group needs a stamp.
        if first && group.starts_with(ROOM_GROUP) {
            let stamp = self.next_stamp();
            groups.stamps.insert(name, AtomicU64::new(stamp));
        }
        first
    }

    /// The socket now shows the room of `group` (which it joined), and no other.
    pub fn view(&self, group: &str, member: &Subscriber) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.stop_viewing(member.id);
        let name = groups.name(group);
        groups.viewing.insert(member.id, name.clone());
        groups
            .viewers
            .entry(name)
            .or_default()
            .insert(member.id, member.clone());
    }

    /// Removes the socket from `group`; true when that left the group empty on this node.
    pub fn leave(&self, group: &str, socket: SocketId) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        if groups.viewing.get(&socket).is_some_and(|g| **g == *group) {
            groups.stop_viewing(socket);
        }
        if let Some(joined) = groups.joined.get_mut(&socket) {
            joined.remove(group);
        }
        let Some(sockets) = groups.members.get_mut(group) else {
            return false;
        };
        if sockets.remove(&socket).is_some() && sockets.is_empty() {
            groups.members.remove(group);
            groups.stamps.remove(group);
            return true;
        }
        false
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
                    groups.stamps.remove(&group);
                    emptied.push(group.to_string());
                }
            }
        }
        emptied
    }

    /// Tells every socket on this node to close because the node is shutting down, and
    /// every socket that joins a group from now on.
    pub fn stop_all(&self) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.stopping = true;
        for member in groups.members.values().flat_map(|sockets| sockets.values()) {
            member.outbox.stop(Stop::Shutdown);
        }
    }

    /// Groups with at least one socket on this node.
    pub fn groups(&self) -> Vec<String> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.members.keys().map(|name| name.to_string()).collect()
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

    /// Queues `outbound` for one socket, counting it as a slow consumer when this push
    /// overflowed its queue.
    pub fn push(&self, member: &Subscriber, outbound: Outbound) -> Pushed {
        let pushed = member.outbox.push(outbound);
        if pushed == Pushed::Overflowed {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// How many sockets were cut off for falling behind, since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Queues `event` for every local socket in `group`. Never waits: a socket whose queue
    /// is full is stopped as lagging, so one slow reader cannot hold up a room.
    pub fn deliver(&self, group: &str, event: Arc<Event>) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        if changes_room(&event)
            && let Some(stamp) = groups.stamps.get(group)
        {
            // Before the sockets are offered it: a reader of the stamp either sees the
            // new one or reads a store that already holds the change.
            self.renew(stamp);
        }
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
        if changes_room(&event) {
            for stamp in groups.stamps.values() {
                self.renew(stamp);
            }
        }
        let mut seen = HashSet::new();
        let everyone = groups
            .members
            .values()
            .flat_map(|sockets| sockets.values())
            .filter(|member| seen.insert(member.id));
        self.offer(everyone, &event);
    }

    fn offer<'a>(&self, members: impl Iterator<Item = &'a Subscriber>, event: &Arc<Event>) {
        let mut queued = 0;
        for member in members {
            if self.push(member, Outbound::Event(event.clone())) == Pushed::Queued {
                queued += 1;
            }
        }
        self.metrics.frames_out.fetch_add(queued, Ordering::Relaxed);
    }
}

/// Whether `event` may change what the store holds of a room (or, a resync, whether
/// changes may have been missed).
fn changes_room(event: &Event) -> bool {
    matches!(
        event,
        Event::Message { .. } | Event::Changed { .. } | Event::Resync
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    fn member(registry: &Registry) -> Subscriber {
        Subscriber::new(registry.next_socket_id(), 8)
    }

    fn taken(member: &Subscriber) -> VecDeque<Outbound> {
        let mut taken = VecDeque::new();
        member.outbox.take_queued(&mut taken).unwrap();
        taken
    }

    #[test]
    fn who_is_here_goes_only_to_sockets_showing_the_room() {
        let registry = Registry::default();
        let viewer = member(&registry);
        let elsewhere = member(&registry);
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
        let to_viewer = taken(&viewer);
        assert_eq!(to_viewer.len(), 2);
        assert!(
            matches!(&to_viewer[0], Outbound::Event(e) if matches!(**e, Event::Viewers { .. }))
        );
        assert!(matches!(&to_viewer[1], Outbound::Event(e) if matches!(**e, Event::Resync)));
        let to_elsewhere = taken(&elsewhere);
        assert_eq!(to_elsewhere.len(), 1);
        assert!(matches!(&to_elsewhere[0], Outbound::Event(e) if matches!(**e, Event::Resync)));
        // Moving on, or closing, ends the showing.
        registry.view("room:s", &viewer);
        registry.leave_all(elsewhere.id);
        let groups = registry.groups.read().unwrap();
        assert_eq!(groups.viewers["room:s"].len(), 1);
        assert!(!groups.viewers.contains_key("room:r"));
    }

    #[test]
    fn a_groups_stamp_changes_with_its_room_and_with_each_time_it_is_followed() {
        let registry = Registry::default();
        let socket = member(&registry);
        assert_eq!(registry.stamp("room:r"), None);
        registry.join("room:r", &socket);
        let first = registry.stamp("room:r").expect("followed");
        let changed = |event: Event| {
            let before = registry.stamp("room:r");
            registry.deliver("room:r", Arc::new(event));
            registry.stamp("room:r") != before
        };
        let message = Event::Message {
            room: Arc::from("r"),
            seq: 1,
            frame: Default::default(),
        };
        let edit = Event::Changed {
            room: Arc::from("r"),
            seq: 2,
            frame: Default::default(),
        };
        let typing = Event::Viewers {
            room: Arc::from("r"),
            frame: Default::default(),
        };
        assert!(changed(message));
        assert!(changed(edit));
        assert!(changed(Event::Resync));
        assert!(!changed(typing));
        let before = registry.stamp("room:r");
        registry.restamp("room:r");
        assert_ne!(registry.stamp("room:r"), before);
        // Only rooms are read as pages.
        registry.join("lobby", &socket);
        assert_eq!(registry.stamp("lobby"), None);
        let before = registry.stamp("room:r");
        registry.deliver_all(Arc::new(Event::Resync));
        assert_ne!(registry.stamp("room:r"), before);
        // Left and followed again, the group never has an earlier stamp again.
        let last = registry.stamp("room:r");
        registry.leave_all(socket.id);
        assert_eq!(registry.stamp("room:r"), None);
        registry.join("room:r", &socket);
        let again = registry.stamp("room:r");
        assert!(again != last && again != Some(first));
    }

    #[test]
    fn a_stopping_node_stops_its_sockets_and_any_that_join_later() {
        let registry = Registry::default();
        let early = Subscriber::new(registry.next_socket_id(), 8);
        registry.join("lobby", &early);
        registry.stop_all();
        let late = Subscriber::new(registry.next_socket_id(), 8);
        registry.join("lobby", &late);
        let mut taken = VecDeque::new();
        for member in [&early, &late] {
            assert_eq!(member.outbox.take_queued(&mut taken), Err(Stop::Shutdown));
        }
    }
}
