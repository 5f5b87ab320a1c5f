"""The web UI's Talk view in Debian's chromium: a spoken question through a fake microphone.

The question is spoken by lokal's own Piper voice (joe), padded with silence and given to
chromium as its fake microphone (`--use-file-for-fake-audio-capture`, played once). The
page speaks the Realtime API over a WebSocket to a real server with SmolLM2, Whisper,
Silero VAD and the same voice; the test reads what the page shows and the counters it
keeps on its section (samples sent, received and played).
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LokalServer, place_model
from tests.ui.conftest import CHROMIUM_ARGS, UI, _chromium, screenshot

pytestmark = pytest.mark.slow

QUESTION = "What is the capital city of France?"
# (Whisper tiny.en, on the turn server VAD cuts, hears "France" as "friends" now and then: the
# checks below look for "capital city")
LEAD = 3.0  # seconds of silence before the question (the fake microphone starts with the capture)
VAD_CONFIG = "name: silero-vad\nbackend: silero-vad\nparameters:\n  model: silero_vad.onnx\n"


@pytest.fixture(scope="module")
def talk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    """SmolLM2 chat, Whisper, Silero VAD and the joe voice: every part of a voice assistant."""
    from tests.api.test_transcriptions import place_whisper
    from tests.speech.conftest import _link, place_joe, silero_official

    models = tmp_path_factory.mktemp("ui-talk") / "models"
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 1024\n")
    place_whisper(models, "whisper")
    (models / "whisper-1.yaml").write_text("name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper\n")
    place_joe(models)
    _link(silero_official(), models / "silero_vad.onnx")
    (models / "silero-vad.yaml").write_text(VAD_CONFIG)
    with LokalServer(models, "--preload-models", "smol") as server:
        server.wait_ready(timeout=180)
        yield server


def spoken_question(server: LokalServer, target: Path) -> Path:
    """The question in lokal's voice as a WAV, with 3 s of silence before (the page may be
    still connecting: the microphone opens first) and 4 s after (so the server's VAD hears the turn end; the fake
    microphone plays the file once)."""
    r = httpx.post(f"{server.base}/v1/audio/speech", timeout=120,
                   json={"model": "en_US-joe-medium.onnx", "input": QUESTION, "response_format": "wav"})
    assert r.status_code == 200, r.text
    with wave.open(io.BytesIO(r.content)) as speech:
        rate, width, channels = speech.getframerate(), speech.getsampwidth(), speech.getnchannels()
        frames = speech.readframes(speech.getnframes())
    assert width == 2 and channels == 1 and len(frames) > rate  # over half a second of speech
    silence = bytes(width * channels)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(silence * int(rate * LEAD) + frames + silence * int(rate * 4))
    return target


@pytest.fixture(scope="module")
def question(talk_server: LokalServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spoken_question(talk_server, tmp_path_factory.mktemp("talk") / "question.wav")


@pytest.fixture(scope="module")
def talking_browser(browser: object, question: Path) -> Iterator[object]:
    """A second chromium whose microphone says the question (granted without asking; each
    capture plays the file from its start)."""
    wav = question
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required"]
    talker = browser.browser_type.launch(executable_path=_chromium(), args=args, headless=True)  # type: ignore[attr-defined]
    yield talker
    talker.close()


@pytest.fixture
def talk(talking_browser: object, talk_server: LokalServer) -> Iterator[UI]:
    session = UI(talking_browser, talk_server, {"width": 1200, "height": 900})
    yield session
    session.close()
    session.watch.check()


def wait(page: object, condition: str, what: str, timeout: float = 120_000) -> None:
    """Waits for a JS condition; a timeout fails with what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if not condition.startswith("()"):
        condition = f"() => ({condition})"  # a function: the page's CSP forbids evaluating a string
    try:
        page.wait_for_function(condition, timeout=timeout)  # type: ignore[attr-defined]
    except PlaywrightTimeout:
        shown = page.evaluate("""() => ({data: {...document.getElementById('page-talk').dataset},
            status: document.getElementById('talk-status').textContent,
            log: document.getElementById('talk-log').innerText})""")  # type: ignore[attr-defined]
        pytest.fail(f"{what}: not seen; the page showed {shown}")


def counter(page: object, name: str) -> int:
    return int(page.get_attribute("#page-talk", f"data-{name}") or 0)  # type: ignore[attr-defined]


