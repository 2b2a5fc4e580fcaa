import json

from promptcast.core.limits import Limits
from promptcast.core.messages import ErrorCode, ErrorMessage, Unchanged
from promptcast.core.scheduler import RenderRequest
from promptcast.core.session import RefinePolicy, Reply, Session, Submit

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


# ------------------------------------------------------------ img2img

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32


def image_header(seq: int, **extra: object) -> str:
    return json.dumps({"type": "image", "seq": seq, "format": "png", **extra})


def test_image_header_then_binary_is_an_img2img_update() -> None:
    s = Session("s", LIMITS, seed=1)
    submitted(s.receive_text(prompt(1, "a cat"), 0))
    assert s.receive_text(image_header(2, strength=0.7), 0) == []  # waits for the image
    req = submitted(s.receive_binary(PNG, 0))
    assert (req.text, req.image, req.strength) == ("a cat", PNG, 0.7)
    # The image and strength stay for later prompts, like seed and size.
    req = submitted(s.receive_text(prompt(3, "a dog"), 0))
    assert (req.image, req.strength) == (PNG, 0.7)
    [action] = s.receive_text(prompt(4, "a dog", strength=0.3), 0)
    assert isinstance(action, Submit) and action.job.seq == 4 and action.job.request.strength == 0.3


def test_clearing_the_image_returns_to_text_to_image() -> None:
    s = Session("s", LIMITS, seed=1)
    s.receive_text(json.dumps({"type": "image", "seq": 1, "format": "jpeg"}), 0)
    submitted(s.receive_binary(JPEG, 0))
    req = submitted(s.receive_text(json.dumps({"type": "image", "seq": 2, "clear": True}), 0))
    assert req.image is None and req.strength == 1.0


def test_image_header_without_its_binary_is_reported_and_the_next_message_still_counts() -> None:
    s = Session("s", LIMITS, seed=1)
    s.receive_text(image_header(1), 0)
    actions = s.receive_text(prompt(2, "a cat"), 0)
    assert isinstance(actions[0], Reply) and actions[0].message == ErrorMessage(
        ErrorCode.IMAGE_MISSING,
        "an image message must be followed directly by one binary message; image ignored", 1)
    assert submitted(actions[1:]).text == "a cat" and s.image is None


def test_bad_images_are_refused_with_their_seq() -> None:
    small = Limits(sizes=((64, 64),), default_size=(64, 64), steps=(1,), default_steps=1,
                   max_image_bytes=20)
    s = Session("s", small, seed=1)
    s.receive_text(image_header(1), 0)
    err = replied(s.receive_binary(PNG, 0))
    assert isinstance(err, ErrorMessage) and (err.code, err.seq) == (ErrorCode.TOO_LARGE, 1)
    s.receive_text(image_header(2), 0)
    err = replied(s.receive_binary(b"GIF89a", 0))
    assert isinstance(err, ErrorMessage) and (err.code, err.seq) == (ErrorCode.BAD_IMAGE, 2)
    assert s.image is None


def test_image_message_fields_are_checked() -> None:
    s = Session("s", LIMITS, seed=1)
    for extra, code in (({"format": "gif"}, ErrorCode.OUT_OF_RANGE),
                        ({"format": None}, ErrorCode.MISSING_FIELD),
                        ({"strength": 0}, ErrorCode.OUT_OF_RANGE),
                        ({"strength": 1.5}, ErrorCode.OUT_OF_RANGE),
                        ({"strength": "high"}, ErrorCode.BAD_TYPE),
                        ({"clear": "yes"}, ErrorCode.BAD_TYPE)):
        raw = json.dumps({"type": "image", "seq": 1, "format": "png", **extra})
        err = replied(s.receive_text(raw, 0))
        assert isinstance(err, ErrorMessage) and err.code == code, extra


# ------------------------------------------------------------ refine when idle

POLICY = RefinePolicy(idle_s=0.3, steps=4, full_vae=False)


def test_refine_is_owed_once_after_the_frame_and_the_idle_time() -> None:
    s = Session("s", LIMITS, seed=1, refine=POLICY)
    [action] = s.receive_text(prompt(1, "a cat"), 10.0)
    assert isinstance(action, Submit)
    assert s.refine_due_at() is None  # no frame yet: a refine would only delay it
    s.frame_rendered(action.job, 0.0)
    assert s.refine_due_at() == 10.3
    assert s.refine_job(10.2) is None
    job = s.refine_job(10.3)
    assert job is not None and job.refined and job.seq == 1
    assert job.request == RenderRequest("a cat", 1, 4, 128, 128)
    assert s.refine_job(11.0) is None and s.refine_due_at() is None  # once per update


