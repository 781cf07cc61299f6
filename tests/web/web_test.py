"""web_test.py — the web dashboard (clients/web, docs/dashboard.md) in a real browser: headless
Debian chromium driven by selenium through chromium-driver, against a real chordd on a free
loopback port with a temp data dir (tests/integration/chordd_harness.py).

What a person does, in order: uploads a dataset through the page (and sees a refused one's bad
line named), creates a small fast job, sees its curves grow over the event stream, opens a
step's samples, cancels the job, runs a rollout from its checkpoint in the playground; and, with
tokens on, the page asks for one and works with it. Screenshots (PNG, checked non-empty and
showing more than one colour) go to $CHORD_WEB_SHOTS or the temp dir; the elements they must
show are checked before each is taken."""
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import urllib.request
import zlib

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from chordd_harness import (Chordd, TINY_CONFIG, arith_expert, arith_prompts, jsonl,  # noqa: E402
                            tiny_job)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
ADMIN = "web-test-admin-" + "a1" * 12
READ = "web-test-read-" + "b2" * 12


# ---- the browser -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shots():
    d = os.environ.get("CHORD_WEB_SHOTS") or tempfile.mkdtemp(prefix="chord-web-shots-")
    os.makedirs(d, exist_ok=True)
    yield d
    if not os.environ.get("CHORD_WEB_SHOTS"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromium-driver not installed (scripts/install-deps.sh)")
    profile = tempfile.mkdtemp(prefix="chord-web-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1440,1000", "--force-device-scale-factor=1", "--no-first-run",
              "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(d, cond, timeout=30, what=""):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda _: cond())
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}; page: "
                             f"{d.find_element(By.TAG_NAME, 'main').text[:1500]!r}; "
                             f"console: {console(d)}") from e


def console(d):
    try:
        return [e["message"] for e in d.get_log("browser")]
    except WebDriverException:
        return []


def find(d, css):
    els = d.find_elements(By.CSS_SELECTOR, css)
    return els[0] if els else None


def text(d, css):
    """The element's visible text, read in one script call (the page re-renders as it goes)."""
    return d.execute_script("const e = document.querySelector(arguments[0]);"
                            "return e ? e.innerText : ''", css)


def go(d, srv, hash_):
    d.get(srv.url + "/" + hash_)


