//! Rooms' member lists as frames, shared by the sockets that enter a room until its list
//! changes: rendering fifty people and escaping them into JSON for each entering socket
//! would cost a tenth of a connect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;

use crate::model::User;

/// Rooms remembered at most; past that the memory starts over (a node's busy rooms come
/// back at once, the others were not worth keeping).
const ROOMS_KEPT: usize = 1024;

/// A room's listed people as last shown, and the frame that showed them.
type Shown = (Arc<[User]>, Utf8Bytes);

#[derive(Default)]
pub struct ListFrames {
    rooms: Mutex<HashMap<String, Shown>>,
}

impl ListFrames {
    /// The frame showing `listed` for `room`, from `render` unless the last frame made for
    /// the room showed the same people.
    pub fn frame(
        &self,
        room: &str,
        listed: &Arc<[User]>,
        render: impl FnOnce(&[User]) -> Utf8Bytes,
    ) -> Utf8Bytes {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        // The same list is usually the same allocation (this node's presence shares it);
        // shared presence reads a fresh copy each time, compared person by person.
        if let Some((shown, frame)) = rooms.get(room)
            && (Arc::ptr_eq(shown, listed) || **shown == **listed)
        {
            return frame.clone();
        }
        let frame = render(listed);
        if rooms.len() >= ROOMS_KEPT && !rooms.contains_key(room) {
            rooms.clear();
        }
        rooms.insert(room.to_owned(), (listed.clone(), frame.clone()));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn people(names: &[&str]) -> Arc<[User]> {
        names
            .iter()
            .map(|n| User {
                id: format!("id-{n}"),
                username: (*n).to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_list_is_rendered_again_only_when_its_people_change() {
        let frames = ListFrames::default();
        let renders = Cell::new(0);
        let frame = |room: &str, listed: &Arc<[User]>| {
            frames.frame(room, listed, |users| {
                renders.set(renders.get() + 1);
                Utf8Bytes::from(format!("{room}:{}", users.len()))
            })
        };
        let two = people(&["ann", "bob"]);
        assert_eq!(frame("r", &two).as_str(), "r:2");
        assert_eq!(frame("r", &two).as_str(), "r:2");
        // An equal list read afresh, as from Redis.
        assert_eq!(frame("r", &people(&["ann", "bob"])).as_str(), "r:2");
        assert_eq!(renders.get(), 1);
        assert_eq!(frame("r", &people(&["ann"])).as_str(), "r:1");
        assert_eq!(frame("s", &two).as_str(), "s:2");
        assert_eq!(renders.get(), 3);
    }
}
