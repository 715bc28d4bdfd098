//! Mentions: `@name` in a message's text names a person of its room, who is told.

use std::ops::Range;

use super::names::{Username, name_key};

/// People one message may mention; further names stay plain text.
pub const MAX_MENTIONED: usize = 10;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Each `@name` in `text` that could be a username: where it is (the `@` included) and the
/// name. An `@` inside a word (an e-mail address) mentions nobody; a name ends before any
/// `.`, `_` or `-` it ends with (the end of a sentence).
pub fn mentions_in(text: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
    text.match_indices('@').filter_map(move |(at, _)| {
        if text[..at].chars().next_back().is_some_and(is_name_char) {
            return None;
        }
        let rest = &text[at + 1..];
        let run = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = rest[..run].trim_end_matches(['.', '_', '-']);
        Username::parse(name)
            .ok()
            .map(|_| (at..at + 1 + name.len(), name))
    })
}

/// The keys (see `name_key`) of the first `MAX_MENTIONED` different names `text`
/// mentions, in order.
pub fn named(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for (_, name) in mentions_in(text) {
        let key = name_key(name);
        if !keys.contains(&key) {
            keys.push(key);
            if keys.len() == MAX_MENTIONED {
                break;
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_after_an_at_are_mentions() {
        let text = "@ann and @bob_2, ask @Carol. mail dan@example.com @x @@eve @émile";
        let found: Vec<&str> = mentions_in(text).map(|(_, n)| n).collect();
        assert_eq!(found, ["ann", "bob_2", "Carol", "eve"]);
        for (range, name) in mentions_in(text) {
            assert_eq!(&text[range], format!("@{name}"));
        }
        assert_eq!(named(text), ["ann", "bob2", "carol", "eve"].map(name_key));
    }

    #[test]
    fn a_message_mentions_a_bounded_number_of_people() {
        let text: String = (0..50).map(|n| format!("@user{n} @USER{n} ")).collect();
        assert_eq!(named(&text).len(), MAX_MENTIONED);
        assert!(named(&"@".repeat(4000)).is_empty());
    }
}
