//! The sidebar's "Online" list, capped: at most `SHOWN` people by name, and how many more.
//!
//! Listing everyone would make presence quadratic: every connect rendering every online
//! user, every arrival pushed to every socket. While everyone fits, each arrival and
//! departure is announced to every socket at once; past that, an arrival only changes the
//! count, which a node announces once a second at most, and a listed person's departure
//! goes out with that round, beside whoever takes the place. Until such a round's changes
//! are published, arrivals and departures go with the next round too, so that none
//! overtakes an older change about the same person.
//!
//! Each node keeps its own copy of the list (the one its new sockets are shown) and
//! reconciles it now and then with presence, which for several nodes is shared. Presence
//! keeps the list itself, capped as room member lists are (the first `SHOWN` to arrive,
//! then whoever has waited longest): a reconcile reads those few and a count, never
//! everyone online.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::{Members, SHOWN};
use crate::model::User;

#[derive(Default)]
pub struct Roster {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sorted by name.
    listed: Vec<User>,
    /// How many people are online, as of the last reconcile and local changes since.
    online: usize,
    /// The "and N more" last announced.
    announced_more: usize,
    /// People taken off the list here while others waited to take their places: their
    /// removal goes out with the next reconcile, beside whoever takes the places, so that a
    /// storm of departures reaches each socket as one burst a round.
    unannounced: Vec<User>,
    /// A reconcile's changes are being published. Until they are, and while removals
    /// wait, arrivals and departures wait for the next reconcile too: one published at
    /// once could be overtaken by an older one about the same person.
    announcing: bool,
    /// Someone left the list, or arrived while changes waited: whoever is listed next may
    /// be known to nobody yet, so is announced. Kept until a reconcile whose reading of
    /// presence began after it.
    vacated: bool,
    /// `vacated` as it was when the reconcile under way began reading presence.
    vacated_when_asked: bool,
    /// Who went offline here since the reconcile under way began reading presence: its
    /// reading may still list them, and must not list them again.
    left_since_asked: HashSet<String>,
    /// The listed people, rendered for the first socket that connects after the list
    /// changed and shared by every socket after it: fifty entries, escaped into HTML and
    /// then into JSON for each connect, would be a seventh of its CPU.
    listed_html: Option<Arc<str>>,
}

impl State {
    fn more(&self) -> usize {
        self.online.saturating_sub(self.listed.len())
    }

    fn is_listed(&self, user: &User) -> bool {
        self.listed.iter().any(|u| u.id == user.id)
    }

    /// Changes wait for the next reconcile.
    fn waiting(&self) -> bool {
        self.announcing || !self.unannounced.is_empty()
    }

