//! Message formatting: the text people write (Markdown, as in other chats) rendered on the
//! server, once per message, to an allow-list of elements.
//!
//! `pulldown-cmark` parses; this module decides what each piece becomes, so nothing reaches
//! the page that is not written here: emphasis, strong, strikethrough, inline code, code
//! blocks, quotes, lists, rules, line breaks and links to `http`, `https` and `mailto`
//! addresses. Raw HTML is shown as the text it is; an image becomes a link to it (no
//! remote image is loaded into anyone's page); a heading is a paragraph in bold (a chat
//! line is not a document); text is always escaped, and web addresses in it become links
//! as in plain text. Quotes and lists nest at most `MAX_DEPTH` deep (deeper ones go on as
//! their content), so a message cannot render to more than a few times its size.

use std::fmt::Write;

use maud::{Markup, PreEscaped, html};
use pulldown_cmark::{CodeBlockKind, Event, LinkType, Options, Parser, Tag, TagEnd};

use super::links::{MAX_LINK_CHARS, MAX_LINKS, REL, is_bidi_control, linked, linked_within};
use crate::chat::mentions::mentions_in;
use crate::chat::names::name_key;
use crate::model::User;

/// Quotes and lists inside one another, at most.
pub const MAX_DEPTH: usize = 6;

/// A message's body: one paragraph is a `p.body` holding its text, as plain messages always
/// were; anything else a `div.body` holding its blocks. `shows_differently` is that
/// function's answer for `text`, which the caller has already asked; `mentions`, the
/// people whose `@name` in the text is marked (outside code and links).
pub fn body(text: &str, shows_differently: bool, mentions: &[User]) -> Markup {
    // Most messages are plain words: nothing to parse, and they show as one paragraph.
    if !shows_differently {
        if mentions.is_empty() {
            return html! { p.body dir="auto" { (linked(text)) } };
        }
        let marked = with_mentions(text, mentions, &mut { MAX_LINKS });
        return html! { p.body dir="auto" { (PreEscaped(marked)) } };
    }
    let rendered = render(text, mentions);
    match rendered.single_paragraph() {
        Some(inline) => html! { p.body dir="auto" { (PreEscaped(inline)) } },
        None => html! { div.body dir="auto" { (PreEscaped(rendered.html)) } },
    }
}

/// Whether `text` may show as other than the words it holds (formatting, escapes,
/// entities, paragraphs): then it is parsed, and a page that lets its author edit it needs
/// the text as written. One pass over the bytes, as every message asks it.
pub fn shows_differently(text: &str) -> bool {
    let (mut line_start, mut prev, mut before) = (true, 0u8, 0u8);
    for &b in text.as_bytes() {
        // At a line's start: lists, quotes, headings, rules, numbered items, indentation.
        if line_start
            && (matches!(b, b'-' | b'+' | b'=' | b'#' | b'>' | b' ') || b.is_ascii_digit())
        {
            return true;
        }
        match b {
            // Anywhere: emphasis, code, strikethrough, links, escapes, HTML, entities.
            b'\\' | b'*' | b'_' | b'`' | b'~' | b'[' | b'<' | b'&' | b'\t' | b'\r' => return true,
            // A blank line (paragraphs), or two spaces before one (a hard break).
            b'\n' if prev == b'\n' || (prev == b' ' && before == b' ') => return true,
            b'\n' => line_start = true,
            _ => line_start = false,
        }
        (before, prev) = (prev, b);
    }
    false
}

struct Rendered {
    html: String,
    /// Blocks at the top level, and whether the first was a paragraph.
    blocks: usize,
    first_is_paragraph: bool,
}

impl Rendered {
    fn single_paragraph(&self) -> Option<&str> {
        (self.blocks == 1 && self.first_is_paragraph)
            .then(|| self.html.strip_prefix("<p>")?.strip_suffix("</p>"))
            .flatten()
    }
}

/// What closes an element opened for a `Start` event (nothing, for a tag left out).
type Closing = Option<&'static str>;

