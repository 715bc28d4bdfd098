//! HTML components (maud). The page and the live fragments are built from the same
//! functions, so a first page load and a live update cannot drift apart.
//!
//! Per-viewer differences are left to CSS and data attributes (`data-author` on a message,
//! `data-me` on the body), so one rendering serves every recipient.

mod format;
mod links;
pub mod target;

use links::{MAX_LINK_CHARS, MAX_LINKS};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::chat::names::{SearchQuery, find_ignoring_case};
use crate::model::{
    Found, GroupListing, Quoted, Reaction, Room, RoomKind, RoomSummary, StoredMessage, User,
};

/// How many messages a page of history holds.
pub const PAGE_SIZE: i64 = 50;

fn layout(title: &str, body_attrs_me: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1, interactive-widget=resizes-content";
                meta name="description" content="wirechat: real-time chat in rooms and private conversations.";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/static/chat.css";
                script defer src="/static/chat.js" {}
            }
            body data-me=[body_attrs_me] { (content) }
        }
    }
}

/// Which sign-in form an error answers, and the name to put back in it.
#[derive(Debug, Clone, Copy)]
pub enum SignInForm<'a> {
    LogIn(&'a str),
    SignUp(&'a str),
}

/// The sign-in page: log in, sign up, or continue as a guest.
pub fn login_page(error: Option<&str>, form: SignInForm<'_>) -> Markup {
    let (login_name, signup_name) = match form {
        SignInForm::LogIn(name) => (name, ""),
        SignInForm::SignUp(name) => ("", name),
    };
    layout(
        "wirechat — sign in",
        None,
        html! {
            main.auth {
                h1.title { "wirechat" }
                @if let Some(error) = error {
                    p.error role="alert" { (error) }
                }
                form.card method="post" action="/login" {
                    h2 { "Log in" }
                    label { "Username" input name="username" autocomplete="username" required value=(login_name); }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
                form.card method="post" action="/signup" {
                    h2 { "Sign up" }
                    label { "Username" input name="username" autocomplete="username" required minlength="3" maxlength="32" value=(signup_name); }
                    label { "Password" input name="password" type="password" autocomplete="new-password" required minlength="8"; }
                    button type="submit" { "Create account" }
                }
                form.card method="post" action="/guest" {
                    button.secondary type="submit" { "Continue as guest" }
                }
            }
        },
    )
}

/// Everything the chat page shows, gathered by the caller.
#[derive(Clone, Copy)]
pub struct ChatView<'a> {
    pub me: &'a User,
    pub groups: &'a [Room],
    pub rooms: &'a [RoomSummary],
    pub online: Online<'a>,
}

/// What the sidebar's Online list holds.
#[derive(Clone, Copy)]
pub enum Online<'a> {
    /// These people, rendered here.
    People(&'a [User]),
    /// `PEOPLE_SLOT`, where the caller splices entries it rendered once for many sockets.
    Slot,
}

/// Marks where the Online list's entries go; no rendered user text can contain it, as
/// text is escaped.
pub const PEOPLE_SLOT: &str = "<!--people-->";

/// The chat page: `view.online` is who is listed and `more` how many others are online,
/// as for a socket's sidebar (which replaces this one when the socket opens);
/// `max_message_chars` is the longest message the composer takes.
pub fn chat_page(view: &ChatView<'_>, more: usize, max_message_chars: usize) -> Markup {
    layout(
        "wirechat",
        Some(&view.me.id),
        html! {
            a.skip href="#message-text" { "Skip to the message box" }
            header.topbar {
                button #rooms-toggle.secondary type="button" aria-controls="aside" aria-expanded="false" { "Rooms" }
                h1.title { "wirechat" }
                p.subtitle { "I'm " bdi #logged-user { (view.me.username) } }
                button #search-open.link type="button" aria-haspopup="dialog" { "Search" }
                form method="post" action="/logout" { button.link type="submit" { "Log out" } }
            }
            div #connection role="status" hidden {
                span #connection-text {}
                button #retry-now.secondary type="button" { "Retry now" }
            }
            div.chat {
                aside #aside aria-label="Rooms and people" { (sidebar_with(view, more, &[])) }
                main #main {
                    header.room-header {
                        h2 #group-name {}
                        ul #room-members aria-label="In this room" {}
                        span #room-members-more.muted {}
                        div #room-actions {}
                    }
                    div #history-controls {}
                    // A log, but not read out as a whole: a room's history replaces it at
                    // once. New messages from others are announced one by one (#announce).
                    section #messages-list role="log" aria-live="off" aria-label="Messages" tabindex="0" {}
                    ol #outbox aria-label="Not sent yet" {}
                    button #new-pill type="button" hidden { "New messages ↓" }
                    p #typing aria-live="polite" {}
                    div #errors {}
                    p #announce.visually-hidden aria-live="polite" {}
                    div #reply-bar hidden {}
                    ul #mention-suggestions role="listbox" aria-label="People to mention" hidden {}
                    form #message-form autocomplete="off" {
                        label.visually-hidden for="message-text" { "Message" }
                        textarea #message-text name="message" rows="1" data-max=(max_message_chars)
                            aria-autocomplete="list" aria-controls="mention-suggestions"
                            placeholder="Write a message…" aria-describedby="message-count" {}
                        span #message-count.muted aria-live="polite" {}
                        button type="submit" { "Send" }
                    }
                }
            }
            (browse_dialog())
            (search_dialog())
        },
    )
}

