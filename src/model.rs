//! The chat's domain: people, rooms, messages, as every part of wirechat speaks of them.
//! Storage reads and writes them, views render them, the channel layer and presence carry
//! them; none of those depends on another for them.

/// A socket, by the number its node gave it.
pub type SocketId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Group,
    Direct,
}

impl RoomKind {
    /// As stored in `rooms.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Group => "group",
            RoomKind::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: String,
    pub kind: RoomKind,
    /// The group's name; None for a direct conversation.
    pub name: Option<String>,
}

/// A room as one user sees it in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: Room,
    /// For a direct conversation, the other participant.
    pub peer: Option<User>,
    pub unread: i64,
    /// Of those, the ones that mention the user.
    pub mentioned: i64,
    /// A conversation the user hid, with nothing new since: not in the sidebar.
    pub hidden: bool,
    /// For a direct conversation: the other participant blocked this user, who may read
    /// it but not post.
    pub blocked_by_peer: bool,
    /// For a direct conversation: this user blocked the other participant.
    pub blocking_peer: bool,
}

impl RoomSummary {
    /// Whether a block closed this conversation (either way).
    pub fn blocked(&self) -> bool {
        self.blocked_by_peer || self.blocking_peer
    }

    /// Whether the sidebar lists the room.
    pub fn listed(&self) -> bool {
        !self.hidden && !self.blocked()
    }
}

/// A message a search found, with where it is: its room, and for a direct conversation
/// the other person's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub message: StoredMessage,
    pub room: Room,
    pub peer: Option<String>,
}

/// A public group as "Browse groups" lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub room: Room,
    /// Its members, counted up to `GroupListing::COUNTED` (so a page costs the same
    /// however large its groups).
    pub members: i64,
    /// Whether the user asking belongs to it.
    pub joined: bool,
}

impl GroupListing {
    pub const COUNTED: i64 = 1000;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// UUIDv7, the message's identity (and its DOM id).
    pub id: String,
    pub room_id: String,
    pub seq: i64,
    pub author: User,
    pub body: String,
    pub created_at_ms: i64,
    /// The id the author's client gave the post, if it gave one (see `Store::post_message`).
    pub client_id: Option<String>,
    /// The seq of its latest change: its own seq until it is edited or deleted.
    pub rev: i64,
    /// When its author last edited it.
    pub edited_at_ms: Option<i64>,
    /// Deleted by its author: its text is gone, and it shows as a tombstone.
    pub deleted: bool,
    /// Its reactions, in the order their emoji were first used.
    pub reactions: Vec<Reaction>,
    /// The message it replies to, as its quote shows it.
    pub replying_to: Option<Box<Quoted>>,
    /// The people of its room it mentions (`@name`), as they were when it was posted.
    pub mentions: Vec<User>,
}

/// What a reply shows of the message it answers: who wrote it and how it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub id: String,
    pub author: String,
    /// The first `Quoted::SNIPPET_CHARS` characters of its text, as written.
    pub snippet: String,
    pub deleted: bool,
}

impl Quoted {
    pub const SNIPPET_CHARS: usize = 120;

    pub fn of(m: &StoredMessage) -> Quoted {
        Quoted {
            id: m.id.clone(),
            author: m.author.username.clone(),
            snippet: m.body.chars().take(Quoted::SNIPPET_CHARS).collect(),
            deleted: m.deleted,
        }
    }
}

/// The people who reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub emoji: String,
    pub count: i64,
    /// The first of them, up to `chat::reactions::NAMED`.
    pub named: Vec<User>,
}