fn render(text: &str, mentions: &[User]) -> Rendered {
    let mut out = String::with_capacity(text.len() + 16);
    let mut open: Vec<Closing> = Vec::new();
    // Containers (quotes, lists, items) open now; past `MAX_DEPTH` they are left out.
    let mut depth = 0usize;
    let mut in_link = 0usize;
    let mut in_code_block = false;
    let mut links = MAX_LINKS;
    let (mut blocks, mut first_is_paragraph) = (0usize, false);
    for event in Parser::new_ext(text, Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(tag) => {
                if open.is_empty() {
                    blocks += 1;
                    if blocks == 1 {
                        first_is_paragraph = matches!(tag, Tag::Paragraph);
                    }
                }
                let container = matches!(tag, Tag::BlockQuote(_) | Tag::List(_) | Tag::Item);
                if container {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        open.push(None);
                        continue;
                    }
                }
                let closing = match tag {
                    Tag::Paragraph => open_tag(&mut out, "<p>", "</p>"),
                    Tag::Heading { .. } => open_tag(&mut out, "<p><strong>", "</strong></p>"),
                    Tag::BlockQuote(_) => open_tag(&mut out, "<blockquote>", "</blockquote>"),
                    Tag::CodeBlock(kind) => {
                        in_code_block = true;
                        if let CodeBlockKind::Fenced(info) = kind {
                            let lang: String = info
                                .split_whitespace()
                                .next()
                                .unwrap_or("")
                                .chars()
                                .filter(|c| c.is_ascii_alphanumeric() || "+-#_.".contains(*c))
                                .take(20)
                                .collect();
                            if !lang.is_empty() {
                                let _ = write!(out, "<pre data-lang=\"{lang}\"><code>");
                                open.push(Some("</code></pre>"));
                                continue;
                            }
                        }
                        open_tag(&mut out, "<pre><code>", "</code></pre>")
                    }
                    Tag::List(Some(start)) if start != 1 => {
                        let _ = write!(out, "<ol start=\"{start}\">");
                        Some("</ol>")
                    }
                    Tag::List(Some(_)) => open_tag(&mut out, "<ol>", "</ol>"),
                    Tag::List(None) => open_tag(&mut out, "<ul>", "</ul>"),
                    Tag::Item => open_tag(&mut out, "<li>", "</li>"),
                    Tag::Emphasis => open_tag(&mut out, "<em>", "</em>"),
                    Tag::Strong => open_tag(&mut out, "<strong>", "</strong>"),
                    Tag::Strikethrough => open_tag(&mut out, "<del>", "</del>"),
                    Tag::Link {
                        link_type,
                        dest_url,
                        ..
                    }
                    | Tag::Image {
                        link_type,
                        dest_url,
                        ..
                    } => match allowed_href(link_type, &dest_url) {
                        Some(href) if in_link == 0 && links > 0 => {
                            links -= 1;
                            in_link += 1;
                            out.push_str("<a href=\"");
                            escape_into(&mut out, &href);
                            let _ = write!(out, "\" target=\"_blank\" rel=\"{REL}\">");
                            Some("</a>")
                        }
                        // Not a link (a scheme not allowed, a link in a link, too many):
                        // its text stays.
                        _ => {
                            in_link += 1;
                            Some("")
                        }
                    },
                    // Not enabled, or not for chat: their content goes on as text.
                    _ => None,
                };
                open.push(closing);
            }
            Event::End(end) => {
                let container =
                    matches!(end, TagEnd::BlockQuote(_) | TagEnd::List(_) | TagEnd::Item);
                if container {
                    depth -= 1;
                }
                match end {
                    TagEnd::Link | TagEnd::Image => {
                        in_link = in_link.saturating_sub(1);
                    }
                    TagEnd::CodeBlock => in_code_block = false,
                    _ => {}
                }
                if let Some(Some(closing)) = open.pop() {
                    out.push_str(closing);
                }
            }
            Event::Text(text) => {
                if in_link > 0 || in_code_block {
                    escape_into(&mut out, &text);
                } else if mentions.is_empty() {
                    out.push_str(&linked_within(&text, &mut links).into_string());
                } else {
                    out.push_str(&with_mentions(&text, mentions, &mut links));
                }
            }
            Event::Code(code) => {
                out.push_str("<code>");
                escape_into(&mut out, &code);
                out.push_str("</code>");
            }
            Event::SoftBreak => out.push('\n'),
            Event::HardBreak => out.push_str("<br>"),
            Event::Rule => {
                if open.is_empty() {
                    blocks += 1;
                }
                out.push_str("<hr>");
            }
            // Raw HTML, and whatever else is not enabled: shown as the text it is.
            Event::Html(raw) | Event::InlineHtml(raw) => {
                if open.is_empty() {
                    blocks += 1;
                }
                escape_into(&mut out, &raw)
            }
            Event::InlineMath(t) | Event::DisplayMath(t) | Event::FootnoteReference(t) => {
                escape_into(&mut out, &t)
            }
            Event::TaskListMarker(done) => out.push_str(if done { "[x] " } else { "[ ] " }),
        }
    }
    Rendered {
        html: out,
        blocks,
        first_is_paragraph,
    }
}

