"""Markup strippers: the words stay, the markup goes."""
from __future__ import annotations

from recur_lib.data.corpus.markup import html_to_text, strip_asciidoc, strip_pod, strip_rest


def test_rest() -> None:
    src = """Title
=====

.. toctree::
   :maxdepth: 2

   intro

Use :func:`open` and ``close`` with *care*, see `the docs <http://x>`_.
Example::

    code that must go

.. note:: Notes stay.

.. function:: len(s)

   Return the length.
"""
    out = strip_rest(src)
    assert "Title" in out and "=====" not in out and "intro" not in out and "maxdepth" not in out
    assert "Use open and close with care, see the docs." in out
    assert "Example:" in out and "code that must go" not in out
    assert "Notes stay." in out and "len(s)" in out and "Return the length." in out


def test_pod() -> None:
    src = "=head1 NAME\n\nperlfoo - does B<bold> things with C<< $x->y >> and L<text|perlfunc>\n\n    my $code = 1;\n\n=cut\n\nsub x {}\n"
    out = strip_pod(src)
    assert out.startswith("NAME") and "does bold things with $x->y and text" in out
    assert "my $code" not in out and "sub x" not in out


def test_pm_file_skips_code_before_pod() -> None:
    assert strip_pod("package X;\nuse strict;\n\n=head1 DESCRIPTION\n\nWords.\n") == "DESCRIPTION\n\nWords."


def test_asciidoc() -> None:
    src = "git-foo(1)\n==========\n\n:doctype: manpage\n\nSee linkgit:git-bar[1] and `--opt`.\n\n------\n$ git foo\n------\n"
    out = strip_asciidoc(src)
    assert "See git-bar and --opt." in out and "$ git foo" not in out and ":doctype:" not in out


def test_html() -> None:
    src = ('<html><head><title>T</title><style>x{}</style></head><body><div class="navheader">Prev Next</div>'
           '<h1>Joins</h1><p>Rows &amp; <code>columns</code> pair.</p><pre>SELECT 1;</pre></body></html>')
    out = html_to_text(src)
    assert "Joins" in out and "Rows & columns pair." in out
    assert "SELECT" not in out and "Prev" not in out and "x{}" not in out