def png_colours(path):
    """How many distinct byte values the decoded scanlines hold (1-2: a blank image)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return len(set(zlib.decompress(idat)))


def shot(d, shots, name, must_show):
    """A full-window screenshot after checking each CSS selector in must_show is displayed."""
    for css in must_show:
        assert d.execute_script(
            "const e = document.querySelector(arguments[0]); if (!e) return false;"
            "const r = e.getBoundingClientRect();"
            "return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'",
            css), f"{name}: {css} not shown"
    d.execute_script("window.scrollTo(0, 0)")
    path = os.path.join(shots, name + ".png")
    assert d.save_screenshot(path), path
    assert os.path.getsize(path) > 15000, (path, os.path.getsize(path))
    assert png_colours(path) > 40, f"{path} looks blank"
    return path


# ---- the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv():
    s = Chordd(extra_args=["--sse-heartbeat", "1"]).start()
    yield s
    rc = s.stop()
    log = s.read_log()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM:\n" + log[-3000:]


@pytest.fixture(scope="module")
def files():
    d = tempfile.mkdtemp(prefix="chord-web-files-")
    good = os.path.join(d, "arith.jsonl")
    with open(good, "wb") as f:
        f.write(jsonl(arith_prompts(40)))
    bad = os.path.join(d, "broken.jsonl")
    with open(bad, "w") as f:
        f.write('{"prompt": "Compute 1+1.", "answer": "2"}\n\n{"prompt": "Compute 2+2."}\n')
    yield {"good": good, "bad": bad}
    shutil.rmtree(d, ignore_errors=True)


def test_files_are_served_and_need_no_token(srv):
    for path, ctype in (("/", "text/html"), ("/ui/app.js", "text/javascript"),
                        ("/ui/app.css", "text/css"), ("/ui/chart.min.js", "text/javascript"),
                        ("/ui/favicon.svg", "image/svg+xml")):
        r = srv.get(path)
        assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), (path, r)
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert b"Chart.js v" in srv.get("/ui/chart.min.js").body
    assert b"/ui/app.js" in srv.get("/").body
    r = srv.get("/ui/nope.js")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    assert srv.post("/").status == 405


def test_upload_through_the_page(browser, srv, files, shots):
    d = browser
    go(d, srv, "#/datasets")
    wait(d, lambda: find(d, "#upload-input"), what="the upload form")
    # refused: the server's message names the line; the page shows that line of the file
    d.find_element(By.CSS_SELECTOR, "#upload-input").send_keys(files["bad"])
    d.find_element(By.CSS_SELECTOR, "#upload-button").click()
    err = wait(d, lambda: text(d, "#upload-error"), what="the refusal")
    assert "line 3" in err and '"answer"' in err, err
    assert "broken.jsonl:3" in err and "Compute 2+2." in err, err
    # stored
    Select(d.find_element(By.CSS_SELECTOR, "#upload-kind")).select_by_value("prompts")
    d.find_element(By.CSS_SELECTOR, "#upload-name").send_keys("arith")
    d.find_element(By.CSS_SELECTOR, "#upload-input").send_keys(files["good"])
    d.find_element(By.CSS_SELECTOR, "#upload-button").click()
    ok = wait(d, lambda: text(d, "#upload-ok"), what="the upload")
    assert "Stored arith" in ok and "40 lines" in ok, ok
    assert find(d, "#upload-progress") is None  # replaced by the result
    row = wait(d, lambda: find(d, "#datasets-table tr[data-dataset]"), what="the dataset's row")
    assert "arith" in row.text and "prompts" in row.text
    # the refusal again, for the picture beside the stored dataset
    d.find_element(By.CSS_SELECTOR, "#upload-input").send_keys(files["bad"])
    d.find_element(By.CSS_SELECTOR, "#upload-button").click()
    wait(d, lambda: find(d, "#upload-error"), what="the refusal")
    shot(d, shots, "datasets", ["#dropzone", "#upload-error", "#datasets-table tr[data-dataset]"])


def test_models(browser, srv, shots):
    d = browser
    os.makedirs(os.path.join(srv.models_root, "tiny-qwen"))
    with open(os.path.join(srv.models_root, "tiny-qwen", "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    go(d, srv, "#/models")
    wait(d, lambda: "No models" in text(d, "#models-table"), what="the models page")
    d.find_element(By.CSS_SELECTOR, "#model-name").send_keys("tiny")
    d.find_element(By.CSS_SELECTOR, "#model-path").send_keys("nowhere")
    d.find_element(By.CSS_SELECTOR, "#model-register").click()
    err = wait(d, lambda: text(d, "#model-error"), what="the refusal")
    assert "path" in err, err
    d.find_element(By.CSS_SELECTOR, "#model-path").clear()
    d.find_element(By.CSS_SELECTOR, "#model-path").send_keys("tiny-qwen")
    d.find_element(By.CSS_SELECTOR, "#model-register").click()
    row = wait(d, lambda: find(d, "#models-table tr[data-model]"), what="the model's row")
    assert "tiny" in row.text and "qwen2" in row.text and "directory" in row.text, row.text
    shot(d, shots, "models", ["#models-table tr[data-model]"])


def test_failed_job_shows_why(browser, srv):
    """A job on the model registered above (a config.json, no weights) fails when it starts."""
    d = browser
    prompts = [x for x in srv.get("/v1/datasets").json()["items"] if x["name"] == "arith"][0]["id"]
    r = srv.post("/v1/jobs", tiny_job(prompts, name="no-weights", model={"path": "tiny-qwen"}))
    assert r.status == 201, r
    go(d, srv, "#/jobs/" + r.json()["id"])
    wait(d, lambda: text(d, ".page-head .badge") == "failed", 60, "the failed state")
    err = wait(d, lambda: text(d, "#job-stats .error"), what="the job's error")
    assert "safetensors" in err, err
    assert find(d, "#cancel-job") is None


@pytest.fixture(scope="module")
def job(browser, srv, shots):
    """A long job created through the page's form, its id."""
    d = browser
    ds = srv.get("/v1/datasets").json()["items"]
    prompts = [x for x in ds if x["name"] == "arith"][0]["id"]
    go(d, srv, "#/jobs")
    wait(d, lambda: find(d, "#new-job"), what="the jobs page").click()
    area = wait(d, lambda: find(d, "#jf-json"), what="the job form")
    wait(d, lambda: '"prompts": "ds_' in area.get_attribute("value"), what="the generated document")
    shot(d, shots, "job-form", ["#job-form #jf-json", "#jf-submit"])
    expert = srv.upload("expert", jsonl(arith_expert(40)), name="arith-expert").json()["id"]
    # every checkpoint kept (a download link never names one rotated away), one every 50 steps
    # (every 2, the tiny job's ~90 steps/s grew a list of thousands that hung the renderer)
    doc = tiny_job(prompts, expert, name="web-run", steps=100000, checkpoint_every=50,
                   keep_checkpoints=0, eval={"every": 2, "k": 2, "max_new_tokens": 6})
    doc["data"]["eval"] = prompts
    # refused: the form shows the server's message naming the field; nothing is created
    bad = dict(doc, grpo=dict(doc["grpo"], clip_low=5))
    d.execute_script("arguments[0].value = arguments[1]", area, json.dumps(bad, indent=2))
    d.find_element(By.CSS_SELECTOR, "#jf-submit").click()
    err = wait(d, lambda: text(d, "#job-form .error"), what="the refusal")
    assert "grpo.clip_low" in err, err
    assert srv.get("/v1/jobs").json()["total"] == 1  # the failed job of the test above only
    d.execute_script("arguments[0].value = arguments[1]", area, json.dumps(doc, indent=2))
    d.find_element(By.CSS_SELECTOR, "#jf-submit").click()
    wait(d, lambda: "#/jobs/job_" in d.current_url, what="the job page")
    return d.current_url.split("#/jobs/")[1]


