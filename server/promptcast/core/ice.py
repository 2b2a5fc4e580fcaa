"""ICE server URLs (`--ice-server`): parsed once, used by the server's own peer connections and
handed to clients in `hello`, since a browser behind NAT needs the same STUN/TURN servers to
reach a worker's relay (a TURN relay only forwards from addresses it has been told about, and
the browser's public address is known only through STUN)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMES = ("stun", "stuns", "turn", "turns")


@dataclass(frozen=True)
class IceServer:
    urls: str  # without the credentials: "turn:host:port?transport=udp"
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, str]:
        """As a browser's RTCIceServer dictionary."""
        out = {"urls": self.urls}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


def parse_ice_server(url: str) -> IceServer:
    """`stun:host:port` or `turn:user:password@host:port?transport=udp`. Raises ValueError."""
    scheme, _, rest = url.partition(":")
    if scheme not in SCHEMES or not rest:
        raise ValueError(f"{url!r} is not a stun:/turn: URL")
    username = credential = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        username, _, credential = userinfo.partition(":")
    return IceServer(f"{scheme}:{rest}", username, credential)
