import json

from promptcast.core.limits import Limits
from promptcast.core.messages import ErrorCode, ErrorMessage, Unchanged
from promptcast.core.scheduler import RenderRequest
from promptcast.core.session import Reply, Session, Submit

LIMITS = Limits(sizes=((64, 64), (128, 128)), default_size=(128, 128), steps=(1, 2, 3, 4),
                default_steps=2)


def prompt(seq: int, text: str, **extra: object) -> str:
    return json.dumps({"type": "prompt", "seq": seq, "text": text, **extra})


def submitted(actions: list) -> RenderRequest:
    assert len(actions) == 1 and isinstance(actions[0], Submit), actions
    return actions[0].job.request


def replied(actions: list) -> object:
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    return actions[0].message


def test_defaults_then_settings_persist_between_prompts() -> None:
    s = Session("s", LIMITS, seed=11)
    assert submitted(s.receive_text(prompt(1, "a"), 0.0)) == RenderRequest("a", 11, 2, 128, 128)
    assert submitted(s.receive_text(prompt(2, "ab", seed=5, steps=1, width=64, height=64), 0.1)) \
        == RenderRequest("ab", 5, 1, 64, 64)
    # Seed, steps and size stay until changed: frames morph rather than flicker.
    assert submitted(s.receive_text(prompt(3, "abc"), 0.2)) == RenderRequest("abc", 5, 1, 64, 64)


def test_job_carries_arrival_time_and_seq() -> None:
    s = Session("s", LIMITS, seed=0)
    [action] = s.receive_text(prompt(9, "a"), 12.5)
    assert isinstance(action, Submit)
    assert (action.job.session_id, action.job.seq, action.job.received_at) == ("s", 9, 12.5)


def test_seq_must_increase() -> None:
    s = Session("s", LIMITS, seed=0)
    submitted(s.receive_text(prompt(5, "a"), 0))
    for seq in (5, 3):
        err = replied(s.receive_text(prompt(seq, "b"), 0))
        assert isinstance(err, ErrorMessage) and err.code == ErrorCode.STALE_SEQ and err.seq == seq
    submitted(s.receive_text(prompt(6, "b"), 0))


def test_identical_update_renders_nothing_new() -> None:
    s = Session("s", LIMITS, seed=0)
    submitted(s.receive_text(prompt(1, "cat"), 0))
    assert replied(s.receive_text(prompt(2, "cat"), 0)) == Unchanged(2, 1)
    # The same text with another setting is a different picture.
    submitted(s.receive_text(prompt(3, "cat", seed=4), 0))


def test_returning_to_an_earlier_text_still_renders() -> None:
    # "cat" shown, "cats" on its way, back to "cat": the picture must end on "cat".
    s = Session("s", LIMITS, seed=0)
    submitted(s.receive_text(prompt(1, "cat"), 0))
    submitted(s.receive_text(prompt(2, "cats"), 0))
    assert submitted(s.receive_text(prompt(3, "cat"), 0)).text == "cat"


def test_failed_render_can_be_retried_with_the_same_request() -> None:
    s = Session("s", LIMITS, seed=0)
    [action] = s.receive_text(prompt(1, "cat"), 0)
    assert isinstance(action, Submit)
    s.render_failed(action.job)
    submitted(s.receive_text(prompt(2, "cat"), 0))


def test_bad_messages_reply_and_change_nothing() -> None:
    s = Session("s", LIMITS, seed=3)
    err = replied(s.receive_text(prompt(1, "a", steps=99), 0))
    assert isinstance(err, ErrorMessage) and err.code == ErrorCode.OUT_OF_RANGE
    bin_err = replied(s.receive_binary(b"0123456789", 0))
    assert isinstance(bin_err, ErrorMessage) and bin_err.code == ErrorCode.BINARY_UNEXPECTED
    # A rejected message neither consumes its seq nor changes settings.
    assert submitted(s.receive_text(prompt(1, "a"), 0)) == RenderRequest("a", 3, 2, 128, 128)
