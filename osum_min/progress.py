"""A dependency-free progress bar for long work (downloads, conversion, batch inference, training).

Writes one carriage-return-updated line to stderr with done/total, rate and ETA, the first when the work starts (a
first step can take a minute); when stderr is not a terminal (CI logs, files) it prints a plain line at most every
`interval` seconds instead, so logs stay readable. `status` says what runs before a bar can (loading weights).
"""

import sys
import time

# An ETA from the first update or two extrapolates start-up costs (an 8 MB conversion first read 04:02): it shows
# once the rate rests on this many updates and seconds.
ETA_MIN_UPDATES = 3
ETA_MIN_SECONDS = 1.0


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _fmt_amount(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < 1024 or prefix == "T":
            return f"{value:.1f}{prefix}B" if prefix else f"{value:.0f}B"
        value /= 1024
    return f"{value}B"


class Progress:
    """`with Progress(total, "converting", unit="B") as bar: bar.update(n)`; `total=None` if unknown."""

    def __init__(
        self,
        total: float | None,
        desc: str = "",
        unit: str = "",
        interval: float = 2.0,
        stream=None,
        initial: float = 0,
    ):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.done = initial
        self.initial = initial
        self.updates = 0
        self.start = time.monotonic()
        self.last_print = self.start
        # from the first second, not after the first step
        self._print(end="\r" if self.tty else "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, amount: float = 1) -> None:
        self.done += amount
        self.updates += 1
        now = time.monotonic()
        if now - self.last_print >= (0.1 if self.tty else self.interval):
            self.last_print = now
            self._print(end="\r" if self.tty else "\n")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(
                f"{100 * self.done / self.total:5.1f}% {_fmt_amount(self.done, self.unit)}"
                f"/{_fmt_amount(self.total, self.unit)}"
            )
            measured = (
                self.updates >= ETA_MIN_UPDATES
                and elapsed >= ETA_MIN_SECONDS
                and rate > 0
            )
            eta_text = (
                "00:00"
                if self.done >= self.total
                else _fmt_seconds((self.total - self.done) / rate)
                if measured
                else "?"
            )
        else:
            parts.append(_fmt_amount(self.done, self.unit))
            eta_text = None
        parts.append(f"{_fmt_amount(rate, self.unit)}/s")
        parts.append(
            f"elapsed {_fmt_seconds(elapsed)}"
            + (f" eta {eta_text}" if eta_text else "")
        )
        return " | ".join(parts)

    def _print(self, end: str) -> None:
        print(self.line(), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        self._print(end="\n")


def status(text: str, stream=None) -> None:
    """One line saying what starts now, where a bar cannot count it (loading a model)."""
    print(text, file=stream if stream is not None else sys.stderr, flush=True)