def test_a_new_update_postpones_the_refine_to_its_own_frame() -> None:
    s = Session("s", LIMITS, seed=1, refine=POLICY)
    [first] = s.receive_text(prompt(1, "a cat"), 10.0)
    assert isinstance(first, Submit)
    s.frame_rendered(first.job, 0.0)
    s.receive_text(prompt(2, "a cat!"), 10.2)
    assert s.refine_job(10.35) is None and s.refine_due_at() is None
    # An unchanged update is still typing: it moves the idle clock too.
    [second] = s.receive_text(prompt(3, "a dog"), 10.4)
    assert isinstance(second, Submit)
    s.frame_rendered(second.job, 0.0)
    s.receive_text(prompt(4, "a dog"), 10.5)
    assert s.refine_due_at() == 10.8


def test_no_refine_when_it_would_not_improve_anything() -> None:
    same = RefinePolicy(idle_s=0.3, steps=2, full_vae=False)  # the session's own steps
    s = Session("s", LIMITS, seed=1, refine=same)
    [action] = s.receive_text(prompt(1, "a cat"), 0)
    assert isinstance(action, Submit)
    s.frame_rendered(action.job, 0.0)
    assert s.refine_job(1.0) is None
    assert Session("t", LIMITS, seed=1).refine_due_at() is None  # refining off


def test_refine_never_uses_fewer_steps_than_the_session_asked_for() -> None:
    s = Session("s", LIMITS, seed=1, refine=POLICY)  # refines at 4 steps
    [action] = s.receive_text(prompt(1, "a cat", steps=3), 0)
    assert isinstance(action, Submit)
    s.frame_rendered(action.job, 0.0)
    job = s.refine_job(1.0)
    assert job is not None and job.request.steps == 4
    [action] = s.receive_text(prompt(2, "a cat", steps=4), 2.0)
    assert isinstance(action, Submit)
    s.frame_rendered(action.job, 0.0)
    assert s.refine_job(3.0) is None  # already at 4: nothing to improve


def test_a_message_flood_is_refused_then_closed_with_1008() -> None:
    import dataclasses

    from promptcast.core.session import Close

    s = Session("s", dataclasses.replace(LIMITS, max_messages_per_s=1, message_burst=3), seed=1)
    for seq in range(1, 4):
        assert isinstance(s.receive_text(prompt(seq, f"cat {seq}"), 0.0)[0], Submit)
    err = replied(s.receive_text(prompt(4, "cat 4"), 0.0))
    assert isinstance(err, ErrorMessage) and err.code == ErrorCode.RATE_LIMITED
    assert s.receive_text(prompt(5, "cat 5"), 0.1) == []  # refused quietly: it was just told
    assert s.receive_binary(b"\xff" * 10, 0.2) == []  # stray binary messages count too
    assert s.receive_text(prompt(6, "cat 6"), 0.3) == [Close(1008, "message flood")]
    # Refused messages changed nothing: after a pause the client resends its newest state.
    assert submitted(s.receive_text(prompt(7, "cat 7"), 10.0)).text == "cat 7"


# ------------------------------------------------------------ idle timeout


def test_idle_timeout_counts_from_the_last_message_of_any_kind() -> None:
    from dataclasses import replace

    from promptcast.core.session import CLOSE_NORMAL, IDLE_REASON, Close

    s = Session("s", replace(LIMITS, idle_timeout_s=60.0), seed=1, opened_at=100.0)
    assert s.idle_due_at(100.0) == 160.0  # a client that never sends anything
    assert s.idle_close(159.9) is None
    [submit] = s.receive_text(prompt(1, "a"), 130.0)
    assert isinstance(submit, Submit)
    s.frame_rendered(submit.job, 131.0)
    s.receive_text("not json", 150.0)  # refused, but the client is there
    s.receive_binary(b"\x00", 155.0)  # likewise
    assert s.idle_due_at(155.0) == 215.0
    assert s.idle_close(214.0) is None
    assert s.idle_close(215.0) == Close(CLOSE_NORMAL, IDLE_REASON) == Close(1000, "idle timeout")


def test_a_session_owed_a_picture_is_not_idle() -> None:
    # A render slower than the timeout (a loaded server) must not cost the last keystroke's
    # picture: the clock starts when that picture exists.
    from dataclasses import replace

    s = Session("s", replace(LIMITS, idle_timeout_s=1.0), seed=1, opened_at=0.0)
    [submit] = s.receive_text(prompt(1, "a red fox"), 10.0)
    assert isinstance(submit, Submit)
    assert s.idle_close(11.0) is None and s.idle_close(30.0) is None
    assert s.idle_due_at(30.0) == 31.0  # still owed: look again a timeout later
    s.frame_rendered(submit.job, 40.0)
    assert s.idle_due_at(40.0) == 41.0
    assert s.idle_close(40.9) is None and s.idle_close(41.0) is not None
    # A failed render owes nothing more: the clock runs from the last message again.
    [retry] = s.receive_text(prompt(2, "a red fox!"), 50.0)
    assert isinstance(retry, Submit)
    s.render_failed(retry.job)
    assert s.idle_due_at(52.0) == 51.0


def test_no_idle_timeout_when_it_is_off() -> None:
    s = Session("s", LIMITS, seed=1, opened_at=0.0)  # Limits' default: 0, off
    assert s.idle_due_at(0.0) is None and s.idle_close(1e9) is None
