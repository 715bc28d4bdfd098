//! Web addresses in message text, made links: which words are addresses, and how a link is
//! rendered so that it cannot pass for another address or leak the page.

use maud::{Markup, html};

/// Text with its web addresses made links, opened in a new tab, without the page passing
/// its address or window, and marked as user content for search engines.
pub fn linked(text: &str) -> Markup {
    let mut budget = MAX_LINKS;
    linked_within(text, &mut budget)
}

/// `linked`, making at most `budget` links and counting them off it: a message whose text
/// comes in pieces (around its formatting) shares one budget.
pub fn linked_within(text: &str, budget: &mut usize) -> Markup {
    html! {
        @for piece in links(text, budget) {
            @match piece {
                Piece::Link { shown, href } => {
                    // Shown without direction controls, which could make it read as
                    // another address.
                    a href=(href) target="_blank" rel=(REL) {
                        (shown.chars().filter(|c| !is_bidi_control(*c)).collect::<String>())
                    }
                }
                Piece::Text(text) => (text),
            }
        }
    }
}

/// What a link in a message is to the browser: opened without passing the page's address
/// or window, and marked as user content for search engines.
pub const REL: &str = "nofollow noopener noreferrer ugc";

/// Addresses linked in one message, at most; later ones stay text.
pub const MAX_LINKS: usize = 20;
/// Characters of an address that is linked, at most; longer ones stay text.
pub const MAX_LINK_CHARS: usize = 500;

/// A piece of message text: plain, or a web address with the `href` it links to.
enum Piece<'a> {
    Text(&'a str),
    Link { shown: &'a str, href: String },
}

/// `text` cut into plain pieces and web addresses: `http(s)://…`, or `www.…` where a word
/// starts (linked as https), up to the next space, less any closing punctuation that more
/// likely ends the sentence than the address (a `)` stays when it closes a `(` in it).
fn links<'a>(text: &'a str, budget: &mut usize) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some((start, prefix)) = next_address(rest) {
        let tail = &rest[start..];
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let link = trim_address(&tail[..end]);
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        // A few links, not too long: each is rendered twice, and a message of nothing but
        // addresses would otherwise render to many times its size.
        if *budget == 0 || link.chars().count() > MAX_LINK_CHARS {
            pieces.push(Piece::Text(&tail[..end]));
            rest = &tail[end..];
            continue;
        }
        if link.len() <= prefix {
            // A scheme with no address after it.
            pieces.push(Piece::Text(&tail[..prefix]));
            rest = &tail[prefix..];
            continue;
        }
        let href = if link.starts_with("www.") {
            format!("https://{link}")
        } else {
            link.to_owned()
        };
        *budget -= 1;
        pieces.push(Piece::Link { shown: link, href });
        rest = &tail[link.len()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

/// Unicode's explicit direction controls (embeddings, overrides, isolates, marks).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Where the next address in `text` starts, and how long its prefix is.
fn next_address(text: &str) -> Option<(usize, usize)> {
    ["https://", "http://", "www."]
        .iter()
        .filter_map(|prefix| {
            let at = text.find(prefix)?;
            let word_start =
                at == 0 || text[..at].ends_with(|c: char| c.is_whitespace() || c == '(');
            (*prefix != "www." || word_start).then_some((at, prefix.len()))
        })
        .min()
}

/// An address without the punctuation after it that belongs to the sentence.
fn trim_address(mut link: &str) -> &str {
    loop {
        let trimmed = link.trim_end_matches(['.', ',', ';', ':', '!', '?', ']', '}', '\'', '"']);
        let unbalanced =
            trimmed.ends_with(')') && trimmed.matches(')').count() > trimmed.matches('(').count();
        if !unbalanced {
            return trimmed;
        }
        link = &trimmed[..trimmed.len() - 1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_links_and_nothing_else_does() {
        assert_eq!(
            linked("see https://example.com/a?b=1&c=<2>. ok").into_string(),
            "see <a href=\"https://example.com/a?b=1&amp;c=&lt;2&gt;\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">https://example.com/a?b=1&amp;c=&lt;2&gt;</a>. ok"
        );
        assert_eq!(
            linked("javascript:alert(1)").into_string(),
            "javascript:alert(1)"
        );
        assert_eq!(
            linked("(http://x.y)").into_string().matches("<a ").count(),
            1
        );
        assert_eq!(
            linked("just http:// here").into_string(),
            "just http:// here"
        );
        assert_eq!(
            linked("(see https://en.wikipedia.org/wiki/Foo_(bar))").into_string(),
            "(see <a href=\"https://en.wikipedia.org/wiki/Foo_(bar)\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">https://en.wikipedia.org/wiki/Foo_(bar)</a>)"
        );
        assert_eq!(
            linked("go to www.example.org! or www. or").into_string(),
            "go to <a href=\"https://www.example.org\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">www.example.org</a>! or www. or"
        );
        assert_eq!(linked("awww.nope").into_string(), "awww.nope");
        let reversed = linked("https://evil.com\u{202E}gnp.exe").into_string();
        assert!(
            reversed.contains(">https://evil.comgnp.exe</a>"),
            "{reversed}"
        );
        let many = linked(&"http://a ".repeat(100)).into_string();
        assert_eq!(many.matches("<a ").count(), MAX_LINKS);
        assert_eq!(
            linked("a\"><script>x</script> http://q").into_string(),
            "a&quot;&gt;&lt;script&gt;x&lt;/script&gt; <a href=\"http://q\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">http://q</a>"
        );
    }
}
