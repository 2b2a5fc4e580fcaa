import json

import pytest

from promptcast.core.ice import parse_ice_server
from promptcast.core.limits import Limits
from promptcast.core.messages import (
    ErrorCode,
    FrameHeader,
    Hello,
    PromptMessage,
    ProtocolError,
    parse_client_text,
    serialise,
)

LIMITS = Limits(
    sizes=((64, 64), (128, 128), (256, 128)), default_size=(128, 128), steps=(1, 2, 3, 4),
    default_steps=2, max_message_bytes=512, max_prompt_chars=100,
)


def parse(obj: object) -> PromptMessage:
    return parse_client_text(json.dumps(obj), LIMITS)


def error_of(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_text(raw, LIMITS)
    return info.value


def test_minimal_prompt() -> None:
    assert parse({"type": "prompt", "seq": 1, "text": "a cat"}) == PromptMessage(1, "a cat")


def test_full_prompt_and_unknown_fields_ignored() -> None:
    msg = parse({"type": "prompt", "seq": 7, "text": "x", "seed": 42, "steps": 3, "width": 256,
                 "height": 128, "from_the_future": [1, 2]})
    assert msg == PromptMessage(7, "x", seed=42, steps=3, width=256, height=128)


def test_empty_text_is_a_prompt() -> None:
    # Deleting everything is a keystroke like any other.
    assert parse({"type": "prompt", "seq": 1, "text": ""}).text == ""


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("not json", ErrorCode.BAD_JSON, "not valid JSON"),
        ("[1, 2]", ErrorCode.BAD_JSON, "JSON object"),
        ('"prompt"', ErrorCode.BAD_JSON, "JSON object"),
        ("[" * 5000 + "]" * 5000, ErrorCode.TOO_LARGE, "limit"),
        ("{}", ErrorCode.MISSING_FIELD, "'type'"),
        ('{"type": "dance"}', ErrorCode.UNKNOWN_TYPE, '"dance"'),
        ('{"type": 5}', ErrorCode.UNKNOWN_TYPE, "5"),
        ('{"type": "prompt", "text": "a"}', ErrorCode.MISSING_FIELD, "'seq'"),
        ('{"type": "prompt", "seq": 1}', ErrorCode.MISSING_FIELD, "'text'"),
        ('{"type": "prompt", "seq": "1", "text": "a"}', ErrorCode.BAD_TYPE, "'seq' must be an integer"),
        ('{"type": "prompt", "seq": 1.5, "text": "a"}', ErrorCode.BAD_TYPE, "'seq'"),
        ('{"type": "prompt", "seq": true, "text": "a"}', ErrorCode.BAD_TYPE, "a boolean"),
        ('{"type": "prompt", "seq": -1, "text": "a"}', ErrorCode.OUT_OF_RANGE, "'seq'"),
        ('{"type": "prompt", "seq": 1e400, "text": "a"}', ErrorCode.BAD_TYPE, "'seq'"),
        ('{"type": "prompt", "seq": 1, "text": 5}', ErrorCode.BAD_TYPE, "'text' must be a string"),
        ('{"type": "prompt", "seq": 1, "text": "a", "seed": -3}', ErrorCode.OUT_OF_RANGE, "'seed'"),
        ('{"type": "prompt", "seq": 1, "text": "a", "seed": 4294967296}', ErrorCode.OUT_OF_RANGE, "'seed'"),
        ('{"type": "prompt", "seq": 1, "text": "a", "seed": "7"}', ErrorCode.BAD_TYPE, "'seed'"),
        ('{"type": "prompt", "seq": 1, "text": "a", "steps": 9}', ErrorCode.OUT_OF_RANGE, "'steps'"),
        ('{"type": "prompt", "seq": 1, "text": "a", "steps": 0}', ErrorCode.OUT_OF_RANGE, "'steps'"),
        ('{"type": "prompt", "seq": 1, "text": "a", "width": 64}', ErrorCode.MISSING_FIELD, "together"),
        ('{"type": "prompt", "seq": 1, "text": "a", "width": 100, "height": 100}',
         ErrorCode.OUT_OF_RANGE, "allowed: 64x64, 128x128, 256x128"),
        ('{"type": "prompt", "seq": 1, "text": "a", "width": 128, "height": 256}',
         ErrorCode.OUT_OF_RANGE, "128x256"),
        ('{"type": "prompt", "seq": 1, "text": "' + "a" * 101 + '"}', ErrorCode.OUT_OF_RANGE,
         "limit is 100"),
    ],
)
def test_bad_input_is_named(raw: str, code: str, words: str) -> None:
    err = error_of(raw)
    assert err.code == code
    assert words in err.message


