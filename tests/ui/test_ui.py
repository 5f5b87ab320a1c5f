"""The web UI at /ui, in Debian's chromium, against a real lokal server with the demo models."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.conftest import LokalServer
from tests.ui.conftest import BAD, CHAT, EMBED, FOX_WAV, INSTALLED, SLOW, STT, TTS, UI, Watch, screenshot

pytestmark = pytest.mark.slow


def cancelled(server: LokalServer, model: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    match = re.search(rf'^lokal_generation_requests_total{{model="{re.escape(model)}",status="cancelled"}} (\S+)$',
                      text, re.M)
    return float(match.group(1)) if match else 0.0


def state(server: LokalServer, name: str) -> str:
    models = httpx.get(f"{server.base}/lokal/models", timeout=10).json()["data"]
    return next(m["state"] for m in models if m["name"] == name)


def unlabeled_controls(page: object) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                      && !(el.tagName === 'BUTTON' && el.textContent.trim()))
        .map(el => el.outerHTML.slice(0, 80))""")  # type: ignore[attr-defined]


# The page itself --------------------------------------------------------------------


def test_a_browser_at_root_lands_on_the_ui_light_and_labelled(ui: UI) -> None:
    sizes: list[int] = []

    def count(response: object) -> None:
        s = response.request.sizes()  # type: ignore[attr-defined]
        sizes.append(s["responseBodySize"] + s["responseHeadersSize"])

    ui.page.on("requestfinished", lambda request: count(request.response()))
    response = ui.page.goto(f"{ui.server.base}/")
    ui.page.wait_for_selector("body[data-ready=true]")
    ui.page.wait_for_load_state("networkidle")
    assert ui.page.url == f"{ui.server.base}/ui/"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    total = sum(sizes)
    print(f"\nfirst load of /ui: {len(sizes)} requests, {total} bytes transferred")
    assert 0 < total < 300_000
    for page in ("chat", "models", "playground", "talk"):
        ui.page.goto(f"{ui.server.base}/ui/#{page}")
        assert ui.page.locator(f"#page-{page}").is_visible()
    assert unlabeled_controls(ui.page) == []
    # Keyboard: the first Tab reaches the skip link, then the navigation.
    ui.page.goto(f"{ui.server.base}/ui/#chat")
    ui.page.wait_for_selector("body[data-ready=true]")
    ui.page.keyboard.press("Tab")
    assert ui.page.evaluate("document.activeElement.className") == "skip"
    ui.page.keyboard.press("Tab")
    assert ui.page.evaluate("document.activeElement.textContent") == "Chat"


def test_api_clients_at_root_are_not_redirected(ui_server: LokalServer) -> None:
    for accept in ("*/*", "application/json", "text/html;q=0.5, application/json"):
        r = httpx.get(f"{ui_server.base}/", headers={"Accept": accept}, follow_redirects=False)
        assert r.status_code != 307, accept
    r = httpx.get(f"{ui_server.base}/", follow_redirects=False,
                  headers={"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert httpx.get(f"{ui_server.base}/ui/nothing.js").status_code == 404


# Chat ------------------------------------------------------------------------------


def test_chat_streams_and_the_stop_button_cancels_on_the_server(ui: UI) -> None:
    page = ui.open("chat")
    before = cancelled(ui.server, CHAT)
    page.click("#chat-settings summary")
    page.select_option("#chat-model", CHAT)
    page.fill("#chat-max-tokens", "600")
    page.fill("#chat-input", "Write a very long story about a dragon who learns to bake bread.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chat-stop:visible")
    body = page.locator(".msg.assistant .body").last
    page.wait_for_function("() => document.querySelector('.msg.assistant:last-child .body').textContent.length > 0")
    first = len(body.text_content() or "")
    page.wait_for_function(f"() => document.querySelector('.msg.assistant:last-child .body').textContent.length > {first}")
    assert page.locator("#chat-stop").is_visible()  # still streaming: text arrives piece by piece
    page.click("#chat-stop")
    page.wait_for_selector("#chat-send:visible")
    assert page.locator(".msg.assistant .stats").last.text_content() == "Stopped."
    assert body.text_content()  # the partial answer stays
    ui.server.wait_log("POST /v1/chat/completions 499")  # the server saw the client leave
    deadline = time.monotonic() + 15
    while cancelled(ui.server, CHAT) < before + 1:
        assert time.monotonic() < deadline, (
            "the server did not count the generation as cancelled:\n"
            + "\n".join(line for line in httpx.get(f"{ui.server.base}/metrics").text.splitlines()
                         if line.startswith(("lokal_generation_requests_total", "lokal_requests_in_flight")))
            + ui.server.log()[-3000:])
        time.sleep(0.2)


def test_chat_answer_settings_speed_and_conversations(ui: UI) -> None:
    page = ui.open("chat")
    sent: list[dict] = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)))
    page.click("#chat-settings summary")
    page.select_option("#chat-model", CHAT)
    page.fill("#chat-system", "You answer in one short sentence.")
    page.fill("#chat-temperature", "0.2")
    page.fill("#chat-max-tokens", "16")
    page.fill("#chat-input", "Say hello.")
    page.click("#chat-send")
    stats = page.locator(".msg.assistant .stats").last
    stats.wait_for()
    assert re.search(r"\d+ tokens · [\d.]+ tokens/s", stats.text_content() or ""), stats.text_content()
    assert page.locator(".msg.assistant .body").last.text_content()
    body = sent[0]
    assert body["model"] == CHAT and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 16
    assert body["messages"][0] == {"role": "system", "content": "You answer in one short sentence."}
    screenshot(page, "chat")
    # The conversation is kept in the browser: a reload shows it.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator(".msg.user .body").last.text_content() == "Say hello."
    chats = page.locator("#chat-list li").count()
    page.click("#chat-new")
    assert page.locator("#chat-list li").count() == chats + 1
    assert page.locator("#chat-log .msg").count() == 0
    page.click("#chat-list li.active .chat-delete")
    assert page.locator("#chat-list li").count() == chats


