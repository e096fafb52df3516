"""The annotation app in headless Chromium: the microphone plays an espeak-ng WAV (Chromium's fake
capture device), the app runs in a real uvicorn server on 127.0.0.1 with a temp SQLite database."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from annotation_app.main import create_app
from pixmo.audio import decode_audio
from pixmo.config import Settings
from pixmo.db.models import Assignment, PointSet, Project, Recording, Review
from pixmo.db.session import Database
from pixmo.storage import LocalStore
from tests.app_helpers import PASSWORD, add_users, as_tiff, make_project, serve_in_thread, speech_wav

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
MIN_SECONDS, MAX_SECONDS = 3.0, 30.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, float]:
    path = speech_wav(tmp_path_factory.mktemp("audio") / "speech.wav", MIN_SECONDS + 1.5)
    return path, decode_audio(str(path)).duration_s


class FlakyModel:
    """An ask model that fails on a question with "fail" in it, as a model server down would."""

    def answer(self, question, caption, ocr):  # noqa: ANN001, ANN201
        from pixmo.ask import Answer
        from pixmo.llm.errors import LLMError

        if "fail" in question:
            raise LLMError("the model server did not answer")
        return Answer("A blue sky.", "flaky", "ask-v1")


@pytest.fixture(scope="module")
def site(tmp_path_factory, sqlite_template):
    """A running app with a caption project, a points project (one label), an annotator and a reviewer."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    root = tmp_path_factory.mktemp("site")
    shutil.copy(sqlite_template, root / "app.db")
    db = Database(f"sqlite:///{root / 'app.db'}")
    store = LocalStore(root / "blobs", secret="browser-test-secret-0123456789", public_url="http://127.0.0.1")
    add_users(db, [("alice", "annotator"), ("bob", "annotator"), ("rita", "reviewer"), ("adam", "admin"),
                   ("dora", "annotator")])
    caption, _ = make_project(db, store, "speak", "caption", n_images=1, size=(480, 360),
                              min_seconds=MIN_SECONDS, max_seconds=MAX_SECONDS)
    make_project(db, store, "quiet", "caption", n_images=1, seed=3, min_seconds=1, max_seconds=MAX_SECONDS)
    points, _ = make_project(db, store, "point", "points", n_images=2, seed=7, size=(480, 360), labels=["red square"])
    _, (tiff_image,) = make_project(db, store, "tiff", "points", n_images=1, seed=9, size=(120, 90), labels=["sky"])
    make_project(db, store, "free", "points", n_images=1, seed=11, size=(240, 180))  # the annotator names it
    _, (broken_image,) = make_project(db, store, "unshowable", "points", n_images=1, seed=13, size=(120, 90),
                                      labels=["sky"])
    make_project(db, store, "stall", "points", n_images=1, seed=15, size=(240, 180), labels=["sky"])
    as_tiff(db, store, tiff_image)
    as_tiff(db, store, broken_image, b"II*\x00" + bytes(200))  # a TIFF no one can draw (nor make a rendition of)
    make_project(db, store, "asking", "ask", n_images=1, seed=17, size=(240, 180))
    app = create_app(Settings(env="test", data_dir=root / "data"), db=db, store=store, ask_model=FlakyModel())
    with serve_in_thread(app) as url:
        yield {"url": url, "db": db, "store": store, "caption": caption, "points": points}
    db.dispose()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, speech):
    browser = launch(playwright, speech[0])
    yield browser
    browser.close()


def launch(p, wav: Path):
    args = ["--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    return p.chromium.launch(executable_path=CHROMIUM, args=args)


def login(browser, site, username: str):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + "/")
    assert "/login" in page.url  # pages send anonymous visitors to the login page
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site["url"] + "/")
    assert page.locator("h1").inner_text() == f"Hello, {username}"
    page.errors = errors
    return page


def start(page, project: str) -> None:
    page.click(f"button[data-project={project}]")
    page.wait_for_url("**/tasks/*")
    page.wait_for_load_state("load")  # module scripts (the task's controls) have run by then
    page.wait_for_function("document.getElementById('task-image').complete")


