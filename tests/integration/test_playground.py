"""Feedback, sources and the playground page, end to end: the demo corpus ingested, a champion stack registered in
the real MLflow registry, the service under uvicorn on a loopback port, and (for the page) headless Chromium
driven by Playwright.

The browser is Debian's ``chromium`` (Playwright's own browser download is not used); without it the browser tests
skip and say how to install it. Chromium is started with its background services off and every host name except
loopback resolving to nothing, and each test checks that the page requested nothing but the service.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from flows.settings import Settings
from pipelines.env import offline_env
from tests.fixtures.server import api_client, auth_headers
from tests.integration.test_service import Running, assert_error, parse_sse, serve, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RELOAD_S = 0.2
MAX_QUESTION_CHARS = 500  # below the page's maxlength (2000), so the 422 for a long question is reachable
QUESTION = "Who founded Northwind Robotics?"
FOUNDERS = "Amara Okafor"
FOUNDED_IN = "company/company-overview.md"
KEYBOARD_QUESTION = "How large is the Reno assembly plant?"
HOW_TO_INSTALL = (
    "Debian's chromium is not installed: `apt-get install -y chromium` as root (or `make install`, which does it "
    "when run as root), then run the tests again"
)
CHROMIUM_ARGS = [
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--metrics-recording-only",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    # Belt and braces: any host name other than loopback fails to resolve, so nothing can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


# ------------------------------------------------------------------------------------------------- environment
@dataclass
class Env:
    settings: Settings
    service: Running
    stack_version: int

    @property
    def url(self) -> str:
        return self.service.url

    def client(self) -> httpx.Client:
        return api_client(self.url)

    def store(self) -> Any:
        from rag.feedback import FeedbackStore

        return FeedbackStore(self.settings)

    def ask(self, client: httpx.Client, question: str = QUESTION) -> dict[str, Any]:
        response = client.post("/v1/query", json={"question": question})
        assert response.status_code == 200, response.text
        return dict(response.json())


def _settings(home: Path, cache: Path) -> Settings:
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        built = Settings(home=home, cache=cache)
    service = built.service.model_copy(update={"reload_interval_s": RELOAD_S, "max_question_chars": MAX_QUESTION_CHARS})
    built = built.model_copy(update={"service": service})
    built.ensure_dirs()
    return built


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Env]:
    from pipelines.demo import DEMO_CORPUS_DIR
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.service.app import create_app
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    root = tmp_path_factory.mktemp("playground")
    settings = _settings(root / "home", shared_cache)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in offline_env(settings).items():
            patch.setenv(key, value)
        # The demo corpus's shipped md/html/txt documents; the PDF and DOCX ones are generated from the `_*`
        # folders and add nothing here but partitioning time.
        corpus = root / "demo-corpus"
        shutil.copytree(DEMO_CORPUS_DIR, corpus, ignore=shutil.ignore_patterns("_*"))
        report = run_ingest(settings, corpus)
        assert report.published and report.documents_failed == 0, report.to_json()
        index = VectorIndex(settings).current()
        assert index is not None
        registry = StackRegistry(settings)
        version = registry.register(StackConfig.for_index(index, name="playground-dense"), actor="tests")
        registry.promote(version, actor="tests", reason="playground tests")
        with serve(create_app(settings)) as service:
            with api_client(service.url) as client:
                wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
            yield Env(settings, service, version)


@pytest.fixture(scope="module")
def no_stack(env: Env) -> Iterator[Running]:
    """A second service over the same home whose registry has no champion (as before the first promotion)."""
    from rag.errors import StackNotFound
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    def champion() -> Any:
        raise StackNotFound("no version of 'rag-stack' holds the alias 'champion'")

    with serve(create_app(env.settings, holder=StackHolder(env.settings, champion=champion))) as service:
        yield service


def _recorded(env: Env, request_id: str) -> Any:
    """The request store's record of ``request_id`` (None when it has none)."""
    return env.service.app.state.requests.get(request_id)


