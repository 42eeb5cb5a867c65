"""Progress for `curate run`: a rich bar per stage on a terminal, plain lines elsewhere
(CI logs, pipes), so logs stay readable either way."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._rich = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._rich = RichProgress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                      console=Console(file=self.stream), transient=False)
            self._rich.start()

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def stage(self, label: str, total: int):
        """Yields a callback `done(kept, dropped, note="")`."""
        start = time.perf_counter()
        task = self._rich.add_task(label, total=max(total, 1), note="") if self._rich else None
        if self._rich is None and self.enabled:
            print(f"[{label}] {total:,} rows in ...", file=self.stream, flush=True)

        def done(kept: int, dropped: int, note: str = "") -> None:
            secs = time.perf_counter() - start
            summary = f"{kept:,} kept, {dropped:,} dropped" + (f", {note}" if note else "") + f" ({secs:.1f}s)"
            if self._rich is not None:
                self._rich.update(task, completed=max(total, 1), note=summary)
            elif self.enabled:
                print(f"[{label}] {summary}", file=self.stream, flush=True)

        yield done

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