def test_speech_caption_end_to_end_with_the_keyboard(browser, site, speech):
    wav, wav_seconds = speech
    page = login(browser, site, "alice")
    start(page, "speak")
    page.keyboard.press("Space")
    page.wait_for_selector("#record.on")
    page.wait_for_function("parseFloat(document.getElementById('level').style.width) > 0")  # the meter moves
    page.wait_for_timeout(int(wav_seconds * 1000))
    page.keyboard.press("Space")
    page.wait_for_function("!document.getElementById('submit').disabled")
    assert "Recorded" in page.inner_text("#status")
    take = page.locator("#playback").get_attribute("src")
    assert take.startswith("blob:")
    page.keyboard.press("Space")  # with a take ready, Space no longer throws it away for a new recording
    page.wait_for_function("document.getElementById('status').textContent.includes('Re-record')")
    assert page.locator("#record.on").count() == 0 and page.locator("#playback").get_attribute("src") == take
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Nothing left for you")  # the only image is done: the next-task page says so
    assert page.errors == []
    with site["db"].session() as s:
        rec = s.scalars(select(Recording)).one()
        assignment = s.get(Assignment, rec.assignment_id)
    assert assignment.status == "submitted" and assignment.active_seconds > 0
    audio = decode_audio(site["store"].get_bytes(rec.storage_key))
    assert abs(audio.duration_s - wav_seconds) < 1.0, (audio.duration_s, wav_seconds)
    assert abs(rec.duration_s - audio.duration_s) < 0.01 and rec.mime in ("audio/webm", "audio/ogg")
    page.context.close()


def _click_image(page, fx: float, fy: float) -> None:
    box = page.locator("#task-image").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def test_pointing_three_clicks_one_removal_then_not_present(browser, site):
    page = login(browser, site, "alice")
    start(page, "point")
    assert page.inner_text("#label-text") == "red square"
    clicks = [(0.2, 0.3), (0.5, 0.5), (0.8, 0.7)]
    for fx, fy in clicks:
        _click_image(page, fx, fy)
    assert page.inner_text("#count") == "3"
    # leaving with unsent points asks first (a reload or Back used to drop them without a word)
    leave = "(() => { const e = new Event('beforeunload', {cancelable: true}); dispatchEvent(e); return e.defaultPrevented; })()"
    assert page.evaluate(leave) is True
    page.locator(".marker").nth(1).click()  # clicking a point removes it
    assert page.inner_text("#count") == "2"
    page.keyboard.press("z")  # undo brings it back, and it can be removed again
    assert page.inner_text("#count") == "3"
    page.locator(".marker").nth(1).click()
    assert page.inner_text("#count") == "2"
    page.click("#submit")
    page.wait_for_url("**/tasks/*")
    page.wait_for_function("document.getElementById('count').textContent === '0'")
    # a trackpad scrolls in many small steps: the zoom follows how far, not how many events (a fixed
    # step per event threw it to its limit); a sideways scroll does not zoom
    box = page.locator("#task-image").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    scale = "parseFloat(document.querySelector('.viewer .stage').style.transform.match(/scale\\(([^)]+)\\)/)[1])"
    before = page.evaluate(scale)
    page.mouse.wheel(40, 0)
    page.wait_for_timeout(100)
    assert page.evaluate(scale) == before
    for _ in range(20):
        page.mouse.wheel(0, 4)
    page.wait_for_timeout(200)
    assert 0.8 < page.evaluate(scale) / before < 1.0
    page.click("#not-present")  # the second image: the label is not there
    page.wait_for_selector("text=Nothing left for you")
    assert page.errors == []
    with site["db"].session() as s:
        first, second = s.scalars(select(PointSet).order_by(PointSet.id)).all()
    assert first.label == "red square" and not first.not_present and len(first.points) == 2
    for (x, y), (fx, fy) in zip(first.points, [clicks[0], clicks[2]], strict=True):
        assert abs(x - fx) < 0.01 and abs(y - fy) < 0.01
    assert second.not_present and second.points == []
    page.context.close()