def test_model_output_is_shown_as_text_never_run(ui: UI) -> None:
    """An answer with <script>, event-handler HTML and a javascript: link, streamed as lokal
    streams it (the reply is scripted at the browser's network layer), and the same text
    kept in localStorage and rendered again after a reload."""
    page = ui.open("chat")
    evil = ('Here: <script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">\n\n'
            '**bold** and [bad](javascript:window.__xss=3) and [good](https://example.org/a)\n\n'
            '```html\n<script>window.__xss = 4</script>\n```\n- <b onclick="x()">item</b>')
    chunks = [evil[i:i + 7] for i in range(0, len(evil), 7)]
    events = "".join("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": c}}]}) + "\n\n"
                     for c in chunks)
    events += "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9,
                                                              "total_tokens": 12}}) + "\n\ndata: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=events))
    page.fill("#chat-input", "Show me some HTML.")
    page.click("#chat-send")
    page.locator(".msg.assistant .stats").last.wait_for()

    def check() -> None:
        log = page.locator("#chat-log")
        assert page.evaluate("window.__xss") is None
        assert log.locator("script, img, b, [onclick], [onerror]").count() == 0
        text = log.locator(".msg.assistant .body").last.text_content() or ""
        assert "<script>window.__xss = 1</script>" in text and '<img src=x onerror="window.__xss = 2">' in text
        assert log.locator(".msg.assistant strong").last.text_content() == "bold"
        assert log.locator(".msg.assistant pre code").last.text_content() == "<script>window.__xss = 4</script>"
        links = log.locator(".msg.assistant a")
        assert links.count() == 1
        assert links.first.get_attribute("href") == "https://example.org/a"
        assert "noopener" in (links.first.get_attribute("rel") or "")
        assert "[bad](javascript:window.__xss=3)" in text

    check()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    check()


# Models ----------------------------------------------------------------------------


def test_models_show_states_and_a_model_unloads_and_loads(ui: UI) -> None:
    page = ui.open("models")
    row = page.locator(f'tr[data-model="{CHAT}"]')
    row.locator(".badge", has_text="loaded").wait_for()
    assert "chat" in (row.text_content() or "") and "smol.gguf" in (row.text_content() or "")
    assert "1024" in (row.text_content() or "")  # its context
    broken = page.locator('tr[data-model="broken"]')
    assert "missing.gguf" in (broken.locator(".error").text_content() or "")
    assert broken.get_by_role("button", name="Load broken").is_disabled()
    screenshot(page, "models")
    row.get_by_role("button", name=f"Unload {CHAT}").click()
    row.locator(".badge", has_text="idle").wait_for()
    assert state(ui.server, CHAT) == "idle"
    row.get_by_role("button", name=f"Load {CHAT}").click()
    row.locator(".badge", has_text="loaded").wait_for()
    assert state(ui.server, CHAT) == "loaded"


