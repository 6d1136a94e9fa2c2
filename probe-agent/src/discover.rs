//! What a page makes a browser fetch: the sub-resources referenced by an HTML document
//! and by its stylesheets.
//!
//! The HTML goes through a real HTML5 parser (`scraper`, on Servo's `html5ever`), so
//! markup that is only valid after the spec's error recovery (unquoted attributes,
//! missing end tags, comments around references) is read as a browser reads it.
//! Stylesheets (fetched ones, `<style>` elements and `style` attributes) go through
//! `cssparser`'s tokenizer, so `url()` and `@import` are found as tokens, never inside a
//! comment or a string that merely looks like one. No regular expressions.
//!
//! What counts, and why (a browser's first visit, one 1x display 1366 px wide):
//! - `<link href>` with `rel` `stylesheet` (not `alternate stylesheet`), `icon`,
//!   `preload` (its `as` gives the type) or `modulepreload`. Prefetch hints are for a
//!   later navigation and are left out.
//! - `<script src>` with no `type`, a JavaScript type or `module` (a template type is
//!   not fetched by browsers either).
//! - `<img>`: one candidate, the one a 1x display picks from `srcset` (the `1x`
//!   density, else the smallest density above 1, else the narrowest `w` width of at
//!   least 1366 px, else the widest), falling back to `src`; `sizes` and media queries
//!   are not evaluated. In a `<picture>`, the first `<source srcset>` whose `type` is
//!   absent or an image type is chosen instead of the `<img>`, as a browser does.
//! - `<source src>` (audio and video), `<video poster>`.
//! - `url()` in `<style>` elements and `style` attributes; `url()` and `@import` in
//!   fetched stylesheets (imports are stylesheets and are parsed in turn). A `url()`
//!   inside `@font-face` is a font.
//! - `<base href>` changes what relative references resolve against.
//!
//! Only `http` and `https` references count (`data:` needs no fetch); fragments are
//! dropped and each URL counts once ([`Discovered::dedupe`] keeps the first type seen).

use cssparser::{ParseError, Parser, ParserInput, Token};
use lastmile_protocol::ResourceType;
use scraper::{ElementRef, Html, Selector};
use url::Url;

/// One sub-resource to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Absolute, without fragment.
    pub url: Url,
    pub kind: ResourceType,
}

impl Discovered {
    /// Keeps the first occurrence of each URL, in document order.
    pub fn dedupe(found: Vec<Discovered>) -> Vec<Discovered> {
        let mut seen = std::collections::HashSet::new();
        found
            .into_iter()
            .filter(|d| seen.insert(d.url.as_str().to_owned()))
            .collect()
    }
}

/// The most of a document discovery reads, bytes: far beyond any real page's markup.
const MAX_HTML_BYTES: usize = 4 << 20;

/// How deep elements may nest before discovery stops reading the document. The HTML
/// parser scans its stack of open elements for most tags, so a document of nested
/// `<div>`s costs the square of its length (40,000 of them took 90 s with unoptimised dependencies, and the parse
/// cannot be interrupted); Blink builds no DOM deeper than 512 either.
const MAX_HTML_DEPTH: usize = 512;

/// Elements that never nest in themselves: void ones, and those whose end tag is
/// implied by the next of their kind or their parent's end (`<li>` after `<li>`).
const NOT_NESTING: [&str; 37] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen", "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th",
    "thead", "tbody", "tfoot", "colgroup", "caption", "rb", "rt", "rtc", "rp", "html", "head",
    "body", "a",
];

/// HTML start tags that end SVG or MathML content (the HTML standard's "any other
/// start tag" rules in foreign content), so their `/>` no longer closes them.
const BREAKS_OUT_OF_FOREIGN: [&str; 44] = [
    "b",
    "big",
    "blockquote",
    "body",
    "br",
    "center",
    "code",
    "dd",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "hr",
    "i",
    "img",
    "li",
    "listing",
    "menu",
    "meta",
    "nobr",
    "ol",
    "p",
    "pre",
    "ruby",
    "s",
    "small",
    "span",
    "strong",
    "strike",
    "sub",
    "sup",
    "table",
    "tt",
    "u",
    "ul",
    "var",
];

