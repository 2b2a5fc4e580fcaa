"""The /ws protocol against a real uvicorn on 127.0.0.1 and a real websockets client."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from typing import Any

import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed

from promptcast.engine import image as image_module
from promptcast.engine.pipeline import Engine, Rendered
from promptcast.engine.prompt_cache import LRUCache

from ..conftest import Server, connect, frames_until, http_get, recv_json, run_server


def prompt(seq: int, text: str, **extra: Any) -> str:
    return json.dumps({"type": "prompt", "seq": seq, "text": text, **extra})


async def test_hello_describes_protocol_model_and_limits(server: Server) -> None:
    ws, hello = await connect(server.ws_url)
    await ws.close()
    assert hello["protocol"] == 1
    assert isinstance(hello["session"]["id"], str) and 0 <= hello["session"]["seed"] < 2**32
    model = hello["model"]
    assert model["family"] == "lcm" and model["scheduler"] == "LCMScheduler"
    assert model["timesteps"]["2"] == [999, 499]
    assert model["steps"] == {"default": 2, "allowed": [1, 2, 3, 4, 5, 6, 7, 8]}
    assert model["sizes"]["default"] == [64, 64]
    assert [64, 64] in model["sizes"]["allowed"]
    assert (model["compile"], model["compile_tuning"], model["compile_scope"]) == (
        "eager", "fast", "whole")
    assert model["compile_fallbacks"] == {}
    assert hello["limits"]["max_message_bytes"] == 16384


async def test_frame_is_a_header_then_a_jpeg_of_the_requested_size(server: Server) -> None:
    ws, hello = await connect(server.ws_url)
    await ws.send(prompt(1, "a red circle", width=64, height=64, steps=1))
    [(header, image)] = await frames_until(ws, 1)
    await ws.close()
    assert header["seq"] == 1 and (header["width"], header["height"]) == (64, 64)
    assert header["format"] == "jpeg" and header["seed"] == hello["session"]["seed"]
    assert header["steps"] == 1
    timings = header["timings"]
    for stage in ("total_ms", "queue_ms", "text_encode_ms", "denoise_ms", "decode_ms", "encode_ms"):
        assert timings[stage] >= 0, stage
    assert timings["total_ms"] >= timings["denoise_ms"]
    img = Image.open(io.BytesIO(image))
    assert img.format == "JPEG" and img.size == (64, 64)


async def test_jpegs_the_engine_encoded_go_out_as_they_are(
    device_jpeg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptcast.runtime import runtime

    def no_cpu_encode(*args: object) -> bytes:
        raise AssertionError("the server encoded a frame the engine had encoded")

    monkeypatch.setattr(runtime, "encode_jpeg", no_cpu_encode)
    async with run_server(device_jpeg_engine) as srv:
        ws, _ = await connect(srv.ws_url)
        await ws.send(prompt(1, "a blue star", width=64, height=64))
        [(header, image)] = await frames_until(ws, 1)
        await ws.close()
    assert header["format"] == "jpeg" and header["timings"]["encode_ms"] >= 0
    assert Image.open(io.BytesIO(image)).size == (64, 64)
    assert ("a blue star", True) in device_jpeg_engine.asked  # type: ignore[attr-defined]


async def test_a_burst_ends_with_the_last_seq_and_far_fewer_frames(server: Server) -> None:
    ws, _ = await connect(server.ws_url)
    text = "a lighthouse on a cliff above a stormy sea"
    n = 36
    for seq in range(1, n + 1):  # 36 keystrokes within about 100 ms
        await ws.send(prompt(seq, text[:seq]))
        await asyncio.sleep(0.0028)
    frames = await frames_until(ws, n)
    await ws.close()
    seqs = [h["seq"] for h, _ in frames]
    assert seqs[-1] == n
    assert seqs == sorted(seqs)
    assert len(frames) <= n // 3, seqs
    _status, metrics = await http_get(server.http_url + "/metrics")
    assert 'promptcast_jobs_dropped_total{reason="superseded"}' in metrics


async def test_two_clients_typing_at_once_both_get_their_frames(server: Server) -> None:
    (a, _), (b, _) = await connect(server.ws_url), await connect(server.ws_url)

    async def type_and_collect(ws: Any, text: str) -> list[int]:
        for seq in range(1, len(text) + 1):
            await ws.send(prompt(seq, text[:seq], width=64, height=64))
            # About a frame's time per keystroke: each client should see several pictures, even
            # on a busy 2-core machine (at 4 ms one got only its last, once, while other tests ran).
            await asyncio.sleep(0.015)
        return [h["seq"] for h, _ in await frames_until(ws, len(text))]

    got_a, got_b = await asyncio.gather(
        type_and_collect(a, "a red fox in the snow"), type_and_collect(b, "a blue whale at sea")
    )
    await a.close()
    await b.close()
    assert got_a[-1] == len("a red fox in the snow")
    assert got_b[-1] == len("a blue whale at sea")
    # Neither waited for the other to stop typing: both saw pictures along the way.
    assert len(got_a) >= 2 and len(got_b) >= 2


BAD_INPUTS = [
    ("not json", "bad_json", None),
    ("[1, 2, 3]", "bad_json", None),
    ('{"type": "dance"}', "unknown_type", None),
    ("{}", "missing_field", None),
    ('{"type": "prompt", "text": "a"}', "missing_field", None),
    ('{"type": "prompt", "seq": 1}', "missing_field", 1),
    ('{"type": "prompt", "seq": "one", "text": "a"}', "bad_type", None),
    ('{"type": "prompt", "seq": 1, "text": ["a"]}', "bad_type", 1),
    ('{"type": "prompt", "seq": 1, "text": "half an emoji \\ud83d"}', "bad_type", 1),
    ('{"type": "prompt", "seq": 1, "text": "a", "steps": 1000}', "out_of_range", 1),
    ('{"type": "prompt", "seq": 1, "text": "a", "width": 100, "height": 100}', "out_of_range", 1),
    ('{"type": "prompt", "seq": 1, "text": "a", "seed": -1}', "out_of_range", 1),
    (b"\x89PNG\r\n", "binary_unexpected", None),
    (json.dumps({"type": "prompt", "seq": 1, "text": "a" * 20000}), "too_large", None),
]


async def test_every_kind_of_bad_input_gets_a_named_error_and_the_connection_stays(
    server: Server,
) -> None:
    ws, _ = await connect(server.ws_url)
    for raw, code, seq in BAD_INPUTS:
        await ws.send(raw)
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == code, (raw[:40], err)
        assert err["message"]
        assert err.get("seq") == seq
    # After all that, the same connection still renders.
    await ws.send(prompt(1, "still here", width=64, height=64))
    frames = await frames_until(ws, 1)
    assert frames[-1][0]["seq"] == 1
    # seq must increase
    await ws.send(prompt(1, "again"))
    err = await recv_json(ws)
    assert (err["code"], err["seq"]) == ("stale_seq", 1)
    await ws.close()
    _status, metrics = await http_get(server.http_url + "/metrics")
    assert 'promptcast_messages_rejected_total{code="bad_json"} 2.0' in metrics


async def test_an_identical_update_renders_nothing_new(server: Server) -> None:
    ws, _ = await connect(server.ws_url)
    await ws.send(prompt(1, "a cat", width=64, height=64))
    await frames_until(ws, 1)
    await ws.send(prompt(2, "a cat"))
    assert await recv_json(ws) == {"type": "unchanged", "seq": 2, "same_as": 1}
    await ws.send(prompt(3, "a cat", seed=12345))  # another seed is another picture
    assert (await frames_until(ws, 3))[-1][0]["seed"] == 12345
    await ws.close()


async def test_abusive_message_closes_only_that_connection(server: Server) -> None:
    ws, _ = await connect(server.ws_url)
    other, _ = await connect(server.ws_url)
    with pytest.raises(ConnectionClosed) as info:
        # Past the transport's hard limit (4 MiB images + 1 KiB); the server may close while
        # the client is still sending.
        await ws.send("x" * (5 << 20))
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await other.send(prompt(1, "unaffected", width=64, height=64))
    assert (await frames_until(other, 1))[-1][0]["seq"] == 1
    await other.close()


async def test_client_vanishing_mid_render_harms_nobody(server: Server) -> None:
    ws, _ = await connect(server.ws_url)
    await ws.send(prompt(1, "going away", width=128, height=128, steps=8))
    await ws.close()
    other, _ = await connect(server.ws_url)
    await other.send(prompt(1, "still working", width=64, height=64))
    assert (await frames_until(other, 1))[-1][0]["seq"] == 1
    await other.close()
    for _ in range(100):
        if not server.runtime.connections:
            break
        await asyncio.sleep(0.05)
    assert server.runtime.connections == {}


async def test_health_ready_and_metrics(server: Server) -> None:
    assert await http_get(server.http_url + "/healthz") == (200, '{"status":"alive"}')
    status, body = await http_get(server.http_url + "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    ws, _ = await connect(server.ws_url)
    await ws.send(prompt(1, "metrics", width=64, height=64))
    await frames_until(ws, 1)
    status, metrics = await http_get(server.http_url + "/metrics")
    await ws.close()
    assert status == 200
    for name in (
        "promptcast_prompts_received_total 1.0",
        "promptcast_frames_sent_total 1.0",
        "promptcast_keystroke_to_frame_seconds_bucket",
        'promptcast_stage_seconds_count{stage="denoise"} 1.0',
        "promptcast_sessions 1.0",
        "promptcast_prompt_cache_misses_total",
        "promptcast_ready 1.0",
        "promptcast_event_loop_lag_max_seconds",
    ):
        assert name in metrics, name
    # The loop is watched once ready, so by the time a frame came back it has been sampled.
    lag_count = re.search(r"^promptcast_event_loop_lag_seconds_count (\S+)", metrics, re.M)
    assert lag_count is not None and float(lag_count.group(1)) > 0


async def test_server_full_refuses_with_try_again_later(engine: Engine) -> None:
    async with run_server(engine, max_sessions=1) as srv:
        first, _ = await connect(srv.ws_url)
        from websockets.asyncio.client import connect as ws_connect

        second = await ws_connect(srv.ws_url)
        err = await recv_json(second)
        assert err["code"] == "server_full"
        with pytest.raises(ConnectionClosed) as info:
            await second.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        await first.close()


class FlakyEngine(Engine):
    """The real engine, failing on one prompt (a fake for a device fault). A "hold" prompt
    keeps the engine busy until released, so that other sessions' jobs wait and then run
    as one batch."""

    def render_batch(self, reqs: Any, cancelled: Any = None, jpeg: Any = (), video: Any = ()
                     ) -> list[Rendered]:
        if reqs[0].text == "hold":
            self.holding.set()
            assert self.release.wait(20)
        if reqs[0].text != "hold" and not reqs[0].text.startswith("warm-up"):
            self.batches.append([r.text for r in reqs])
        if any(r.text == "boom" for r in reqs):
            raise RuntimeError("simulated device fault")
        return super().render_batch(reqs, cancelled, jpeg, video)

    def recover(self, exc: BaseException) -> None:
        self.recoveries.append(str(exc))
        super().recover(exc)


def flaky(engine: Engine) -> FlakyEngine:
    fake = FlakyEngine(engine.config)
    fake.__dict__.update(engine.__dict__)  # share the loaded model
    fake.holding, fake.release = threading.Event(), threading.Event()
    fake.batches = []
    fake.recoveries = []
    return fake


async def hold_engine(srv: Server, fake: FlakyEngine) -> Any:
    """A session whose render keeps the engine busy until fake.release is set."""
    holder, _ = await connect(srv.ws_url)
    await holder.send(prompt(1, "hold", width=64, height=64))
    assert await asyncio.to_thread(fake.holding.wait, 20)
    return holder


async def release_with_two_waiting(srv: Server, fake: FlakyEngine, *prompts: tuple[str, int]
                                   ) -> tuple[Any, Any, Any]:
    """Hold the engine, have two new clients send one prompt each ((text, size)), let both wait
    behind the held render, then release it. Returns the holder and the two clients."""
    holder = await hold_engine(srv, fake)
    clients = []
    for text, size in prompts:
        ws, _ = await connect(srv.ws_url)
        await ws.send(prompt(1, text, width=size, height=size))
        clients.append(ws)
    await asyncio.sleep(0.3)  # both wait behind the held render
    fake.release.set()
    first, second = clients
    return holder, first, second


async def test_engine_error_is_reported_with_its_seq_and_serving_goes_on(engine: Engine) -> None:
    fake = flaky(engine)
    async with run_server(fake) as srv:
        # Both wait for the engine: they will share a batch.
        holder, ws, other = await release_with_two_waiting(srv, fake, ("boom", 64), ("fine", 64))
        err = await recv_json(ws)
        assert (err["type"], err["code"], err["seq"]) == ("error", "engine_error", 1)
        # The batch failed as a whole; rendered again one by one, only "boom" fails.
        assert (await frames_until(other, 1))[-1][0]["seq"] == 1
        assert fake.batches == [["boom", "fine"], ["boom"], ["fine"]]
        # The engine was given the chance to free what each failed call left behind.
        assert fake.recoveries == ["simulated device fault"] * 2
        await ws.send(prompt(2, "after the fault", width=64, height=64))
        assert (await frames_until(ws, 2))[-1][0]["seq"] == 2
        for c in (holder, ws, other):
            await c.close()


async def test_waiting_sessions_of_one_size_render_as_one_batch(engine: Engine) -> None:
    fake = flaky(engine)
    async with run_server(fake) as srv:
        holder = await hold_engine(srv, fake)
        clients = [(await connect(srv.ws_url))[0] for _ in range(3)]
        for i, ws in enumerate(clients):
            await ws.send(prompt(5, f"a cat number {i}", width=64, height=64))
        await clients[0].send(prompt(6, "a larger cat", width=128, height=128))  # its own shape
        await asyncio.sleep(0.3)
        fake.release.set()
        for ws in clients[1:]:
            [(header, _)] = await frames_until(ws, 5)
            assert (header["seq"], header["width"]) == (5, 64)
        [(header, _)] = await frames_until(clients[0], 6)
        assert (header["seq"], header["width"]) == (6, 128)
        assert fake.batches == [["a larger cat"], ["a cat number 1", "a cat number 2"]]
        _status, metrics = await http_get(srv.http_url + "/metrics")
        assert 'promptcast_batch_size_bucket{le="2.0"} 3.0' in metrics  # hold, 128 px, the pair
        for c in (holder, *clients):
            await c.close()


async def test_the_engine_takes_its_next_batch_without_waiting_for_the_event_loop(
    engine: Engine,
) -> None:
    fake = flaky(engine)
    async with run_server(fake) as srv:
        # Two sizes: two batches.
        holder, small, large = await release_with_two_waiting(
            srv, fake, ("a small cat", 64), ("a large cat", 128))
        # The loop stays blocked (as by a long callback) while the engine finishes the held
        # render and starts both waiting batches: they must not wait for the loop's next turn.
        deadline = time.monotonic() + 20
        while len(fake.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocking the loop: the point of this test
        assert sorted(fake.batches) == [["a large cat"], ["a small cat"]]
        assert (await frames_until(small, 1))[-1][0]["seq"] == 1
        assert (await frames_until(large, 1))[-1][0]["seq"] == 1
        _status, metrics = await http_get(srv.http_url + "/metrics")
        assert "promptcast_engine_start_delay_seconds_count 3.0" in metrics  # hold and the two
        for c in (holder, small, large):
            await c.close()


async def test_a_fault_outside_the_engine_fails_its_batch_and_serving_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with run_server(engine) as srv:
        runtime = srv.runtime
        render = runtime._render
        calls: list[int] = []

        def buggy(batch: Any, cancelled: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("a bug in the runtime")
            return render(batch, cancelled)

        monkeypatch.setattr(runtime, "_render", buggy)
        ws, _ = await connect(srv.ws_url)
        await ws.send(prompt(1, "the first prompt", width=64, height=64))
        err = await recv_json(ws)
        assert (err["type"], err["code"], err["seq"]) == ("error", "engine_error", 1)
        # The engine's loop lives on; and where the loop's state cannot be read from the engine
        # thread (it changed under the read), the frame still comes.
        monkeypatch.setattr(runtime, "_wants_video", lambda _: {}["gone"])
        await ws.send(prompt(2, "the second prompt", width=64, height=64))
        assert (await frames_until(ws, 2))[-1][0]["seq"] == 2
        await ws.close()


def png_bytes(size: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


async def test_img2img_over_the_socket(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded_on: list[str] = []  # the threads that decoded init images
    decode = image_module.decode_image
    monkeypatch.setattr(image_module, "decode_image", lambda *args: decoded_on.append(
        threading.current_thread().name) or decode(*args))
    ws, _ = await connect(server.ws_url)
    await ws.send(prompt(1, "a red square", width=64, height=64))
    await frames_until(ws, 1)
    await ws.send(json.dumps({"type": "image", "seq": 2, "format": "png", "strength": 0.6}))
    await ws.send(png_bytes(200))  # any size: it is resized to the session's
    [(header, image)] = await frames_until(ws, 2)
    assert (header["seq"], header["width"]) == (2, 64)
    assert Image.open(io.BytesIO(image)).size == (64, 64)
    # Corrupt data behind a valid signature: a clear error with its seq, the session goes on.
    await ws.send(json.dumps({"type": "image", "seq": 3, "format": "png"}))
    await ws.send(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    err = await recv_json(ws)
    assert (err["code"], err["seq"]) == ("bad_image", 3)
    await ws.send(json.dumps({"type": "image", "seq": 4, "clear": True}))
    assert (await frames_until(ws, 4))[-1][0]["seq"] == 4
    await ws.close()
    # Each image decoded once, beside the engine thread (which only waited for it).
    assert len(decoded_on) == 2 and all(t.startswith("promptcast-image") for t in decoded_on)


async def test_an_idle_session_gets_one_refined_frame(engine: Engine) -> None:
    async with run_server(engine, refine_after_ms=400) as srv:
        ws, hello = await connect(srv.ws_url)
        assert hello["refine"] == {"after_ms": 400, "steps": 4, "full_vae": False}
        await ws.send(prompt(1, "a cat", width=64, height=64))
        [(first, _)] = await frames_until(ws, 1)
        assert first["refined"] is False and first["steps"] == 2
        refined = await recv_json(ws, timeout=10)
        assert refined["type"] == "frame" and refined["refined"] is True
        assert (refined["seq"], refined["steps"]) == (1, 4)
        await ws.recv()  # its image
        # Typing on within the idle time: the earlier picture is never refined.
        await ws.send(prompt(2, "a cat on", width=64, height=64))
        await frames_until(ws, 2)
        await ws.send(prompt(3, "a cat on a", width=64, height=64))
        await frames_until(ws, 3)
        refined3 = await recv_json(ws, timeout=10)
        assert (refined3["seq"], refined3["refined"]) == (3, True)
        await ws.close()


class SlowRefineEngine(Engine):
    """The real engine, but a refine takes seconds unless told to stop: a stand-in for a
    many-step render on a big model."""

    refine_started: Any = None

    def render_batch(self, reqs: Any, cancelled: Any = None, jpeg: Any = (), video: Any = ()
                     ) -> list[Rendered]:
        if reqs[0].steps == 4 and cancelled is not None:
            import threading
            import time

            from promptcast.engine.pipeline import RenderCancelled

            self.refine_started.set()
            for _ in range(500):
                if cancelled():
                    raise RenderCancelled
                time.sleep(0.01)
            assert isinstance(self.refine_started, threading.Event)
        return super().render_batch(reqs, cancelled, jpeg, video)


async def test_an_update_never_waits_behind_a_running_refine(engine: Engine) -> None:
    import threading

    slow = SlowRefineEngine(engine.config)
    slow.__dict__.update(engine.__dict__)
    slow.refine_started = threading.Event()
    async with run_server(slow, refine_after_ms=50) as srv:
        ws, _ = await connect(srv.ws_url)
        await ws.send(prompt(1, "a cat", width=64, height=64))
        await frames_until(ws, 1)
        assert await asyncio.to_thread(slow.refine_started.wait, 10)
        started = asyncio.get_running_loop().time()
        await ws.send(prompt(2, "a dog", width=64, height=64))
        frames = await frames_until(ws, 2)
        waited = asyncio.get_running_loop().time() - started
        assert waited < 2.5, waited  # the refine would have taken 5 s
        assert not any(h["refined"] for h, _ in frames)
        assert srv.runtime.scheduler.dropped["refine_preempted"] == 1
        await ws.close()


async def test_readyz_says_503_while_the_engine_is_stuck_and_recovers(engine: Engine) -> None:
    fake = flaky(engine)
    async with run_server(fake, stuck_after_s=0.5) as srv:
        holder = await hold_engine(srv, fake)
        await asyncio.sleep(0.8)
        status, body = await http_get(srv.http_url + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "stuck"
        fake.release.set()
        await frames_until(holder, 1)
        assert (await http_get(srv.http_url + "/readyz"))[0] == 200
        await holder.close()


class SlowWarmUpEngine(Engine):
    """The real engine, its warm-up held after the first bucket until released: a first start
    on a GPU compiles for minutes per bucket."""

    def render_batch(self, reqs: Any, cancelled: Any = None, jpeg: Any = (), video: Any = ()
                     ) -> list[Rendered]:
        if reqs[0].text.startswith("warm-up") and self.warming and self.warming.done == 1:
            self.holding.set()
            assert self.release.wait(20)
        return super().render_batch(reqs, cancelled, jpeg, video)


async def test_readyz_says_how_far_the_warm_up_has_got(engine: Engine) -> None:
    slow = SlowWarmUpEngine(engine.config)
    slow.__dict__.update(engine.__dict__)  # share the loaded model
    slow.warming, slow.holding, slow.release = None, threading.Event(), threading.Event()
    # Its own prompt cache: warming up clears it, and other tests count the shared one's hits.
    slow.prompt_cache = LRUCache(engine.config.prompt_cache_size)
    async with run_server(slow, wait_ready=False) as srv:
        assert await asyncio.to_thread(slow.holding.wait, 20)
        status, body = await http_get(srv.http_url + "/readyz")
        report = json.loads(body)
        assert status == 503 and report["status"] == "loading"
        warm_up = report["warm_up"]
        assert (warm_up["buckets"], warm_up["done"]) == (len(engine.limits.sizes), 1)
        assert warm_up["elapsed_s"] >= 0 and warm_up["estimated_left_s"] >= 0
        slow.release.set()
        while not srv.runtime.ready:
            await asyncio.sleep(0.01)
        status, body = await http_get(srv.http_url + "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"


async def test_draining_refuses_new_sessions_and_says_so(engine: Engine) -> None:
    async with run_server(engine) as srv:
        srv.runtime.draining = True  # what SIGTERM sets (tests/e2e runs the real signal)
        status, body = await http_get(srv.http_url + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "shutting_down"
        from websockets.asyncio.client import connect as ws_connect

        late = await ws_connect(srv.ws_url)
        err = await recv_json(late)
        assert err["code"] == "server_full" and "shutting down" in err["message"]
        await late.close()


async def test_shutdown_gives_up_on_a_stuck_engine_within_the_timeout(engine: Engine) -> None:
    fake = flaky(engine)
    try:
        async with run_server(fake, shutdown_timeout_s=1.0) as srv:
            holder = await hold_engine(srv, fake)
            runtime = srv.runtime
            started = asyncio.get_running_loop().time()
        # run_server has stopped the server: the runtime waited half the timeout, then gave up.
        assert runtime.abandoned
        assert asyncio.get_running_loop().time() - started < 5
        await holder.close()
    finally:
        fake.release.set()  # let the engine thread end


async def test_a_prompt_past_the_token_limit_gets_one_notice(server: Server) -> None:
    ws, hello = await connect(server.ws_url)
    assert hello["model"]["max_prompt_tokens"] == 77
    words = " ".join(["word"] * 80)
    await ws.send(prompt(1, words, width=64, height=64))
    notice = await recv_json(ws)
    assert notice["type"] == "notice" and notice["code"] == "prompt_truncated" and notice["seq"] == 1
    assert "77 tokens" in notice["message"]
    await frames_until(ws, 1)
    await ws.send(prompt(2, words + " more", width=64, height=64))  # still over: no new notice
    [(header, _)] = await frames_until(ws, 2)
    assert header["seq"] == 2
    await ws.close()


async def test_stop_leaves_none_of_the_runtimes_tasks_pending(engine: Engine) -> None:
    async with run_server(engine) as srv:
        ws, _ = await connect(srv.ws_url)
        await ws.send(prompt(1, "a last frame"))
        await frames_until(ws, 1)
        srv.runtime.spawn(asyncio.Event().wait())  # one that would never end by itself
        spawned = set(srv.runtime._tasks)
        await ws.close()
    assert spawned and all(task.done() for task in spawned)
