"""The bridge between the event loop (transports, sessions, scheduling) and the engine thread."""