/// Elements whose content is text up to their end tag, not markup.
const RAW_TEXT: [&str; 9] = [
    "script",
    "style",
    "textarea",
    "title",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
    "plaintext",
];

/// The part of `text` discovery parses: at most [`MAX_HTML_BYTES`], and only up to the
/// first tag that would nest elements deeper than [`MAX_HTML_DEPTH`], by a linear scan
/// of the tags (comments and raw text skipped; inside `<svg>` and `<math>` a `/>`
/// closes its element, elsewhere it is ignored, as HTML parsers do). The count errs
/// deep (a misnested end tag is not matched), which only ends discovery earlier in a
/// document no browser would render sanely either.
fn parseable(text: &str) -> &str {
    let mut end = text.len().min(MAX_HTML_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    let bytes = text.as_bytes();
    let find = |from: usize, what: &[u8]| {
        bytes
            .get(from..)?
            .windows(what.len())
            .position(|w| w.eq_ignore_ascii_case(what))
            .map(|at| from + at)
    };
    let (mut depth, mut foreign) = (0usize, 0usize);
    let mut at = 0;
    // Bounded: every turn moves `at` forward.
    while let Some(open) = find(at, b"<") {
        if bytes[open + 1..].starts_with(b"!--") {
            at = find(open + 4, b"-->").map_or(bytes.len(), |e| e + 3);
            continue;
        }
        let closing = bytes.get(open + 1) == Some(&b'/');
        let from = open + 1 + usize::from(closing);
        let len = bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-')
            .count();
        if len == 0 || !bytes[from].is_ascii_alphabetic() {
            at = open + 1;
            continue;
        }
        let name = text[from..from + len].to_ascii_lowercase();
        let tag_end = find(from + len, b">").map_or(bytes.len(), |e| e + 1);
        at = tag_end;
        if NOT_NESTING.contains(&name.as_str()) {
            continue;
        }
        let is_foreign_root = name == "svg" || name == "math";
        if closing {
            depth = depth.saturating_sub(1);
            if is_foreign_root {
                foreign = foreign.saturating_sub(1);
            }
            continue;
        }
        if foreign > 0 && BREAKS_OUT_OF_FOREIGN.contains(&name.as_str()) {
            // The parser leaves SVG and MathML at these, and nests them as HTML.
            foreign = 0;
        }
        if foreign > 0 && bytes[..tag_end].ends_with(b"/>") {
            continue;
        }
        if RAW_TEXT.contains(&name.as_str()) {
            let close = format!("</{name}");
            at = find(tag_end, close.as_bytes()).unwrap_or(bytes.len());
            continue;
        }
        depth += 1;
        if is_foreign_root {
            foreign += 1;
        }
        if depth > MAX_HTML_DEPTH {
            return &text[..open];
        }
    }
    text
}

/// The display width `srcset` candidates are chosen for, CSS pixels.
const VIEWPORT_WIDTH: u32 = 1366;

/// The sub-resources of an HTML document served from `document_url` (after
/// redirects), deduplicated, in document order.
pub fn html(text: &str, document_url: &Url) -> Vec<Discovered> {
    let doc = Html::parse_document(parseable(text));
    let base = select(&doc, "base[href]")
        .first()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| document_url.join(href.trim()).ok())
        .unwrap_or_else(|| document_url.clone());
    let mut found = Vec::new();
    let add = |href: &str, kind: ResourceType, found: &mut Vec<Discovered>| {
        if let Some(url) = resolve(&base, href) {
            found.push(Discovered { url, kind });
        }
    };

    // One walk over every element keeps document order.
    for el in select(&doc, "*") {
        let v = el.value();
        match v.name() {
            "link" => {
                let Some(href) = v.attr("href") else { continue };
                let rel: Vec<String> = v
                    .attr("rel")
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect();
                let has = |r: &str| rel.iter().any(|x| x == r);
                let kind = if has("stylesheet") && !has("alternate") {
                    Some(ResourceType::Stylesheet)
                } else if has("icon") {
                    Some(ResourceType::Icon)
                } else if has("modulepreload") {
                    Some(ResourceType::Script)
                } else if has("preload") {
                    Some(preload_kind(v.attr("as").unwrap_or_default()))
                } else {
                    None
                };
                if let Some(kind) = kind {
                    add(href, kind, &mut found);
                }
            }
            "script" => {
                let Some(src) = v.attr("src") else { continue };
                if is_script_type(v.attr("type").unwrap_or_default()) {
                    add(src, ResourceType::Script, &mut found);
                }
            }
            "img" => {
                if in_picture_with_source(&el) {
                    continue;
                }
                if let Some(src) = pick_image(v.attr("srcset"), v.attr("src")) {
                    add(&src, ResourceType::Image, &mut found);
                }
            }
            "source" => {
                if let Some(src) = v.attr("src") {
                    add(src, ResourceType::Media, &mut found);
                } else if is_chosen_picture_source(&el) {
                    if let Some(src) = pick_image(v.attr("srcset"), None) {
                        add(&src, ResourceType::Image, &mut found);
                    }
                }
            }
            "video" => {
                if let Some(poster) = v.attr("poster") {
                    add(poster, ResourceType::Image, &mut found);
                }
            }
            "style" => {
                let css: String = el.text().collect();
                for r in css_references(&css) {
                    add(&r.href, r.kind, &mut found);
                }
            }
            _ => {}
        }
        if let Some(style) = v.attr("style") {
            for r in css_references(style) {
                add(&r.href, r.kind, &mut found);
            }
        }
    }
    Discovered::dedupe(found)
}

