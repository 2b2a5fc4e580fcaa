"""client/web/videoseq.js in Chromium: which seq a displayed WebRTC video frame shows, from
its RTP timestamp and the metadata the server sends over the data channel.

The cases are the ones seen with a real peer (tests/browser/test_page.py), played here with
exact timestamps: metadata that outruns the picture, and timestamps a tick off.
"""

from __future__ import annotations

from typing import Any

from promptcast.engine.pipeline import Engine

from ..conftest import run_server
from .conftest import open_page

# Runs `body` in the page with VideoSeq, O (a stream's RTP origin) and frame(seq, pts) in scope;
# frame() returns what seqOf() said for a frame displayed at RTP timestamp O + pts + jitter.
SCRIPT = """async (body) => {
  const { VideoSeq, MIN_PTS_GAP } = await import("/videoseq.js");
  return new Function("VideoSeq", "MIN_PTS_GAP", body)(VideoSeq, MIN_PTS_GAP);
}"""


async def run_js(engine: Engine, browser: Any, body: str) -> Any:
    async with run_server(engine) as srv:
        page = await open_page(browser, srv.http_url + "/?transport=websocket")
        return await page.evaluate(SCRIPT, body)


async def test_the_origin_is_learned_when_metadata_outruns_the_picture(
        engine: Engine, browser: Any) -> None:
    # Frames 1 and 3 have their metadata in when frame 1 is shown: taking the newest (frame 3's)
    # as frame 1's would make every later lookup miss. Chromium's timestamps are a tick off.
    shown = await run_js(engine, browser, """
      const O = 4294967000;  // near 2^32: RTP timestamps wrap
      const v = new VideoSeq();
      const at = (pts, jitter) => (O + pts + jitter) >>> 0;
      v.meta({ seq: 1, pts: 1000 });
      v.meta({ seq: 3, pts: 5000 });
      const out = [v.seqOf(at(1000, 1))];  // not known yet: 1 or 3?
      v.meta({ seq: 4, pts: 11000 });
      out.push(v.seqOf(at(5000, -1)), v.seqOf(at(11000, 0)));
      v.meta({ seq: 4, pts: 99000 });  // the server's one-second repeat
      out.push(v.seqOf(at(99000, 1)), v.pending.length);
      return out;
    """)
    assert shown == [None, 3, 4, 4, 0]


async def test_a_stream_whose_origin_changes_is_learned_again(
        engine: Engine, browser: Any) -> None:
    shown = await run_js(engine, browser, """
      const v = new VideoSeq();
      const out = [];
      let pts = 0, seq = 0;
      const play = (origin, n) => {
        for (let i = 0; i < n; i++) {
          seq += 1; pts += 3000 + 97 * seq;  // frames are not evenly spaced
          v.meta({ seq, pts });
          out.push(v.seqOf((origin + pts) >>> 0));
        }
      };
      play(123456, 3);
      play(987654321, 14);  // a new origin without reset(): misses, then learned again
      return out;
    """)
    assert shown[:3] == [None, 2, 3]
    assert shown[3:13] == [None] * 10  # MAX_MISSES frames with no match
    assert shown[13] is None  # the first frame of relearning only proposes candidates
    assert shown[14:] == [15, 16, 17]


async def test_unmatched_metadata_is_bounded(engine: Engine, browser: Any) -> None:
    # A page whose video never shows (a background tab) must not collect metadata for weeks.
    pending = await run_js(engine, browser, """
      const v = new VideoSeq();
      for (let i = 0; i < 5000; i++) v.meta({ seq: i, pts: i * MIN_PTS_GAP });
      const kept = [v.pending.length, v.pending[0].seq];
      v.reset();  // a new stream
      return [...kept, v.pending.length];
    """)
    assert pending == [256, 5000 - 256, 0]