/// "Browse groups": every public group, a page at a time, with its members and a way in.
fn browse_dialog() -> Markup {
    html! {
        dialog #browse-dialog aria-labelledby="browse-title" {
            h2 #browse-title { "Browse groups" }
            form #browse-form.inline-form {
                label.visually-hidden for="browse-query" { "Group name starts with" }
                input #browse-query name="query" placeholder="name starts with…" maxlength="32" autocomplete="off";
                button type="submit" { "Search" }
            }
            ul #browse-results {}
            span #browse-more {}
            form method="dialog" { button.secondary type="submit" { "Close" } }
        }
    }
}

/// Rows of "Browse groups".
pub fn group_listings(page: &[GroupListing], first_page: bool) -> Markup {
    html! {
        @if page.is_empty() && first_page {
            li.muted { "No groups by that name yet: create it from the sidebar." }
        }
        @for listing in page {
            @let name = listing.room.name.as_deref().unwrap_or_default();
            li id={ "browse-" (listing.room.id) } {
                span.room-name { "#" (name) }
                span.muted {
                    @if listing.members >= GroupListing::COUNTED {
                        (GroupListing::COUNTED - 1) "+ members"
                    } @else if listing.members == 1 {
                        "1 member"
                    } @else {
                        (listing.members) " members"
                    }
                }
                @if listing.joined {
                    a.room-link href="#" data-group-name=(name) data-is-group="true" { "Open" }
                    button.link type="button" data-action="Leave group"
                        data-payload=(serde_json::json!({ "groupName": name })) { "Leave" }
                } @else {
                    a.room-link.join href="#" data-group-name=(name) data-is-group="true" { "Join" }
                }
            }
        }
    }
}

/// The "More" button under the listing, or nothing when the last page is shown.
pub fn browse_more(query: &str, next: Option<&str>) -> Markup {
    let payload = next.map(|after| serde_json::json!({ "query": query, "after": after }));
    more_button("browse-more", "Browse groups", payload)
}

/// A "More" button (`id`) that sends `action` with `payload`; without one, its empty place.
fn more_button(id: &str, action: &str, payload: Option<serde_json::Value>) -> Markup {
    html! {
        @if let Some(payload) = payload {
            button.secondary id=(id) type="button" data-action=(action) data-payload=(payload) { "More" }
        } @else {
            span id=(id) {}
        }
    }
}

/// "Search messages": what to look for, and what was found, a page at a time.
fn search_dialog() -> Markup {
    html! {
        dialog #search-dialog aria-labelledby="search-title" {
            h2 #search-title { "Search messages" }
            p.muted { "In every room and conversation of yours, and every public group." }
            form #search-form.inline-form {
                label.visually-hidden for="search-query" { "Words to find" }
                input #search-query name="query" placeholder="words to find…" minlength=(SearchQuery::MIN_CHARS)
                    maxlength=(SearchQuery::MAX_CHARS) autocomplete="off";
                button type="submit" { "Search" }
            }
            ul #search-results {}
            span #search-more {}
            form method="dialog" { button.secondary type="submit" { "Close" } }
        }
    }
}

