"""core.viewers: feeds, channels, the viewer cap and latest-wins per viewer. Pure: no sockets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from promptcast.core.outbox import FrameDropReason
from promptcast.core.viewers import (
    Kind,
    Refusal,
    Viewer,
    Viewers,
    channel_name_ok,
)


@dataclass(frozen=True)
class Frame:
    seq: int
    refined: bool = False
    name: str = ""


def make(max_viewers: int = 4) -> tuple[Viewers[Frame], Counter[str]]:
    dropped: Counter[str] = Counter()
    return Viewers(max_viewers, dropped), dropped


def opened(v: Viewers[Frame], kind: Kind, name: str) -> Viewer[Frame]:
    viewer = v.open((kind, name))
    assert isinstance(viewer, Viewer), viewer
    return viewer


def test_channel_names() -> None:
    assert channel_name_ok("lobby") and channel_name_ok("Hall-2_a.b~c") and channel_name_ok("x" * 64)
    for bad in ["", "x" * 65, "a b", "a/b", "é", "a?b", "a&b"]:
        assert not channel_name_ok(bad), bad


def test_a_slow_viewer_gets_the_newest_frame_and_the_rest_are_counted_as_skipped() -> None:
    v, dropped = make()
    v.add_session("s")
    viewer = opened(v, Kind.SESSION, "s")
    assert viewer.take() is None  # nothing rendered yet
    v.publish("s", Frame(1))
    assert viewer.take() == Frame(1)
    assert viewer.take() is None  # already had it
    for seq in range(2, 7):  # the viewer was busy writing frame 1 meanwhile
        v.publish("s", Frame(seq))
    assert viewer.take() == Frame(6)
    assert dropped[FrameDropReason.VIEWER_SKIPPED] == 4
    # A second viewer's pace is its own.
    other = opened(v, Kind.SESSION, "s")
    assert other.take() == Frame(6)  # the current picture, at once, and nothing counted
    assert dropped[FrameDropReason.VIEWER_SKIPPED] == 4


def test_a_frame_older_than_one_published_is_dropped() -> None:
    v, dropped = make()
    v.add_session("s")
    viewer = opened(v, Kind.SESSION, "s")
    v.publish("s", Frame(5))
    assert v.publish("s", Frame(4)) == []  # its JPEG encode finished late
    assert v.publish("s", Frame(5)) == []
    assert dropped["stale"] == 2
    assert len(v.publish("s", Frame(5, refined=True))) == 1  # a refined frame comes after
    assert viewer.take() == Frame(5, refined=True)


def test_a_channel_shows_its_sessions_and_outlives_them_while_watched() -> None:
    v, _ = make()
    assert v.open((Kind.CHANNEL, "hall")) is Refusal.NOT_FOUND  # nobody in it yet
    v.add_session("a", "hall")
    v.add_session("b", "hall")
    v.add_session("c")
    screen = opened(v, Kind.CHANNEL, "hall")
    assert v.wanted("a") and v.wanted("c") is False
    v.publish("a", Frame(1, name="a"))
    v.publish("c", Frame(9, name="c"))  # not in the channel
    assert screen.take() == Frame(1, name="a")
    v.publish("b", Frame(1, name="b"))  # another session's seq 1 is new to the channel
    assert screen.take() == Frame(1, name="b")
    # Both controllers leave: the channel keeps its last frame for its screen.
    assert [f.key for f in v.remove_session("a")] == [(Kind.SESSION, "a")]
    v.remove_session("b")
    assert not screen.feed.ended
    v.add_session("d", "hall")  # a controller comes back
    v.publish("d", Frame(1, name="d"))
    assert screen.take() == Frame(1, name="d")
    # Once nobody is in it and nobody watches, it is gone.
    v.remove_session("d")
    v.close(screen)
    v.close(screen)  # twice is harmless
    assert v.open((Kind.CHANNEL, "hall")) is Refusal.NOT_FOUND
    assert v.count == 0 and (Kind.CHANNEL, "hall") not in v.feeds


def test_a_session_stream_ends_with_its_session() -> None:
    v, _ = make()
    v.add_session("s")
    viewer = opened(v, Kind.SESSION, "s")
    assert v.watched("s")
    ended = v.remove_session("s")
    assert ended == [viewer.feed] and viewer.feed.ended
    assert v.open((Kind.SESSION, "s")) is Refusal.NOT_FOUND
    v.close(viewer)
    assert v.count == 0


def test_the_cap_counts_all_viewers_and_frees_places() -> None:
    v, _ = make(max_viewers=2)
    v.add_session("s", "hall")
    a = opened(v, Kind.SESSION, "s")
    opened(v, Kind.CHANNEL, "hall")
    assert v.open((Kind.CHANNEL, "hall")) is Refusal.FULL
    v.close(a)
    opened(v, Kind.CHANNEL, "hall")
    assert v.count == 2


def test_drain_ends_every_feed_and_refuses_new_viewers() -> None:
    v, _ = make()
    v.add_session("s", "hall")
    a = opened(v, Kind.SESSION, "s")
    b = opened(v, Kind.CHANNEL, "hall")
    feeds = v.drain()
    assert {f.key for f in feeds} == {a.feed.key, b.feed.key}
    assert a.feed.ended and b.feed.ended
    assert v.open((Kind.CHANNEL, "hall")) is Refusal.DRAINING
