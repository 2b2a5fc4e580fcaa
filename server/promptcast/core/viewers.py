"""Who may watch which frames over MJPEG, and latest-wins delivery to each viewer.

A viewer watches a *feed*: one session's frames (`/stream.mjpg?session=ID`) or a named
channel's (`/stream.mjpg?channel=NAME`), the frames of every session that joined that channel
(`/ws?channel=NAME`), newest first, whichever session drew them. An installation's screen points
at a channel's fixed URL while its controllers come and go.

Latest-wins, per viewer: a feed holds only its newest frame and a count of how many it has had.
Each viewer remembers the count it last sent; when it is ready for more it takes the newest
frame, and the frames it missed meanwhile are skipped (and counted), never queued. A viewer
therefore never holds anything up: the renderer only replaces one reference per feed.

Pure, like the rest of core/: the runtime wakes waiting viewers and the transport writes bytes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from promptcast.core.outbox import FrameDropReason, HasSeq

F = TypeVar("F", bound=HasSeq)

# URL- and header-safe, short enough for a log line: a channel name goes in URLs.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9._~-]{1,64}")
CHANNEL_NAME_RULE = "1-64 letters, digits, '-', '_', '.' or '~'"


def channel_name_ok(name: str) -> bool:
    return CHANNEL_NAME.fullmatch(name) is not None


class Kind(str, Enum):
    SESSION = "session"
    CHANNEL = "channel"


FeedKey = tuple[Kind, str]


@dataclass(eq=False)
class Feed(Generic[F]):
    """The newest frame of one session or channel. `version` counts the frames published."""

    key: FeedKey
    latest: F | None = None
    version: int = 0
    ended: bool = False  # its session closed, or the server is shutting down: viewers stop
    viewers: int = 0

    def publish(self, frame: F) -> None:
        self.latest = frame
        self.version += 1


@dataclass(eq=False)
class Viewer(Generic[F]):
    """One viewer's place in its feed."""

    feed: Feed[F]
    _dropped: Counter[str]
    seen: int = 0  # the feed version this viewer last took
    closed: bool = field(default=False)

    def take(self) -> F | None:
        """The feed's newest frame if this viewer has not had it yet, else None. Frames
        published since the last take, other than the newest, are counted as skipped."""
        feed = self.feed
        if feed.version == self.seen or feed.latest is None:
            return None
        skipped = feed.version - self.seen - 1
        if skipped:
            self._dropped[FrameDropReason.VIEWER_SKIPPED] += skipped
        self.seen = feed.version
        return feed.latest


class Refusal(str, Enum):
    NOT_FOUND = "not_found"  # no such session, or a channel no session is in and none watches
    FULL = "full"  # at the viewer cap
    DRAINING = "draining"  # shutting down


@dataclass
class Viewers(Generic[F]):
    """The feeds of all sessions and channels, which session is in which channel, and the cap
    on viewers (each holds an HTTP connection and gets every frame of its feed)."""

    max_viewers: int
    dropped: Counter[str]
    feeds: dict[FeedKey, Feed[F]] = field(default_factory=dict)
    channel_of: dict[str, str] = field(default_factory=dict)  # session id -> channel name
    members: Counter[str] = field(default_factory=Counter)  # channel name -> sessions in it
    _last_order: dict[str, tuple[int, bool]] = field(default_factory=dict)  # per session
    count: int = 0
    draining: bool = False

    def add_session(self, session_id: str, channel: str | None = None) -> None:
        """A session opened; the caller has checked `channel` with channel_name_ok()."""
        self.feeds[(Kind.SESSION, session_id)] = Feed((Kind.SESSION, session_id))
        if channel is not None:
            self.channel_of[session_id] = channel
            self.members[channel] += 1
            key = (Kind.CHANNEL, channel)
            self.feeds.setdefault(key, Feed(key))

    def remove_session(self, session_id: str) -> list[Feed[F]]:
        """A session closed. Returns the feeds that ended (its own): wake their viewers, whose
        streams then end. A channel's feed stays, with its last frame, while anyone watches it
        (its controller may be reconnecting)."""
        self._last_order.pop(session_id, None)
        ended = []
        feed = self.feeds.pop((Kind.SESSION, session_id), None)
        if feed is not None:
            feed.ended = True
            ended.append(feed)
        channel = self.channel_of.pop(session_id, None)
        if channel is not None:
            self.members[channel] -= 1
            if self.members[channel] <= 0:
                del self.members[channel]
                self._forget_channel_if_unused(channel)
        return ended

    def publish(self, session_id: str, frame: F) -> list[Feed[F]]:
        """A session's new frame. Returns the feeds it went to (wake their viewers). A frame
        older than one this session already published (encodes finish out of order) is
        dropped: a viewer never goes back in time."""
        order = (frame.seq, frame.refined)
        if order <= self._last_order.get(session_id, (-1, False)):
            self.dropped[FrameDropReason.STALE] += 1
            return []
        self._last_order[session_id] = order
        feeds = []
        feed = self.feeds.get((Kind.SESSION, session_id))
        if feed is not None:
            feeds.append(feed)
        channel = self.channel_of.get(session_id)
        if channel is not None:
            feeds.append(self.feeds[(Kind.CHANNEL, channel)])
        for f in feeds:
            f.publish(frame)
        return feeds

    def watched(self, session_id: str) -> bool:
        """Whether any viewer would see this session's frames (so they are worth encoding as
        JPEG even when the session itself takes them as video)."""
        feed = self.feeds.get((Kind.SESSION, session_id))
        if feed is not None and feed.viewers:
            return True
        channel = self.channel_of.get(session_id)
        return channel is not None and self.feeds[(Kind.CHANNEL, channel)].viewers > 0

    def wanted(self, session_id: str) -> bool:
        """Whether this session's frames should be published as JPEG even when the session
        itself takes them as video: someone watches its feed, or it is in a channel (whose
        screen should have the current picture the moment it connects)."""
        return self.watched(session_id) or session_id in self.channel_of

    def open(self, key: FeedKey) -> Viewer[F] | Refusal:
        """A new viewer of `key`, or why not. It gets the feed's current frame first, at once."""
        if self.draining:
            return Refusal.DRAINING
        feed = self.feeds.get(key)
        if feed is None:
            return Refusal.NOT_FOUND
        if self.count >= self.max_viewers:
            return Refusal.FULL
        self.count += 1
        feed.viewers += 1
        seen = feed.version - 1 if feed.latest is not None else feed.version
        return Viewer(feed, self.dropped, seen)

    def close(self, viewer: Viewer[F]) -> None:
        """A viewer left (or its stream ended). Safe to call twice."""
        if viewer.closed:
            return
        viewer.closed = True
        self.count -= 1
        feed = viewer.feed
        feed.viewers -= 1
        if feed.key[0] is Kind.CHANNEL:
            self._forget_channel_if_unused(feed.key[1])

    def drain(self) -> list[Feed[F]]:
        """Shutting down: no new viewers, and every feed ends. Returns the feeds to wake."""
        self.draining = True
        for feed in self.feeds.values():
            feed.ended = True
        return list(self.feeds.values())

    def _forget_channel_if_unused(self, channel: str) -> None:
        key = (Kind.CHANNEL, channel)
        feed = self.feeds.get(key)
        if feed is not None and feed.viewers <= 0 and self.members[channel] <= 0:
            del self.feeds[key]
        if self.members[channel] <= 0:
            del self.members[channel]