/// Rows of search results: where each message is, who wrote it and when, and its text
/// around what matched. Each leads to the message in its room.
pub fn search_results(found: &[Found], query: &str, first_page: bool, more: bool) -> Markup {
    html! {
        @if found.is_empty() && first_page {
            @if more {
                li.muted { "None of the newest messages you can read contain that: look further back with More." }
            } @else {
                li.muted { "No messages you can read contain that." }
            }
        }
        @for f in found {
            @let m = &f.message;
            @let (name, is_group, shown) = match (f.room.kind, f.room.name.as_deref(), f.peer.as_deref()) {
                (RoomKind::Group, Some(name), _) => (name, true, format!("#{name}")),
                (_, _, Some(peer)) => (peer, false, peer.to_owned()),
                _ => ("", false, "a conversation".to_owned()),
            };
            @let href = format!("{}{}#msg-{}", if is_group { "/r/" } else { "/dm/" }, name, m.id);
            @let (before, matched, after) = around(&m.body, query);
            li {
                a.found href=(href) data-group-name=(name) data-is-group=(is_group) data-message=(m.id) {
                    span.where { bdi { (shown) } " · " bdi.author { (m.author.username) } " · " (timestamp(m.created_at_ms)) }
                    span.snippet dir="auto" { (before) mark { (matched) } (after) }
                }
            }
        }
    }
}

pub fn search_more(query: &str, next: Option<&str>) -> Markup {
    let payload = next.map(|before| serde_json::json!({ "query": query, "before": before }));
    more_button("search-more", "Search", payload)
}

/// Characters of context shown before and after a match.
const BEFORE_MATCH: usize = 60;
const AFTER_MATCH: usize = 120;

/// `text` cut around the first place `query` is in it, compared without regard to case:
/// the context before, the match, the context after, with "…" where text was left out.
fn around(text: &str, query: &str) -> (String, String, String) {
    let Some(found) = find_ignoring_case(text, query) else {
        return (String::new(), String::new(), cut_after(text, AFTER_MATCH));
    };
    let before = &text[..found.start];
    let skipped = before.chars().count().saturating_sub(BEFORE_MATCH);
    let kept: String = before.chars().skip(skipped).collect();
    let before = if skipped > 0 {
        format!("…{kept}")
    } else {
        kept
    };
    (
        before,
        text[found.clone()].to_owned(),
        cut_after(&text[found.end..], AFTER_MATCH),
    )
}

fn cut_after(text: &str, chars: usize) -> String {
    let mut kept: String = text.chars().take(chars).collect();
    if kept.len() < text.len() {
        kept.push('…');
    }
    kept
}

/// What the user can do with the active room: leave a group; hide a conversation, or
/// block its other person.
pub fn room_actions(room: &Room, peer: Option<&User>) -> Markup {
    html! {
        details.room-menu {
            summary { "Room ▾" }
            div.menu { (room_menu(room, peer)) }
        }
    }
}

/// The room menu's entries (a disclosure: the keyboard opens it with Enter, goes through
/// it with Tab, and Escape closes it).
fn room_menu(room: &Room, peer: Option<&User>) -> Markup {
    html! {
        button.link type="button" data-open="search" { "Search messages" }
        @match (room.kind, peer) {
            (RoomKind::Direct, Some(peer)) => {
                @let who = serde_json::json!({ "username": peer.username });
                button.link type="button" data-action="Hide conversation" data-payload=(who)
                    title="Take it out of the sidebar until someone writes" { "Hide" }
                button.link.danger type="button" data-action="Block user" data-payload=(who)
                    data-confirm={ "Block " (peer.username) "? Neither of you will be able to open or write in this conversation until you unblock them (under \"Blocked people\" in the sidebar). Its history is kept." } { "Block" }
            }
            _ => {
                @let name = room.name.as_deref().unwrap_or_default();
                button.link type="button" data-action="Leave group"
                    data-payload=(serde_json::json!({ "groupName": name }))
                    data-confirm={ "Leave #" (name) "? Its messages stop coming; you can join it again from Browse." } { "Leave group" }
            }
        }
    }
}

