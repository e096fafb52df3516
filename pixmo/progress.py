"""A progress bar on stderr (rich), a callback, or nothing: what ``progress=`` accepts across pixmo."""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    """``enabled`` may be True (a rich bar), False (nothing) or a callable taking the increment.

    ``note`` adds a text column after the count (e.g. hours of audio), updated by `advance`.
    """

    def __init__(
        self, description: str, total: int | None, enabled: bool | Callable[[float], None], *, note: str | None = None
    ):
        self._callback = enabled if callable(enabled) else None
        self._bar = None
        if enabled is True:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            if note is not None:
                columns.append(TextColumn("{task.fields[note]}"))
            self._bar = RichProgress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, note=note or "")

    def advance(self, n: float = 1, *, note: str | None = None) -> None:
        if self._callback is not None:
            self._callback(n)
        if self._bar is not None:
            if note is None:
                self._bar.advance(self._task, n)
            else:
                self._bar.update(self._task, advance=n, note=note)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