/// `text` with each `@name` of one of `mentions` marked (`data-mention` names who, so a
/// page can tell its own), and its web addresses linked.
fn with_mentions(text: &str, mentions: &[User], links: &mut usize) -> String {
    let keys: Vec<String> = mentions.iter().map(|u| name_key(&u.username)).collect();
    let mut out = String::with_capacity(text.len() + 64);
    let mut from = 0;
    for (range, name) in mentions_in(text) {
        let key = name_key(name);
        let Some(who) = keys.iter().position(|k| *k == key) else {
            continue;
        };
        out.push_str(&linked_within(&text[from..range.start], links).into_string());
        out.push_str("<span class=\"mention\" data-mention=\"");
        escape_into(&mut out, &mentions[who].id);
        out.push_str("\">");
        escape_into(&mut out, &text[range.clone()]);
        out.push_str("</span>");
        from = range.end;
    }
    out.push_str(&linked_within(&text[from..], links).into_string());
    out
}

fn open_tag(out: &mut String, opening: &str, closing: &'static str) -> Closing {
    out.push_str(opening);
    Some(closing)
}

/// The address a link may go to: absolute `http`, `https` or `mailto`, not too long, with
/// no direction controls (which could make it read as another); else none.
fn allowed_href(link_type: LinkType, dest: &str) -> Option<String> {
    let dest = dest.trim();
    if dest.chars().count() > MAX_LINK_CHARS || dest.chars().any(is_bidi_control) {
        return None;
    }
    if link_type == LinkType::Email {
        return (!dest.contains(':')).then(|| format!("mailto:{dest}"));
    }
    let scheme = dest.split_once(':')?.0.to_ascii_lowercase();
    let allowed = match scheme.as_str() {
        "http" | "https" => dest[scheme.len() + 1..].starts_with("//"),
        "mailto" => true,
        _ => false,
    };
    allowed.then(|| dest.to_owned())
}

