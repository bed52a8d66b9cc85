"""Seller-written text (a listing's description) made safe to show, with nh3 (Ammonia).

``description_html``: the description's Markdown rendered (markdown-it, CommonMark), then
cleaned: a small set of formatting tags survives; no images, forms, inputs, frames, scripts
or styles; links only absolute http(s), with rel="noopener nofollow". The result is one line
(newlines as ``&#10;``), so a Markdown renderer it is handed to (Gradio's) takes it as one raw
HTML block and finds no Markdown of its own in it. ``plain_text``: rendered, every tag removed
(for excerpts, which an HTML tag cut in half would break), to be escaped like any text.
"""

from __future__ import annotations

import html

import nh3
from markdown_it import MarkdownIt

TAGS = {"a", "b", "strong", "i", "em", "code", "pre", "p", "br", "ul", "ol", "li",
        "blockquote", "h3", "h4"}
ATTRIBUTES = {"a": {"href", "title"}}
SCHEMES = {"http", "https"}
_markdown = MarkdownIt("commonmark")


def _absolute_links(tag: str, attribute: str, value: str) -> str | None:
    if tag == "a" and attribute == "href" and not value.lower().startswith(
            ("http://", "https://")):
        return None
    return value


def safe_html(text: str) -> str:
    """HTML ``text`` that loads nothing and submits nothing: the allowed tags only."""
    cleaned = nh3.clean(text, tags=TAGS, attributes=ATTRIBUTES, url_schemes=SCHEMES,
                        link_rel="noopener nofollow", strip_comments=True,
                        attribute_filter=_absolute_links)
    return cleaned.replace("\r", "").replace("\n", "&#10;")


def description_html(text: str) -> str:
    """A listing's Markdown description as safe HTML (``safe_html``)."""
    return safe_html(_markdown.render(text))


def plain_text(text: str) -> str:
    """A listing's Markdown description as plain (unescaped) text: rendered, then every tag
    removed (images and links with it, their text kept)."""
    return html.unescape(nh3.clean(_markdown.render(text), tags=set(), attributes={},
                                   strip_comments=True)).strip()
