"""The sans-I/O core: protocol, per-client state and latest-wins scheduling.

Nothing here imports asyncio, torch, starlette or aiortc, and nothing reads a clock: time is
passed in. That keeps every rule about ordering and dropping testable with a fake clock.
"""