def test_install_from_the_gallery_shows_progress_and_ends_in_the_picker(ui: UI) -> None:
    page = ui.open("models")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#gallery-search", "tiny")
    entry = page.locator(".gallery li", has_text=INSTALLED)
    entry.get_by_role("button", name=f"Install {INSTALLED}").click()
    bar = page.locator(".job progress").first
    page.wait_for_function("() => { const p = document.querySelector('.job progress');"
                           " return p && p.value > 0 && p.value < 100; }", timeout=60_000)
    assert INSTALLED in (page.locator(".job").first.text_content() or "")
    page.locator(".job [role=status]", has_text=f"Installed {INSTALLED}").wait_for(timeout=120_000)
    assert bar.evaluate("p => p.value") == 100
    page.locator(f'tr[data-model="{INSTALLED}"]').wait_for()
    page.goto(f"{ui.server.base}/ui/#chat")
    assert INSTALLED in page.locator("#chat-model option").all_text_contents()
    # ... and it can be removed again.
    page.goto(f"{ui.server.base}/ui/#models")
    page.locator(f'tr[data-model="{INSTALLED}"]').get_by_role("button", name=f"Remove {INSTALLED}").click()
    page.locator(f'tr[data-model="{INSTALLED}"]').wait_for(state="detached")
    assert not (ui.server.models / f"{INSTALLED}.gguf").exists()


def test_an_install_can_be_cancelled_and_a_failed_one_says_why(ui: UI) -> None:
    page = ui.open("models")
    page.get_by_role("button", name=f"Install {SLOW}").click()
    job = page.locator(".job", has_text=SLOW)
    page.wait_for_function("() => [...document.querySelectorAll('.job')].some(j =>"
                           f" j.textContent.includes('{SLOW}') && j.querySelector('progress').value > 0)")
    job.get_by_role("button", name=f"Cancel install of {SLOW}").click()
    job.locator("[role=status]", has_text="Cancelled").wait_for()
    page.get_by_role("button", name=f"Install {BAD}").click()
    failed = page.locator(".job", has_text=BAD).locator(".error")
    failed.wait_for(timeout=120_000)
    assert "sha256" in (failed.text_content() or "").lower() or "checksum" in (failed.text_content() or "").lower(), \
        failed.text_content()
    models = httpx.get(f"{ui.server.base}/lokal/models", timeout=10).json()["data"]
    assert not {SLOW, BAD} & {m["name"] for m in models}
    # Nothing visible is left (a cancelled download stays hidden, to be resumed).
    assert not [p.name for p in ui.server.models.iterdir()
                if (SLOW in p.name or BAD in p.name) and not p.name.startswith(".")]


# Playground --------------------------------------------------------------------------


def test_playground_embeddings_rerank_and_transcription(ui: UI) -> None:
    page = ui.open("playground")
    page.select_option("#embed-model", EMBED)
    page.click("#embed-form button[type=submit]")
    page.locator("#embed-out .result").wait_for()
    assert page.locator("#embed-out .result").text_content() == "3 vectors × 384 dimensions"
    assert page.locator("#embed-out tbody tr").count() == 3
    assert page.locator("#embed-out tbody td").first.text_content() == "1.000"
    page.select_option("#rerank-model", EMBED)
    page.click("#rerank-form button[type=submit]")
    page.locator("#rerank-out li").first.wait_for()
    assert "Cats often sleep" in (page.locator("#rerank-out li").first.text_content() or "")
    page.select_option("#stt-model", STT)
    page.set_input_files("#stt-file", str(FOX_WAV))
    page.click("#stt-form button[type=submit]")
    page.locator("#stt-out .transcript").wait_for(timeout=120_000)
    heard = (page.locator("#stt-out .transcript").text_content() or "").lower()
    assert all(word in heard for word in ("quick", "brown", "fox")), heard
    screenshot(page, "playground")


def test_an_error_is_shown_as_the_server_words_it(ui: UI) -> None:
    page = ui.open("playground")
    ui.watch.expected_console.append(r"status of 400")
    page.select_option("#rerank-model", EMBED)
    page.fill("#rerank-docs", "")
    page.fill("#rerank-docs", " ")
    page.evaluate("document.getElementById('rerank-docs').required = false")
    page.click("#rerank-form button[type=submit]")
    alert = page.locator("#rerank-out [role=alert]")
    alert.wait_for()
    assert "documents" in (alert.text_content() or "").lower()