# ------------------------------------------------------------------------------------------- feedback: the API
def test_thumbs_up_is_stored_with_the_request_and_becomes_positive_pairs(env: Env) -> None:
    with env.client() as client:
        answer = env.ask(client)
        assert FOUNDERS in answer["answer"] and answer["citations"], answer
        texts = {c["chunk_id"]: client.get(f"/v1/sources/{c['chunk_id']}").json()["text"] for c in answer["citations"]}
        response = client.post(
            "/v1/feedback", json={"request_id": answer["request_id"], "rating": "up", "comment": "spot on"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == answer["request_id"] and body["rating"] == "up" and body["comment"] == "spot on"
    assert body["replaced"] is False and body["previous_rating"] is None and body["revisions"] == 1
    assert body["message"] == "feedback recorded"

    stored = env.store().get(answer["request_id"])
    assert stored is not None and stored.rating == "up" and stored.comment == "spot on"
    request = stored.request
    assert request.question == QUESTION and request.answer == answer["answer"]
    assert (request.stack_version, request.stack_name, request.index_version) == (
        env.stack_version,
        "playground-dense",
        answer["index_version"],
    )
    assert [(c.n, c.chunk_id, c.doc_id) for c in request.citations] == [
        (c["n"], c["chunk_id"], c["doc_id"]) for c in answer["citations"]
    ]
    assert {c.chunk_id: c.text for c in request.citations} == texts  # exactly the text that was cited

    pairs = [p for p in env.store().training_pairs() if p.request_id == answer["request_id"]]
    assert [(p.question, p.chunk_id, p.text, p.label) for p in pairs] == [
        (QUESTION, c["chunk_id"], texts[c["chunk_id"]], "positive") for c in answer["citations"]
    ]
    # Monitoring: the request store carries the cited texts, and the rating joined to the request.
    logged = _recorded(env, answer["request_id"])
    assert [c.text for c in logged.citations] == list(texts.values())
    assert logged.feedback is not None and logged.feedback.rating == "up" and logged.feedback.comment == "spot on"


def test_rating_again_replaces_the_earlier_rating(env: Env) -> None:
    with env.client() as client:
        request_id = env.ask(client)["request_id"]
        first = client.post("/v1/feedback", json={"request_id": request_id, "rating": 1, "comment": "good"})
        second = client.post("/v1/feedback", json={"request_id": request_id, "rating": -1})
    assert first.status_code == 200 and first.json()["rating"] == "up", first.text
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["rating"] == "down" and body["replaced"] is True and body["previous_rating"] == "up"
    assert body["revisions"] == 2 and "replaces the earlier rating" in body["message"]
    stored = env.store().get(request_id)
    assert stored is not None and stored.rating == "down" and stored.comment is None and stored.revisions == 2
    assert {p.label for p in env.store().training_pairs() if p.request_id == request_id} == {"negative"}


def test_feedback_finds_a_request_already_written_to_the_store(env: Env) -> None:
    requests = env.service.app.state.requests
    with env.client() as client:
        old = env.ask(client)
        requests.flush()  # the writer has written it: the lookup reads the database, not the queue
        response = client.post("/v1/feedback", json={"request_id": old["request_id"], "rating": "down"})
    assert response.status_code == 200, response.text
    stored = env.store().get(old["request_id"])
    assert stored is not None and stored.request.question == QUESTION
    assert all(c.text for c in stored.request.citations)
    assert _recorded(env, old["request_id"]).feedback.rating == "down"


def test_a_record_without_chunk_texts_gets_them_from_the_served_index(env: Env) -> None:
    from rag.feedback import CitedChunk
    from rag.store import RequestRecord

    with env.client() as client:
        answer = env.ask(client)
        expected = [client.get(f"/v1/sources/{c['chunk_id']}").json()["text"] for c in answer["citations"]]
        textless_id = uuid.uuid4().hex
        env.service.app.state.requests.record(
            RequestRecord(
                request_id=textless_id,
                at=time.time() - 86400,
                principal="anonymous",
                question=QUESTION,
                answer=answer["answer"],
                stack_name="playground-dense",
                stack_version=env.stack_version,
                index_version=answer["index_version"],
                citations=tuple(
                    CitedChunk(c["n"], c["chunk_id"], c["doc_id"], c["title"], c["source"], None)
                    for c in answer["citations"]
                ),
            )
        )
        response = client.post("/v1/feedback", json={"request_id": textless_id, "rating": "up"})
    assert response.status_code == 200, response.text
    pairs = [p for p in env.store().training_pairs() if p.request_id == textless_id]
    assert [p.text for p in pairs] == expected


@pytest.mark.parametrize(
    "request_id",
    [uuid.uuid4().hex, "not-a-request-id", "0" * 32],
    ids=["unknown-uuid", "malformed", "zeros"],
)
def test_feedback_on_an_unknown_request_is_404(env: Env, request_id: str) -> None:
    with env.client() as client:
        response = client.post("/v1/feedback", json={"request_id": request_id, "rating": "up"})
    error = assert_error(response, 404, "unknown request_id", request_id)
    assert error["code"] == "unknown_request"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"rating": "sideways"}, ("rating", '"up" or "down"')),
        ({"rating": True}, ("rating", '"up" or "down"')),
        ({"rating": 0}, ("rating",)),
        ({"rating": 1.5}, ("rating",)),
        ({"rating": None}, ("rating",)),
        ({}, ("rating", "required")),
        ({"rating": "up", "comment": "x" * 2001}, ("comment", "2000")),
        ({"rating": "up", "comment": 5}, ("comment",)),
        ({"rating": "up", "mood": "happy"}, ("mood",)),
        ({"rating": "up", "request_id": ""}, ("request_id",)),
    ],
    ids=["word", "bool", "zero", "float", "null", "missing", "long-comment", "int-comment", "extra", "empty-id"],
)
def test_bad_feedback_is_422(env: Env, body: dict[str, Any], words: tuple[str, ...]) -> None:
    with env.client() as client:
        payload = {"request_id": env.ask(client)["request_id"], **body}
        error = assert_error(client.post("/v1/feedback", json=payload), 422, *words)
    assert error["type"] == "invalid_request_error"
    assert env.store().get(payload["request_id"]) is None


