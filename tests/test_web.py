"""The web chat page in a real headless Chromium against a live server: a question typed in
Chinese streams an answer, Enter during IME composition does not send, the stop button ends a
generation, conversations persist, model output cannot inject HTML, and every answer has
thumbs whose ratings (and corrections) reach the feedback store."""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURE_TOKENIZER, live_server, tiny_model

from lmforge.config import AssistantConfig, ServeConfig
from lmforge.feedback import read_feedback
from lmforge.model import Transformer
from lmforge.serve import create_app
from lmforge.tokenizer import load_chat_format

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)",
                allow_module_level=True)


class PacedTransformer(Transformer):
    """The real model, slowed to ~50 tokens/s so a person (or a test) can press stop mid-answer."""

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        time.sleep(0.02)
        return super().forward(*args, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback") / "feedback.jsonl"


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[str]:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    model = tiny_model(chat.tokenizer, max_seq_len=512, cls=PacedTransformer)
    app = create_app(model, chat, AssistantConfig(),
                     ServeConfig(model_name="tiny-web", feedback_file=str(store)))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert CHROMIUM, "chromium must be installed in CI"
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server: str):  # noqa: ANN001, ANN201
    context = browser.new_context()
    page = context.new_page()
    page.goto(server)
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    yield page
    context.close()


@pytest.fixture(scope="module")
def rag_server(rag_index) -> Iterator[str]:  # noqa: ANN001
    from lmforge.rag import Grounding, Retriever

    chat = load_chat_format(FIXTURE_TOKENIZER)
    model = tiny_model(chat.tokenizer, max_seq_len=1024)
    app = create_app(model, chat, AssistantConfig(), ServeConfig(model_name="tiny-rag"),
                     grounding=Grounding(Retriever(rag_index)))
    with live_server(app) as url:
        yield url


def test_rag_answers_show_their_sources(browser, rag_server: str, tmp_path: Path) -> None:  # noqa: ANN001
    page = browser.new_page()
    page.goto(rag_server)
    page.wait_for_function("document.getElementById('use-rag').checked")
    page.fill("#max-tokens", "8")
    page.fill("#input", "如果存在重复保险，保险公司会如何分配赔偿责任？")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant .sources li", timeout=30_000)
    first = page.locator(".message.assistant .sources li").first.inner_text()
    assert first.startswith("p0001")  # the gold passage of this question, cited as [1]
    page.screenshot(path=str(tmp_path / "rag.png"), full_page=True)
    page.close()


def assistant_text(page) -> str:  # noqa: ANN001
    return page.locator(".message.assistant").last.inner_text()


def test_question_streams_an_answer_and_is_kept(page, tmp_path: Path) -> None:  # noqa: ANN001
    page.fill("#max-tokens", "40")
    page.fill("#input", "什么是犹豫期？")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant.streaming")
    page.wait_for_function("document.querySelector('.message.assistant:not(.streaming)')"
                           " && document.getElementById('stop').hidden", timeout=30_000)
    assert page.locator(".message.user").inner_text() == "什么是犹豫期？"
    assert assistant_text(page).strip()
    assert page.locator("#history li").first.inner_text().startswith("什么是犹豫期")
    screenshot = tmp_path / "chat.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 5_000
    page.reload()  # the conversation survives a reload
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message.user").inner_text() == "什么是犹豫期？"
    page.click("#new-chat")
    assert page.locator(".message").count() == 0


def test_stop_button_ends_generation(page, server: str) -> None:  # noqa: ANN001
    page.fill("#max-tokens", "400")
    for _ in range(5):  # the untrained model, sampling afresh, may end an answer by itself first
        page.fill("#input", "请详细介绍保险合同")
        page.click("#send")
        page.wait_for_function("document.querySelector('.message.assistant:last-child')"
                               " && document.querySelector('.message.assistant:last-child')"
                               ".innerText.length > 2")
        try:
            page.click("#stop", timeout=2_000)
            break
        except playwright_api.TimeoutError:
            page.wait_for_function("document.getElementById('send').hidden === false")
    else:
        pytest.fail("five answers in a row ended before stop could be pressed")
    page.wait_for_function("document.getElementById('send').hidden === false")
    stopped = assistant_text(page)
    time.sleep(0.5)
    assert assistant_text(page) == stopped  # nothing arrives after stop
    assert page.locator(".message.assistant.streaming").count() == 0


def kept_answers(page) -> list[dict]:  # noqa: ANN001
    """The current conversation's answers as the page keeps them (localStorage)."""
    return page.evaluate("JSON.parse(localStorage.getItem('lmforge.conversations'))[0]"
                         ".messages.filter((m) => m.role === 'assistant')")


