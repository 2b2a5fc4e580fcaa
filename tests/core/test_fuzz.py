"""Fuzzing the protocol's pure core with hypothesis: whatever a client sends, the parser
answers with a message or a ProtocolError (never another exception), and a session answers
with actions whose invariants hold."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptcast.core.limits import Limits
from promptcast.core.messages import ErrorMessage, ProtocolError, parse_client_text
from promptcast.core.session import Close, Reply, Session, StartWebRTC, Submit

LIMITS = Limits(sizes=((64, 64), (128, 128)), default_size=(128, 128), steps=(1, 2, 4),
                default_steps=2, max_messages_per_s=1e9, message_burst=10**9)
TYPES = ["prompt", "image", "webrtc_offer", "ping", "", "PROMPT"]
KEYS = ["type", "seq", "text", "seed", "steps", "width", "height", "strength", "format", "clear",
        "sdp", "extra"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Objects shaped like messages: known keys with values of any JSON type, often the right one.
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | json_values},
    optional={k: json_values | st.integers(-(2**70), 2**70) | st.sampled_from(["jpeg", "png", "a"])
              for k in KEYS[1:]},
)


def parse(raw: str) -> Any:
    try:
        return parse_client_text(raw, LIMITS)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return exc


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_protocol_error(raw: str) -> None:
    parse(raw)


@settings(max_examples=600, deadline=None)
@given(messages)
def test_any_message_shaped_object_parses_or_is_a_protocol_error(obj: dict[str, Any]) -> None:
    result = parse(json.dumps(obj, allow_nan=True))
    if not isinstance(result, ProtocolError) and obj.get("type") == "prompt":
        # What the parser accepts is within the limits.
        assert isinstance(obj["seq"], int) and not isinstance(obj["seq"], bool) and obj["seq"] >= 0
        if result.width is not None:
            assert (result.width, result.height) in LIMITS.sizes
        if result.steps is not None:
            assert result.steps in LIMITS.steps


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(messages.map(lambda o: json.dumps(o, allow_nan=True)),
                          st.text(max_size=50), st.binary(max_size=50)), max_size=25))
def test_a_session_survives_any_sequence_and_keeps_its_invariants(inputs: list[str | bytes]) -> None:
    s = Session("fuzz", LIMITS, seed=1)
    submitted: list[int] = []
    for i, item in enumerate(inputs):
        now = i * 0.01
        actions = s.receive_text(item, now) if isinstance(item, str) else s.receive_binary(item, now)
        for action in actions:
            assert isinstance(action, Submit | Reply | StartWebRTC | Close)
            if isinstance(action, Submit):
                job = action.job
                submitted.append(job.seq)
                assert (job.request.width, job.request.height) in LIMITS.sizes
                assert job.request.steps in LIMITS.steps
            if isinstance(action, Reply) and isinstance(action.message, ErrorMessage):
                assert action.message.code
    assert submitted == sorted(submitted) and len(set(submitted)) == len(submitted)  # seq only grows
