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

/// A username: 3–32 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
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
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !valid_chars || !starts_well {
            return refuse(
                "Usernames use letters, digits, '.', '_' and '-', and start with a letter or digit.",
            );
        }
        Ok(Username(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
            "ann lee",
            "<b>ann</b>",
            &"x".repeat(33),
            "ann\0",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
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
