//! Reactions: which emoji a person may react with, and how many a message holds.

use super::names::InputError;

/// The emoji the page offers at a click; any other single emoji may be typed.
pub const QUICK: [&str; 6] = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

/// Different emoji one message may carry: a message's reactions, and so its article, stay
/// small however many people react.
pub const MAX_KINDS: usize = 20;

/// People named for each emoji (in its tooltip); the rest are counted.
pub const NAMED: usize = 10;

/// Bytes of the longest emoji taken: family and flag sequences run to about 30.
const MAX_BYTES: usize = 40;

/// One emoji: one of `QUICK`, or a single emoji as a keyboard's picker types it (a
/// pictograph with its modifiers, a sequence of them joined by ZWJ, a flag, a keycap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emoji(String);

impl Emoji {
    pub fn parse(raw: &str) -> Result<Emoji, InputError> {
        let raw = raw.trim();
        if QUICK.contains(&raw) || (raw.len() <= MAX_BYTES && is_one_emoji(raw)) {
            Ok(Emoji(raw.to_owned()))
        } else {
            Err(InputError("A reaction is a single emoji.".into()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const ZWJ: char = '\u{200D}';
const KEYCAP: char = '\u{20E3}';

/// A pictograph that can stand alone (or start a ZWJ sequence).
fn is_pictograph(c: char) -> bool {
    matches!(c,
        '\u{00A9}' | '\u{00AE}' | '\u{203C}' | '\u{2049}' | '\u{2122}' | '\u{2139}'
        | '\u{2194}'..='\u{21AA}' | '\u{231A}'..='\u{23FF}' | '\u{24C2}'
        | '\u{25AA}'..='\u{25FE}' | '\u{2600}'..='\u{27BF}' | '\u{2934}' | '\u{2935}'
        | '\u{2B05}'..='\u{2B55}' | '\u{3030}' | '\u{303D}' | '\u{3297}' | '\u{3299}'
        | '\u{1F000}'..='\u{1F1E5}' | '\u{1F200}'..='\u{1F3FA}' | '\u{1F400}'..='\u{1FAFF}')
}

/// What may follow a pictograph inside one emoji: a presentation selector, a skin tone.
fn is_modifier(c: char) -> bool {
    matches!(c, '\u{FE0E}' | '\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}')
}

/// Pictographs joined into one emoji, at most (a family of four; a kiss with its heart).
const MAX_JOINED: usize = 4;

const BLACK_FLAG: char = '\u{1F3F4}';
const CANCEL_TAG: char = '\u{E007F}';

/// A subdivision flag: the black flag, a region's code in tag letters and digits (as
/// `gbeng`), the cancel tag. Tags anywhere else would hide text inside a reaction that
/// looks like another.
fn is_subdivision_flag(chars: &[char]) -> bool {
    match chars {
        [BLACK_FLAG, tags @ .., CANCEL_TAG] => {
            (2..=6).contains(&tags.len())
                && tags
                    .iter()
                    .all(|t| matches!(t, '\u{E0030}'..='\u{E0039}' | '\u{E0061}'..='\u{E007A}'))
        }
        _ => false,
    }
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_one_emoji(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    match chars.as_slice() {
        // A flag: two regional indicators.
        [a, b] if is_regional_indicator(*a) && is_regional_indicator(*b) => true,
        flag if is_subdivision_flag(flag) => true,
        // A keycap: 0-9, # or *, perhaps a selector, then the keycap mark.
        [k, rest @ ..]
            if (k.is_ascii_digit() || *k == '#' || *k == '*')
                && (rest == [KEYCAP] || rest == ['\u{FE0F}', KEYCAP]) =>
        {
            true
        }
        _ => {
            // Pictographs with their modifiers, joined by ZWJ: each ZWJ starts another.
            let mut expect_pictograph = true;
            let mut joined = 0;
            for &c in &chars {
                if expect_pictograph {
                    joined += 1;
                    if !is_pictograph(c) || joined > MAX_JOINED {
                        return false;
                    }
                    expect_pictograph = false;
                } else if c == ZWJ {
                    expect_pictograph = true;
                } else if !is_modifier(c) {
                    return false;
                }
            }
            !chars.is_empty() && !expect_pictograph
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_emoji_are_taken() {
        for ok in [
            "👍",
            "❤️",
            "👍🏽",
            "👨‍👩‍👧‍👦",
            "🏳️‍🌈",
            "🇫🇷",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
            "1️⃣",
            "#⃣",
            "☕",
            "🫠",
            " 🎉 ",
        ] {
            assert!(Emoji::parse(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(Emoji::parse(" 🎉 ").unwrap().as_str(), "🎉");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            " ",
            "a",
            "ok",
            "👍👍",
            "👍a",
            "🇫",
            "🇫🇷🇫🇷",
            "\u{200D}👍",
            "👍\u{200D}",
            "👍\u{FE0F}\u{FE0F}x",
            "👍\u{E0067}\u{E0062}\u{E007F}",
            "👍\u{E007F}",
            "🏴\u{E0067}\u{E0041}\u{E007F}",
            "👍‍👍‍👍‍👍‍👍",
            "<b>",
            "1",
            "🏽",
            &"👍\u{FE0F}".repeat(10),
            &format!("👍{}", "\u{200D}👍".repeat(20)),
        ] {
            assert!(Emoji::parse(bad).is_err(), "{bad:?}");
        }
    }
}