def test_a_spoken_question_is_transcribed_answered_and_spoken_back_then_stopped(talk: UI) -> None:
    page = talk.open("talk")
    assert page.locator("#page-talk").is_visible()  # type: ignore[attr-defined]
    assert page.locator("#talk-model option").all_inner_texts() == ["smol"]  # type: ignore[attr-defined]
    assert page.locator("#talk-stt option").all_inner_texts() == ["whisper-1"]  # type: ignore[attr-defined]
    assert "joe" in page.input_value("#talk-voice")  # type: ignore[attr-defined]
    assert page.is_checked("input[name=talk-mode][value=vad]")  # type: ignore[attr-defined]
    page.fill("#talk-instructions", "You are a helpful assistant. Answer in three full sentences.")  # type: ignore[attr-defined]

    sent: list[dict[str, object]] = []  # the page's events, as the socket sent them
    page.on("websocket", lambda ws: ws.on(  # type: ignore[attr-defined]
        "framesent", lambda payload: sent.append(json.loads(payload)) if isinstance(payload, str) else None))
    page.click("#talk-start")  # type: ignore[attr-defined]
    page.wait_for_selector("#page-talk[data-state=listening]", timeout=60_000)  # type: ignore[attr-defined]
    assert page.locator("#talk-end").is_visible() and not page.locator("#talk-start").is_visible()  # type: ignore[attr-defined]

    # What was said, as the server's Whisper heard it.
    wait(page, """() => [...document.querySelectorAll('#talk-log .msg.user .body')]
        .some((b) => /capital city/i.test(b.textContent))""", "the question's words")
    assert counter(page, "sent-samples") > 24000  # over a second of microphone at 24 kHz went out

    # The answer: its transcript streams in and its audio plays.
    wait(page, """() => [...document.querySelectorAll('#talk-log .msg.assistant .body')]
        .some((b) => b.textContent.trim().length > 3)""", "an answer's transcript")
    # The page counts samples as the audio clock plays them: Stop while the answer is still speaking.
    wait(page, """() => { const d = document.getElementById('page-talk').dataset;
        return Number(d.playedSamples) > 2400 && d.playing === 'true'; }""", "answer audio playing, a tenth of a second heard")
    screenshot(page, "talk")
    assert 0 < counter(page, "played-samples") < counter(page, "received-samples")
    assert page.locator("#talk-log .msg.user").count() == 1  # type: ignore[attr-defined]

    # Stop: what is still playing ends at once and nothing more plays.
    page.click("#talk-stop")  # type: ignore[attr-defined]
    page.wait_for_selector("#page-talk[data-playing=false]")  # type: ignore[attr-defined]
    assert page.locator("#talk-stop").is_hidden()  # type: ignore[attr-defined]
    stopped_at = counter(page, "played-samples")
    page.wait_for_timeout(1500)  # type: ignore[attr-defined]
    assert counter(page, "played-samples") == stopped_at
    assert stopped_at < counter(page, "received-samples")
    assert page.inner_text("#talk-status") == "Stopped."  # type: ignore[attr-defined]
    # The server keeps only what was heard of the answer: the page truncated it there (an
    # audio_end_ms past what was sent would come back as an error, shown as an alert below).
    truncated = [e for e in sent if e.get("type") == "conversation.item.truncate"]
    assert len(truncated) == 1 and 0 < int(truncated[0]["audio_end_ms"]) < stopped_at // 24 + 1, truncated  # type: ignore[call-overload]

    page.click("#talk-end")  # type: ignore[attr-defined]
    page.wait_for_selector("#page-talk[data-state=idle]")  # type: ignore[attr-defined]
    assert page.locator("#talk-start").is_visible()  # type: ignore[attr-defined]
    assert page.inner_text("#talk-status") == "Ended."  # type: ignore[attr-defined]
    assert not page.locator("#talk-log [role=alert]").count()  # type: ignore[attr-defined]


def test_a_refused_microphone_is_said_and_the_session_ends(browser: object, talk_server: LokalServer) -> None:
    # A browser without the fake-UI flag: headless chromium refuses the microphone itself.
    session = UI(browser, talk_server, {"width": 1200, "height": 900})
    try:
        page = session.open("talk")
        page.check("input[name=talk-mode][value=ptt]")  # type: ignore[attr-defined]
        page.click("#talk-start")  # type: ignore[attr-defined]
        page.wait_for_selector("#talk-status.error")  # type: ignore[attr-defined]
        assert "microphone" in page.inner_text("#talk-status").lower()  # type: ignore[attr-defined]
        assert page.get_attribute("#page-talk", "data-state") == "idle"  # type: ignore[attr-defined]
        assert page.locator("#talk-start").is_visible()  # type: ignore[attr-defined]
    finally:
        session.close()
    session.watch.check()


