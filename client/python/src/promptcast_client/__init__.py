"""Python client for a promptcast server: send prompts as the user types, get frames back.

`Client` is the async API, `SyncClient` the blocking one for plugin hosts; see docs/client.md.
"""

from .client import DEFAULT_URL, Client, SessionState, image_format
from .errors import AuthError, ConnectionLost, PromptcastError, ProtocolError, ServerError, ServerUnavailable
from .frame import Frame
from .sync import SyncClient

__all__ = [
    "DEFAULT_URL",
    "AuthError",
    "Client",
    "ConnectionLost",
    "Frame",
    "PromptcastError",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "SessionState",
    "SyncClient",
    "image_format",
]
