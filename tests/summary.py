"""Print trial's result as one line ``N passed, N failed`` (read from trial's output), the last
line ``make test`` prints; skipped tests, if any, are counted on the line before it."""

import re
import sys


def summarise(text: str) -> list[str]:
    """Turn trial's closing ``PASSED (...)``/``FAILED (...)`` line into ``N passed, N failed``.

    :param text: the whole output of a trial run.
    :return: the lines to print: ``N skipped`` when tests were skipped, then always the summary
        line, exactly ``N passed, N failed`` (``0 passed, 1 failed`` when trial printed no result).
    """
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(PASSED|FAILED) \((.*)\)\s*$", line.strip())
        if match:
            counts = {k.strip(): int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    if not counts and "PASSED" not in text:
        return ["0 passed, 1 failed"]
    passed = counts.get("successes", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    skipped = [f"{counts['skips']} skipped"] if counts.get("skips") else []
    return skipped + [f"{passed} passed, {failed} failed"]


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        print("\n".join(summarise(log.read())))
