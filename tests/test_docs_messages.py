"""The messages the docs quote are the gateway's: every error or log line a page (README.md,
docs/*.md) writes in backticks is made of the words of some string of the code (an f-string's
text between its fields, so ``apps: <name> exited ...`` matches ``f"apps: {name} exited ..."``).
Users grep their logs for these lines and scripts match them; a line reworded in the code alone,
or one the docs invent, is a promise no code keeps."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
#: The pages that quote messages (benchmarks.md quotes measurements).
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
#: A quoted span that is a command or code, not a message, by how it begins.
NOT_A_MESSAGE = re.compile(r"(\$ |sudo |gatewayctl [a-z]|curl |make |systemctl |journalctl |python|\.venv|podman "
                           r"|mosquitto|ls |cat |GET |POST |DELETE |PUT |nft |ip |echo |tar |dpkg|apt|docker|ssh "
                           r"|openssl|kill|grep|cd |mkdir|chmod|chown|twistd|trial|sed|awk|find|[-{\[|),;:/.]|http)")
#: The share of a message's letters that must be in runs of words the code has: what remains are
#: the placeholders (``<name>``, ``N``, ``...``) and the example's own values.
ENOUGH = 0.3
#: Quoted lines below :data:`ENOUGH` that are not the gateway's to make: another program's
#: (the kernel's ``strerror``, systemd's), a file name's pattern, a format described.
NOT_THE_GATEWAYS = frozenset({
    "Too many open files",  # EMFILE's strerror, in apps.md
    "file: key.path: what is wrong",  # the form of a configuration error, configuration.md
    "Main process exited, code=killed, status=9/KILL",  # systemd's, install.md
    "diagnostics-<milliseconds since 1970 by the gateway's clock>-<n>-<8 random hex digits>.tar.gz",
    "on_durable(seq of the last)",  # journal.md's Python API
    "config set links.links.cloud.password s3cret",  # a gatewayctl command, admin.md
    "<name>.<hash of version and description>",  # a container's name, containers.md
})


#: A string literal of Python's on one line (a prefix ``f``, ``r``, ``b`` or two of them).
LITERAL = r"""(?:\b[fFrRbB]{1,2})?(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
#: Literals side by side, which Python joins into one string.
JOINED = re.compile(rf"{LITERAL}(?:\s*{LITERAL})*")


@cache
def code_text() -> str:
    """Every string of the gateway's code that has a space (its literals side by side joined,
    as Python joins them; not its docstrings, which quote messages too), and the packaging's
    files, whitespace collapsed, joined by NULs. (Read with regular expressions: parsing every
    module with :mod:`ast` takes seconds on a busy machine.)"""
    if not (ROOT / "gateway").is_dir() or not (ROOT / "debian").is_dir():
        raise SkipTest("no gateway/ and debian/ sources here (the .deb build runs the suite on a copy"
                       " of tests/ and docs/ without them)")
    pieces: list[str] = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        source = re.sub(r'"""[\s\S]*?"""', '""', path.read_text(encoding="utf-8"))
        for joined in JOINED.finditer(source):
            text = "".join(literal.group(0).lstrip("fFrRbB")[1:-1] for literal in re.finditer(LITERAL, joined.group(0)))
            if " " in text:
                pieces.append(text)
    pieces.extend(path.read_text(encoding="utf-8", errors="replace")
                  for path in sorted((ROOT / "debian").rglob("*")) if path.is_file())
    return "\0".join(" ".join(piece.split()) for piece in pieces)


@cache
def quoted_messages() -> tuple[tuple[str, str], ...]:
    """Every span a page writes in single backticks outside code blocks that reads as a sentence
    (four words or more, three of them words of letters), with where it ends
    (``docs/x.md:LINE``)."""
    found = []
    for page in PAGES:
        lines, fenced = [], False
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                line = ""
            lines.append("" if fenced else line)
        text = re.sub(r"``.*?``", lambda span: "X" + "\n" * span.group(0).count("\n"), "\n".join(lines),
                      flags=re.S)  # (``a `b` c``: one span, not two)
        for paragraph in re.finditer(r"(?:.+\n?)+", text):
            at = paragraph.start()
            for index, span in enumerate(paragraph.group(0).split("`")):
                at += len(span) + 1
                if index % 2 == 0:
                    continue
                message, number = " ".join(span.split()), text.count("\n", 0, at) + 1
                if (len(message.split()) >= 4 and not NOT_A_MESSAGE.match(message) and not message.endswith("|")
                        and re.search(r"[a-z]{3,} [a-z]{2,} [a-z]{2,}", message)):
                    found.append((f"{page.relative_to(ROOT)}:{number}", message))
    return tuple(found)


def letters(words: list[str]) -> int:
    """How many ASCII letters the words hold."""
    return sum(len(re.sub(r"[^A-Za-z]", "", word)) for word in words)


def produced(message: str, code: str) -> float:
    """The share of the message's letters in runs of its words that the code has as they are
    (a run of one word counts only when it is 6 characters or more: ``the`` is everywhere). A
    placeholder (``<the answer's words>``) counts for no letters."""
    words = re.sub(r"<[^<>]*>", "<>", message).split(" ")
    covered = start = 0
    while start < len(words):
        end = start
        while end < len(words) and " ".join(words[start:end + 1]) in code:
            end += 1
        if end == start:
            start += 1
            continue
        if end - start >= 2 or len(words[start]) >= 6:
            covered += letters(words[start:end])
        start = end
    return covered / (letters(words) or 1)


class QuotedMessagesTests(SynchronousTestCase):
    """Each message the docs quote is one the code makes."""

    def test_every_quoted_message_is_made_by_the_code(self) -> None:
        """Each quoted message is mostly the words of a string of the code; the ones that are
        not are another program's, listed in :data:`NOT_THE_GATEWAYS`."""
        code = code_text()
        unmade = sorted(f"{where}: {message}" for where, message in quoted_messages()
                        if message not in NOT_THE_GATEWAYS and produced(message, code) < ENOUGH)
        self.assertEqual(unmade, [], "messages the docs quote that no code makes")

    def test_the_exceptions_are_still_quoted(self) -> None:
        """Each line :data:`NOT_THE_GATEWAYS` excuses is still on a page (a stale one would excuse
        the next message written so)."""
        quoted = {message for _, message in quoted_messages()}
        self.assertEqual(sorted(NOT_THE_GATEWAYS - quoted), [])

    def test_the_pages_are_read(self) -> None:
        """The parsing finds the messages: hundreds, one of them a known line, and a made-up
        one scores as unmade (a reformatted page or a broken measure fails here, not silently)."""
        messages = dict((message, where) for where, message in quoted_messages())
        self.assertGreater(len(messages), 300)
        self.assertIn("the fleet service is off (fleet.enabled: false)", messages)
        code = code_text()
        self.assertGreater(produced("the fleet service is off (fleet.enabled: false)", code), 0.5)
        self.assertLess(produced("the flux capacitor overheated while syncing: <why>", code), ENOUGH)
