"""The one progress bar of pipelines and exporters: a rich bar on stderr, a callback, or nothing."""

from __future__ import annotations

from pixmo.progress import Progress


def test_bar_ends_with_the_count_and_the_latest_note(capsys):
    with Progress("transcribe", 4, True, note="0.00/1.00 h audio") as bar:
        bar.advance(2, note="0.50/1.00 h audio")
        bar.advance(2)
    err = capsys.readouterr().err
    assert "transcribe" in err and "4/4" in err and "0.50/1.00 h audio" in err


def test_callback_gets_each_increment_and_disabled_prints_nothing(capsys):
    seen: list[float] = []
    with Progress("export", 10, seen.append) as bar:
        bar.advance(3)
        bar.advance(0.5, note="ignored by a callback")
    with Progress("export", 10, False) as bar:
        bar.advance(10)
    assert seen == [3, 0.5]
    assert capsys.readouterr().err == ""