def points(d, metric):
    """How many points the chart of that metric draws."""
    return int(d.execute_script("const e = document.querySelector(arguments[0]);"
                                "return e ? e.dataset.points : 0",
                                f'.chart[data-metric="{metric}"]'))


def test_curves_grow(browser, srv, job, shots):
    d = browser
    wait(d, lambda: points(d, "reward_mean") >= 3, 60, "the first steps' curves")
    first = points(d, "reward_mean")
    wait(d, lambda: points(d, "reward_mean") >= first + 2, 60, "the curves to grow")
    for m in ("mu", "pg_loss", "entropy", "grad_norm", "response_len_mean", "tokens_per_s/rollout",
              "eval/accuracy"):
        assert points(d, m) > 0, m
    assert "web-run" in text(d, ".page-head h1") and text(d, ".page-head .badge") == "running"
    assert '"algorithm": "chord"' in text(d, "#config pre")
    # the job keeps every checkpoint, so the link works; were one gone (a 404 naming the step),
    # the page's next link would
    for attempt in range(10):
        href = wait(d, lambda: d.execute_script(
            "const a = document.querySelector('#checkpoints a[download]'); return a && a.href"),
            60, "a checkpoint's download link")
        r = srv.get(href[len(srv.url):])
        if r.status != 404:
            break
        assert b"has no checkpoint at step" in r.body, r
        time.sleep(0.3)
    assert r.status == 200 and len(r.body) > 0
    shot(d, shots, "job", ["#charts canvas", '.chart[data-metric="reward_mean"]', "#cancel-job",
                           "#job-stats .progress"])