def test_every_answer_has_thumbs_that_reach_the_store(page, store: Path,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    page.fill("#max-tokens", "6")
    questions = ["什么是犹豫期？", "宽限期是多少天？"]
    for n, question in enumerate(questions, 1):
        page.fill("#input", question)
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelectorAll('.message.assistant .feedback')"
                               f".length === {n} && document.getElementById('stop').hidden",
                               timeout=30_000)
    assert page.locator(".message.assistant").count() == 2  # thumbs on every answer
    first, second = page.locator(".message.assistant").all()
    first.locator(".thumb.up").click()
    page.wait_for_function("document.querySelector('.message.assistant .thumb.up')"
                           ".getAttribute('aria-pressed') === 'true'")
    assert not first.locator(".correction").is_visible()
    second.locator(".thumb.down").click()  # thumbs down asks what it should have said
    second.locator(".correction textarea").fill("宽限期为六十日。")
    second.locator(".correction button").click()
    page.wait_for_function("document.querySelectorAll('.message.assistant .status')[1]"
                           ".textContent.includes('correction recorded')")
    assert not second.locator(".correction").is_visible()  # sent: the box closes
    page.screenshot(path=str(tmp_path / "feedback.png"), full_page=True)
    kept = kept_answers(page)
    rated = {item.response_id: item for item in read_feedback(store)}  # the last of each
    for answer, question in zip(kept, questions, strict=True):
        item = rated[answer["id"]]
        assert item.answer == answer["content"]
        assert item.messages[-1] == {"role": "user", "content": question}
    assert (rated[kept[0]["id"]].rating, rated[kept[0]["id"]].correction) == ("up", "")
    assert (rated[kept[1]["id"]].rating, rated[kept[1]["id"]].correction) == (
        "down", "宽限期为六十日。")
    page.reload()  # the chosen thumb is kept with the conversation
    page.wait_for_selector(".message.assistant .feedback")
    assert page.get_attribute(".message.assistant .thumb.up", "aria-pressed") == "true"


def test_a_refused_rating_is_shown(page) -> None:  # noqa: ANN001
    page.fill("#max-tokens", "4")
    page.fill("#input", "什么是犹豫期？")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant .feedback", timeout=30_000)
    page.evaluate("""() => {  // an answer the server no longer has (it restarted, say)
        const all = JSON.parse(localStorage.getItem('lmforge.conversations'));
        all[0].messages[1].id = 'chatcmpl-forgotten';
        localStorage.setItem('lmforge.conversations', JSON.stringify(all));
    }""")
    page.reload()
    page.click(".message.assistant .thumb.up")
    page.wait_for_selector(".message.assistant .status.error")
    assert "not recorded" in page.inner_text(".message.assistant .status.error")
    assert page.get_attribute(".message.assistant .thumb.up", "aria-pressed") == "false"


def test_settings_show_the_assistants_defaults(page) -> None:  # noqa: ANN001
    # an empty system-prompt box sends no system message: the server puts this one in
    assert AssistantConfig().system in page.get_attribute("#system", "placeholder")
    assert page.input_value("#max-tokens") == str(AssistantConfig().sampling.max_new_tokens)
    assert page.input_value("#temperature") == str(AssistantConfig().sampling.temperature)


def test_enter_during_ime_composition_does_not_send(page) -> None:  # noqa: ANN001
    page.fill("#input", "baoxian")
    page.dispatch_event("#input", "keydown", {"key": "Enter", "isComposing": True})
    page.evaluate("""() => document.getElementById('input').dispatchEvent(
        new KeyboardEvent('keydown', {key: 'Enter', isComposing: true, bubbles: true}))""")
    assert page.locator(".message").count() == 0
    assert page.input_value("#input") == "baoxian"


def test_markdown_is_rendered_and_html_escaped(page) -> None:  # noqa: ANN001
    source = "## 条款\\n- **免责** 见[2]\\n- <img src=x onerror=alert(1)>"
    html = page.evaluate(f"renderMarkdown('{source}')")
    assert "<h2>条款</h2>" in html and "<strong>免责</strong>" in html
    assert '<sup class="cite">[2]</sup>' in html
    assert "<img" not in html and "&lt;img" in html


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from test_serve_agent import agent_server, taught_model

    memory = tmp_path_factory.mktemp("memory")
    _, running = agent_server(taught_model(memory), memory)
    with running as url:
        yield url


def test_the_agent_answers_through_its_tools_with_the_steps_shown(browser, agent_url: str,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    from test_serve_agent import ANSWER, QUESTION

    page = browser.new_page()
    page.goto(f"{agent_url}/#key=sk-alice")
    page.wait_for_function("!document.getElementById('use-agent').disabled")
    page.check("#use-agent")
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant .trace li.observation", timeout=60_000)
    page.wait_for_function("document.getElementById('stop').hidden", timeout=60_000)
    steps = page.locator(".message.assistant .trace li")
    assert steps.count() == 2
    assert "lookup_premium" in steps.nth(0).inner_text()
    assert "臻爱一世" in steps.nth(1).inner_text()  # the table row the tool returned
    assert ANSWER in assistant_text(page)
    page.screenshot(path=str(tmp_path / "agent.png"), full_page=True)
    page.close()
