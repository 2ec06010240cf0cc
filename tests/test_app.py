"""`magref app`: the page's functions (Studio) on the one request path, and the server's limits."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import DEFAULTS, EXAMPLES, run_cli
from magref.app import Form, Studio, error_field
from magref.errors import MagrefInputError
from magref.io import sha256_file
from magref.jobs import JobCancelled

PROMPT = "A person moves from left to right in a meadow."
REFS = [str(EXAMPLES / "character.png"), str(EXAMPLES / "mug.png")]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(tmp_path_factory.mktemp("app-out"))


def test_preview_is_the_composition_generate_uses(studio):
    form = Form(prompt=PROMPT, refs=REFS, steps=2)
    canvas, mask, layout = studio.preview(form)
    assert canvas.size == mask.size == (DEFAULTS["width"], DEFAULTS["height"]) and len(layout["boxes"]) == 2
    shuffled = studio.preview(Form(prompt=PROMPT, refs=REFS, layout_mode="official random placement", layout_seed=5))[2]
    boxes = [[2, 2, 30, 30], [34, 34, 62, 62]]
    mine = studio.preview(Form(prompt=PROMPT, refs=REFS, layout_mode="my boxes", boxes=boxes))
    assert mine[2]["boxes"] == boxes and shuffled["kind"] != layout["kind"]
    assert np.asarray(mine[1]).max() > 0


def test_generate_writes_what_magref_generate_writes(studio, tmp_path):
    """Same settings through the page and the CLI: the same request fingerprint and frames."""
    out, sidecar = studio.generate(Form(prompt=PROMPT, refs=REFS, steps=3, seed=11))
    assert out.parent == studio.out_dir and out.is_file() and out.with_suffix(".json").is_file()
    cli_out = tmp_path / "cli.mp4"
    rc, _, err = run_cli("generate", "--prompt", PROMPT, "--ref", REFS[0], "--ref", REFS[1], "--steps", "3", "--seed", "11", "--out", cli_out)
    assert rc == 0, err
    cli = json.loads(cli_out.with_suffix(".json").read_text())
    assert sidecar["request_fingerprint"] == cli["request_fingerprint"]
    assert sidecar["output"]["sha256"] == cli["output"]["sha256"]


def test_references_are_kept_beside_the_videos(studio, tmp_path):
    """An upload's temporary file may go; the sidecar names a copy in the output folder."""
    upload = tmp_path / "upload.png"
    upload.write_bytes((EXAMPLES / "mug.png").read_bytes())
    out, sidecar = studio.generate(Form(prompt=PROMPT, refs=[str(upload)], steps=2))
    upload.unlink()
    kept = sidecar["settings"]["refs"][0]
    assert kept.startswith(str(studio.out_dir / "references")) and os.path.isfile(kept)
    assert studio.preview(studio.restore(out))[0].size == (DEFAULTS["width"], DEFAULTS["height"])  # history restores a run whose upload is gone