/// Where the room would be, when the user is in none.
pub fn no_room() -> Markup {
    html! {
        p.notice { "You are in no rooms yet. Browse the groups to join one, or message someone." }
    }
}

/// The sidebar for a socket: `view.online` is who is listed, `more` how many others are
/// online, and `contacts` the ids of the user's conversation partners who are online (their
/// dots light up even when they are not listed).
pub fn sidebar_with(view: &ChatView<'_>, more: usize, contacts: &[String]) -> Markup {
    let unread_of = |room_id: &str| {
        view.rooms
            .iter()
            .find(|s| s.room.id == room_id)
            .map_or((0, 0), |s| (s.unread, s.mentioned))
    };
    html! {
        nav {
            h2 { "Groups" button.link #browse-open type="button" { "Browse" } }
            ul #groups {
                @for room in view.groups {
                    @let (unread, mentioned) = unread_of(&room.id);
                    (group_item(room, unread, mentioned))
                }
            }
            form #new-group.inline-form {
                label.visually-hidden for="new-group-name" { "New group name" }
                input #new-group-name name="groupName" placeholder="new-group" maxlength="32";
                button type="submit" { "Create" }
            }
            h2 { "Direct messages" }
            ul #directs {
                @for summary in view.rooms.iter().filter(|s| s.listed()) {
                    @if let Some(peer) = &summary.peer {
                        (direct_item(&summary.room, peer, summary.unread, summary.mentioned))
                    }
                }
            }
            form #new-direct.inline-form {
                label.visually-hidden for="new-direct-name" { "Username to message" }
                input #new-direct-name name="username" placeholder="username" maxlength="32";
                button type="submit" { "Message" }
            }
            details #blocked {
                summary { "Blocked people" }
                ul #blocked-list {}
            }
            h2 { "Online" }
            ul #people {
                @match view.online {
                    Online::People(users) => (people(users)),
                    Online::Slot => (PreEscaped(PEOPLE_SLOT)),
                }
            }
            p #people-more.muted { (people_more(more)) }
            button #notify-on.link type="button" hidden { "Notify me of mentions" }
            ul #contacts hidden {
                @for id in contacts { (contact(id)) }
            }
        }
    }
}

/// The count of people beyond those listed (online, or in a room).
pub fn people_more(more: usize) -> String {
    if more > 0 {
        format!("and {more} more")
    } else {
        String::new()
    }
}

/// A hidden mark that a conversation partner is online, for their dot in the sidebar.
pub fn contact(user_id: &str) -> Markup {
    html! { li id={ "on-" (user_id) } {} }
}

/// A room's counts in the sidebar: its unread messages, and those of them that mention
/// the user.
fn badge(room_id: &str, unread: i64, mentioned: i64) -> Markup {
    html! {
        span.mention-badge id={ "mentions-" (room_id) } { (PreEscaped(mention_count(mentioned))) }
        span.badge id={ "unread-" (room_id) } { (PreEscaped(badge_count(unread))) }
    }
}

/// A mention badge's content: "@2", read out as "2 mentioning you"; empty at none.
pub fn mention_count(mentioned: i64) -> String {
    if mentioned > 0 {
        format!("@{mentioned}<span class=\"visually-hidden\"> mentioning you</span>")
    } else {
        String::new()
    }
}

/// A badge's content: the count, read out as "3 unread"; empty at none.
pub fn badge_count(unread: i64) -> String {
    if unread > 0 {
        format!("{unread}<span class=\"visually-hidden\"> unread</span>")
    } else {
        String::new()
    }
}

pub fn group_item(room: &Room, unread: i64, mentioned: i64) -> Markup {
    let name = room.name.as_deref().unwrap_or_default();
    html! {
        li id={ "room-" (room.id) } {
            a.room-link href="#" data-group-name=(name) data-is-group="true" data-room-id=(room.id) {
                span.room-name { "#" (name) } (badge(&room.id, unread, mentioned))
            }
        }
    }
}