def test_a_tiff_is_pointed_on_through_a_rendition_the_browser_shows(browser, site):
    """Chromium shows no TIFF: the page showed a broken-image box and refused clicks. It is shown a
    JPEG drawn from it, and points clicked there are stored against the image."""
    page = login(browser, site, "dora")
    start(page, "tiff")
    assert "/renditions/" in page.get_attribute("#task-image", "src")
    # what the browser drew: the picture itself (blue, right half yellow), at the image's size
    drawn = page.evaluate("""() => {
        const img = document.getElementById('task-image'), c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        return [c.width, c.height, Array.from(g.getImageData(20, 45, 1, 1).data), Array.from(g.getImageData(100, 45, 1, 1).data)];
    }""")
    assert drawn[:2] == [120, 90]
    assert all(abs(a - b) < 16 for a, b in zip(drawn[2][:3], (30, 90, 200), strict=True))
    assert all(abs(a - b) < 16 for a, b in zip(drawn[3][:3], (250, 200, 20), strict=True))
    _click_image(page, 0.75, 0.25)
    assert page.inner_text("#count") == "1" and page.inner_text("#error") == ""
    page.click("#submit")
    page.wait_for_selector("text=Nothing left for you")
    assert page.errors == []
    with site["db"].session() as s:
        point_set = s.scalars(select(PointSet).join(Project, Project.id == PointSet.project_id)
                              .where(Project.name == "tiff")).one()
    ((x, y),) = point_set.points
    assert abs(x - 0.75) < 0.01 and abs(y - 0.25) < 0.01
    page.context.close()


def test_an_image_the_browser_cannot_show_takes_no_points(browser, site):
    """No rendition can be made of a broken file: the page shows a broken-image box, and clicks
    inside it were stored as points."""
    page = login(browser, site, "dora")
    start(page, "unshowable")
    page.locator("#error", has_text="cannot show this image").wait_for()
    _click_image(page, 0.5, 0.5)
    page.wait_for_timeout(200)
    assert page.inner_text("#count") == "0" and page.locator(".marker").count() == 0
    page.context.close()


def test_a_label_typed_after_a_click_goes_to_the_label_field(browser, site):
    """With no project labels the annotator names what they point at; typed after a click on the
    image (focus outside the field), its letters were shortcuts: z undid a point, n said not present."""
    page = login(browser, site, "dora")
    start(page, "free")
    _click_image(page, 0.4, 0.4)
    assert page.inner_text("#count") == "1"
    page.keyboard.type("zebra")
    assert page.input_value("#label") == "zebra" and page.inner_text("#count") == "1"
    page.context.close()


def test_a_request_the_server_never_answers_gives_the_task_back(browser, site):
    """A stalled connection left "Saving…" on the page for good, every button disabled: after a
    minute the page says so, keeps the points, and Submit sends them."""
    page = login(browser, site, "bob")
    page.clock.install()  # on the task page the minute passes at once
    start(page, "stall")
    stalled = []
    page.route("**/points", lambda route: stalled.append(route))  # never answered
    _click_image(page, 0.3, 0.6)
    page.click("#submit")
    page.wait_for_function("document.getElementById('submit').disabled")
    page.clock.run_for(61_000)
    page.locator("#error", has_text="no answer from the server in 60 s").wait_for()
    assert stalled and page.inner_text("#count") == "1" and page.is_enabled("#submit")
    page.unroute("**/points")
    page.click("#submit")
    page.wait_for_selector("text=Nothing left for you")
    with site["db"].session() as s:
        (point_set,) = s.scalars(select(PointSet).join(Project, Project.id == PointSet.project_id)
                                 .where(Project.name == "stall")).all()
    ((x, y),) = point_set.points
    assert abs(x - 0.3) < 0.01 and abs(y - 0.6) < 0.01 and page.errors == []
    page.context.close()


def test_a_question_the_model_fails_on_stays_on_the_page(browser, site, monkeypatch):
    """A failure of the model (502) reloaded the page 1.5 s later: the question just typed was gone,
    and with it the message asking to try again."""
    import pixmo.ask

    monkeypatch.setattr(pixmo.ask, "_ocr_cached", lambda sha, key, store: "")
    page = login(browser, site, "bob")
    start(page, "asking")
    question = "Why would this fail, and what is in the sky above the roofs?"
    page.fill("#question", question)
    page.click("#ask")
    page.locator("#error", has_text="not available right now").wait_for()
    page.wait_for_timeout(2500)  # longer than the reload used to wait
    assert page.input_value("#question") == question and "not available right now" in page.inner_text("#error")
    assert page.is_enabled("#ask")
    page.fill("#question", "What is in the sky?")
    page.click("#ask")
    page.locator("#answer", has_text="A blue sky.").wait_for()
    assert page.errors == []
    page.context.close()