/// The sub-resources a stylesheet served from `sheet_url` references, deduplicated.
pub fn stylesheet(text: &str, sheet_url: &Url) -> Vec<Discovered> {
    Discovered::dedupe(
        css_references(text)
            .into_iter()
            .filter_map(|r| resolve(sheet_url, &r.href).map(|url| Discovered { url, kind: r.kind }))
            .collect(),
    )
}

fn select<'a>(doc: &'a Html, selector: &str) -> Vec<ElementRef<'a>> {
    match Selector::parse(selector) {
        Ok(s) => doc.select(&s).collect(),
        Err(_) => Vec::new(),
    }
}

/// An absolute http(s) URL without fragment, or `None` for what needs no fetch.
fn resolve(base: &Url, href: &str) -> Option<Url> {
    let href = href.trim();
    if href.is_empty() {
        return None;
    }
    let mut url = base.join(href).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_fragment(None);
    Some(url)
}

fn preload_kind(as_: &str) -> ResourceType {
    match as_.trim().to_ascii_lowercase().as_str() {
        "style" => ResourceType::Stylesheet,
        "script" => ResourceType::Script,
        "image" => ResourceType::Image,
        "font" => ResourceType::Font,
        "audio" | "video" | "track" => ResourceType::Media,
        _ => ResourceType::Other,
    }
}

fn is_script_type(t: &str) -> bool {
    let t = t.trim().to_ascii_lowercase();
    t.is_empty()
        || t == "module"
        || t.ends_with("/javascript")
        || t.ends_with("/ecmascript")
        || t == "text/jscript"
}

fn is_image_type(t: Option<&str>) -> bool {
    t.is_none_or(|t| {
        let t = t.trim().to_ascii_lowercase();
        t.is_empty() || t.starts_with("image/")
    })
}

/// Whether this `<source>` is the one its `<picture>` chooses.
fn is_chosen_picture_source(el: &ElementRef<'_>) -> bool {
    let Some(picture) = el.parent().and_then(ElementRef::wrap) else {
        return false;
    };
    picture.value().name() == "picture"
        && chosen_source(&picture).is_some_and(|chosen| chosen.id() == el.id())
}

/// Whether this `<img>` sits in a `<picture>` that chose one of its sources instead.
fn in_picture_with_source(el: &ElementRef<'_>) -> bool {
    el.parent()
        .and_then(ElementRef::wrap)
        .is_some_and(|p| p.value().name() == "picture" && chosen_source(&p).is_some())
}

fn chosen_source<'a>(picture: &ElementRef<'a>) -> Option<ElementRef<'a>> {
    picture.children().filter_map(ElementRef::wrap).find(|c| {
        c.value().name() == "source"
            && c.value().attr("srcset").is_some()
            && is_image_type(c.value().attr("type"))
    })
}