pub fn direct_item(room: &Room, peer: &User, unread: i64, mentioned: i64) -> Markup {
    html! {
        li id={ "room-" (room.id) } {
            a.room-link href="#" data-group-name=(peer.username) data-is-group="false" data-room-id=(room.id) {
                span.dot data-user=(peer.id) {}
                span.room-name { bdi { (peer.username) } } (badge(&room.id, unread, mentioned))
            }
        }
    }
}

/// The entries of the Online list.
pub fn people(users: &[User]) -> Markup {
    html! { @for user in users { (person(user)) } }
}

/// An online user in the sidebar; clicking opens the direct conversation.
pub fn person(user: &User) -> Markup {
    html! {
        li id={ "person-" (user.id) } {
            a.room-link href="#" data-group-name=(user.username) data-is-group="false" {
                span.dot.online data-user=(user.id) {} span.room-name { bdi { (user.username) } }
            }
        }
    }
}

/// The active room's title: `#name` for a group, the other user's name for a direct room.
pub fn room_title(room: &Room, peer: Option<&User>) -> String {
    match (room.kind, peer) {
        (RoomKind::Direct, Some(peer)) => peer.username.clone(),
        _ => format!("#{}", room.name.as_deref().unwrap_or_default()),
    }
}

pub fn room_title_markup(room: &Room, title: &str) -> Markup {
    html! { span data-room-id=(room.id) { bdi { (title) } } }
}

pub fn member(user: &User) -> Markup {
    html! { li id={ "member-" (user.id) } { span.dot.online data-user=(user.id) {} bdi { (user.username) } } }
}

pub fn members(users: &[User]) -> Markup {
    html! { @for user in users { (member(user)) } }
}

pub fn message(m: &StoredMessage) -> Markup {
    // The rev only where it differs from the seq (an edit or a deletion), and the text as
    // written only where formatting changed it: most articles are new messages in plain
    // words, and every byte of theirs goes to every member.
    let rev = (m.rev != m.seq).then_some(m.rev);
    let formatted = format::shows_differently(&m.body);
    let source = (!m.deleted && formatted).then_some(m.body.as_str());
    html! {
        article.message.deleted[m.deleted] id={ "msg-" (m.id) } data-seq=(m.seq) data-rev=[rev]
            data-author=(m.author.id) data-client-id=[m.client_id.as_deref()] data-src=[source] {
            div.bubble {
                header {
                    strong.author { bdi { (m.author.username) } }
                    (timestamp(m.created_at_ms))
                }
                @if let Some(q) = m.replying_to.as_deref().filter(|_| !m.deleted) {
                    (quote(q))
                }
                @if m.deleted {
                    p.body.tombstone { "This message was deleted." }
                } @else {
                    (format::body(&m.body, formatted, &m.mentions))
                    // Below the text, not in the header, which a run of one person's
                    // messages hides.
                    @if m.edited_at_ms.is_some() {
                        span.edited { "(edited)" }
                    }
                    @if !m.reactions.is_empty() {
                        div.reactions { @for r in &m.reactions { (reaction(r)) } }
                    }
                }
            }
        }
    }
}

/// A moment, in UTC until the page shows it in local time.
fn timestamp(ms: i64) -> Markup {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let iso = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let hhmm = at
        .format(time::macros::format_description!("[hour]:[minute]"))
        .unwrap_or_default();
    html! { time datetime=(iso) data-ts=(ms) { (hhmm) " UTC" } }
}

/// The quote at the top of a reply: who wrote what it answers, and how that began. It
/// leads to the message (the page loads history up to it if need be).
fn quote(q: &Quoted) -> Markup {
    let more = q.snippet.chars().count() >= Quoted::SNIPPET_CHARS;
    html! {
        a.quote href={ "#msg-" (q.id) } data-reply-to=(q.id) {
            bdi.author { (q.author) }
            " "
            @if q.deleted {
                span.snippet.tombstone { "a deleted message" }
            } @else {
                span.snippet dir="auto" { (q.snippet) @if more { "…" } }
            }
        }
    }
}

