"""A progress bar on stderr (rich), a callback, or nothing: what `progress=` accepts in the exporters."""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    """``enabled`` may be True (a rich bar), False (nothing) or a callable taking the increment."""

    def __init__(self, description: str, total: int | None, enabled: bool | Callable[[int], None]):
        self._callback = enabled if callable(enabled) else None
        self._bar = None
        if enabled is True:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._callback is not None:
            self._callback(n)
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
