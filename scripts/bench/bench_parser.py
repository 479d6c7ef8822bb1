"""Tag parser throughput and per-chunk cost on typical and hostile text.

Typical text is an assistant reply with inline tags, fed in 4-character chunks (about
what an LLM streams per token); hostile texts are fed whole and in chunks. One core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

from avatar_agent.tags import TagParser
from scripts.bench.report import write_section

REPLY = (
    '<emotion value="excited"/> I am so thrilled to meet you! [action:speaking] '
    "Today we can talk about your order, the weather, or a[0] and x < y if you like. "
    "[Action: Wave_Hand ] "
)
CASES = {
    "typical reply": REPLY * 2000,
    "10^5 unmatched [": "[" * 100_000,
    "10^5 unmatched <": "<" * 100_000,
    "repeated unterminated [action:": "[action:" * 12_500,
    "long almost-tag": "[action:wave_hand" + "_" * 100_000,
    "unicode prose": "Grüße, 日本語のテキスト 🙂 " * 5_000,
}


def chunks(text: str, size: int) -> Iterable[str]:
    return (text[i : i + size] for i in range(0, len(text), size))


def measure(text: str, size: int, repeat: int) -> tuple[float, float]:
    """Best of ``repeat``: (MB/s of UTF-8 input, microseconds per chunk)."""
    best = float("inf")
    pieces = list(chunks(text, size))
    for _ in range(repeat):
        parser = TagParser(
            actions={"speaking", "wave_hand"}, emotions={"excited", "happy"}, keep_emotions=True
        )
        start = time.perf_counter()
        for piece in pieces:
            parser.feed(piece)
        parser.close()
        best = min(best, time.perf_counter() - start)
    size_mb = len(text.encode()) / 1e6
    return size_mb / best, best / len(pieces) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = ["| Text | Size | Chunk | MB/s | µs per chunk |", "| --- | --- | --- | --- | --- |"]
    for name, text in CASES.items():
        for size in (4, 64):
            mbps, per_chunk = measure(text, size, args.repeat)
            rows.append(
                f"| {name} | {len(text.encode()) / 1e3:.0f} kB | {size} chars "
                f"| {mbps:.2f} | {per_chunk:.2f} |"
            )
            print(rows[-1])
    body = (
        "`TagParser.feed` over the whole text, chunk by chunk, then `close`; best of "
        f"{args.repeat} runs, one core. MB/s counts UTF-8 input bytes.\n\n" + "\n".join(rows)
    )
    write_section("parser", "make bench-parser", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