def test_press_to_talk_sends_what_is_said_while_held_and_the_answer_follows_the_release(talk: UI, question: Path) -> None:
    with wave.open(str(question)) as w:
        # Pressed within LEAD - 0.5 s of the capture's start, held this long, the button spans the question.
        seconds = w.getnframes() / w.getframerate() - 4 + 0.5
    page = talk.open("talk")
    page.check("input[name=talk-mode][value=ptt]")  # type: ignore[attr-defined]
    page.click("#talk-start")  # type: ignore[attr-defined]
    page.wait_for_selector("#page-talk[data-state=listening]", timeout=60_000)  # type: ignore[attr-defined]
    hold = page.locator("#talk-hold")  # type: ignore[attr-defined]
    assert hold.is_visible() and hold.get_attribute("aria-pressed") == "false"
    page.wait_for_timeout(300)  # type: ignore[attr-defined]
    assert counter(page, "sent-samples") == 0  # nothing is sent until the button is held (hands-free sends at once)

    hold.hover()
    page.mouse.down()  # type: ignore[attr-defined]
    assert hold.get_attribute("aria-pressed") == "true"
    wait(page, f"Number(document.getElementById('page-talk').dataset.sentSamples) > {int(seconds * 24000)}",
         "the question sent while the button is held", timeout=30_000)
    assert not page.locator("#talk-log .msg").count()  # type: ignore[attr-defined]  # no turn before the release
    page.mouse.up()  # type: ignore[attr-defined]
    assert hold.get_attribute("aria-pressed") == "false"

    wait(page, """() => [...document.querySelectorAll('#talk-log .msg.user .body')]
        .some((b) => /capital city/i.test(b.textContent))""", "the question's words")
    wait(page, """() => [...document.querySelectorAll('#talk-log .msg.assistant .body')]
        .some((b) => b.textContent.trim().length > 3)""", "an answer's transcript")
    wait(page, "Number(document.getElementById('page-talk').dataset.playedSamples) > 2400", "answer audio played")
    page.click("#talk-end")  # type: ignore[attr-defined]
    page.wait_for_selector("#page-talk[data-state=idle]")  # type: ignore[attr-defined]
    assert not page.locator("#talk-log [role=alert]").count()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def talk_key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    """SmolLM2 alone behind an API key (no voice, no VAD: a press-to-talk, text-answer session)."""
    models = tmp_path_factory.mktemp("ui-talk-key") / "models"
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 1024\n")
    with LokalServer(models, env={"API_KEY": "sk-right"}) as server:
        yield server


def test_the_api_key_travels_in_the_websocket_subprotocol(talking_browser: object, talk_key_server: LokalServer) -> None:
    session = UI(talking_browser, talk_key_server, {"width": 1200, "height": 900})
    session.watch.expected_console.append(r"status of 401")
    try:
        page = session.page
        page.goto(f"{talk_key_server.base}/ui/#talk")  # type: ignore[attr-defined]
        page.evaluate("localStorage.setItem('lokal.apiKey', 'sk-right')")  # type: ignore[attr-defined]
        page.reload()  # type: ignore[attr-defined]
        page.wait_for_selector("body[data-ready=true]")  # type: ignore[attr-defined]
        assert page.locator("#talk-voice option").all_inner_texts() == ["no voice: answers in text only"]  # type: ignore[attr-defined]
        page.check("input[name=talk-mode][value=ptt]")  # type: ignore[attr-defined]
        protocols: list[str] = []
        page.on("websocket", lambda ws: protocols.append(ws.url))  # type: ignore[attr-defined]
        page.click("#talk-start")  # type: ignore[attr-defined]
        # session.updated came back over a socket the key opened: the page is listening.
        page.wait_for_selector("#page-talk[data-state=listening]", timeout=60_000)  # type: ignore[attr-defined]
        assert protocols == [f"{talk_key_server.base.replace('http', 'ws')}/v1/realtime?model=smol"]
        assert not page.locator("#talk-status.error").count()  # type: ignore[attr-defined]
        page.click("#talk-end")  # type: ignore[attr-defined]

        # Without a key the server refuses, and the page asks for one.
        page.evaluate("localStorage.removeItem('lokal.apiKey')")  # type: ignore[attr-defined]
        page.click("#talk-start")  # type: ignore[attr-defined]
        page.wait_for_selector("#key-dialog[open]")  # type: ignore[attr-defined]
        page.wait_for_selector("#talk-status.error")  # type: ignore[attr-defined]
        assert page.get_attribute("#page-talk", "data-state") == "idle"  # type: ignore[attr-defined]
    finally:
        session.close()
    session.watch.check()
