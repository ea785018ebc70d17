"""Wikipedia XML dumps (.xml / .xml.bz2, local or s3://) to clean article text, streamed.

Pages are parsed one at a time with xml.etree.iterparse and freed; only main-namespace
(ns 0) pages that are not redirects are kept. Wikitext is reduced with mwparserfromhell:
templates, <ref>, tables, files/images, categories, interlanguage links, comments and
headings are dropped; links keep their visible text.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Iterator

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink

from bertspeed.data_prep.storage import StorageError, open_binary

_DROP_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)
_DROP_TAGS = {"ref", "table", "tr", "td", "th", "gallery", "math", "timeline", "imagemap", "score", "syntaxhighlight",
              "source", "pre", "references", "nowiki", "div", "noinclude", "includeonly"}
_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|<ref|</?[a-z]+[^>]*>|^[|!{].*$", re.I | re.M)
_BLANKS = re.compile(r"\n\s*\n+")


def clean_wikitext(text: str) -> str:
    """Article prose as paragraphs separated by blank lines."""
    plain = _LEFTOVER.sub("", "".join(_render(mwparserfromhell.parse(text))))
    paragraphs = [" ".join(p.split()) for p in _BLANKS.split(plain)]
    return "\n\n".join(p for p in paragraphs if len(p) > 1)


def _render(code, out=None) -> list[str]:
    """Visible text of parsed wikitext, in one linear walk."""
    out = [] if out is None else out
    for node in code.nodes:
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, Wikilink):
            if not _DROP_LINK.match(str(node.title)):
                _render(node.title if node.text is None else node.text, out)
        elif isinstance(node, ExternalLink):
            if node.title is not None:
                _render(node.title, out)
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Tag):
            if str(node.tag).lower() not in _DROP_TAGS and node.contents is not None:
                _render(node.contents, out)
        elif isinstance(node, Heading):
            out.append("\n\n")
        # Templates, comments, arguments: no prose
    return out


def iter_wiki_pages(uri: str) -> Iterator[tuple[str, str]]:
    """(title, raw wikitext) for every article page (namespace 0, not a redirect) of a dump."""
    with open_binary(uri) as stream:
        try:
            root = None
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = elem
                if event != "end" or _local(elem.tag) != "page":
                    continue
                title, text = _article(elem)
                root.clear()  # drop finished pages: memory stays flat over the whole dump
                if text is not None:
                    yield title, text
        except (ET.ParseError, OSError, EOFError) as err:
            raise StorageError(f"{uri}: not a readable Wikipedia XML dump ({err})") from None


def iter_wiki_articles(uri: str) -> Iterator[tuple[str, str]]:
    """(title, clean text) for every article page of a dump."""
    for title, text in iter_wiki_pages(uri):
        cleaned = clean_wikitext(text)
        if cleaned:
            yield title, cleaned


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _article(page) -> tuple[str, str | None]:
    fields = {_local(child.tag): child for child in page}
    title = (fields["title"].text or "") if "title" in fields else ""
    if "redirect" in fields or "ns" not in fields or (fields["ns"].text or "").strip() != "0":
        return title, None
    revision = fields.get("revision")
    text = None
    if revision is not None:
        for child in revision:
            if _local(child.tag) == "text":
                text = child.text or ""
    if text is not None and text.lstrip().lower().startswith("#redirect"):
        return title, None
    return title, text
