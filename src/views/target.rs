//! Where the server's frames go: the selector of each element of the page they fill,
//! written once. The page's markup gives these elements their ids (a test checks that
//! each one is there).

/// The signed-in user's name.
pub const LOGGED_USER: &str = "#logged-user";
/// The sidebar: groups, conversations, who is online.
pub const ASIDE: &str = "#aside";
/// The groups the user joined.
pub const GROUPS: &str = "#groups";
/// The user's conversations.
pub const DIRECTS: &str = "#directs";
/// The Online list, and how many more are online.
pub const PEOPLE: &str = "#people";
pub const PEOPLE_MORE: &str = "#people-more";
/// Hidden marks of the conversation partners who are online.
pub const CONTACTS: &str = "#contacts";
/// The people the user blocked.
pub const BLOCKED_LIST: &str = "#blocked-list";
/// The room shown: its title, who is in it, what the user can do with it.
pub const ROOM_TITLE: &str = "#group-name";
pub const ROOM_MEMBERS: &str = "#room-members";
pub const ROOM_MEMBERS_MORE: &str = "#room-members-more";
pub const ROOM_ACTIONS: &str = "#room-actions";
/// Above the history: "Load older", and what was missed.
pub const HISTORY_CONTROLS: &str = "#history-controls";
pub const LOAD_OLDER: &str = "#load-older";
/// The messages of the room shown.
pub const MESSAGES: &str = "#messages-list";
/// Not an element: tells the client through which seq every change of the room it shows
/// is on its page.
pub const ROOM_SEQ: &str = "#room-seq";
/// Who is typing in the room shown.
pub const TYPING: &str = "#typing";
/// Errors, and notices of what an action did.
pub const ERRORS: &str = "#errors";
/// "Browse groups": the page of groups, and the button for the next.
pub const BROWSE_RESULTS: &str = "#browse-results";
pub const BROWSE_MORE: &str = "#browse-more";
/// "Search messages": the results so far, and the button for the next page.
pub const SEARCH_RESULTS: &str = "#search-results";
pub const SEARCH_MORE: &str = "#search-more";

/// A room's unread badge.
/// A message's article (`views::message`).
pub fn message(message_id: &str) -> String {
    format!("#msg-{message_id}")
}

pub fn unread(room_id: &str) -> String {
    format!("#unread-{room_id}")
}

/// A room's count of unread messages that mention the user, in the sidebar.
pub fn mentions(room_id: &str) -> String {
    format!("#mentions-{room_id}")
}

/// A room's entry in the sidebar.
pub fn room_entry(room_id: &str) -> String {
    format!("#room-{room_id}")
}

/// A person's entry in the Online list.
pub fn person(user_id: &str) -> String {
    format!("#person-{user_id}")
}

/// The mark that a conversation partner is online.
pub fn contact(user_id: &str) -> String {
    format!("#on-{user_id}")
}

/// A person's entry in the room's member list.
pub fn member(user_id: &str) -> String {
    format!("#member-{user_id}")
}

/// A group's row in "Browse groups".
pub fn browse_row(room_id: &str) -> String {
    format!("#browse-{room_id}")
}

/// A message the page holds until the server has it, by its client id.
pub fn pending(client_id: &str) -> String {
    format!("#pending-{client_id}")
}
