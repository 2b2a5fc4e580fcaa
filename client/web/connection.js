// The link to the server: one WebSocket for control (and frames when WebRTC is not in use),
// reconnecting by itself, plus an optional WebRTC peer connection for video.
// It decides nothing about the page; it reports events to the callbacks it is given.
//
// A normal closure (1000) is the server's idle timeout: nothing is wrong, so the link does not
// reconnect by itself (a page left open would otherwise hold a session for ever, in a loop of
// reconnects and idle closes). It goes "idle" and reconnects when there is something to send.
// Unless `stayConnected` (kiosk mode): an installation's screen must come back by itself.

const WEBRTC_TIMEOUT_MS = 5000; // no video by then (UDP blocked, strict NAT): use WebSocket frames
const RECONNECT_MIN_MS = 300;
const RECONNECT_MAX_MS = 5000;
const CLOSE_IDLE = 1000; // the server's idle timeout (normal closure)

export class Connection {
  constructor(url, handlers, { webrtc = true, token = null, stayConnected = false } = {}) {
    this.url = url;
    this.protocols = token ? ["promptcast", `bearer.${token}`] : ["promptcast"];
    this.on = handlers; // {state, hello, message, jpeg, video, transport, error}
    this.useWebRTC = webrtc && typeof RTCPeerConnection !== "undefined";
    this.ws = null;
    this.pc = null;
    this.pendingHeader = null; // a frame header waiting for its binary JPEG
    this.iceServers = []; // from hello
    this.retryMs = RECONNECT_MIN_MS;
    this.idle = false; // closed by the server's idle timeout: reopen on the next send
    this.stayConnected = stayConnected; // reopen even after an idle timeout
    this.open();
  }

  open() {
    this.idle = false;
    this.on.state(this.ws ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url, this.protocols);
    ws.binaryType = "blob";
    this.ws = ws;
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.pendingHeader = null;
      if (event.code === CLOSE_IDLE && !this.stayConnected) {
        this.idle = true;
        this.on.state("idle"); // before the video closes, so the page can keep its last picture
        this.closeVideo();
        return;
      }
      this.on.state("reconnecting");
      this.closeVideo();
      setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
    };
  }

  // False when the message could not go out now. After an idle close this reopens the link;
  // the page sends its current state again on the next hello.
  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    if (this.idle) this.open();
    return false;
  }

  receive(data) {
    if (typeof data !== "string") {
      if (this.pendingHeader) this.on.jpeg(this.pendingHeader, data);
      this.pendingHeader = null;
      return;
    }
    const msg = JSON.parse(data);
    switch (msg.type) {
      case "hello":
        this.retryMs = RECONNECT_MIN_MS;
        this.iceServers = msg.webrtc?.ice_servers ?? [];
        this.on.state("connected");
        this.on.hello(msg);
        if (this.useWebRTC) this.startVideo();
        else this.on.transport("websocket", "WebRTC disabled");
        break;
      case "frame":
        this.pendingHeader = msg;
        break;
      case "webrtc_answer":
        this.pc?.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "video":
        if (msg.transport === "webrtc") {
          clearTimeout(this.videoTimer);
          this.on.transport("webrtc", "");
        } else {
          this.closeVideo();
          this.on.transport("websocket", msg.reason || "WebRTC closed");
        }
        break;
      case "error":
        if (msg.code === "webrtc_failed") this.fallBack(msg.message);
        this.on.error(msg);
        break;
      default:
        this.on.message(msg);
    }
  }

  async startVideo() {
    this.closeVideo();
    this.on.video.start(); // a new stream: its frames' metadata starts afresh
    // The server's STUN/TURN servers (its --ice-server), none by default: on a LAN or loopback
    // the server's candidates are all it needs. Behind NAT the page must learn its public
    // address too (STUN), or the server's TURN relay would not forward from it.
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const channel = pc.createDataChannel("frames");
    channel.onmessage = (event) => this.on.video.meta(JSON.parse(event.data));
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => this.on.video.track(event.streams[0] || new MediaStream([event.track]));
    this.videoTimer = setTimeout(() => this.fallBack("WebRTC did not connect in time"), WEBRTC_TIMEOUT_MS);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc); // the server takes all candidates in the offer
      if (this.pc !== pc) return;
      this.send({ type: "webrtc_offer", sdp: pc.localDescription.sdp });
    } catch (err) {
      this.fallBack(`WebRTC failed: ${err}`);
    }
  }

  fallBack(reason) {
    if (!this.pc) return;
    this.closeVideo();
    this.on.transport("websocket", reason);
  }

  closeVideo() {
    clearTimeout(this.videoTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
  }
}

function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 2000); // gather what there is; loopback needs no more
  });
}