    fn list(&mut self, user: &User) {
        let at = self
            .listed
            .partition_point(|u| (&u.username, &u.id) < (&user.username, &user.id));
        self.listed.insert(at, user.clone());
        self.listed_html = None;
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
            s.online += 1;
            // Back: a reading that lists them may list them again.
            s.left_since_asked.remove(&user.id);
            if s.listed.len() >= SHOWN || s.is_listed(user) {
                return false;
            }
            if s.waiting() {
                // The reconcile lists them if presence does.
                s.vacated = true;
                return false;
            }
            s.list(user);
            true
        })
    }

    /// A user went offline: true when their entry should be removed from every socket's
    /// list now. While everyone fits and nothing waits, that is always (another node may
    /// have listed them); otherwise the removal waits for the next reconcile, which names
    /// who takes the place.
    pub fn departed(&self, user: &User) -> bool {
        self.with(|s| {
            s.online = s.online.saturating_sub(1);
            s.left_since_asked.insert(user.id.clone());
            let was_listed = s.is_listed(user);
            if was_listed {
                s.listed.retain(|u| u.id != user.id);
                s.listed_html = None;
                s.vacated = true;
            }
            let fits = s.online < SHOWN;
            if fits && !s.waiting() {
                return true;
            }
            if (was_listed || fits) && !s.unannounced.iter().any(|u| u.id == user.id) {
                s.unannounced.push(user.clone());
            }
            false
        })
    }

    /// The listed people and how many more are online, for a new socket's sidebar.
    pub fn snapshot(&self) -> (Vec<User>, usize) {
        self.with(|s| (s.listed.clone(), s.more()))
    }

    /// The listed people as `render` renders them, rendered again only when the list
    /// changed since it last ran, and how many more are online: what a new socket is shown.
    pub fn listed_html(&self, render: impl FnOnce(&[User]) -> String) -> (Arc<str>, usize) {
        self.with(|s| {
            let html = match &s.listed_html {
                Some(html) => html.clone(),
                None => s.listed_html.insert(Arc::from(render(&s.listed))).clone(),
            };
            (html, s.more())
        })
    }

    /// The removals waiting for a reconcile, taken to announce now: when presence cannot
    /// be asked, the list waits, but the people who left need not stay on it meanwhile.
    /// Other changes wait until `announced`.
    pub fn take_unannounced(&self) -> Vec<User> {
        self.with(|s| {
            let gone = std::mem::take(&mut s.unannounced);
            s.announcing = !gone.is_empty();
            gone
        })
    }

    /// What the last `reconcile` or `take_unannounced` said has been published.
    pub fn announced(&self) {
        self.with(|s| s.announcing = false);
    }

    /// The ids of the people listed, to ask presence which are still online: the start
    /// of a reconcile.
    pub fn listed_ids(&self) -> Vec<String> {
        self.with(|s| {
            s.vacated_when_asked |= std::mem::take(&mut s.vacated);
            s.left_since_asked.clear();
            s.listed.iter().map(|u| u.id.clone()).collect()
        })
    }

    /// Brings the list in line with presence: of the ids in `asked` (from `listed_ids`),
    /// those not in `online` have left; free places go to people presence lists (`now`);
    /// the count comes from `now`. Says what changed that no one has announced: people who
    /// left without this node hearing of it or whose removal waited for this, and people
    /// listed in the place of those who left. Otherwise, while everyone fits, the node that
    /// saw an arrival announced it, so it is listed silently here. When the list changed,
    /// other changes wait until `announced`.
    pub fn reconcile(&self, now: &Members, asked: &[String], online: &[String]) -> Reconciled {
        self.with(|s| {
            s.online = now.listed.len() + now.more;
            let mut changes = Reconciled::default();
            let left = |u: &User| asked.contains(&u.id) && !online.contains(&u.id);
            let (gone, kept): (Vec<User>, Vec<User>) =
                std::mem::take(&mut s.listed).into_iter().partition(left);
            s.listed = kept;
            if !gone.is_empty() {
                s.listed_html = None;
            }
            let vacated =
                std::mem::take(&mut s.vacated_when_asked) || s.vacated || !gone.is_empty();
            changes.unlisted = std::mem::take(&mut s.unannounced);
            // Someone whose removal waited and whom presence lists again (back on another
            // node meanwhile) is announced after the removal, whoever announced them.
            let back: Vec<String> = changes.unlisted.iter().map(|u| u.id.clone()).collect();
            changes.unlisted.extend(gone);
            let announce = vacated || s.online > SHOWN;
            // Read before `online`, `now` may still list someone found gone.
            let left_since_asked = std::mem::take(&mut s.left_since_asked);
            let stale = |u: &User| {
                (asked.contains(&u.id) && !online.contains(&u.id))
                    || left_since_asked.contains(&u.id)
            };
            for user in now.listed.iter() {
                if s.listed.len() >= SHOWN {
                    break;
                }
                if stale(user) {
                    continue;
                }
                if !s.is_listed(user) {
                    s.list(user);
                    if announce || back.contains(&user.id) {
                        changes.listed.push(user.clone());
                    }
                }
            }
            let more = s.more();
            if more != s.announced_more {
                s.announced_more = more;
                changes.more = Some(more);
            }
            // Only changes to the list could be overtaken.
            s.announcing = !(changes.listed.is_empty() && changes.unlisted.is_empty());
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
    fn the_listed_html_is_rendered_again_only_when_the_list_changes() {
        let roster = Roster::default();
        let renders = std::cell::Cell::new(0);
        let html = || {
            roster.listed_html(|listed| {
                renders.set(renders.get() + 1);
                let names: Vec<&str> = listed.iter().map(|u| u.username.as_str()).collect();
                names.join(",")
            })
        };
        roster.arrived(&user(1));
        roster.arrived(&user(2));
        assert_eq!(&*html().0, "user001,user002");
        assert_eq!(&*html().0, "user001,user002");
        assert_eq!(renders.get(), 1);
        roster.departed(&user(1));
        assert_eq!(&*html().0, "user002");
        assert_eq!(renders.get(), 2);
        // Past the cap an arrival changes only the count, not the list.
        for n in 3..=SHOWN + 1 {
            roster.arrived(&user(n));
        }
        let (_, more) = html();
        roster.arrived(&user(SHOWN + 2));
        let (_, more_now) = html();
        assert_eq!((more, more_now), (0, 1));
        assert_eq!(renders.get(), 3);
        // A reconcile that finds someone gone changes the list; one that finds all there
        // does not.
        let listed = roster.listed_ids();
        let online: Vec<String> = listed.iter().skip(1).cloned().collect();
        let now = Members {
            listed: Arc::default(),
            more: SHOWN + 1,
        };
        roster.reconcile(&now, &listed, &online);
        assert!(!html().0.contains("user002"));
        assert_eq!(renders.get(), 4);
        roster.reconcile(&now, &online, &online);
        html();
        assert_eq!(renders.get(), 4);
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
        // Past the cap, a listed person's leaving waits for the reconcile that names who
        // takes the place; an unlisted one's is never announced.
        assert!(!roster.arrived(&user(SHOWN + 1)));
        assert!(!roster.departed(&user(3)));
        assert!(!roster.departed(&user(SHOWN)));
        let now = members((0..SHOWN).filter(|&n| n != 3).chain([SHOWN + 1]), 0);
        let asked = roster.listed_ids();
        let changes = roster.reconcile(&now, &asked, &asked);
        assert_eq!(changes.unlisted, vec![user(3)]);
        assert_eq!(changes.listed, vec![user(SHOWN + 1)]);
        // Until the reconcile's changes are out, the next ones wait for another.
        assert!(!roster.departed(&user(4)));
        roster.announced();
        let asked = roster.listed_ids();
        let changes = roster.reconcile(&now, &asked, &asked);
        assert_eq!(changes.unlisted, vec![user(4)]);
        roster.announced();
        // Once everyone fits and nothing waits, a departure is announced at once.
        assert!(roster.departed(&user(5)));
    }

    #[test]
    fn a_storm_of_departures_is_announced_once_a_reconcile() {
        let roster = Roster::default();
        for n in 0..SHOWN + 10 {
            roster.arrived(&user(n));
        }
        // Ten listed people leave before the next reconcile: none is announced alone.
        for n in 0..10 {
            assert!(!roster.departed(&user(n)));
        }
        // One comes back before it. The list has room, but a removal of theirs waits, so
        // their entry waits too: published now, it could be overtaken by that removal.
        assert!(!roster.arrived(&user(0)));
        let now = members((0..1).chain(10..SHOWN + 9), 0);
        let asked = roster.listed_ids();
        let changes = roster.reconcile(&now, &asked, &asked);
        roster.announced();
        // Published in this order, the removals first: the one who came back is listed.
        assert_eq!(changes.unlisted, (0..10).map(user).collect::<Vec<_>>());
        assert_eq!(
            changes.listed,
            [0].into_iter()
                .chain(SHOWN..SHOWN + 9)
                .map(user)
                .collect::<Vec<_>>()
        );
        assert_eq!(roster.snapshot(), (now.listed.to_vec(), 0));
        // Nothing is announced twice.
        let asked = roster.listed_ids();
        assert_eq!(
            roster.reconcile(&now, &asked, &asked),
            Reconciled::default()
        );
    }

    #[test]
    fn whoever_takes_a_place_someone_left_is_announced() {
        let roster = Roster::default();
        for n in 0..=SHOWN {
            roster.arrived(&user(n));
        }
        // With one more than fit, a listed person leaves: everyone fits now, and the one
        // only counted until now takes the place, announced with the removal.
        assert!(!roster.departed(&user(0)));
        let now = members(1..=SHOWN, 0);
        let asked = roster.listed_ids();
        let changes = roster.reconcile(&now, &asked, &asked);
        assert_eq!(changes.unlisted, vec![user(0)]);
        assert_eq!(changes.listed, vec![user(SHOWN)]);
    }

    #[test]
    fn a_place_freed_while_presence_is_read_is_announced() {
        let roster = Roster::default();
        for n in 0..=SHOWN {
            roster.arrived(&user(n));
        }
        let asked = roster.listed_ids();
        // Two listed people leave while the reconcile reads presence, which then lists
        // the one who waited.
        assert!(!roster.departed(&user(0)));
        assert!(!roster.departed(&user(1)));
        let now = members(2..=SHOWN, 0);
        let changes = roster.reconcile(&now, &asked, &ids(2..SHOWN));
        assert_eq!(changes.unlisted, vec![user(0), user(1)]);
        assert_eq!(changes.listed, vec![user(SHOWN)]);
    }

    #[test]
    fn someone_who_left_while_presence_was_read_is_not_listed_again() {
        let roster = Roster::default();
        for n in 0..3 {
            roster.arrived(&user(n));
        }
        let asked = roster.listed_ids();
        assert!(roster.departed(&user(0)));
        // Presence was read before the departure reached it.
        let changes = roster.reconcile(&members(0..3, 0), &asked, &asked);
        assert!(changes.listed.is_empty());
        assert_eq!(roster.snapshot().0, vec![user(1), user(2)]);
    }

    #[test]
    fn someone_who_left_and_came_back_while_presence_was_read_is_listed_again() {
        let roster = Roster::default();
        for n in 0..=SHOWN {
            roster.arrived(&user(n));
        }
        let asked = roster.listed_ids();
        assert!(!roster.departed(&user(0)));
        assert!(!roster.arrived(&user(0)));
        let changes = roster.reconcile(&members(0..SHOWN, 1), &asked, &asked);
        // Removed, then listed again, in that order.
        assert_eq!(changes.unlisted, vec![user(0)]);
        assert_eq!(changes.listed, vec![user(0)]);
    }

    /// Presence's list: the users numbered `ns` and a count of `more`.
    fn members(ns: impl IntoIterator<Item = usize>, more: usize) -> Members {
        Members {
            listed: ns.into_iter().map(user).collect(),
            more,
        }
    }

    fn ids(ns: impl IntoIterator<Item = usize>) -> Vec<String> {
        ns.into_iter().map(|n| user(n).id).collect()
    }

    #[test]
    fn reconcile_fills_the_list_and_reports_the_count_once() {
        let roster = Roster::default();
        let now = members(0..SHOWN, 5);
        let first = roster.reconcile(&now, &[], &[]);
        assert_eq!(first.listed.len(), SHOWN);
        assert_eq!(first.more, Some(5));
        let asked = roster.listed_ids();
        assert_eq!(
            roster.reconcile(&now, &asked, &asked),
            Reconciled::default()
        );
        // Someone listed left unannounced: removed, and whoever presence lists in the
        // place is announced.
        let now = members((1..SHOWN).chain([SHOWN + 3]), 4);
        let next = roster.reconcile(&now, &asked, &ids(1..SHOWN));
        assert_eq!(next.unlisted, vec![user(0)]);
        assert_eq!(next.listed, vec![user(SHOWN + 3)]);
        assert_eq!(next.more, Some(4));
        assert_eq!(roster.snapshot().1, 4);
    }

    #[test]
    fn people_listed_here_stay_while_online_whoever_presence_lists() {
        let roster = Roster::default();
        for n in 0..SHOWN {
            assert!(roster.arrived(&user(100 + n)));
        }
        // Presence listed others first (they came through other nodes); everyone here is
        // still online, so nothing changes on this node's list but the count.
        let asked = roster.listed_ids();
        let changes = roster.reconcile(&members(0..SHOWN, SHOWN), &asked, &asked);
        assert!(changes.listed.is_empty() && changes.unlisted.is_empty());
        assert_eq!(changes.more, Some(SHOWN));
    }

    #[test]
    fn a_small_crowd_is_listed_silently() {
        let roster = Roster::default();
        let changes = roster.reconcile(&members([1, 2], 0), &[], &[]);
        assert!(changes.listed.is_empty() && changes.more.is_none());
        assert_eq!(roster.snapshot().0, vec![user(1), user(2)]);
    }
}