/// Escapes text for an element's content or a quoted attribute, as maud escapes all the
/// other text of the page.
fn escape_into(out: &mut String, text: &str) {
    let _ = maud::Escaper::new(out).write_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> String {
        body(text, shows_differently(text), &[]).into_string()
    }

    #[test]
    fn text_that_formatting_changes_is_told_apart() {
        for plain in [
            "hello there",
            "what? yes, (maybe): 50% off",
            "lt r 1 2 3",
            "a\nb",
        ] {
            assert!(!shows_differently(plain), "{plain:?}");
        }
        for marked in [
            "*a*",
            "a & b",
            "1. one",
            "x\n2) two",
            "    code",
            "a_b",
            "<3",
        ] {
            assert!(shows_differently(marked), "{marked:?}");
        }
    }

    #[test]
    fn mentions_are_marked_outside_code_and_links() {
        let bob = [User {
            id: "u-bob".into(),
            username: "bob".into(),
        }];
        let shown = |text: &str| body(text, shows_differently(text), &bob).into_string();
        assert_eq!(
            shown("hi @Bob, see https://x.org"),
            "<p class=\"body\" dir=\"auto\">hi <span class=\"mention\" data-mention=\"u-bob\">@Bob</span>, \
             see <a href=\"https://x.org\" target=\"_blank\" rel=\"nofollow noopener noreferrer ugc\">\
             https://x.org</a></p>"
        );
        assert_eq!(
            shown("*@bob* `@bob` [@bob](https://x.org) @bobby mail@bob"),
            "<p class=\"body\" dir=\"auto\"><em><span class=\"mention\" data-mention=\"u-bob\">@bob</span></em> \
             <code>@bob</code> <a href=\"https://x.org\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">@bob</a> @bobby mail@bob</p>"
        );
        // Only the people given are marked, and text stays text.
        assert_eq!(
            shown("@carol <b>@bob</b>"),
            "<p class=\"body\" dir=\"auto\">@carol &lt;b&gt;<span class=\"mention\" \
             data-mention=\"u-bob\">@bob</span>&lt;/b&gt;</p>"
        );
    }

    #[test]
    fn plain_text_is_one_paragraph_as_before() {
        assert_eq!(show("hello"), "<p class=\"body\" dir=\"auto\">hello</p>");
        assert_eq!(
            show("two\nlines"),
            "<p class=\"body\" dir=\"auto\">two\nlines</p>"
        );
        assert_eq!(
            show("see https://x.org ok"),
            "<p class=\"body\" dir=\"auto\">see <a href=\"https://x.org\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">https://x.org</a> ok</p>"
        );
    }

    #[test]
    fn formatting_renders_to_its_elements() {
        assert_eq!(
            show("*it* **bold** ~~gone~~ `x < y`"),
            "<p class=\"body\" dir=\"auto\"><em>it</em> <strong>bold</strong> <del>gone</del> \
             <code>x &lt; y</code></p>"
        );
        assert_eq!(
            show("```python\nprint(\"<hi>\")\n```"),
            "<div class=\"body\" dir=\"auto\"><pre data-lang=\"python\"><code>\
             print(&quot;&lt;hi&gt;&quot;)\n</code></pre></div>"
        );
        assert_eq!(
            show("> quoted\n\n- a\n- b\n\n3. c"),
            "<div class=\"body\" dir=\"auto\"><blockquote><p>quoted</p></blockquote>\
             <ul><li>a</li><li>b</li></ul><ol start=\"3\"><li>c</li></ol></div>"
        );
        assert_eq!(
            show("[docs](https://docs.rs/x)"),
            "<p class=\"body\" dir=\"auto\"><a href=\"https://docs.rs/x\" target=\"_blank\" \
             rel=\"nofollow noopener noreferrer ugc\">docs</a></p>"
        );
        assert_eq!(
            show("# big"),
            "<div class=\"body\" dir=\"auto\"><p><strong>big</strong></p></div>"
        );
    }

    /// What the page must never get from a message: markup of its own, a script address,
    /// an image loaded from elsewhere.
    #[test]
    fn markdown_shaped_attacks_render_as_text() {
        let attacks = [
            "[x](javascript:alert(1))",
            "[x](JaVaScRiPt:alert(1))",
            "[x]( javascript:alert(1))",
            "[x](data:text/html,<script>alert(1)</script>)",
            "[x](vbscript:msgbox)",
            "<javascript:alert(1)>",
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "![x](https://evil.example/track.png)",
            "![x](javascript:alert(1))",
            "[x](https://a.b\"onmouseover=\"alert(1))",
            "<https://a.b/\"onmouseover=\"alert(1)>",
            "[x](https://a.b 'title\" onclick=\"alert(1)')",
            "*<b>nested</b> **<i>em</i>***",
            "***__*_**bold**_*__***",
            "`<script>`",
            "```\n</code></pre><script>alert(1)</script>\n```",
            "```\"><script>alert(1)</script>\nx\n```",
            "[<img src=x onerror=alert(1)>](https://a.b)",
            "[x](//evil.example)",
            "[x](/logout)",
            "<a href=\"javascript:alert(1)\">x</a>",
            "> <iframe src=https://evil.example>",
            "- <svg onload=alert(1)>",
        ];
        for attack in attacks {
            let html = show(attack);
            // Text's `<` is escaped, so every `<` opens an element written here: one of the
            // allowed ones, with allowed attributes, linking only to allowed addresses.
            for tag in html.split('<').skip(1) {
                let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
                let name: String = tag
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(
                    ALLOWED.contains(&name.as_str()),
                    "{attack:?} gave <{name}> in {html}"
                );
                let (mut names, mut quoted, mut unquoted) = (Vec::new(), false, String::new());
                for c in tag.chars() {
                    match c {
                        '"' => quoted = !quoted,
                        c if !quoted => unquoted.push(c),
                        _ => {}
                    }
                }
                for word in unquoted.split_whitespace().skip(1) {
                    names.push(word.split('=').next().unwrap_or("").to_owned());
                }
                for attribute in names {
                    assert!(
                        [
                            "class",
                            "dir",
                            "href",
                            "target",
                            "rel",
                            "start",
                            "data-lang"
                        ]
                        .contains(&attribute.as_str()),
                        "{attack:?} gave {attribute} in {html}"
                    );
                }
            }
            for href in html.split("href=\"").skip(1) {
                assert!(
                    ["http://", "https://", "mailto:"]
                        .iter()
                        .any(|scheme| href.starts_with(scheme)),
                    "{attack:?} gave {html}"
                );
            }
        }
    }

    const ALLOWED: [&str; 14] = [
        "p",
        "div",
        "em",
        "strong",
        "del",
        "code",
        "pre",
        "blockquote",
        "ul",
        "ol",
        "li",
        "a",
        "br",
        "hr",
    ];

    #[test]
    fn nesting_and_links_are_bounded() {
        let deep = show(&"> ".repeat(200));
        assert_eq!(deep.matches("<blockquote>").count(), MAX_DEPTH);
        let lists = show(
            &(0..50)
                .map(|i| format!("{}- x\n", "  ".repeat(i)))
                .collect::<String>(),
        );
        assert!(
            lists.matches("<ul>").count() + lists.matches("<li>").count() <= 2 * MAX_DEPTH + 50
        );
        let links = show(&"[a](http://a.b) ".repeat(100));
        assert_eq!(links.matches("<a ").count(), MAX_LINKS);
        let mixed = show(&"[a](http://a.b) http://c.d ".repeat(30));
        assert_eq!(mixed.matches("<a ").count(), MAX_LINKS);
    }

    /// A message's body renders to at most six times its length, plus a little: what a
    /// socket's backlog counts for it (see `views::article_weight`).
    #[test]
    fn a_body_renders_to_a_bounded_size() {
        let worst = [
            "\"".repeat(4000),
            "> ".repeat(2000),
            "*a*".repeat(1333),
            "`a`".repeat(1333),
            "~~a~~".repeat(800),
            "- a\n".repeat(1000),
            "- \n".repeat(1333),
            "1. a\n".repeat(800),
            "[a](http://a.b)".repeat(266),
            "<http://a.b>".repeat(333),
            "---\n".repeat(1000),
            "a  \nb".repeat(800),
            "\"\"\"\"\"\"[\"](http://\"\"\")".repeat(180),
        ];
        for text in worst {
            let html = show(&text);
            assert!(
                html.len() <= 6 * text.len() + 400,
                "{} bytes from {} of {:?}",
                html.len(),
                text.len(),
                &text[..20]
            );
        }
    }
}
