"""How long work shows itself on stderr: a bar with rate and ETA on a terminal, a plain line every
LINE_EVERY_S seconds elsewhere (a log file, CI), nothing at all with `--quiet`."""

import contextlib
import sys
import time

from tqdm import tqdm

QUIET = False  # --quiet, for the whole command (`silenced`)
LINE_EVERY_S = 30.0  # off a terminal: seconds between plain progress lines


class Progress:
    """Counts `total` units of work; `update(n)` as they are done, `note(...)` for figures to show
    beside the count (a loss), `write(message)` for a line that must not tear the bar."""

    def __init__(self, total: int, unit: str, desc: str, quiet: bool = False, initial: int = 0):
        self.total, self.unit, self.desc = total, unit, desc
        self.quiet = quiet or QUIET
        self.done = self.started_at = initial
        self.notes = {}
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.quiet and time.perf_counter() - self.last_line >= LINE_EVERY_S:
            self._line()

    def note(self, **figures):
        self.notes = figures
        if self.bar is not None:
            self.bar.set_postfix(figures)

    def write(self, message: str):
        say(message)

    def _line(self):
        now = time.perf_counter()
        self.last_line = now
        rate = (self.done - self.started_at) / max(now - self.start, 1e-9)
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.total > self.done else ""
        notes = "".join(f", {key} {value}" for key, value in self.notes.items())
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
              f"{rate:.3g} {self.unit}/s{eta}{notes}", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def silenced(quiet: bool = True):
    """No progress shown inside (when `quiet`), as the command line's --quiet asks."""
    global QUIET
    previous, QUIET = QUIET, QUIET or quiet
    try:
        yield
    finally:
        QUIET = previous


def say(message: str):
    """A line on stderr that does not tear a progress bar being drawn."""
    tqdm.write(message, file=sys.stderr)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
