"""WebSocket conformance: the Autobahn|Testsuite fuzzing client against an echo route served by
the same stack as /ws (uvicorn's websockets-sansio protocol, Starlette, and the uvicorn settings
of `promptcast serve`: message size limit, no per-message compression).

Autobahn runs on Python 2.7. Once, outside the project:
    ~/.pyenv/versions/2.7.18/bin/python -m pip install 'virtualenv<20.22'
    ~/.pyenv/versions/2.7.18/bin/python -m virtualenv /tmp/ab27
    /tmp/ab27/bin/pip install autobahntestsuite
Then:
    .venv/bin/python bench/autobahn.py --wstest /tmp/ab27/bin/wstest

The fast subset leaves out 9.* (throughput with large messages) and 12.*/13.* (per-message
compression, which the server does not offer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from promptcast.bench import free_port
from promptcast.cli import uvicorn_config
from promptcast.config import Config


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        pass


async def ok(request: object) -> object:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wstest", default="/tmp/ab27/bin/wstest")
    parser.add_argument("--cases", default="*")
    args = parser.parse_args()

    port = free_port()
    config = Config(host="127.0.0.1", port=port, log_level="critical")
    app = Starlette(routes=[WebSocketRoute("/echo", echo), Route("/", ok)])
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)

    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "outdir": f"{tmp}/reports",
            "servers": [{"agent": "promptcast-uvicorn", "url": f"ws://127.0.0.1:{port}/echo"}],
            "cases": [args.cases],
            "exclude-cases": ["9.*", "12.*", "13.*"],
            "exclude-agent-cases": {},
        }
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        subprocess.run([args.wstest, "-m", "fuzzingclient", "-s", "spec.json"], cwd=tmp,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        index = json.loads(Path(tmp, "reports", "index.json").read_text())
    server.should_exit = True
    thread.join(10)

    results = index["promptcast-uvicorn"]
    behaviour = Counter(r["behavior"] for r in results.values())
    closing = Counter(r["behaviorClose"] for r in results.values())
    print(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(behaviour.items())))
    print("close behaviour: " + ", ".join(f"{k} {v}" for k, v in sorted(closing.items())))
    for case, r in sorted(results.items()):
        if r["behavior"] not in ("OK", "INFORMATIONAL", "NON-STRICT"):
            print(f"  {case}: {r['behavior']} (close {r['behaviorClose']})")
    sys.exit(0 if behaviour.get("FAILED", 0) == 0 else 1)


if __name__ == "__main__":
    main()