/// One emoji's chip under a message: pressing it adds or takes back one's own. Who
/// reacted is named in its tooltip, and listed by id (`data-who`) so the page can show
/// which are one's own.
fn reaction(r: &Reaction) -> Markup {
    let mut names = r
        .named
        .iter()
        .map(|u| u.username.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let others = r.count - r.named.len() as i64;
    if others > 0 {
        names.push_str(&format!(
            " and {others} other{}",
            if others == 1 { "" } else { "s" }
        ));
    }
    let who = r
        .named
        .iter()
        .map(|u| u.id.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        button.reaction type="button" data-act="react" data-emoji=(r.emoji) data-who=(who)
            title={ (names) " reacted with " (r.emoji) }
            aria-label={ (r.emoji) " " (r.count) ": " (names) } {
            (r.emoji) " " span.count { (r.count) }
        }
    }
}

/// Bytes `m`'s article takes on the wire, at most: what a socket's backlog counts for a
/// message it has yet to render. Escaped and formatted, a byte of text takes up to six
/// (`"` is `&quot;`; see `format`), twice that where the text as written goes along; an
/// address is shown twice (its link and its text), plus its tag; the rest is a few hundred
/// bytes.
pub fn article_weight(m: &StoredMessage) -> usize {
    let per_byte = if format::shows_differently(&m.body) {
        12
    } else {
        6
    };
    let links = m.body.matches("://").count() + m.body.matches("www.").count();
    let reactions: usize = m
        .reactions
        .iter()
        .map(|r| {
            // The emoji shows four times; each name twice, each id once.
            let named: usize = r
                .named
                .iter()
                .map(|u| 2 * u.username.len() + u.id.len())
                .sum();
            250 + 6 * (4 * r.emoji.len() + named)
        })
        .sum();
    // Each `@` may become a mention's mark, naming its person's id.
    let mentions = if m.mentions.is_empty() {
        0
    } else {
        m.body.matches('@').count() * 100
    };
    // A quote: its author, its snippet and its id twice.
    let quote = m.replying_to.as_deref().map_or(0, |q| {
        200 + 6 * (q.author.len() + q.snippet.len()) + 2 * q.id.len()
    });
    per_byte * m.body.len()
        + 400
        + links.min(MAX_LINKS) * (6 * MAX_LINK_CHARS + 120)
        + reactions
        + quote
        + mentions
}

pub fn messages(list: &[StoredMessage]) -> Markup {
    html! { @for m in list { (message(m)) } }
}

/// The "load older" control: present while older messages may exist.
pub fn load_older(oldest_seq: Option<i64>) -> Markup {
    html! {
        @if let Some(seq) = oldest_seq.filter(|s| *s > 1) {
            button #load-older type="button" data-before-seq=(seq) { "Load older messages" }
        } @else {
            p #load-older.muted { "This is the beginning of the conversation." }
        }
    }
}

/// Above a room's history: "Load older" (see `load_older`) and, when the client was shown
/// the room afresh because it had missed too much to catch up, how much it missed.
pub fn history_controls(oldest_seq: Option<i64>, skipped: Option<Option<i64>>) -> Markup {
    html! {
        @match skipped {
            Some(Some(missed)) => p.notice role="status" {
                (missed) " messages arrived while you were away; the newest are below."
            },
            Some(None) => p.notice role="status" { "Showing the newest messages." },
            None => {},
        }
        (load_older(oldest_seq))
    }
}

/// A page of older history is the oldest seq or None; whether to offer more depends on
/// whether the page was full.
pub fn older_after_page(page: &[StoredMessage]) -> Option<i64> {
    if page.len() as i64 >= PAGE_SIZE {
        page.first().map(|m| m.seq)
    } else {
        None
    }
}

pub fn error(text: &str) -> Markup {
    html! { p.error role="alert" { (text) } }
}

/// A post refused, with the id its client gave it, so the page marks that one "not sent"
/// (or, when `retry`, sends it again in a moment by itself).
pub fn post_refused(text: &str, client_id: &str, retry: bool) -> Markup {
    html! {
        p.error role="alert" data-client-id=(client_id) data-retry=[retry.then_some("true")] { (text) }
    }
}

/// What an action did, where errors go.
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// The people the user blocked, each with a way to unblock.
pub fn blocked_people(people: &[User]) -> Markup {
    html! {
        @if people.is_empty() {
            li.muted { "Nobody." }
        }
        @for person in people {
            li {
                span.room-name { bdi { (person.username) } }
                button.link type="button" data-action="Unblock user"
                    data-payload=(serde_json::json!({ "username": person.username })) { "Unblock" }
            }
        }
    }
}

/// Refusing to open a conversation with someone the user blocked, with a way back.
pub fn blocked(peer: &User) -> Markup {
    html! {
        p.error role="alert" {
            "You blocked " bdi { (peer.username) } "; unblock them to talk. "
            button.link type="button" data-action="Unblock user"
                data-payload=(serde_json::json!({ "username": peer.username })) { "Unblock" }
        }
    }
}

pub fn typing(user: &User) -> Markup {
    html! { span data-user=(user.id) { bdi { (user.username) } " is typing…" } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_result_shows_the_text_around_its_match() {
        assert_eq!(
            around("The quarterly Report is due", "REPORT"),
            ("The quarterly ".into(), "Report".into(), " is due".into())
        );
        // Lowering may change lengths: the match is cut on the original's characters.
        assert_eq!(
            around("İstanbul und STRASSE", "i̇stanbul"),
            (String::new(), "İstanbul".into(), " und STRASSE".into())
        );
        let long = format!("{}needle{}", "a".repeat(100), "b".repeat(200));
        let (before, matched, after) = around(&long, "NEEDLE");
        assert_eq!(matched, "needle");
        assert_eq!(before, format!("…{}", "a".repeat(60)));
        assert_eq!(after, format!("{}…", "b".repeat(120)));
        // No match (the database's idea of case may differ): the text's start.
        assert_eq!(
            around("abc", "zzz"),
            (String::new(), String::new(), "abc".into())
        );
        // Linear, whatever the text and the query.
        let text = "a".repeat(4000);
        let query = format!("{}b", "a".repeat(99));
        assert_eq!(find_ignoring_case(&text, &query), None);
    }

    /// Every place a frame is sent is on the page, or in the entry the frame is for.
    #[test]
    fn frames_find_their_targets() {
        let me = User {
            id: "u1".into(),
            username: "ann".into(),
        };
        let group = Room {
            id: "r1".into(),
            kind: RoomKind::Group,
            name: Some("hi".into()),
        };
        let rooms = [RoomSummary {
            room: group.clone(),
            peer: None,
            unread: 0,
            mentioned: 0,
            hidden: false,
            blocked_by_peer: false,
            blocking_peer: false,
        }];
        let view = ChatView {
            me: &me,
            groups: std::slice::from_ref(&group),
            rooms: &rooms,
            online: Online::People(std::slice::from_ref(&me)),
        };
        let page = chat_page(&view, 0, 4000).into_string()
            + &login_page(None, SignInForm::LogIn("")).into_string();
        let has = |selector: &str, html: &str| {
            let id = selector.strip_prefix('#').expect("an id selector");
            html.contains(&format!("id=\"{id}\""))
        };
        for selector in [
            target::LOGGED_USER,
            target::ASIDE,
            target::GROUPS,
            target::DIRECTS,
            target::PEOPLE,
            target::PEOPLE_MORE,
            target::CONTACTS,
            target::BLOCKED_LIST,
            target::ROOM_TITLE,
            target::ROOM_MEMBERS,
            target::ROOM_MEMBERS_MORE,
            target::ROOM_ACTIONS,
            target::HISTORY_CONTROLS,
            target::MESSAGES,
            target::TYPING,
            target::ERRORS,
            target::BROWSE_RESULTS,
            target::BROWSE_MORE,
            target::SEARCH_RESULTS,
            target::SEARCH_MORE,
            &target::unread("r1"),
            &target::mentions("r1"),
            &target::room_entry("r1"),
            &target::person("u1"),
        ] {
            assert!(has(selector, &page), "{selector} is not on the page");
        }
        assert!(has(target::LOAD_OLDER, &load_older(Some(60)).into_string()));
        assert!(has(&target::member("u1"), &member(&me).into_string()));
        assert!(has(&target::contact("u1"), &contact("u1").into_string()));
        let listing = GroupListing {
            room: group,
            members: 1,
            joined: true,
        };
        let rows = group_listings(std::slice::from_ref(&listing), true).into_string();
        assert!(has(&target::browse_row("r1"), &rows));
    }
}