def test_size_limit_counts_bytes_not_characters() -> None:
    # 200 three-byte characters: under the character limit, over the byte limit.
    err = error_of(json.dumps({"type": "prompt", "seq": 1, "text": "€" * 99}, ensure_ascii=False)
                   + " " * 250)
    assert err.code == ErrorCode.TOO_LARGE


def test_errors_after_seq_carry_it() -> None:
    assert error_of('{"type": "prompt", "seq": 4, "text": "a", "steps": 99}').seq == 4
    assert error_of('{"type": "prompt", "text": "a"}').seq is None


def test_server_messages_serialise() -> None:
    hello = json.loads(serialise(Hello("s1", 5, {"name": "m"}, LIMITS, "promptcast/x")))
    assert hello["type"] == "hello" and hello["protocol"] == 1
    assert hello["session"] == {"id": "s1", "seed": 5}
    assert hello["model"]["sizes"] == {"default": [128, 128],
                                       "allowed": [[64, 64], [128, 128], [256, 128]]}
    assert hello["model"]["steps"] == {"default": 2, "allowed": [1, 2, 3, 4]}
    assert hello["limits"]["max_message_bytes"] == 512
    assert hello["webrtc"] == {"ice_servers": []}
    frame = json.loads(serialise(FrameHeader(3, 64, 64, 1, 2, "jpeg", {"total_ms": 1.23456})))
    assert frame == {"type": "frame", "seq": 3, "width": 64, "height": 64, "seed": 1, "steps": 2,
                     "format": "jpeg", "refined": False, "timings": {"total_ms": 1.235}}


def test_ice_server_urls_become_browser_ice_servers() -> None:
    turn = parse_ice_server("turn:user:pa:ss@turn.example.org:3478?transport=udp")
    assert turn.to_json() == {"urls": "turn:turn.example.org:3478?transport=udp",
                              "username": "user", "credential": "pa:ss"}
    assert parse_ice_server("stun:127.0.0.1:3478").to_json() == {"urls": "stun:127.0.0.1:3478"}
    for bad in ("http://x", "turn:", "127.0.0.1:3478"):
        with pytest.raises(ValueError):
            parse_ice_server(bad)
    hello = Hello("s1", 5, {}, LIMITS, "promptcast/x", ice_servers=(turn.to_json(),)).to_json()
    assert hello["webrtc"] == {"ice_servers": [turn.to_json()]}


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    roomy = Limits(sizes=((64, 64),), default_size=(64, 64), steps=(1,), default_steps=1,
                   max_message_bytes=200_000)
    with pytest.raises(ProtocolError) as info:
        parse_client_text("[" * 100_000 + "]" * 100_000, roomy)
    assert info.value.code == ErrorCode.BAD_JSON


def test_half_of_a_surrogate_pair_is_this_clients_error() -> None:
    # "\ud83d" alone is valid JSON but not text (a client that slices a string through an
    # emoji sends it); the tokenizer raised on it inside the engine, failing the whole batch.
    err = error_of('{"type": "prompt", "seq": 7, "text": "a cat \\ud83d"}')
    assert (err.code, err.seq) == (ErrorCode.BAD_TYPE, 7)
    assert "'text'" not in err.message and '"text"' in err.message and "surrogate" in err.message
    assert error_of('{"type": "webrtc_offer", "sdp": "v=0\\udfa8"}').code == ErrorCode.BAD_TYPE
    assert error_of('{"type": "prompt", "seq": "x", "text": "\\ud83d"}').seq is None
    # A whole pair is one character, and fine.
    assert parse_client_text('{"type": "prompt", "seq": 1, "text": "a cat \\ud83c\\udfa8"}',
                             LIMITS).text == "a cat \U0001f3a8"
