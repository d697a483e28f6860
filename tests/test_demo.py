"""The web demo (``latentflows.demo``): through ``gradio_client``, in a real Chromium, under load, offline.

One small pipeline is trained for the module (or ``LATENTFLOWS_DEMO_RUN=RUN`` serves a trained
run instead) and served on 127.0.0.1 while every attempt of this process to reach another
machine is refused and recorded, as if offline. The browser test drives Debian's Chromium
(``apt-get install chromium``) through Playwright by ``executable_path`` (Playwright's own
browser download is not used; ``LATENTFLOWS_CHROMIUM`` names another binary);
``LATENTFLOWS_SCREENSHOT=docs/demo.png`` saves the page it sees.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

import latentflows as lf
from latentflows import demo as demo_module
from latentflows.cli.options import with_options
from latentflows.demo import generate_gallery, interpolation_rows, parse_caption
from latentflows.extras import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
# gradio's queue summarizes its events with pandas, which warns about its own deprecations (gradio 6.31, pandas 3)
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
CHROMIUM_HELP = ("Chromium is not installed: apt-get install -y chromium (Debian's package, driven by "
                 "Playwright through executable_path), or set LATENTFLOWS_CHROMIUM to a Chromium binary")


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]' (the demo's tests need gradio, "
                    f"gradio_client and playwright)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _loopback(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _load_bench():
    spec = importlib.util.spec_from_file_location("demo_load", ROOT / "bench" / "demo_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pixels(item) -> np.ndarray:
    path = item["image"] if isinstance(item, dict) else item
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def pipeline(small_pets, tiny_config):
    run = os.environ.get("LATENTFLOWS_DEMO_RUN")
    if run:
        return lf.load(run, "cpu")
    return lf.train(small_pets, with_options(tiny_config, ae_epochs=1, flow_epochs=1), None, progress=False,
                    figures=False, device="cpu")


@pytest.fixture(scope="module")
def outside_calls():
    """Attempts of this process to resolve or reach a host that is not this machine: refused and listed."""
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            attempts.append(f"resolve {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "offline (refused by the test)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(f"connect {address!r}")
            raise OSError("offline (refused by the test)")
        return real_connect(self, address)

    with pytest.MonkeyPatch.context() as patch:
        # the test's own clients: gradio_client's headers ask huggingface_hub, which would fetch a list
        # from huggingface.co once per process unless offline (the demo itself never asks)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(importlib.import_module("huggingface_hub.constants"), "HF_HUB_OFFLINE", True)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", connect)
        yield attempts


@pytest.fixture(scope="module")
def served(pipeline, outside_calls):
    for module in ("gradio", "gradio_client"):
        _need(module)
    demo = demo_module.launch_demo(pipeline, port=_free_port())
    yield demo
    demo.close(verbose=False)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served.local_url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def run_folder(pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "run"
    pipeline.save(path)
    return path


def test_listens_on_localhost_only(served):
    assert served.server_name == "127.0.0.1"
    assert urlparse(served.local_url).hostname == "127.0.0.1"
    bound = [s.getsockname()[0] for server in served.server.servers for s in server.sockets]
    assert bound and set(bound) == {"127.0.0.1"}
    assert served.share_url is None


def test_generate_is_ranked_seeded_and_matches_the_pipeline(client, pipeline):
    gallery = client.predict(label="dog", temperature=1.0, seed=3, count=6, api_name="/generate")
    assert len(gallery) == 6
    ranks, values = zip(*(parse_caption(item["caption"]) for item in gallery))
    assert list(ranks) == [1, 2, 3, 4, 5, 6]
    assert list(values) == sorted(values, reverse=True)

    # the images are the pipeline's own, upscaled: every k-th pixel gives them back
    expected = pipeline.generate("dog", 6, 1.0, 3)
    images = [_pixels(item) for item in gallery]
    size = expected.images.shape[-1]
    factor = images[0].shape[0] // size
    assert factor >= 2 and images[0].shape == (size * factor, size * factor, 3)
    for image, want, value in zip(images, expected.images, expected.log_prob.tolist()):
        assert np.array_equal(image[::factor, ::factor], want.permute(1, 2, 0).numpy())
    assert values == tuple(round(v, 1) for v in expected.log_prob.tolist())

    again = client.predict(label="dog", temperature=1.0, seed=3, count=6, api_name="/generate")
    assert all(np.array_equal(a, _pixels(b)) for a, b in zip(images, again))
    other = client.predict(label="dog", temperature=1.0, seed=4, count=6, api_name="/generate")
    assert not np.array_equal(images[0], _pixels(other[0]))


def test_interpolate_gives_a_linear_and_a_spherical_row(client, pipeline):
    linear, spherical, note = client.predict(start="cat", end="dog", steps=5, seed=1, temperature=0.8,
                                             api_name="/interpolate")
    rows = [_pixels(linear), _pixels(spherical)]
    size = pipeline.autoencoder.image_size
    scale = rows[0].shape[0] // (size + 4)
    assert scale >= 1 and rows[0].shape == rows[1].shape == ((size + 4) * scale, (5 * (size + 2) + 2) * scale, 3)
    tile = (size + 2) * scale
    for end in (slice(0, tile), slice(-tile, None)):  # both walks start and end at the same two points
        assert np.array_equal(rows[0][:, end], rows[1][:, end])
    assert "**cat** (left)" in note and "**dog** (right)" in note


def test_bad_inputs_are_clear_errors(client, pipeline):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="minimum"):
        client.predict(label="dog", temperature=1.0, seed=0, count=0, api_name="/generate")
    with pytest.raises(AppError, match="horse"):
        client.predict(label="horse", temperature=1.0, seed=0, count=2, api_name="/generate")
    with pytest.raises(AppError, match="minimum"):
        client.predict(start="cat", end="dog", steps=1, seed=0, temperature=1.0, api_name="/interpolate")
    assert len(client.predict(label="cat", temperature=1.0, seed=0, count=1, api_name="/generate")) == 1
    assert len(client.predict(label="cat", temperature=1.0, seed=0, count=2, guidance=3.0, api_name="/generate")) == 2

    # the same checks without the web layer, for callers of the functions
    for arguments, message in [({"count": 65}, "count must be between 1 and 64, got 65"),
                               ({"count": 2.5}, "count must be a whole number"),
                               ({"seed": -1}, "seed must be between"),
                               ({"temperature": 0.0}, "temperature must be between 0.1 and 1.5"),
                               ({"temperature": float("nan")}, "temperature must be between"),
                               ({"guidance": -0.5}, "guidance must be between 0.0 and 128.0"),
                               ({"label": "horse"}, "unknown class 'horse'; this model knows: cat, dog")]:
        with pytest.raises(lf.LatentflowsError, match=message):
            generate_gallery(pipeline, **{"label": "dog", **arguments})
    with pytest.raises(lf.LatentflowsError, match="steps must be between 2 and 16, got 17"):
        interpolation_rows(pipeline, "cat", "dog", steps=17)


@pytest.mark.browser
def test_page_in_chromium(served, tmp_path):
    """Open the page in headless Chromium, pick dog, press Generate, see 16 captioned images."""
    executable = os.environ.get("LATENTFLOWS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable or not Path(executable).exists():
        pytest.fail(CHROMIUM_HELP, pytrace=False)
    sync_api = _need("playwright.sync_api")
    outside: list[str] = []

    def only_this_machine(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or _loopback(urlparse(url).hostname or ""):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", only_this_machine)
            page.goto(served.local_url, wait_until="load", timeout=60_000)
            page.locator("#generate").wait_for(state="visible", timeout=60_000)
            page.locator("#class input").click()
            page.get_by_role("option", name="dog", exact=True).click()
            page.locator("#generate").click()
            thumbnails = page.locator("#samples .thumbnail-item img")
            thumbnails.nth(15).wait_for(state="visible", timeout=60_000)
            page.wait_for_function("() => [...document.querySelectorAll('#samples .thumbnail-item img')]"
                                   ".every(image => image.complete && image.naturalWidth > 0)", timeout=30_000)
            assert thumbnails.count() == 16
            assert page.locator("#class input").input_value() == "dog"
            captions = page.locator("#samples .thumbnail-item").all_inner_texts()
            values = [parse_caption(text.strip())[1] for text in captions]
            assert values == sorted(values, reverse=True)
            screenshot = os.environ.get("LATENTFLOWS_SCREENSHOT")
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=screenshot, full_page=True)

            page.get_by_role("tab", name="Interpolate").click()
            page.locator("#interpolate").click()
            for row in ("#linear img", "#spherical img"):
                page.locator(row).wait_for(state="visible", timeout=60_000)
            assert "(left) to" in page.locator("#interpolation-note").inner_text()
        finally:
            browser.close()
    assert outside == [], f"the page asked for files from other machines: {outside}"


def test_load_on_loopback(served, capsys):
    """8 concurrent clients x 5 requests of 4 images each: no error; p50/p95 printed (bench/demo_load.py
    runs the longer load)."""
    bench = _load_bench()
    result = bench.load_test(served.local_url, clients=8, requests=5, count=4, label="dog", timeout=120)
    with capsys.disabled():
        print("\n" + bench.report(result))
    assert result["errors"] == []
    assert len(result["latencies"]) == 40
    assert 0 < result["p50"] <= result["p95"] <= result["max"]


def test_cli_serves_until_interrupted(run_folder, served, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    demo_module.add_arguments(parser)
    defaults = parser.parse_args([str(run_folder)])
    assert (defaults.host, defaults.port, defaults.share, defaults.device) == ("127.0.0.1", None, False, "auto")
    with pytest.raises(SystemExit):
        parser.parse_args([str(run_folder), "--port", "0"])

    port = _free_port()
    args = parser.parse_args([str(run_folder), "--port", str(port), "--device", "cpu"])

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_wait_for_interrupt", interrupt)
    demo_module.run(args)
    out, err = capsys.readouterr()
    assert f"at http://127.0.0.1:{port}/ (Ctrl-C to stop)" in out and "demo stopped" in err
    with socket.socket() as probe:  # closed: the port is free again
        probe.bind(("127.0.0.1", port))

    taken = parser.parse_args([str(run_folder), "--port", str(served.server_port), "--device", "cpu"])
    with pytest.raises(lf.LatentflowsError, match=f"cannot serve the demo on 127.0.0.1:{served.server_port}"):
        demo_module.run(taken)


def test_bench_script_serves_a_run_and_reports(run_folder, capsys):
    bench = _load_bench()
    assert bench.main([str(run_folder), "--clients", "2", "--requests", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "6 answered, 0 errors" in out and "latency p50" in out and "p95" in out


def test_gradio_is_an_extra_imported_only_when_needed(run_folder, pipeline, monkeypatch):
    code = ("import sys, latentflows, latentflows.demo, latentflows.cli; latentflows.cli.build_parser(); "
            "print('gradio' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"^this needs Gradio .*: pip install 'latentflows\[demo\]'$"):
        demo_module.build_demo(pipeline)
    parser = argparse.ArgumentParser()
    demo_module.add_arguments(parser)
    with pytest.raises(MissingExtraError, match="pip install 'latentflows"):
        demo_module.run(parser.parse_args([str(run_folder)]))


def test_nothing_left_this_machine(served, outside_calls):
    """Run last: while the demo started and served every test above, nothing reached the internet."""
    assert outside_calls == []
