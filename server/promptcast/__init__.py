"""promptcast: a real-time text-to-image server. Type a prompt, watch the picture follow."""

__version__ = "0.1.0"
