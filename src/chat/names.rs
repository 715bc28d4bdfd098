//! Input parsed once at the edge: a value of these types is known to be valid, so the rest
//! of the code never checks again.

use std::fmt;

/// Why an input was refused, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

fn refuse<T>(reason: impl Into<String>) -> Result<T, InputError> {
    Err(InputError(reason.into()))
}

/// A public group's name: 1–32 of `a-z 0-9 - _`, starting with a letter or digit. A leading
/// `#` is accepted and dropped; letters are folded to lower case so `#Python` is `#python`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<GroupName, InputError> {
        let name = raw.trim();
        let name = name.strip_prefix('#').unwrap_or(name).to_lowercase();
        if name.is_empty() {
            return refuse("A group needs a name.");
        }
        if name.chars().count() > Self::MAX_CHARS {
            return refuse(format!(
                "Group names are at most {} characters.",
                Self::MAX_CHARS
            ));
        }
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !valid_chars || !starts_well {
            return refuse(
                "Group names use letters, digits, '-' and '_', and start with a letter or digit.",
            );
        }
        Ok(GroupName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A username: 3–32 of `A-Z a-z 0-9 . _ -`, starting and ending with a letter or digit.
/// Two names with the same `key` are the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Username, InputError> {
        let name = raw.trim();
        let len = name.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&len) {
            return refuse(format!(
                "Usernames are {} to {} characters long.",
                Self::MIN_CHARS,
                Self::MAX_CHARS
            ));
        }
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let ends_well = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_chars || !ends_well {
            return refuse(
                "Usernames use letters, digits, '.', '_' and '-', and start and end with a letter or digit.",
            );
        }
        Ok(Username(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What makes two names the same name: upper and lower case are one, letters that look
    /// alike are one (UTS #39 confusable skeletons: `I`, `1` and `l`; `0` and `O`; `rn`
    /// and `m`; and, beyond them, `i` and `l`, `vv` and `w`), and separators do not count.
    /// So with `alice` taken, `Alice`, `aIice`, `al1ce`, `a.lice` and `allce` are taken too.
    pub fn key(&self) -> String {
        name_key(&self.0)
    }
}

/// See `Username::key`; also for names stored before the rules were what they are.
/// Skeleton, then case folding, then skeleton again: the skeleton maps `I` to `l` before
/// folding would make it `i`, and folding `M` makes an `m` to map.
pub fn name_key(name: &str) -> String {
    let skeleton: String = unicode_security::skeleton(name).collect();
    let folded = skeleton.to_lowercase();
    let mut key = String::with_capacity(folded.len() + 4);
    for c in unicode_security::skeleton(&folded) {
        match c {
            '.' | '_' | '-' => {}
            'i' => key.push('l'),
            'w' => key.push_str("vv"),
            c => key.push(c),
        }
    }
    key
}

/// A password's only rule is its length: long enough to resist guessing, short enough that
/// hashing it cannot be used to burn CPU.
pub struct Password<'a>(&'a str);

impl<'a> Password<'a> {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 256;