def test_review_approval(browser, site):
    with site["db"].session() as s:
        rec_id = s.scalars(select(Recording.id)).first()
    if rec_id is None:
        pytest.skip("needs the speech caption test's recording")
    page = login(browser, site, "rita")
    page.click("text=Review")
    page.wait_for_load_state("load")  # the module that wires the buttons runs before "load"
    card = page.locator(f'article[data-target-type="recording"][data-target-id="{rec_id}"]')
    assert card.locator("audio").get_attribute("src").startswith("/blobs/")
    card.locator("button[data-verdict=approved]").dblclick()  # one verdict, however eager the reviewer
    card.locator("text=Approved").wait_for()
    # a rejection needs a reason, and says so on the page
    point_card = page.locator('article[data-target-type="point_set"]').first
    point_card.locator("button[data-verdict=rejected]").click()
    assert point_card.locator(".alert").inner_text() == "Say why you reject it."
    assert page.errors == []
    with site["db"].session() as s:
        review = s.scalars(select(Review)).one()
        assignment = s.scalars(select(Assignment).join(Recording, Recording.assignment_id == Assignment.id)).one()
    assert (review.target_type, review.target_id, review.verdict) == ("recording", rec_id, "approved")
    assert assignment.review_verdict == "approved"
    page.context.close()


def test_a_silent_recording_is_refused_with_a_message_on_the_page(site, tmp_path, playwright):
    from tests.app_helpers import wav_bytes

    silent = tmp_path / "silence.wav"
    silent.write_bytes(wav_bytes(np.zeros(16_000 * 4, dtype=np.float32)))
    quiet = launch(playwright, silent)  # another microphone: a browser that records silence
    try:
        page = login(quiet, site, "bob")
        page.add_init_script("""(() => {  // count the microphone openings
          window.__opened = 0;
          const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
          navigator.mediaDevices.getUserMedia = (c) => { window.__opened += 1; return open(c); };
        })()""")
        start(page, "quiet")
        page.dblclick("#record")  # a double click opens one recorder (a second one used to keep recording)
        page.wait_for_selector("#record.on")
        page.wait_for_timeout(300)
        assert page.evaluate("window.__opened") == 1
        page.wait_for_timeout(2000)
        page.click("#record")
        page.click("#submit:not([disabled])")
        page.locator("#error", has_text="silent").wait_for()
        assert "Not saved" in page.inner_text("#status") and "/tasks/" in page.url
    finally:
        quiet.close()
    with site["db"].session() as s:
        assert s.scalars(select(Recording).where(Recording.user_id == _user_id(s, "bob"))).first() is None


def _user_id(session, name: str) -> int:
    from pixmo.db.models import User

    return session.scalars(select(User.id).where(User.username == name)).one()


def test_a_reloaded_task_page_counts_active_time_on_from_what_was_recorded(browser, site):
    """The timer started again from zero on a reload and the server keeps the larger of the two
    values, so the time before the reload was lost. The task page is not cached for Back either."""
    page = login(browser, site, "bob")
    start(page, "quiet")
    task_id = int(page.url.rsplit("/", 1)[1])
    with site["db"].session() as s:  # 40 s recorded by heartbeats before the reload
        a = s.get(Assignment, task_id)
        a.active_seconds, a.created_at = 40.0, a.created_at - dt.timedelta(minutes=5)
    response = page.reload()
    assert "no-store" in response.headers.get("cache-control", "")
    page.wait_for_load_state("load")
    page.mouse.move(100, 100)
    page.wait_for_timeout(3500)
    page.on("dialog", lambda d: d.accept("blurry"))
    page.click("#skip")
    page.wait_for_selector("text=Nothing left for you")
    with site["db"].session() as s:
        a = s.get(Assignment, task_id)
    assert a.status == "skipped" and a.active_seconds >= 42, a.active_seconds  # was 40: the 3 s were lost
    page.context.close()


def test_an_admin_deactivates_a_user_from_the_users_page(browser, site):
    page = login(browser, site, "adam")
    page.goto(site["url"] + "/admin/users")
    row = page.locator("tr", has=page.locator("td", has_text="dora"))
    assert row.locator("td").nth(3).inner_text() == "yes"
    row.locator("button[value=deactivate]").click()
    page.wait_for_load_state("load")
    assert page.url == site["url"] + "/admin/users"
    assert row.locator("td").nth(3).inner_text() == "no" and row.locator("button[value=activate]").count() == 1
    assert page.errors == []
    other = browser.new_context().new_page()  # dora cannot log in any more
    other.goto(site["url"] + "/login")
    other.fill("#username", "dora")
    other.fill("#password", PASSWORD)
    other.click("button[type=submit]")
    other.wait_for_selector("text=Wrong username or password")
    other.context.close()
    page.context.close()