def test_random_seed_is_recorded_and_progress_reported(studio):
    seen = []
    out, sidecar = studio.generate(Form(prompt=PROMPT, refs=REFS, steps=3, seed=None), lambda done, total, left: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(sidecar["settings"]["seed"], int)
    assert studio.restore(out).seed == sidecar["settings"]["seed"]


def test_cancel_stops_at_the_next_step_and_writes_nothing(studio):
    before = set(os.listdir(studio.out_dir)) - {"references"}  # the references are kept once the request is valid

    waits = []

    def cancel_at_two(done, total, left):
        if done == 2:
            studio.cancel()
            waits.append(studio.wait_until_stopped(timeout=0.2))  # the job runs until its next step ends

    with pytest.raises(JobCancelled, match="after step 3 of 50"):
        studio.generate(Form(prompt=PROMPT, refs=REFS, steps=50), cancel_at_two)
    assert set(os.listdir(studio.out_dir)) - {"references"} == before  # no video, no sidecar, no .part
    assert waits == [False] and studio.wait_until_stopped(timeout=0.2)  # the page's Cancel button comes back then
    studio.generate(Form(prompt=PROMPT, refs=REFS, steps=2))  # a cancel does not stick to the next job


def test_a_cancel_stops_only_its_own_sessions_job(studio):
    seen = []

    def other_cancels(done, total, left):
        seen.append(done)
        if done == 1:
            studio.cancel("someone else")  # another session's Cancel: not this job

    out, _ = studio.generate(Form(prompt=PROMPT, refs=REFS, steps=3), other_cancels, owner="me")
    assert out.is_file() and seen == [1, 2, 3]
    with pytest.raises(JobCancelled, match="before it started"):  # that session's next job was cancelled while it waited
        studio.generate(Form(prompt=PROMPT, refs=REFS, steps=3), owner="someone else")


def test_history_newest_first_and_restore(studio):
    a, _ = studio.generate(Form(prompt="first", refs=REFS[:1], steps=2, seed=1))
    b, _ = studio.generate(Form(prompt="second", refs=REFS, steps=2, seed=2, layout_mode="official random placement", layout_seed=9))
    history = studio.history()
    assert [h["path"] for h in history[:2]] == [str(b), str(a)]
    form = studio.restore(b)
    assert (form.prompt, form.seed, form.steps, form.layout_mode, form.layout_seed) == ("second", 2, 2, "official random placement", 9)
    assert [sha256_file(r) for r in form.refs] == [sha256_file(r) for r in REFS]  # the kept copies of the references
    (studio.out_dir / "notes.json").write_text("[1, 2]")  # a user's own JSON is not history
    assert len(studio.history()) == len(history)


@pytest.mark.parametrize("form,field,needle", [
    (Form(prompt=PROMPT, refs=REFS * 9), "refs", "18 references"),
    (Form(prompt=PROMPT, refs=[]), "refs", "No reference image"),
    (Form(prompt=" ", refs=REFS), "prompt", "The prompt is empty"),
    (Form(prompt=PROMPT, refs=REFS, frames=12), "settings", "4n+1"),
    (Form(prompt=PROMPT, refs=REFS, layout_mode="my boxes", boxes=[[0, 0, 10, 10]]), "layout", "1 of 2 rows have a box"),
    (Form(prompt=PROMPT, refs=REFS, layout_mode="official random placement"), "layout", "needs a layout seed"),
    (Form(prompt=PROMPT, refs=REFS, guidance=float("nan")), "settings", "not a finite number"),
    (Form(prompt=PROMPT, refs=REFS, loras="/no/such dir/a.safetensors 0.5"), "model", "LoRA /no/such dir/a.safetensors does not exist"),
    (Form(prompt=PROMPT, refs=REFS, layout_mode="my boxes", boxes=[[0, 0, 500, 10], [0, 0, 10, 10]]), "layout", ""),
])
def test_bad_input_is_one_line_beside_its_field(studio, form, field, needle):
    with pytest.raises(MagrefInputError) as e:
        studio.request(form)
    assert needle in str(e.value) and "\n" not in str(e.value) and error_field(e.value) == field == error_field(str(e.value)), str(e.value)


def test_a_corrupt_image_is_named(studio, tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(MagrefInputError, match="photo.png") as e:
        studio.preview(Form(prompt=PROMPT, refs=[str(bad)]))
    assert error_field(str(e.value)) == "refs"


# ----------------------------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def start_server(out_dir, *extra):
    port = _free_port()
    # each server its own gradio upload cache: two test processes (-n 2) may serve at once
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": f"{out_dir}-gradio"}
    proc = subprocess.Popen([sys.executable, "-m", "magref.cli", "app", "--port", str(port), "--out-dir", str(out_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"magref app exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("magref app did not serve within 120 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("served")
    proc, url = start_server(out)
    yield url, out
    proc.terminate()
    proc.wait(timeout=30)


def _upload(url: str, name: str, data: bytes) -> int:
    boundary = "magrefboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        return urllib.request.urlopen(req, timeout=60).status
    except urllib.error.HTTPError as e:
        return e.code


def test_server_refuses_an_oversized_upload(server):
    url, _ = server
    assert _upload(url, "small.png", (EXAMPLES / "mug.png").read_bytes()) == 200
    assert _upload(url, "big.png", os.urandom(26 * 1024 * 1024)) == 413


def test_server_listens_on_loopback_only_by_default(server):
    url, _ = server
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    address = _non_loopback_address()
    assert address is not None, "this machine has no non-loopback address to test with"
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=3).close()
    socket.create_connection(("127.0.0.1", port), timeout=3).close()


@pytest.mark.parametrize("extra,needle", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 would let anyone on the network use this machine"),
    (["--host", "0.0.0.0", "--auth", "nopassword"], "--auth must be USER:PASS"),
    (["--port", "70000"], "--port 70000 is not a port number"),
    (["--out-dir", str(EXAMPLES / "mug.png")], "is a file"),
    (["--device", "warp9"], "Unknown device 'warp9'"),  # at start, not on the page's first Generate
])
def test_app_refuses_unsafe_or_bad_options(extra, needle):
    rc, _, err = run_cli("app", *extra)
    assert rc == 2 and needle in err and "Traceback" not in err, err


def test_an_exposed_host_with_a_password_warns_and_asks_for_it(tmp_path):
    proc, url = start_server(tmp_path, "--host", "0.0.0.0", "--auth", "me:secret")
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "config", timeout=5)  # the page's components are behind the login
        assert e.value.code == 401
        # the server answers before launch() returns and the app prints its address: wait for that line
        # (read in a thread: a readline that never comes must not hang the test)
        seen = []

        def read_until_address():
            for line in proc.stdout:
                seen.append(line)
                if "magref app: open" in line:
                    return

        reader = threading.Thread(target=read_until_address, daemon=True)
        reader.start()
        reader.join(timeout=60)
    finally:
        proc.terminate()
        out = "".join(seen) + proc.communicate(timeout=30)[0]
    assert "warning: serving on 0.0.0.0: reachable from other machines" in out
    # the address to open, and none of gradio's advice to make a public share link
    assert "magref app: open http://" in out and f":{url.rstrip('/').rsplit(':', 1)[1]}" in out and "share=True" not in out, out


def test_a_huge_image_under_the_upload_limit_is_refused_in_one_line(studio, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (12000, 12000), (200, 30, 30)).save(huge)  # a few hundred KB, 144 megapixels
    with pytest.raises(MagrefInputError) as e:
        studio.preview(Form(prompt=PROMPT, refs=[str(huge)]))
    assert error_field(str(e.value)) == "refs" and "pixels" in str(e.value), str(e.value)
