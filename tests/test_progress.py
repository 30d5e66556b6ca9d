"""The library's progress bar: drawn on a terminal only, API stable for the index and the CLI."""

from __future__ import annotations

import io

import pytest

from lplr_index._progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def frames(text: str) -> list[str]:
    """The states drawn, in order (each redraw starts with a carriage return)."""
    return [f.replace("\x1b[K", "").rstrip("\n") for f in text.split("\r") if f]


@pytest.mark.parametrize(
    ("stream", "drawn"),
    [(io.StringIO(), False), (FakeTerminal(), True)],
    ids=["pipe-or-file", "terminal"],
)
def test_drawn_only_on_a_terminal_by_default(stream, drawn):
    with Progress(10, "build", unit="vectors", stream=stream) as bar:
        bar.update(4)
        bar.update(6)
    assert bar.enabled is drawn
    assert bool(stream.getvalue()) is drawn


def test_a_stream_without_isatty_counts_as_no_terminal():
    class Sink:
        def write(self, text):
            raise AssertionError("must not draw")

    with Progress(3, "x", stream=Sink()) as bar:
        bar.update(3)
    assert bar.enabled is False


def test_explicit_enabled_wins_over_the_stream():
    terminal = FakeTerminal()
    with Progress(5, "quiet", enabled=False, stream=terminal) as bar:
        bar.update(5)
    assert terminal.getvalue() == ""
    out = io.StringIO()
    with Progress(5, "forced", enabled=True, stream=out) as bar:
        bar.update(5)
    assert out.getvalue().endswith("\n")


def test_final_frame_counts_everything_and_ends_the_line():
    out = FakeTerminal()
    bar = Progress(1000, "search", unit="queries", stream=out)
    for _ in range(10):
        bar.update(100)
    bar.close()
    bar.close()  # a second close draws nothing more
    last = frames(out.getvalue())[-1]
    assert last.startswith("search: [" + "#" * 30 + "] 1000/1000 queries in ")
    assert out.getvalue().count("\n") == 1


def test_redraws_are_rate_limited_but_the_end_is_always_drawn():
    out = FakeTerminal()
    with Progress(100_000, "encode", stream=out) as bar:
        for _ in range(100_000):
            bar.update(1)
    shown = frames(out.getvalue())
    assert len(shown) < 100  # 100,000 updates in well under 10 s: a handful of frames
    assert "100000/100000" in shown[-2] and "100000/100000" in shown[-1]


@pytest.mark.parametrize("unit", ["B", "bytes"])
def test_set_reports_a_position_in_bytes(unit):
    out = FakeTerminal()
    with Progress(3 * 2**20, "save", unit=unit, stream=out) as bar:
        bar.set(2**20)
        assert "1.0/3.0 MiB" in frames(out.getvalue())[-1]
        bar.set(3 * 2**20)
    assert "3.0/3.0 MiB in" in frames(out.getvalue())[-1]


def test_time_left_is_estimated_midway():
    out = FakeTerminal()
    bar = Progress(10, "build", stream=out)
    bar.set(5)
    assert "left" in frames(out.getvalue())[-1]
    bar.close()


def test_zero_total_is_complete():
    out = FakeTerminal()
    with Progress(0, "nothing", stream=out):
        pass
    assert "[" + "#" * 30 + "] 0/0" in frames(out.getvalue())[-1]