def test_samples_of_a_step(browser, srv, job, shots):
    d = browser
    d.find_element(By.CSS_SELECTOR, "#open-samples").click()
    rows = wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#samples-table tr.sample"),
                what="the step's samples")
    assert len(rows) >= 4  # prompts_per_step 2 x group_size 2
    assert "Compute" in rows[0].text
    assert any(r in rows[0].text for r in ("correct", "wrong", "no_answer")), rows[0].text
    # another step through the step box
    box = d.find_element(By.CSS_SELECTOR, "#samples-step")
    box.clear()
    box.send_keys("1\n")
    wait(d, lambda: find(d, "#samples-step") and
         find(d, "#samples-step").get_attribute("value") == "1" and
         d.find_elements(By.CSS_SELECTOR, "#samples-table tr.sample"), what="step 1's samples")
    d.execute_script("document.querySelector('#samples-card').scrollIntoView()")
    path = os.path.join(shots, "samples.png")
    assert d.save_screenshot(path) and os.path.getsize(path) > 15000 and png_colours(path) > 40


def test_cancel(browser, srv, job, shots):
    d = browser
    d.execute_script("window.scrollTo(0, 0)")
    d.find_element(By.CSS_SELECTOR, "#cancel-job").click()
    assert "again" in text(d, "#cancel-job")  # a second click confirms
    d.find_element(By.CSS_SELECTOR, "#cancel-job").click()
    wait(d, lambda: text(d, ".page-head .badge") == "cancelled", 60, "the cancelled state")
    assert find(d, "#cancel-job") is None
    assert srv.get("/v1/jobs/" + job).json()["state"] == "cancelled"
    go(d, srv, "#/jobs")
    row = wait(d, lambda: find(d, f'tr[data-job="{job}"]'), what="the job's row")
    assert "cancelled" in row.text and "chord" in row.text and "qwen2 init" in row.text, row.text
    shot(d, shots, "jobs", [f'tr[data-job="{job}"] .progress', "#new-job"])


def test_playground(browser, srv, job, shots):
    d = browser
    go(d, srv, "#/jobs/" + job)
    # clicked in the page: the card is redrawn as the job's events arrive
    wait(d, lambda: d.execute_script("const a = document.querySelector('#to-playground');"
                                     "if (a) a.click(); return !!a"), what="the playground link")
    assert d.current_url.endswith(f"#/playground?job={job}")
    wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#pg-step option")) > 1,
         what="the job's checkpoints")
    assert Select(d.find_element(By.CSS_SELECTOR, "#pg-job")).first_selected_option \
        .get_attribute("value") == job
    prompt = d.find_element(By.CSS_SELECTOR, "#pg-prompt")
    prompt.clear()
    prompt.send_keys("Compute 3+4.")
    d.find_element(By.CSS_SELECTOR, "#pg-answer").send_keys("7")
    for css, v in (("#pg-n", "3"), ("#pg-max-tokens", "8"), ("#pg-temperature", "0.8")):
        el = d.find_element(By.CSS_SELECTOR, css)
        el.clear()
        el.send_keys(v)
    d.find_element(By.CSS_SELECTOR, "#pg-run").click()
    wait(d, lambda: find(d, "#pg-result") or find(d, "#pg-error") or find(d, "#pg-out .error"),
         60, "the rollout")
    assert find(d, "#pg-result"), text(d, "#pg-out")
    cards = d.find_elements(By.CSS_SELECTOR, "#pg-result .completion")
    assert len(cards) == 3
    for c in cards:
        assert "reward" in c.text and any(r in c.text for r in ("correct", "wrong", "no_answer"))
        toks = c.find_elements(By.CSS_SELECTOR, ".heat span")
        assert toks and "log p" in toks[0].get_attribute("title")
        assert "background" in toks[0].get_attribute("style")
    # the heat map has one span per sampled token: the rollout's tokens, token_ids, logprobs
    rid = text(d, "#pg-result .mono")
    ro = srv.get("/v1/rollouts/" + rid).json()
    for c, card in zip(ro["result"]["completions"], cards):
        assert len(c["tokens"]) == len(c["token_ids"]) == len(c["logprobs"]) > 0
        assert len(card.find_elements(By.CSS_SELECTOR, ".heat span")) == len(c["tokens"])
    shot(d, shots, "playground", ["#pg-result .completion .heat span", "#pg-run"])
    # a chat: a system turn, then the prompt
    d.find_element(By.CSS_SELECTOR, "#pg-system").send_keys("You add numbers.")
    d.find_element(By.CSS_SELECTOR, "#pg-run").click()
    wait(d, lambda: text(d, "#pg-result .mono") not in ("", rid), 60, "the chat rollout")
    ro = srv.get("/v1/rollouts/" + text(d, "#pg-result .mono")).json()
    assert ro["request"]["messages"][0][0] == {"role": "system", "content": "You add numbers."}


