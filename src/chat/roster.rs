//! The sidebar's "Online" list, capped.
//!
//! Listing everyone made presence quadratic: every connect rendered every online user, and
//! every arrival was pushed to every socket. The list now shows at most `SHOWN` people and
//! says how many more there are. While everyone fits, each arrival and departure is
//! announced to every socket at once (exactly as before); past that, an arrival only
//! changes the count, which a node announces at most a few times a second.
//!
//! Each node keeps its own copy of the list (the one its new sockets are shown) and
//! reconciles it now and then with presence, which for several nodes is shared.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::store::User;

/// People listed by name, at most.
pub const SHOWN: usize = 50;

#[derive(Default)]
pub struct Roster {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sorted by name.
    listed: Vec<User>,
    /// Ids of everyone online, as of the last reconcile and local changes since.
    online: HashSet<String>,
    /// The "and N more" last announced.
    announced_more: usize,
}

impl State {
    fn more(&self) -> usize {
        self.online.len().saturating_sub(self.listed.len())
    }

    fn list(&mut self, user: &User) {
        let at = self
            .listed
            .partition_point(|u| (&u.username, &u.id) < (&user.username, &user.id));
        self.listed.insert(at, user.clone());
    }
}

/// What a reconcile changed, for the caller to announce.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub listed: Vec<User>,
    pub unlisted: Vec<User>,
    /// The new "and N more", when it changed.
    pub more: Option<usize>,
}

impl Roster {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// A user came online (their first socket anywhere): true when they join the list, and
    /// every socket should be sent their entry.
    pub fn arrived(&self, user: &User) -> bool {
        self.with(|s| {
            s.online.insert(user.id.clone());
            if s.listed.len() >= SHOWN || s.listed.iter().any(|u| u.id == user.id) {
                return false;
            }
            s.list(user);
            true
        })
    }

    /// A user went offline: true when their entry should be removed from every socket's
    /// list. While everyone fits that is always (another node may have listed them).
    pub fn departed(&self, user: &User) -> bool {
        self.with(|s| {
            s.online.remove(&user.id);
            let was_listed = s.listed.iter().any(|u| u.id == user.id);
            s.listed.retain(|u| u.id != user.id);
            was_listed || s.online.len() < SHOWN
        })
    }

    /// The listed people and how many more are online, for a new socket's sidebar.
    pub fn snapshot(&self) -> (Vec<User>, usize) {
        self.with(|s| (s.listed.clone(), s.more()))
    }

    /// Which of `ids` are online.
    pub fn online_among<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        self.with(|s| {
            ids.into_iter()
                .filter(|id| s.online.contains(*id))
                .cloned()
                .collect()
        })
    }

    /// Brings the list in line with everyone online (sorted by name), and says what changed
    /// that no one has announced: people who left without this node hearing of it, and,
    /// past the cap, people listed in the place of those who left. While everyone fits,
    /// the node that saw an arrival announced it, so it is listed silently here.
    pub fn reconcile(&self, online: &[User]) -> Reconciled {
        self.with(|s| {
            s.online = online.iter().map(|u| u.id.clone()).collect();
            let mut changes = Reconciled::default();
            let (kept, gone): (Vec<User>, Vec<User>) = std::mem::take(&mut s.listed)
                .into_iter()
                .partition(|u| s.online.contains(&u.id));
            s.listed = kept;
            changes.unlisted = gone;
            let crowded = online.len() > SHOWN;
            for user in online {
                if s.listed.len() >= SHOWN {
                    break;
                }
                if !s.listed.iter().any(|u| u.id == user.id) {
                    s.list(user);
                    if crowded {
                        changes.listed.push(user.clone());
                    }
                }
            }
            let more = s.more();
            if more != s.announced_more {
                s.announced_more = more;
                changes.more = Some(more);
            }
            changes
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> User {
        User {
            id: format!("id-{n:03}"),
            username: format!("user{n:03}"),
        }
    }

    #[test]
    fn everyone_is_announced_until_the_list_is_full() {
        let roster = Roster::default();
        for n in 0..SHOWN {
            assert!(roster.arrived(&user(n)));
        }
        assert!(!roster.arrived(&user(SHOWN)));
        let (listed, more) = roster.snapshot();
        assert_eq!((listed.len(), more), (SHOWN, 1));
        // A listed person leaving is announced, and the next arrival takes the place; an
        // unlisted one leaving is not announced, past the cap.
        assert!(roster.departed(&user(3)));
        assert!(roster.arrived(&user(SHOWN + 1)));
        assert!(!roster.departed(&user(SHOWN)));
    }

    #[test]
    fn reconcile_fills_the_list_and_reports_the_count_once() {
        let roster = Roster::default();
        let online: Vec<User> = (0..SHOWN + 5).map(user).collect();
        let first = roster.reconcile(&online);
        assert_eq!(first.listed.len(), SHOWN);
        assert_eq!(first.more, Some(5));
        assert_eq!(roster.reconcile(&online), Reconciled::default());
        // Someone listed left unannounced: removed, and the next by name takes the place.
        let fewer: Vec<User> = online[1..].to_vec();
        let next = roster.reconcile(&fewer);
        assert_eq!(next.unlisted, vec![user(0)]);
        assert_eq!(next.listed, vec![user(SHOWN)]);
        assert_eq!(next.more, Some(4));
    }

    #[test]
    fn a_small_crowd_is_listed_silently() {
        let roster = Roster::default();
        let changes = roster.reconcile(&[user(1), user(2)]);
        assert!(changes.listed.is_empty() && changes.more.is_none());
        assert_eq!(roster.snapshot().0, vec![user(1), user(2)]);
        assert_eq!(roster.online_among(&["id-002".to_owned()]), vec!["id-002"]);
    }
}
