"""Markup strippers that turn documentation sources into plain prose for the default corpus.

Each function takes the source text of one file and returns readable text: markup syntax goes, the
words stay. They are deliberately simple line-based filters (no parser dependencies); what they miss
is a little noise in a training corpus, not a correctness problem, since the byte accounting audits
the tokens actually written, whatever text they came from.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# -- reStructuredText (Linux kernel docs, Python docs) --------------------------------------------

_REST_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_REST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(?:([\w:-]+)::|\[|_|\|)?")
# Directives whose body is code, markup or machinery rather than prose; comments ('.. text') and
# these are dropped with their bodies. Other directives (note, function, class, option...) keep
# their argument line and prose body: in API docs that is most of the text.
_REST_DROP_BODY = {"", "code-block", "code", "sourcecode", "literalinclude", "doctest", "testcode",
                   "testoutput", "testsetup", "testcleanup", "toctree", "kernel-doc", "kernel-include",
                   "kernel-figure", "kernel-render", "kernel-feat", "kernel-abi", "image", "figure", "include",
                   "raw", "math", "productionlist", "highlight", "index", "csv-table", "list-table",
                   "flat-table", "table", "graphviz", "contents", "sectnum", "tabularcolumns", "cssclass",
                   "maxdepth", "only", "ifconfig", "impl-detail", "audit-event", "availability"}
_REST_ROLE = re.compile(r":[\w:+.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_REST_LINK = re.compile(r"`([^`<]+?)(?:\s*<[^>]*>)?`__?")
_REST_LITERAL = re.compile(r"``(.+?)``")
_REST_EMPH = re.compile(r"(\*\*|\*)(\S.*?\S|\S)\1")
_REST_FIELD = re.compile(r"^\s*:[\w -]+:\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def strip_rest(text: str) -> str:
    """reST -> prose: drop adornments, comments, code and non-prose directives; unwrap roles."""
    out: list[str] = []
    skip_indent = -1      # >= 0 while inside a dropped block indented deeper than this
    literal_indent = -1   # >= 0 after a paragraph ending in '::': a deeper block that follows is code
    for line in text.splitlines():
        stripped = line.strip()
        if skip_indent >= 0:
            if not stripped or _indent(line) > skip_indent:
                continue
            skip_indent = -1
        if literal_indent >= 0 and stripped:
            if _indent(line) > literal_indent:
                skip_indent = literal_indent
                literal_indent = -1
                continue
            literal_indent = -1
        m = _REST_DIRECTIVE.match(line)
        if m:
            name = (m.group(2) or "").split(":")[-1]
            if name not in _REST_DROP_BODY:
                rest = line[m.end():].strip()
                if rest:
                    out.append(rest)
                continue
            skip_indent = _indent(line)
            continue
        if _REST_ADORNMENT.match(line) or _REST_FIELD.match(line):
            continue
        if stripped.endswith("::"):
            literal_indent = _indent(line)
            line = line.rstrip()[:-1] if stripped != "::" else ""
        line = _REST_ROLE.sub(r"\1", line)
        line = _REST_LINK.sub(r"\1", line)
        line = _REST_LITERAL.sub(r"\1", line)
        line = _REST_EMPH.sub(r"\2", line)
        out.append(line.strip())
    return tidy(out)


# -- POD (Perl docs) ----------------------------------------------------------------------------

_POD_ESC = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def _pod_inline(line: str) -> str:
    line = re.sub(r"E<(\w+)>", lambda m: _POD_ESC.get(m.group(1), html.unescape(f"&{m.group(1)};")), line)
    for _ in range(4):  # nested codes unwrap from the inside out
        new = re.sub(r"L<([^<>|]*)\|[^<>]*>", r"\1", line)
        new = re.sub(r"[A-Z]<<+\s+(.*?)\s+>+>", r"\1", new)
        new = re.sub(r"[A-Z]<([^<>]*)>", r"\1", new)
        if new == line:
            break
        line = new
    return line


def strip_pod(text: str) -> str:
    """POD -> prose: headings and items keep their text, verbatim (indented) blocks and =begin go."""
    out: list[str] = []
    in_pod = text.startswith("=")  # .pm files open with code; POD starts at the first =command
    in_begin = False
    for line in text.splitlines():
        if line.startswith("="):
            cmd, _, arg = line[1:].partition(" ")
            if cmd == "cut":
                in_pod = False
            elif cmd == "begin":
                in_pod, in_begin = True, True
            elif cmd == "end":
                in_begin = False
            else:
                in_pod = True
                if cmd.startswith("head") or cmd == "item":
                    arg = arg.strip()
                    if arg and arg not in ("*", "-") and not arg.isdigit():
                        out.append(_pod_inline(arg))
                        out.append("")
            continue
        if not in_pod or in_begin:
            continue
        if line[:1] in (" ", "\t"):
            continue
        out.append(_pod_inline(line).strip())
    return tidy(out)


# -- AsciiDoc (git docs) --------------------------------------------------------------------------

_ADOC_DELIM = re.compile(r"^(-{4,}|\.{4,}|={4,}|_{4,}|\+{4,}|\*{4,}|/{4,}|~{3,})\s*$")
_ADOC_ATTR = re.compile(r"^(:[\w-]+:.*|\[[^\]]*\]|include::.*|ifdef::.*|ifndef::.*|endif::.*|//.*)$")
_ADOC_LINKGIT = re.compile(r"linkgit:([\w-]+)\[\d+\]")
_ADOC_QUOTE = re.compile(r"(`+|'+|\*+|_+|\++)([^`'*_+]+?)\1")


def strip_asciidoc(text: str) -> str:
    """AsciiDoc -> prose: drop delimited literal blocks, attributes and underlines; unwrap quotes."""
    out: list[str] = []
    in_block: str | None = None
    for line in text.splitlines():
        s = line.rstrip()
        m = _ADOC_DELIM.match(s)
        if m:
            fence = m.group(1)[0]
            if in_block is None and fence in "-.+/":
                in_block = fence
            elif in_block == fence:
                in_block = None
            continue  # ==== / ~~~ title underlines are dropped too
        if in_block is not None or _ADOC_ATTR.match(s.strip()):
            continue
        if s.strip() == "+":
            continue  # list continuation marker
        s = _ADOC_LINKGIT.sub(r"\1", s)
        s = _ADOC_QUOTE.sub(r"\2", s)
        s = re.sub(r"^=+\s+", "", s)
        out.append(s.strip())
    return tidy(out)


# -- HTML (PostgreSQL docs, Debian handbook) -----------------------------------------------------

class _TextExtractor(HTMLParser):
    _SKIP = {"script", "style", "head", "pre", "nav", "table"}
    _BREAK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "tr", "section", "blockquote"}
    _SKIP_CLASSES = ("navheader", "navfooter", "toc", "footer", "header", "breadcrumb")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[bool] = []  # per open element: does it start a skipped region?
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        cls = " ".join(v or "" for k, v in attrs if k == "class")
        skip = tag in self._SKIP or any(c in cls for c in self._SKIP_CLASSES)
        if tag in ("br", "img", "hr", "meta", "link", "input"):
            if tag == "br":
                self.parts.append("\n")
            return
        self.stack.append(skip)
        self.skip_depth += skip
        if tag in self._BREAK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "img", "hr", "meta", "link", "input") or not self.stack:
            return
        self.skip_depth -= self.stack.pop()
        if tag in self._BREAK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth == 0:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(text: str) -> str:
    """HTML -> prose: visible text of the body, navigation, code and tables left out."""
    p = _TextExtractor()
    p.feed(text)
    p.close()
    return tidy("".join(p.parts).split("\n"))


# -- common ---------------------------------------------------------------------------------------


def tidy(lines: list[str]) -> str:
    """Strip line ends, collapse runs of blank lines to one, drop leading/trailing blanks."""
    out: list[str] = []
    for ln in lines:
        ln = ln.strip()
        if not ln and (not out or not out[-1]):
            continue
        out.append(ln)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


STRIPPERS = {"rest": strip_rest, "pod": strip_pod, "asciidoc": strip_asciidoc, "html": html_to_text,
             "text": lambda t: tidy(t.splitlines()),
             "raw": lambda t: t}  # for sources whose splitter needs the original indentation