# ---- tokens on -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_srv():
    fd, path = tempfile.mkstemp(prefix="chord-web-tokens-")
    with os.fdopen(fd, "w") as f:
        f.write(f"admin {ADMIN}\nread {READ}\n")
    os.chmod(path, 0o600)
    s = Chordd(extra_args=["--auth-token-file", path, "--sse-heartbeat", "1"]).start()
    yield s
    rc = s.stop()
    log = s.read_log()
    s.cleanup()
    os.unlink(path)
    assert rc == 0, "chordd did not exit cleanly on SIGTERM:\n" + log[-3000:]
    for t in (ADMIN, READ):
        assert t not in log and t[-12:] not in log, "a token reached the log"


def test_tokens_on(browser, auth_srv, files, shots):
    d = browser
    s = auth_srv
    assert s.get("/").status == 200 and s.get("/ui/app.js").status == 200  # no token: the page
    assert s.get("/v1/jobs").status == 401  # ...but no data
    go(d, s, "#/datasets")
    wait(d, lambda: find(d, "#token-dialog[open]"), what="the token dialog")
    shot(d, shots, "token", ["#token-dialog #token-input"])
    d.find_element(By.CSS_SELECTOR, "#token-input").send_keys(ADMIN + "\n")
    wait(d, lambda: "No datasets" in text(d, "#datasets-table"), what="the page with the token")
    d.find_element(By.CSS_SELECTOR, "#upload-input").send_keys(files["good"])
    d.find_element(By.CSS_SELECTOR, "#upload-button").click()
    wait(d, lambda: text(d, "#upload-ok"), what="an upload with the token")
    ds = s.get("/v1/datasets", headers={"Authorization": "Bearer " + ADMIN}).json()["items"][0]
    # a job's event stream with the token in the Authorization header (read with fetch)
    r = s.post("/v1/jobs", tiny_job(ds["id"], steps=3, checkpoint_every=0),
               headers={"Authorization": "Bearer " + ADMIN})
    assert r.status == 201, r
    go(d, s, "#/jobs/" + r.json()["id"])
    wait(d, lambda: text(d, ".page-head .badge") == "succeeded", 60, "the job's end")
    wait(d, lambda: points(d, "reward_mean") == 3, 30, "its steps over the event stream")
    time.sleep(0.3)
    assert points(d, "reward_mean") == 3  # every step, each once
    # the page never puts a token in a URL, and the server takes none from one
    job_id = r.json()["id"]
    assert s.get(f"/v1/jobs/{job_id}/events?access_token={READ}").status == 401
    # a read token reads; the server refuses its writes and the page says so
    d.execute_script("sessionStorage.setItem('chord.token', arguments[0])", READ)
    go(d, s, "#/datasets")
    d.refresh()
    wait(d, lambda: find(d, "#datasets-table tr[data-dataset]"), what="the list with a read token")
    d.find_element(By.CSS_SELECTOR, "#upload-input").send_keys(files["good"])
    d.find_element(By.CSS_SELECTOR, "#upload-button").click()
    err = wait(d, lambda: text(d, "#upload-error"), what="the 403")
    assert "permission_denied" in err, err