def test_unencodable_comment_is_422(env: Env) -> None:
    with env.client() as client:
        request_id = env.ask(client)["request_id"]
        raw = json.dumps({"request_id": request_id, "rating": "up"})[:-1] + ', "comment": "\\udc00 hm"}'
        response = client.post("/v1/feedback", content=raw.encode(), headers={"content-type": "application/json"})
    assert_error(response, 422, "comment")


# ------------------------------------------------------------------------------------------------------ sources
def test_source_of_a_citation(env: Env) -> None:
    with env.client() as client:
        answer = env.ask(client)
        cited = answer["citations"][0]
        response = client.get(f"/v1/sources/{cited['chunk_id']}")
    assert response.status_code == 200, response.text
    source = response.json()
    assert source["chunk_id"] == cited["chunk_id"] and source["doc_id"] == cited["doc_id"] == FOUNDED_IN
    assert source["title"] == cited["title"] and source["source"] == cited["source"]
    assert source["position"] == cited["position"]
    assert source["index_version"] == answer["index_version"] and source["stack_version"] == env.stack_version
    # Exactly the text the answer was made from (recorded with the request), without llama-index's metadata.
    logged = _recorded(env, answer["request_id"])
    assert source["text"] == logged.citations[0].text and "doc_hash" not in source["text"]
    with env.client() as client:
        texts = [client.get(f"/v1/sources/{c['chunk_id']}").json()["text"] for c in answer["citations"]]
    assert any(FOUNDERS in text for text in texts)


@pytest.mark.parametrize("chunk_id", [str(uuid.uuid4()), "no-such-chunk", "12345"])
def test_unknown_source_is_404(env: Env, chunk_id: str) -> None:
    with env.client() as client:
        error = assert_error(client.get(f"/v1/sources/{chunk_id}"), 404, "no chunk")
    assert error["code"] == "unknown_chunk"


