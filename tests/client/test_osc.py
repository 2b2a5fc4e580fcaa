"""The OSC bridge with real python-osc UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from promptcast_client import Client
from promptcast_client.osc import Bridge
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from ..conftest import Server
from .helpers import png


async def test_osc_prompt_seed_and_image_come_back_as_frame_notifications(
    server: Server, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.put_nowait((address, args)))
    receiver = AsyncIOOSCUDPServer(("127.0.0.1", 0), dispatcher, loop)  # type: ignore[arg-type]
    transport, _ = await receiver.create_serve_endpoint()
    target = transport.get_extra_info("sockname")[:2]

    async with Client(server.ws_url) as client:
        bridge = Bridge(client, listen=("127.0.0.1", 0), target=target, out=tmp_path)
        host, port = await bridge.start()
        forwarder = asyncio.create_task(bridge.run())
        controller = SimpleUDPClient(host, port)
        try:
            # One bundle: one update, so the first /frame shows all three.
            bundle = OscBundleBuilder(IMMEDIATELY)
            for address, value in (("/size", [64, 64]), ("/seed", [1234]), ("/prompt", ["a purple circle"])):
                message = OscMessageBuilder(address)
                for arg in value:
                    message.add_arg(arg)
                bundle.add_content(message.build())
            controller.send(bundle.build())
            address, (seq, latency, path, width, height) = await asyncio.wait_for(received.get(), 30)
            assert address == "/frame" and (width, height) == (64, 64) and latency > 0
            assert Path(path).read_bytes()[:3] == b"\xff\xd8\xff"
            assert client.last_frame is not None and client.last_frame.seed == 1234
            assert client.last_frame.seq == seq and client.session.text == "a purple circle"

            controller.send_message("/image", png())
            address, (image_seq, *_rest) = await asyncio.wait_for(received.get(), 30)
            assert address == "/frame" and image_seq > seq

            controller.send_message("/size", [100, 100])  # not an allowed size
            address, (code, _message) = await asyncio.wait_for(received.get(), 30)
            assert (address, code) == ("/error", "out_of_range")
        finally:
            forwarder.cancel()
            await bridge.close()
            controller.close()
            transport.close()
