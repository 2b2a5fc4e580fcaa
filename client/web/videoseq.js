// Which prompt (seq) a displayed WebRTC video frame shows.
//
// The server sends each video frame's seq and pts (90 kHz clock) over the data channel; for a
// displayed frame the browser reports its RTP timestamp, which is pts plus a random per-stream
// origin. Two things make the obvious mapping ("origin = first RTP timestamp minus the newest
// pts") fail now and then, which left a page never marking its last prompt as shown:
//
// - The metadata outruns the picture (it skips the encoder, jitter buffer and decoder), so when
//   the first frame is displayed several frames' metadata may have arrived. Each is a candidate
//   origin; each later frame keeps only the candidates it agrees with, until one remains (evenly
//   spaced frames can leave several for a while).
// - Chromium reports the RTP timestamp off by a tick now and then (measured: ±1 at 90 kHz), so
//   timestamps match within TOLERANCE. The server spaces pts at least MIN_PTS_GAP apart
//   (transport/webrtc.py), so a match is never ambiguous.

export const MIN_PTS_GAP = 90; // 1 ms; the server's minimum pts step
const TOLERANCE = 8; // ticks; well under half of MIN_PTS_GAP
const MAX_PENDING = 256; // metadata kept waiting for its frame (a stream repeats a frame each second)
const MAX_MISSES = 10; // frames in a row with no metadata: the origin is wrong, learn it again

const near = (a, b) => {
  const d = (a - b) >>> 0; // modulo 2^32: RTP timestamps wrap
  return d <= TOLERANCE || d >= 2 ** 32 - TOLERANCE;
};

export class VideoSeq {
  constructor() {
    this.reset();
  }

  // A new stream (a new peer connection): a new origin, and no metadata yet.
  reset() {
    this.pending = []; // {seq, pts} not yet matched to a displayed frame, oldest first
    this.origin = null;
    this.candidates = null;
    this.misses = 0;
  }

  meta(m) {
    this.pending.push(m);
    if (this.pending.length > MAX_PENDING) this.pending.shift();
  }

  // The seq the frame with this RTP timestamp shows, or null when that is not known (yet).
  seqOf(rtp) {
    if (rtp === undefined || rtp === null) return null;
    if (this.origin === null && !this.learn(rtp)) return null;
    const pts = (rtp - this.origin) >>> 0;
    const index = this.pending.findIndex((m) => near(m.pts, pts));
    if (index < 0) {
      // A frame shown before its metadata arrived, or a wrong origin: after a run of misses,
      // assume the latter.
      if (++this.misses >= MAX_MISSES) this.origin = this.candidates = null;
      return null;
    }
    this.misses = 0;
    const { seq } = this.pending[index];
    this.pending.splice(0, index + 1);
    return seq;
  }

  learn(rtp) {
    const here = this.pending.map((m) => (rtp - m.pts) >>> 0);
    const first = this.candidates === null;
    const agreed = first ? here : this.candidates.filter((o) => here.some((h) => near(h, o)));
    // None agree: a frame came before its metadata, or the metadata was trimmed. Start again.
    this.candidates = agreed.length ? agreed : here;
    // One candidate from a single frame could be a frame whose metadata has not arrived paired
    // with an older frame's: only a second frame confirms it.
    if (first || !agreed.length || this.candidates.length !== 1) return false;
    this.origin = this.candidates[0];
    this.misses = 0;
    return true;
  }
}