def test_without_a_stack_sources_are_503_and_feedback_still_works(env: Env, no_stack: Running) -> None:
    with env.client() as client:
        answer = env.ask(client)
    with api_client(no_stack.url) as other:
        error = assert_error(other.get(f"/v1/sources/{answer['citations'][0]['chunk_id']}"), 503, "champion")
        assert error["code"] == "no_stack"
        # The rating needs no stack: the other service finds the request in the shared request log.
        response = other.post("/v1/feedback", json={"request_id": answer["request_id"], "rating": "up"})
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------------------------- the page, served
def test_page_and_assets_are_served_with_a_strict_policy(env: Env) -> None:
    with env.client() as client:
        page = client.get("/")
        script = client.get("/static/playground.js")
        style = client.get("/static/playground.css")
        missing = client.get("/static/nothing.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/playground.js" defer></script>' in page.text
    assert 'name="viewport"' in page.text and 'aria-live="polite"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for asset in (script.text, style.text):
        assert "http://" not in asset and "https://" not in asset and "@import" not in asset
    assert_error(missing, 404)


def test_the_stream_the_page_reads_carries_the_request_id(env: Env) -> None:
    with env.client() as client:
        response = client.post("/v1/query", json={"question": QUESTION, "stream": True})
    assert response.status_code == 200
    done = parse_sse(response.text)[-1]
    assert done[0] == "done" and len(done[1]["request_id"]) == 32 and done[1]["stack_name"] == "playground-dense"


# ------------------------------------------------------------------------------------------ the page, in Chromium
@dataclass
class Tab:
    """A page and what went wrong in it: uncaught errors and console errors (which include CSP violations)."""

    page: Any
    problems: list[str]


@dataclass
class Browser:
    """A headless Chromium and the requests its pages made (to prove they stayed on loopback)."""

    handle: Any
    requested: list[str]

    def open(self, url: str, *, with_key: bool = True, **context: Any) -> Tab:
        """A new tab on ``url``; ``with_key``: the service's admin key is already in the tab's session storage
        (as if typed once into the key form)."""
        browser_context = self.handle.new_context(**context)
        key = auth_headers(url).get("Authorization", "").removeprefix("Bearer ")
        if with_key and key:
            browser_context.add_init_script(f"sessionStorage.setItem('ragops.key', {json.dumps(key)})")
        page = browser_context.new_page()
        tab = Tab(page, [])
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("pageerror", lambda exc: tab.problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: tab.problems.append(msg.text) if msg.type == "error" else None)
        page.set_default_timeout(30_000)
        page.goto(url)
        return tab


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(HOW_TO_INSTALL)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extras: `make install`")
    with sync_api.sync_playwright() as playwright:
        handle = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield Browser(handle, [])
        finally:
            handle.close()


def _ask_in_page(page: Any, question: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Your question").fill(question)
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#meta")).to_contain_text("answered in")


def _only_loopback(browser: Browser, env_url: str) -> None:
    hosts = {urlsplit(url).hostname for url in browser.requested if not url.startswith(("data:", "about:"))}
    assert hosts == {urlsplit(env_url).hostname}, browser.requested


def test_playground_asks_streams_cites_and_takes_feedback(browser: Browser, env: Env, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/", viewport={"width": 1280, "height": 900})
    page = tab.page
    expect(page.locator("#stack-info")).to_contain_text("playground-dense (version")
    expect(page.get_by_role("group", name="Was this answer helpful?")).to_be_hidden()

    _ask_in_page(page, QUESTION)

    answer = page.locator("#answer")
    expect(answer).to_contain_text(FOUNDERS)
    assert answer.get_attribute("aria-live") == "polite"
    sentences = page.locator("#answer .sentence")  # one element per streamed `sentence` event
    assert sentences.count() >= 1
    meta = page.locator("#meta").inner_text()
    assert f"playground-dense (version {env.stack_version})" in meta and " ms" in meta
    request_id = page.locator("#result").get_attribute("data-request-id")
    assert request_id and len(request_id) == 32
    with env.client() as client:  # the page shows what the API answered for this request
        logged = _recorded(env, request_id)
        assert logged is not None and answer.inner_text().strip() == logged.answer
        cited = logged.citations
        source_text = client.get(f"/v1/sources/{cited[0].chunk_id}").json()["text"]

    items = page.locator("#citations > li")
    expect(items).to_have_count(len(cited))
    expect(items.first).to_contain_text("[1]")
    expect(items.first).to_contain_text(FOUNDED_IN)

    # Open the first source.
    toggle = items.first.locator(".source-toggle")
    expect(toggle).to_have_accessible_name("Show source")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(toggle).to_have_accessible_name("Hide source")
    panel = page.locator(f"#{toggle.get_attribute('aria-controls')}")
    expect(panel).to_be_visible()
    expect(panel.locator(".source-text")).to_have_text(source_text)
    expect(panel).to_contain_text(FOUNDED_IN)

    # Thumbs up.
    up = page.get_by_role("button", name="Helpful", exact=True)
    up.click()
    expect(page.locator("#feedback-status")).to_contain_text("recorded")
    expect(up).to_have_attribute("aria-pressed", "true")
    stored = env.store().get(request_id)
    assert stored is not None and stored.rating == "up" and stored.request.question == QUESTION
    assert [c.text for c in stored.request.citations][0] == source_text

    # Changing one's mind: the page says the new rating replaced the old one.
    page.get_by_label("Comment (optional)").fill("actually, I wanted the year")
    page.get_by_role("button", name="Not helpful").click()
    expect(page.locator("#feedback-status")).to_contain_text("replaces the earlier one")
    stored = env.store().get(request_id)
    assert stored is not None and stored.rating == "down" and stored.comment == "actually, I wanted the year"

    shot = tmp_path / "playground-desktop.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not tab.problems, tab.problems
    _only_loopback(browser, env.url)


def test_playground_works_from_the_keyboard(browser: Browser, env: Env) -> None:
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/", viewport={"width": 1024, "height": 800})
    page = tab.page
    page.keyboard.press("Tab")  # the skip link comes first ...
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")  # ... and takes you to the question
    question = page.get_by_label("Your question")
    expect(question).to_be_focused()
    page.keyboard.type("How large is the")
    page.keyboard.press("Shift+Enter")  # a new line, not a submission
    page.keyboard.type("Reno assembly plant?")
    assert question.input_value() == "How large is the\nReno assembly plant?"
    expect(page.locator("#result")).to_be_hidden()
    page.keyboard.press("Enter")
    expect(page.locator("#meta")).to_contain_text("answered in")
    expect(page.locator("#answer")).to_contain_text("Reno")

    # Tab to the first "Show source" button: it shows where the focus is, and Space opens it.
    toggle = page.locator("#citations .source-toggle").first
    for _ in range(10):
        page.keyboard.press("Tab")
        if toggle.evaluate("el => el === document.activeElement"):
            break
    expect(toggle).to_be_focused()
    outline = toggle.evaluate("el => getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth")
    assert outline.split()[0] != "none" and outline.split()[1] != "0px", outline
    page.keyboard.press("Space")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator(f"#{toggle.get_attribute('aria-controls')} .source-text")).not_to_be_empty()

    # The rating buttons are real buttons: focus one and press Enter.
    page.get_by_role("button", name="Helpful", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#feedback-status")).to_contain_text("recorded")
    request_id = page.locator("#result").get_attribute("data-request-id")
    stored = env.store().get(request_id)
    assert stored is not None and stored.rating == "up" and stored.request.question.startswith("How large is the")
    assert not tab.problems, tab.problems
    _only_loopback(browser, env.url)


def test_playground_on_a_phone(browser: Browser, env: Env, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
    tab = browser.open(env.url + "/", **phone)
    page = tab.page
    _ask_in_page(page, QUESTION)
    page.locator("#citations .source-toggle").first.click()
    expect(page.locator("#citations .source-text").first).to_be_visible()
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    box = page.get_by_role("button", name="Helpful", exact=True).bounding_box()
    assert box is not None and box["height"] >= 44  # a comfortable touch target
    shot = tmp_path / "playground-phone.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not tab.problems, tab.problems
    _only_loopback(browser, env.url)


def test_playground_shows_an_abstention_without_sources(browser: Browser, env: Env) -> None:
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/")
    page = tab.page
    _ask_in_page(page, "What colour is the CEO's car?")  # on topic, but no document says
    expect(page.locator("#answer")).to_contain_text("not found in the indexed documents")
    expect(page.locator("#no-citations")).to_be_visible()
    expect(page.locator("#citations > li")).to_have_count(0)
    expect(page.locator("#meta")).to_contain_text("abstained")
    page.get_by_role("button", name="Not helpful").click()  # an abstention can be rated too (monitoring)
    expect(page.locator("#feedback-status")).to_contain_text("recorded")
    assert not tab.problems, tab.problems


def test_playground_shows_a_guardrail_refusal_in_place_of_the_answer(browser: Browser, env: Env) -> None:
    """A question far from everything the index covers is refused by the topic check before retrieval: the
    stream ends with a `blocked` event and the page shows the refusal, with no sources."""
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/")
    page = tab.page
    _ask_in_page(page, "Who won the football world cup in 1954?")
    expect(page.locator("#answer .refusal")).to_have_text("I can't help with that request.")
    expect(page.locator("#citations > li")).to_have_count(0)
    expect(page.locator("#no-citations")).to_be_visible()
    assert not tab.problems, tab.problems


def test_api_docs_render_from_installed_files_only(browser: Browser, env: Env) -> None:
    """/docs is Swagger UI from the swagger-ui-bundle package: it renders the service's routes on a machine with no
    internet (every request the page makes stays on the service)."""
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/docs")
    page = tab.page
    expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible(timeout=15_000)
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/query")
    _only_loopback(browser, env.url)


def test_markup_in_an_answer_is_shown_as_text_and_never_runs(browser: Browser, env: Env) -> None:
    """OWASP LLM05 (improper output handling): an LLM that answers with HTML and script gets its reply shown
    literally, as it streams in: no element is created and no script runs."""
    from playwright.sync_api import expect

    from pipelines.index import VectorIndex
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from rag.types import StackConfig
    from tests.fixtures.fake_openai import FakeOpenAI

    markup = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    index = VectorIndex(env.settings).current()
    assert index is not None
    with FakeOpenAI(reply=f"Northwind was founded in 2011 [1]. {markup}") as llm:
        config = StackConfig.for_index(
            index,
            name="markup",
            answerer={"kind": "llm"},
            llm={"base_url": llm.base_url, "model": llm.model},
            guardrails=None,  # the page itself must be safe, whatever the checks let through
        )
        holder = StackHolder(env.settings, champion=lambda: (env.stack_version, config))
        with serve(create_app(env.settings, holder=holder)) as other:
            tab = browser.open(other.url + "/")
            page = tab.page
            _ask_in_page(page, QUESTION)
            expect(page.locator("#answer")).to_contain_text('<img src=x onerror="window.pwned=1">')
            expect(page.locator("#answer")).to_contain_text("<script>window.pwned=2</script>")
            assert page.locator("#answer img, #answer script, #answer *[onerror]").count() == 0
            assert page.evaluate("() => window.pwned === undefined")
            assert not tab.problems, tab.problems


def test_playground_shows_the_service_error_messages(browser: Browser, env: Env, no_stack: Running) -> None:
    from playwright.sync_api import expect

    tab = browser.open(no_stack.url + "/")
    page = tab.page
    expect(page.locator("#stack-info")).to_contain_text("No stack is being served")
    expect(page.locator("#stack-info")).to_contain_text("ragops stack promote")
    _submit(page, QUESTION)
    expect(page.get_by_role("alert")).to_contain_text("ragops stack promote")  # the 503's envelope message
    expect(page.locator("#result")).to_be_hidden()
    first = tab

    tab = browser.open(env.url + "/")
    page = tab.page
    _submit(page, "x" * (env.settings.service.max_question_chars + 1))
    expect(page.get_by_role("alert")).to_contain_text("the limit is")  # a 422's message
    _submit(page, "   ")
    expect(page.get_by_role("alert")).to_contain_text("Please type a question")
    # The browser's console reports the failed (503, 422) requests; nothing else may have gone wrong.
    problems = [p for t in (tab, first) for p in t.problems]
    assert all("status of" in p for p in problems), problems


def _submit(page: Any, text: str) -> None:
    page.get_by_label("Your question").fill(text)
    page.get_by_role("button", name="Ask").click()


def test_playground_asks_for_a_key_once_and_again_after_a_401(browser: Browser, env: Env) -> None:
    """The page asks for a key before it queries, keeps it for the tab, and asks again when the key stops working
    (a revoked key is a 401)."""
    from playwright.sync_api import expect

    gate = env.service.app.state.gate
    issued = gate.keys.create(role="reader", name="browser")
    tab = browser.open(env.url + "/", with_key=False)
    page = tab.page
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.locator("#stack-info")).to_contain_text("API key is needed")
    page.get_by_label("API key").fill(issued.secret)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#stack-info")).to_contain_text("Signed in")  # a reader may not see /v1/stack
    _ask_in_page(page, QUESTION)
    assert page.evaluate("sessionStorage.getItem('ragops.key')") == issued.secret

    gate.keys.revoke(issued.key.prefix)
    _submit(page, QUESTION)
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("revoked")
    assert page.evaluate("sessionStorage.getItem('ragops.key')") is None


# ------------------------------------------------------------------------------------- the review queue (issue 18)
def _queued_by_thumbs_down(env: Env, question: str = QUESTION) -> dict[str, Any]:
    """Ask, rate the answer down (which queues it for review) and return the answer."""
    with env.client() as client:
        answer = env.ask(client, question)
        rated = client.post("/v1/feedback", json={"request_id": answer["request_id"], "rating": "down"})
    assert rated.status_code == 200, rated.text
    return answer


def test_review_queue_api_labels_an_answer_rated_down(env: Env, tmp_path: Path) -> None:
    from evaluation.review import export_reviewed
    from evaluation.testsets import load_testset

    answer = _queued_by_thumbs_down(env)
    gate = env.service.app.state.gate
    reader = gate.keys.create(role="reader", name="review-reader", created_by="tests").secret
    with httpx.Client(base_url=env.url, headers={"Authorization": f"Bearer {reader}"}, timeout=60) as as_reader:
        assert as_reader.get("/v1/review").status_code == 403  # reviewing is the operators'
    operator = gate.keys.create(role="operator", name="reviewer", created_by="tests").secret
    with httpx.Client(base_url=env.url, headers={"Authorization": f"Bearer {operator}"}, timeout=60) as client:
        listed = client.get("/v1/review", params={"limit": 1000})
        assert listed.status_code == 200, listed.text
        mine = [i for i in listed.json()["items"] if i["request_id"] == answer["request_id"]]
        assert mine and "thumbs_down" in mine[0]["reasons"] and mine[0]["question"] == QUESTION
        assert mine[0]["citations"][0]["text"]  # the reviewer reads what was cited
        path = f"/v1/review/{answer['request_id']}"
        assert_error(client.post(path, json={"verdict": "incorrect"}), 422, "needs the right answer")
        assert_error(client.post(path, json={"verdict": "correct", "relevant_chunk_ids": ["x"]}), 422, "not cited")
        assert_error(client.post("/v1/review/nope", json={"verdict": "correct"}), 404, "not in the review queue")
        chunk = answer["citations"][0]["chunk_id"]
        labelled = client.post(path, json={"verdict": "correct", "relevant_chunk_ids": [chunk]})
        assert labelled.status_code == 200, labelled.text
        label = labelled.json()["label"]
        assert (
            label["verdict"] == "correct" and label["reviewer"] == "reviewer" and label["relevant_chunk_ids"] == [chunk]
        )
    result = export_reviewed(env.service.app.state.requests.labelled_reviews(), tmp_path, test_share=1.0)
    testset = load_testset(result.testset)
    item = next(i for i in testset.items if i.id == f"r-{answer['request_id']}")
    assert item.question == QUESTION and FOUNDED_IN in item.relevant  # the reviewed answer is now a test item

    # what `ragops eval --testset reviewed.jsonl` runs: the gate's evaluation on the reviewed set, by its hash
    # (in a thread of its own: the module's Chromium runs Playwright's event loop on this one)
    from concurrent.futures import ThreadPoolExecutor

    from evaluation.deploy import evaluate_stack
    from rag.stack import StackRegistry

    with ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(
            evaluate_stack, env.settings, StackRegistry(env.settings), str(env.stack_version), testset=testset
        ).result()
    run = outcome.to_json()
    assert run["testset"] == {"name": "reviewed", "sha256": result.testset_sha256, "kind": "qa"}
    assert run["metrics"]["hit_rate@10"] > 0  # the stack is scored on what the reviewer said


def _label_shown_item(page: Any, env: Env) -> str:
    """Label the item the review page shows (whichever is oldest) from the keyboard; its request id."""
    from playwright.sync_api import expect

    section = page.locator("#item")
    expect(section).to_be_visible()
    request_id = section.get_attribute("data-request-id")
    page.keyboard.press("Tab")  # the skip link comes first ...
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")  # ... and takes you to the verdict
    expect(page.locator("#verdict-correct")).to_be_focused()
    page.keyboard.press("ArrowDown")  # radio buttons move with the arrows: "Incorrect"
    expect(page.locator("#verdict-incorrect")).to_be_checked()
    page.keyboard.press("Tab")
    expect(page.locator("#right-answer")).to_be_focused()
    page.keyboard.type("Dr. Amara Okafor and Tobias Lindqvist")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#label-status")).to_contain_text("Saved")
    return str(request_id)


def test_review_page_labels_from_the_keyboard(browser: Browser, env: Env) -> None:
    _queued_by_thumbs_down(env)
    tab = browser.open(env.url + "/review", viewport={"width": 1024, "height": 800})
    page = tab.page
    request_id = _label_shown_item(page, env)
    item = env.service.app.state.requests.review_item(request_id)
    assert item is not None and item.label is not None and item.label.verdict == "incorrect"
    assert item.label.right_answer == "Dr. Amara Okafor and Tobias Lindqvist" and item.label.reviewer == "tests"
    assert not tab.problems, tab.problems
    _only_loopback(browser, env.url)


def test_review_page_on_a_phone(browser: Browser, env: Env) -> None:
    from playwright.sync_api import expect

    _queued_by_thumbs_down(env, KEYBOARD_QUESTION)
    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
    tab = browser.open(env.url + "/review", **phone)
    page = tab.page
    expect(page.locator("#item")).to_be_visible()
    request_id = page.locator("#item").get_attribute("data-request-id")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the review page is {overflow} px wider than a phone's screen"
    boxes = page.locator("input[name=relevant]")
    if boxes.count():
        boxes.first.check()
    page.get_by_role("radio", name="Correct", exact=True).check()
    save = page.get_by_role("button", name="Save and next")
    box = save.bounding_box()
    assert box is not None and box["height"] >= 44  # a comfortable touch target
    save.tap()
    expect(page.locator("#label-status")).to_contain_text("Saved")
    item = env.service.app.state.requests.review_item(request_id)
    assert item is not None and item.label is not None and item.label.verdict == "correct"
    assert not tab.problems, tab.problems


def test_review_page_asks_for_an_operator_key(browser: Browser, env: Env) -> None:
    from playwright.sync_api import expect

    tab = browser.open(env.url + "/review", with_key=False)
    page = tab.page
    expect(page.locator("#key-form")).to_be_visible()
    reader = env.service.app.state.gate.keys.create(role="reader", name="not-a-reviewer", created_by="tests").secret
    page.get_by_label("API key (operator)").fill(reader)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#error")).to_contain_text("operator")
    expect(page.locator("#key-form")).to_be_visible()