    pub fn parse(raw: &'a str) -> Result<Password<'a>, InputError> {
        let len = raw.chars().count();
        if len < Self::MIN_CHARS {
            return refuse(format!(
                "Passwords need at least {} characters.",
                Self::MIN_CHARS
            ));
        }
        if len > Self::MAX_CHARS {
            return refuse(format!(
                "Passwords are at most {} characters.",
                Self::MAX_CHARS
            ));
        }
        Ok(Password(raw))
    }

    pub fn as_str(&self) -> &str {
        self.0
    }
}

/// The text of a message: not blank, at most `max_chars` characters, and no control
/// characters other than newline and tab. Surrounding whitespace is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str, max_chars: usize) -> Result<MessageText, InputError> {
        let normalised = raw.replace("\r\n", "\n");
        let text = normalised.trim();
        if text.is_empty() {
            return refuse("Empty messages are not sent.");
        }
        let len = text.chars().count();
        if len > max_chars {
            return refuse(format!(
                "Messages are at most {max_chars} characters (this one has {len})."
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return refuse("Messages cannot contain control characters.");
        }
        Ok(MessageText(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What to search messages for: 3 to 100 characters once trimmed (a trigram index finds
/// nothing shorter), no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery(String);

impl SearchQuery {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<SearchQuery, InputError> {
        let query = raw.trim();
        let len = query.chars().count();
        if len < Self::MIN_CHARS {
            return refuse(format!(
                "Search for at least {} characters.",
                Self::MIN_CHARS
            ));
        }
        if len > Self::MAX_CHARS {
            return refuse(format!(
                "Search for at most {} characters.",
                Self::MAX_CHARS
            ));
        }
        if query.chars().any(char::is_control) {
            return refuse("A search cannot contain control characters.");
        }
        if !query.chars().any(char::is_alphanumeric) {
            return refuse("Search for words: at least one letter or digit.");
        }
        Ok(SearchQuery(query.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where `query` first is in `text`, lower case matching lower case: both are lowered
/// once, and the lowered text is searched in linear time (`str::find`), whatever the
/// text and the query.
pub fn find_ignoring_case(text: &str, query: &str) -> Option<std::ops::Range<usize>> {
    let wanted = query.to_lowercase();
    if wanted.is_empty() {
        return None;
    }
    // The lowered text, and for each of its bytes the original char it came from.
    let mut lowered = String::with_capacity(text.len());
    let mut origin: Vec<(usize, usize)> = Vec::with_capacity(text.len());
    for (at, c) in text.char_indices() {
        for lower in c.to_lowercase() {
            let before = lowered.len();
            lowered.push(lower);
            origin.extend(std::iter::repeat_n(
                (at, at + c.len_utf8()),
                lowered.len() - before,
            ));
        }
    }
    let start = lowered.find(&wanted)?;
    let (from, _) = *origin.get(start)?;
    let (_, to) = *origin.get(start + wanted.len() - 1)?;
    Some(from..to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        assert_eq!(GroupName::parse("#Python").unwrap().as_str(), "python");
        assert_eq!(
            GroupName::parse(" off-topic ").unwrap().as_str(),
            "off-topic"
        );
        for bad in ["", "#", "-x", "a b", "<script>", &"x".repeat(33), "é"] {
            assert!(GroupName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("ann.lee_2").is_ok());
        for bad in [
            "ab",
            ".ann",
            "ann.",
            "ann-",
            "ann lee",
            "<b>ann</b>",
            &"x".repeat(33),
            "ann\0",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lookalike_names_share_a_key() {
        let key = |name: &str| Username::parse(name).unwrap().key();
        for lookalike in [
            "Aliceucjs",
            "ALICEUCJS",
            "aIiceucjs",
            "allceucjs",
            "al1ceucjs",
            "alice.ucjs",
            "alice_ucjs",
            "a-l-i-c-e-ucjs",
        ] {
            assert_eq!(key(lookalike), key("aliceucjs"), "{lookalike}");
        }
        for (a, b) in [("mary", "rnary"), ("Oscar", "0scar"), ("will", "vvill")] {
            assert_eq!(key(a), key(b));
        }
        for (a, b) in [
            ("ann", "anna"),
            ("bob1", "bob2"),
            ("clara", "dara"),
            ("tom", "tim"),
        ] {
            assert_ne!(key(a), key(b));
        }
    }

    #[test]
    fn message_text() {
        assert_eq!(MessageText::parse("  hi\n ", 10).unwrap().as_str(), "hi");
        assert!(MessageText::parse(" \n\t ", 10).is_err());
        assert!(MessageText::parse(&"é".repeat(11), 10).is_err());
        assert!(MessageText::parse(&"é".repeat(10), 10).is_ok());
        assert!(MessageText::parse("a\0b", 10).is_err());
        assert!(MessageText::parse("a\u{7}b", 10).is_err());
        assert!(MessageText::parse("a\r\nb", 10).is_ok());
    }
}
