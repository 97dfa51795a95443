"""The progress of a ``dfms put``: one redrawn line on a terminal, plain lines otherwise.

Written here rather than with rich or tqdm: neither is a dependency of the package (rich
is in the dev environment only through schemathesis), and one line is all it needs. The
display only reads a ``PutProgress`` the SDK updates in place, on a timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from dfms.client.models import PutProgress

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
STEPS = 10  # a plain line each time another tenth of the bytes to send has gone


def human_bytes(n: float) -> str:
    """``0 B``, ``1023 B``, ``1.0 KiB``, ``200.0 MiB``: binary units, one decimal."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {UNITS[unit]}"


def human_rate(nbytes: float, seconds: float) -> str:
    return f"{human_bytes(nbytes / seconds)}/s" if seconds > 0 else "-"


def dedup_text(logical: int, sent: int) -> str:
    """The dedup ratio as the summary shows it (logical bytes per byte sent)."""
    if logical == 0:
        return "dedup -"
    return f"dedup {logical / sent:.1f}x" if sent else "dedup: nothing sent"


class PutDisplay:
    """Shows one file's put at a time. ``live``: redraw one line (a terminal);
    otherwise print a line per phase and per tenth sent (logs, pipes, CI)."""

    def __init__(self, stream: TextIO, *, live: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.live, self.clock = stream, live, clock
        self._label, self._prog = "", PutProgress()
        self._phase, self._step, self._sending_since = "", 0, 0.0

    def start(self, label: str, prog: PutProgress) -> None:
        self._label, self._prog = label, prog
        self._phase, self._step, self._sending_since = "", 0, self.clock()

    def tick(self) -> None:
        if self.live:
            self._entered_sending()
            self._write(f"\r{self.line()}\x1b[K")
            return
        for line in self.plain_lines():
            self._write(line + "\n")

    def _entered_sending(self) -> bool:
        """Track the phase; True when it just became ``sending`` (the rate counts from
        there: hashing time is not sending time)."""
        entered = self._prog.phase == "sending" and self._phase != "sending"
        if entered:
            self._sending_since = self.clock()
        self._phase = self._prog.phase
        return entered

    def finish(self) -> None:
        """Clear the live line (the caller prints the file's result)."""
        if self.live:
            self._write("\r\x1b[K")

    def line(self) -> str:
        p = self._prog
        if p.phase == "hashing" and not p.size:
            return f"{self._label}  starting"
        if p.phase == "hashing":
            return f"{self._label}  hashing {human_bytes(p.bytes_hashed)}/{human_bytes(p.size)}"
        dedup = p.chunks_total - p.chunks_missing
        return (f"{self._label}  {p.phase}  sent {human_bytes(p.bytes_sent)}/"
                f"{human_bytes(p.bytes_to_send)}  chunks {p.chunks_sent}/{p.chunks_missing}"
                f" ({max(dedup, 0)} already stored)  {self._rate()}")

    def plain_lines(self) -> list[str]:
        """The lines a non-terminal gets now: one on entering the sending phase (what is
        to send), then one per further tenth of it sent."""
        p, out = self._prog, []
        if self._entered_sending():
            out.append(f"{self._label}: {p.chunks_total} chunks, {p.chunks_missing} to send "
                       f"({human_bytes(p.bytes_to_send)})")
        step = p.bytes_sent * STEPS // p.bytes_to_send if p.bytes_to_send else 0
        if step > self._step and p.bytes_sent < p.bytes_to_send:
            self._step = step
            out.append(f"{self._label}: sent {step * 100 // STEPS}% "
                       f"({human_bytes(p.bytes_sent)}/{human_bytes(p.bytes_to_send)}, "
                       f"{p.chunks_sent}/{p.chunks_missing} chunks, {self._rate()}); "
                       f"bytes_sent={p.bytes_sent}")
        return out

    def _rate(self) -> str:
        return human_rate(self._prog.bytes_sent, self.clock() - self._sending_since)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