/// One `srcset` candidate: URL and descriptor.
#[derive(Debug, Clone, PartialEq)]
enum Descriptor {
    Density(f64),
    Width(u32),
}

/// Parses `srcset` as the HTML spec's candidate list: a URL runs to whitespace (a
/// trailing comma ends the candidate), descriptors run to the next comma.
fn srcset(value: &str) -> Vec<(String, Descriptor)> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let (mut url, after) = rest.split_at(end);
        rest = after;
        let mut descriptor = String::new();
        if url.ends_with(',') {
            url = url.trim_end_matches(',');
        } else {
            let stop = rest.find(',').unwrap_or(rest.len());
            descriptor = rest[..stop].trim().to_owned();
            rest = &rest[stop..];
        }
        let d = descriptor.to_ascii_lowercase();
        let parsed = if d.is_empty() {
            Some(Descriptor::Density(1.0))
        } else if let Some(x) = d.strip_suffix('x') {
            x.parse().ok().map(Descriptor::Density)
        } else if let Some(w) = d.strip_suffix('w') {
            w.parse().ok().map(Descriptor::Width)
        } else {
            None
        };
        if let (Some(p), false) = (parsed, url.is_empty()) {
            out.push((url.to_owned(), p));
        }
    }
}

/// The image a 1x display `VIEWPORT_WIDTH` wide fetches for `srcset` and `src`.
fn pick_image(srcset_attr: Option<&str>, src: Option<&str>) -> Option<String> {
    let mut candidates = srcset_attr.map(srcset).unwrap_or_default();
    let has_width = candidates
        .iter()
        .any(|(_, d)| matches!(d, Descriptor::Width(_)));
    let has_1x = candidates
        .iter()
        .any(|(_, d)| matches!(d, Descriptor::Density(x) if *x == 1.0));
    // `src` is the 1x candidate unless srcset has one (or uses widths).
    if let Some(src) = src.filter(|s| !s.trim().is_empty()) {
        if !has_width && !has_1x {
            candidates.push((src.trim().to_owned(), Descriptor::Density(1.0)));
        }
    }
    if candidates.is_empty() {
        return None;
    }
    if has_width {
        let widths: Vec<(&String, u32)> = candidates
            .iter()
            .filter_map(|(u, d)| match d {
                Descriptor::Width(w) => Some((u, *w)),
                Descriptor::Density(_) => None,
            })
            .collect();
        let fitting = widths
            .iter()
            .filter(|(_, w)| *w >= VIEWPORT_WIDTH)
            .min_by_key(|(_, w)| *w);
        let chosen = fitting.or_else(|| widths.iter().max_by_key(|(_, w)| *w));
        return chosen.map(|(u, _)| (*u).clone());
    }
    let densities = candidates.iter().filter_map(|(u, d)| match d {
        Descriptor::Density(x) => Some((u, *x)),
        Descriptor::Width(_) => None,
    });
    let (mut at_least, mut below): (Vec<_>, Vec<_>) = densities.partition(|(_, x)| *x >= 1.0);
    at_least.sort_by(|a, b| a.1.total_cmp(&b.1));
    below.sort_by(|a, b| b.1.total_cmp(&a.1));
    at_least
        .first()
        .or_else(|| below.first())
        .map(|(u, _)| (*u).clone())
}

/// A reference found in CSS, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CssReference {
    pub href: String,
    pub kind: ResourceType,
}

/// The `url()` and `@import` references of a stylesheet (or a declaration list), in
/// order, by walking `cssparser`'s tokens and nested blocks.
pub fn css_references(text: &str) -> Vec<CssReference> {
    let mut input = ParserInput::new(text);
    let mut parser = Parser::new(&mut input);
    let mut out = Vec::new();
    walk(&mut parser, Context::Rules, 0, &mut out);
    out
}

/// Blocks and functions nested deeper than this are skipped unread: real stylesheets
/// nest a few levels (`@media { .a { background: url(x) } }`, `calc(var(--x))`), and
/// each level is a frame of the walk's recursion, which 7,000 `(` would overflow (a
/// stack overflow aborts the agent, taking every measurement with it).
const MAX_CSS_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Rules,
    FontFace,
}