def _audio_seconds(page: object, selector: str) -> float:
    """The length of the audio an <audio> element loaded (its metadata read by the browser)."""
    return page.evaluate(  # type: ignore[attr-defined,no-any-return]
        """sel => new Promise((resolve, reject) => {
             const audio = document.querySelector(sel);
             if (!audio) return reject(new Error("no audio element"));
             const done = () => resolve(audio.duration);
             if (audio.readyState >= 1) done();
             else { audio.addEventListener("loadedmetadata", done); audio.addEventListener("error",
                    () => reject(new Error("the browser cannot decode the audio"))); }
           })""", selector)


def test_playground_speaks_and_chat_reads_aloud(ui: UI) -> None:
    page = ui.open("playground")
    page.select_option("#tts-model", TTS)
    assert page.locator("#tts-voice option").all_text_contents() == ["joe"]
    page.select_option("#tts-format", "wav")
    page.fill("#tts-input", "Hello from the speech playground.")
    page.click("#tts-form button[type=submit]")
    page.locator("#tts-out audio").wait_for(timeout=120_000)
    assert (page.locator("#tts-out audio").get_attribute("src") or "").startswith("blob:")
    assert 1.0 < _audio_seconds(page, "#tts-out audio") < 6.0
    assert "of wav" in (page.locator("#tts-out p").text_content() or "")
    # a chat answer, read aloud with the playground's model and voice
    page.evaluate(
        "chat => { localStorage.setItem('lokal.chats', JSON.stringify([chat]));"
        " localStorage.setItem('lokal.currentChat', chat.id); }", SAMPLE_CHAT)
    page = ui.open("chat")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.click(".msg.assistant button.read-aloud")
    page.locator(".msg.assistant audio").wait_for(state="attached", timeout=120_000)
    assert _audio_seconds(page, ".msg.assistant audio") > 2.0
    assert not page.locator(".msg.assistant .error").count()


# Phone width ----------------------------------------------------------------------------


SAMPLE_CHAT = {"id": "sample", "title": "Sort a list in Python", "updated": 0, "model": CHAT,
               "system": "", "temperature": 0.7, "max_tokens": 512, "messages": [
                   {"role": "user", "content": "How do I sort a list in Python?"},
                   {"role": "assistant", "stats": "41 tokens · 30.2 tokens/s · first token after 0.12 s",
                    "content": "Use **sorted()** for a new list, or `list.sort()` in place:\n\n"
                               "```python\nnames = sorted(names, key=str.lower)\n```\n\n"
                               "- `reverse=True` sorts descending\n- *key* picks what to compare"}]}


def test_the_pages_fit_a_phone(phone: UI) -> None:
    phone.open("chat").evaluate(  # type: ignore[attr-defined]
        "chat => { localStorage.setItem('lokal.chats', JSON.stringify([chat]));"
        " localStorage.setItem('lokal.currentChat', chat.id); }", SAMPLE_CHAT)
    for name in ("chat", "models", "playground", "talk"):
        page = phone.open(name)
        if name == "chat":
            page.reload()
            page.wait_for_selector("body[data-ready=true]")
            assert page.locator(".msg.assistant pre code").text_content() == "names = sorted(names, key=str.lower)"
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{name} is {width}px wide at a 390px viewport"
        screenshot(page, f"{name}-phone")


# API keys --------------------------------------------------------------------------------


def test_with_api_keys_the_page_asks_for_one_and_keeps_it(browser: object, key_server: LokalServer) -> None:
    session = UI(browser, key_server, {"width": 1000, "height": 700})
    session.watch.expected_console.append(r"status of 401")
    try:
        page = session.page
        page.goto(f"{key_server.base}/")  # the page itself needs no key
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")
        assert "needs an API key" in (page.locator("#key-message").text_content() or "")
        page.fill("#key-input", "sk-wrong")
        page.click("#key-save")
        page.locator("#key-message", has_text="refused").wait_for()
        assert dialog.is_visible()
        screenshot(page, "key")
        page.fill("#key-input", "sk-right")
        page.click("#key-save")
        dialog.wait_for(state="hidden")
        page.wait_for_function("() => [...document.querySelectorAll('#embed-model option')].some(o => o.value === 'minilm')")
        assert page.evaluate("localStorage.getItem('lokal.apiKey')") == "sk-right"
        sent: list[str | None] = []
        page.on("request", lambda r: "/lokal/models" in r.url and sent.append(r.headers.get("authorization")))
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert not dialog.is_visible()
        assert sent and sent[0] == "Bearer sk-right"
    finally:
        session.close()
    session.watch.check()
    assert isinstance(session.watch, Watch)