fn walk(p: &mut Parser<'_, '_>, context: Context, depth: usize, out: &mut Vec<CssReference>) {
    // Skipping a block is cssparser's own loop, not a recursion of ours.
    let inside = |p: &mut Parser<'_, '_>, context: Context, out: &mut Vec<CssReference>| {
        let _: Result<(), ParseError<'_, ()>> = p.parse_nested_block(|p| {
            if depth < MAX_CSS_DEPTH {
                walk(p, context, depth + 1, out);
            }
            Ok(())
        });
    };
    // What the previous at-keyword announced: `@import` takes a string or url() as a
    // stylesheet, `@font-face`'s block holds fonts.
    let mut import = false;
    let mut font_face_next = false;
    loop {
        let token = match p.next() {
            Ok(t) => t.clone(),
            Err(_) => return,
        };
        let after_import = std::mem::take(&mut import);
        let kind_here = || {
            if after_import {
                ResourceType::Stylesheet
            } else if context == Context::FontFace {
                ResourceType::Font
            } else {
                ResourceType::Other
            }
        };
        match token {
            Token::AtKeyword(name) => {
                import = name.eq_ignore_ascii_case("import");
                font_face_next = name.eq_ignore_ascii_case("font-face");
            }
            Token::UnquotedUrl(href) => out.push(CssReference {
                href: href.as_ref().to_owned(),
                kind: refine(kind_here(), href.as_ref()),
            }),
            Token::QuotedString(href) if after_import => out.push(CssReference {
                href: href.as_ref().to_owned(),
                kind: ResourceType::Stylesheet,
            }),
            Token::Function(name) if name.eq_ignore_ascii_case("url") => {
                let href: Result<String, ParseError<'_, ()>> =
                    p.parse_nested_block(|p| Ok(p.expect_string()?.as_ref().to_owned()));
                if let Ok(href) = href {
                    out.push(CssReference {
                        kind: refine(kind_here(), &href),
                        href,
                    });
                }
            }
            Token::CurlyBracketBlock => {
                let inner = if std::mem::take(&mut font_face_next) {
                    Context::FontFace
                } else {
                    context
                };
                inside(p, inner, out);
            }
            Token::Function(_) | Token::ParenthesisBlock | Token::SquareBracketBlock => {
                inside(p, context, out);
            }
            Token::Semicolon => font_face_next = false,
            _ => {}
        }
    }
}

/// A `url()` outside `@import` and `@font-face` is usually an image (backgrounds,
/// list markers, cursors); a font file by its extension is a font wherever it is.
fn refine(kind: ResourceType, href: &str) -> ResourceType {
    if kind != ResourceType::Other {
        return kind;
    }
    let path = href.split(['?', '#']).next().unwrap_or_default();
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "woff" | "woff2" | "ttf" | "otf" | "eot" => ResourceType::Font,
        "css" => ResourceType::Stylesheet,
        _ => ResourceType::Image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://shop.example/catalog/index.html").unwrap()
    }

    fn urls(found: &[Discovered]) -> Vec<(String, ResourceType)> {
        found.iter().map(|d| (d.url.to_string(), d.kind)).collect()
    }

    #[test]
    fn html_references_are_found_typed_and_resolved() {
        let page = r#"<!doctype html><html><head>
            <link rel="stylesheet" href="/css/site.css">
            <link rel="alternate stylesheet" href="/css/alt.css">
            <link rel="shortcut icon" href="favicon.ico">
            <link rel=preload as=font href="/f/a.woff2" crossorigin>
            <link rel="modulepreload" href="mod.js">
            <link rel="prefetch" href="/next.html">
            <script src="app.js"></script>
            <script type="text/template" src="tpl.html"></script>
            <script>var notAUrl = "url(/not-fetched.png)";</script>
            <style>body { background: url("bg.png") } /* url(commented.png) */</style>
            </head><body>
            <img src="img/a.png">
            <video poster="/poster.jpg"><source src="/clip.mp4" type="video/mp4"></video>
            <div style="background-image: url(tile.gif)"></div>
            <a href="/elsewhere.html">not fetched</a>
            <img src="data:image/png;base64,AAAA">
            <img src="img/a.png#again">
            </body></html>"#;
        let found = html(page, &base());
        assert_eq!(
            urls(&found),
            vec![
                (
                    "https://shop.example/css/site.css".into(),
                    ResourceType::Stylesheet
                ),
                (
                    "https://shop.example/catalog/favicon.ico".into(),
                    ResourceType::Icon
                ),
                ("https://shop.example/f/a.woff2".into(), ResourceType::Font),
                (
                    "https://shop.example/catalog/mod.js".into(),
                    ResourceType::Script
                ),
                (
                    "https://shop.example/catalog/app.js".into(),
                    ResourceType::Script
                ),
                (
                    "https://shop.example/catalog/bg.png".into(),
                    ResourceType::Image
                ),
                (
                    "https://shop.example/catalog/img/a.png".into(),
                    ResourceType::Image
                ),
                (
                    "https://shop.example/poster.jpg".into(),
                    ResourceType::Image
                ),
                ("https://shop.example/clip.mp4".into(), ResourceType::Media),
                (
                    "https://shop.example/catalog/tile.gif".into(),
                    ResourceType::Image
                ),
            ]
        );
    }

    #[test]
    fn base_href_changes_what_relative_references_resolve_against() {
        let page = r#"<html><head><base href="https://cdn.example/v2/"></head>
            <body><img src="logo.png"><script src="/root.js"></script></body></html>"#;
        assert_eq!(
            urls(&html(page, &base())),
            vec![
                (
                    "https://cdn.example/v2/logo.png".into(),
                    ResourceType::Image
                ),
                ("https://cdn.example/root.js".into(), ResourceType::Script),
            ]
        );
    }

    #[test]
    fn srcset_picks_what_a_1x_display_would_fetch() {
        let cases = [
            (Some("a-1x.png 1x, a-2x.png 2x"), Some("a.png"), "a-1x.png"),
            (Some("a-2x.png 2x"), Some("a.png"), "a.png"),
            (Some("a-2x.png 2x, a-3x.png 3x"), None, "a-2x.png"),
            (
                Some("s.jpg 640w, m.jpg 1400w, l.jpg 2800w"),
                Some("x.jpg"),
                "m.jpg",
            ),
            (Some("s.jpg 640w, m.jpg 1000w"), None, "m.jpg"),
            // A comma inside a URL stays in it; a trailing comma ends the candidate.
            (Some("img/a,b.png 1x, c.png, d.png 2x"), None, "img/a,b.png"),
            (None, Some(" plain.png "), "plain.png"),
        ];
        for (set, src, expected) in cases {
            assert_eq!(
                pick_image(set, src).as_deref(),
                Some(expected),
                "{set:?} {src:?}"
            );
        }
        assert_eq!(pick_image(None, None), None);
    }

    #[test]
    fn a_picture_fetches_its_chosen_source_not_its_img() {
        let page = r#"<picture>
              <source srcset="hero.avif 1x, hero@2.avif 2x" type="image/avif">
              <source srcset="hero.webp" type="image/webp">
              <img src="hero.jpg">
            </picture>
            <picture><source srcset="x.svg" type="text/html"><img src="fallback.png"></picture>"#;
        assert_eq!(
            urls(&html(page, &base())),
            vec![
                (
                    "https://shop.example/catalog/hero.avif".into(),
                    ResourceType::Image
                ),
                (
                    "https://shop.example/catalog/fallback.png".into(),
                    ResourceType::Image
                ),
            ]
        );
    }

    #[test]
    fn each_url_counts_once() {
        let page = r#"<img src="/a.png"><img src="https://shop.example/a.png">
            <img src="../a.png"><link rel=preload as=image href="/a.png#x">
            <img src="/b.png">"#;
        assert_eq!(
            urls(&html(page, &base())),
            vec![
                ("https://shop.example/a.png".into(), ResourceType::Image),
                ("https://shop.example/b.png".into(), ResourceType::Image),
            ]
        );
    }

    #[test]
    fn css_urls_and_imports_are_tokens_not_text() {
        let css = r#"
            @import "reset.css";
            @import url(theme.css) screen;
            /* url(in-a-comment.png) @import "nope.css"; */
            @font-face { font-family: Shop; src: url("fonts/shop.woff2") format("woff2"),
                                                 url(fonts/shop.ttf); }
            body { background: #fff url( 'img/bg.png' ) no-repeat; content: "url(string.png)"; }
            .x { background-image: image-set(url(a.png) 1x); cursor: url(c.cur), auto; }
            @media (min-width: 10px) { .y { background: url(media.png) } }
            .z { background: url(data:image/png;base64,AAAA) }
        "#;
        let refs: Vec<(String, ResourceType)> = css_references(css)
            .into_iter()
            .map(|r| (r.href, r.kind))
            .collect();
        assert_eq!(
            refs,
            vec![
                ("reset.css".into(), ResourceType::Stylesheet),
                ("theme.css".into(), ResourceType::Stylesheet),
                ("fonts/shop.woff2".into(), ResourceType::Font),
                ("fonts/shop.ttf".into(), ResourceType::Font),
                ("img/bg.png".into(), ResourceType::Image),
                ("a.png".into(), ResourceType::Image),
                ("c.cur".into(), ResourceType::Image),
                ("media.png".into(), ResourceType::Image),
                ("data:image/png;base64,AAAA".into(), ResourceType::Image),
            ]
        );
        // Resolved against the stylesheet's own URL; data: needs no fetch.
        let sheet = Url::parse("https://shop.example/css/site.css").unwrap();
        let found = stylesheet(css, &sheet);
        assert_eq!(found.len(), 8);
        assert_eq!(
            found[2].url.as_str(),
            "https://shop.example/css/fonts/shop.woff2"
        );
    }

    fn paths(found: &[Discovered]) -> Vec<String> {
        found.iter().map(|d| d.url.path().to_owned()).collect()
    }

    #[test]
    fn deeply_nested_markup_ends_discovery_instead_of_the_agent() {
        // 100,000 nested divs: the parser's cost is the square of the depth (it would
        // run for hours); discovery reads up to the 512th level.
        let deep = format!(
            r#"<img src="early.png">{}<img src="late.png">"#,
            "<div>".repeat(100_000)
        );
        assert_eq!(paths(&html(&deep, &base())), ["/catalog/early.png"]);
        // `<div/>` opens a div in HTML, inside an <svg> too (it leaves the SVG).
        let sneaky = format!(
            r#"<svg><img src="early.png">{}<img src="late.png">"#,
            "<div/>".repeat(100_000)
        );
        assert_eq!(paths(&html(&sneaky, &base())), ["/catalog/early.png"]);
        // Real pages nest far less, and SVG's self-closed shapes, unclosed list items
        // and paragraphs, comments and scripts do not nest at all.
        let shapes = format!(
            r#"<ul>{}</ul><svg>{}</svg><!-- {} --><script>{}</script><img src="after.png">"#,
            "<li><p>item".repeat(2_000),
            r#"<path d="M0 0"/>"#.repeat(2_000),
            "<div>".repeat(2_000),
            "'<div>'".repeat(2_000),
        );
        assert_eq!(paths(&html(&shapes, &base())), ["/catalog/after.png"]);
        let nested = format!(r#"{}<img src="inside.png">"#, "<div><span>".repeat(200));
        assert_eq!(paths(&html(&nested, &base())), ["/catalog/inside.png"]);
    }

    #[test]
    fn deeply_nested_css_is_skipped_not_recursed_into() {
        // 100,000 open parentheses had overflowed the walk's stack, which aborts the
        // agent; blocks past 32 levels are skipped by cssparser's own loop.
        let sheet = format!(
            r#"a {{ background: url(shallow.png) }} b {{ x: {} }}"#,
            "(".repeat(100_000)
        );
        let found: Vec<String> = css_references(&sheet).into_iter().map(|r| r.href).collect();
        assert_eq!(found, ["shallow.png"]);
        let page = format!(
            r#"<div style="background: url(a.png); x: {}"></div>"#,
            "(".repeat(100_000)
        );
        assert_eq!(paths(&html(&page, &base())), ["/catalog/a.png"]);
        // Ordinary nesting is read through.
        let media =
            "@media screen { @supports (display: grid) { .a { background: url(deep.png) } } }";
        let found: Vec<String> = css_references(media).into_iter().map(|r| r.href).collect();
        assert_eq!(found, ["deep.png"]);
    }
}
