"""Web demo of a trained run: ``latentflows demo RUN`` (Gradio, the optional extra ``latentflows[demo]``).

Two tabs. *Generate*: a class, temperature, seed, count and class guidance in; a gallery out, ranked by the
flow's log-density (highest first, each caption giving the rank and the log-density in nats).
*Interpolate*: two classes in; the linear and spherical walks through the flow's base space
out, one row each (see ``latentflows.interpolation``).

The server listens on 127.0.0.1 (this machine only) unless another host is given, opens no
public share link unless asked, and needs no internet: Gradio's analytics and version check
are turned off, and the page's scripts, styles and fonts come from the installed gradio
package. Requests are served one at a time (one queue for both tabs, and a lock around the
model), so concurrent visitors are safe. The same endpoints serve programs through
``gradio_client``: ``/generate`` and ``/interpolate``; ``bench/demo_load.py`` measures their
latency under concurrent clients.

Gradio is imported when a demo is built or launched, never with ``latentflows``; without it,
one line names the pip command.

Example:
    >>> import latentflows as lf
    >>> from latentflows.demo import launch_demo
    >>> demo = launch_demo(lf.load("runs/pets"))     # doctest: +SKIP
    >>> demo.local_url                                 # doctest: +SKIP
    'http://127.0.0.1:7860/'
    >>> demo.close()                                   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from .errors import LatentflowsError
from .extras import require

if TYPE_CHECKING:  # pragma: no cover
    import gradio
    from PIL import Image

    from .pipeline import LatentFlowPipeline

LOCALHOST = "127.0.0.1"
TEMPERATURES = (0.1, 1.5)
GUIDANCES = (0.0, 128.0)  # the slider's range, raised to a run's own default where that is higher
COUNTS = (1, 64)
STEPS = (2, 16)
SEEDS = (0, 2**32 - 1)
DISPLAY_SIZE = 256  # pixels per generated image in the gallery
STRIP_TILE = 128  # pixels per image in an interpolation row
QUEUE_SIZE = 64  # requests waiting at most; more get "queue full"
CAPTION = re.compile(r"^#(\d+): (-?\d+(?:\.\d+)?|-?inf|nan) nats$")


def _gradio() -> ModuleType:
    """Import gradio with its analytics off (no request leaves the machine), or fail in one line."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio and gradio_client when they start
    return require("gradio", "demo")


# ---------------------------------------------------------------------- inputs
def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (an int, or a float with no fraction, as sliders send) within [low, high].

    Example:
        >>> whole_number(16.0, "count", 1, 64)
        16
        >>> try:
        ...     whole_number(0, "count", 1, 64)
        ... except LatentflowsError as error:
        ...     print(error)
        count must be between 1 and 64, got 0
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LatentflowsError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise LatentflowsError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise LatentflowsError(f"{name} must be between {low} and {high}, got {int(number)}")
    return int(number)


def real_number(value: Any, name: str, low: float, high: float) -> float:
    """``value`` as a finite float within [low, high]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LatentflowsError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise LatentflowsError(f"{name} must be between {low} and {high}, got {value!r}")
    return number


def caption(rank: int, log_prob: float) -> str:
    """A gallery caption: the rank (1 = highest log-density) and the log-density in nats.

    Example:
        >>> caption(1, -327.44)
        '#1: -327.4 nats'
        >>> parse_caption(caption(3, 12.0))
        (3, 12.0)
    """
    return f"#{rank}: {log_prob:.1f} nats"


def parse_caption(text: str) -> tuple[int, float]:
    """(rank, log-density) from a caption written by ``caption``."""
    match = CAPTION.match(text or "")
    if match is None:
        raise ValueError(f"not a demo caption: {text!r}")
    return int(match.group(1)), float(match.group(2))


# ---------------------------------------------------------------------- model calls (no gradio)
def _upscaled(image: torch.Tensor, size: int) -> Image.Image:
    """A uint8 (3, S, S) image as a PIL image about ``size`` pixels wide (nearest neighbour)."""
    from PIL import Image

    picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    factor = max(1, round(size / image.shape[-1]))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    return picture


def guidance_range(pipeline: LatentFlowPipeline) -> tuple[float, float]:
    """The guidance the demo offers: ``GUIDANCES``, reaching the run's own default where that is higher."""
    return GUIDANCES[0], max(GUIDANCES[1], pipeline.sampling["guidance"])


def generate_gallery(pipeline: LatentFlowPipeline, label: str, temperature: float = 1.0, seed: float = 0,
                     count: float = 16, display_size: int = DISPLAY_SIZE,
                     guidance: float | None = None) -> list[tuple[Image.Image, str]]:
    """``count`` images of class ``label`` as (upscaled image, caption) pairs, highest log-density first;
    ``guidance`` is ``LatentFlowPipeline.generate``'s class guidance (None: the run's own).

    Every input is checked (a bad one is a ``LatentflowsError`` saying what is allowed).

    Example:
        >>> import latentflows as lf
        >>> from latentflows.flows import ConditionalRealNVP
        >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]),
        ...                                  ["cat", "dog"])
        >>> gallery = generate_gallery(pipeline, "dog", count=3, display_size=64)
        >>> len(gallery), gallery[0][0].size, gallery[0][1].startswith("#1: ")
        (3, (64, 64), True)
    """
    count = whole_number(count, "count", *COUNTS)
    seed = whole_number(seed, "seed", *SEEDS)
    temperature = real_number(temperature, "temperature", *TEMPERATURES)
    if guidance is not None:
        guidance = real_number(guidance, "guidance", *guidance_range(pipeline))
    with torch.no_grad():
        samples = pipeline.generate(label, count, temperature, seed, guidance)
    return [(_upscaled(image, display_size), caption(rank, value))
            for rank, (image, value) in enumerate(zip(samples.images, samples.log_prob.tolist()), start=1)]


def interpolation_rows(pipeline: LatentFlowPipeline, start: str, end: str, steps: float = 8, seed: float = 0,
                       temperature: float = 1.0, tile: int = STRIP_TILE) -> tuple[Image.Image, Image.Image, str]:
    """The linear and spherical walks from ``start`` to ``end``, each one picture (a row of
    ``steps`` images), and a line saying which class is at which end."""
    from .interpolation import interpolate
    from .plots import image_grid

    steps = whole_number(steps, "steps", *STEPS)
    seed = whole_number(seed, "seed", *SEEDS)
    temperature = real_number(temperature, "temperature", *TEMPERATURES)
    first, last = (pipeline.class_names[pipeline.class_index(name)] for name in (start, end))
    with torch.no_grad():
        rows = interpolate(pipeline, first, last, steps, seed, temperature)
    scale = max(1, round(tile / rows["linear"].shape[-1]))
    linear, spherical = (image_grid([rows[mode]], padding=2, scale=scale) for mode in ("linear", "spherical"))
    return linear, spherical, f"{steps} steps from **{first}** (left) to **{last}** (right), seed {seed}."


# ---------------------------------------------------------------------- the app
def build_demo(pipeline: LatentFlowPipeline, display_size: int = DISPLAY_SIZE) -> gradio.Blocks:
    """The Gradio app (not started): a *Generate* tab and an *Interpolate* tab over ``pipeline``.

    Its API endpoints are ``/generate`` (class, temperature, seed, count, guidance -> gallery of
    (image, caption)) and ``/interpolate`` (from, to, steps, seed, temperature -> linear row,
    spherical row, a note). Both share one queue slot and a lock, so one request runs at a time.
    """
    _gradio()
    import gradio as gr  # already imported by _gradio (analytics off); imported here for its types

    lock = threading.Lock()
    names = list(pipeline.class_names)
    size = getattr(pipeline.autoencoder, "image_size", None)

    def generate(label: str, temperature: float, seed: float, count: float,
                 guidance: float | None = None) -> list[tuple[Any, str]]:
        try:
            with lock, torch.no_grad():
                return generate_gallery(pipeline, label, temperature, seed, count, display_size, guidance)
        except LatentflowsError as error:
            raise gr.Error(str(error)) from None

    def walk(start: str, end: str, steps: float, seed: float, temperature: float) -> tuple[Any, Any, str]:
        try:
            with lock, torch.no_grad():
                return interpolation_rows(pipeline, start, end, steps, seed, temperature)
        except LatentflowsError as error:
            raise gr.Error(str(error)) from None

    about = (f"Images of {', '.join(names)}{f' ({size}×{size} px)' if size else ''}: the flow draws an "
             "embedding for the class, the autoencoder decodes it. Samples are ranked by the log-density of "
             "their embeddings under the flow (nats), highest first.")
    with gr.Blocks(title="latentflows demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## latentflows\n{about}")
        with gr.Tab("Generate", id="generate-tab"):
            with gr.Row():
                label = gr.Dropdown(names, value=names[0], label="Class", elem_id="class")
                temperature = gr.Slider(*TEMPERATURES, value=1.0, step=0.05, label="Temperature",
                                        info="scale of the base noise: lower is safer, higher more varied")
                seed = gr.Number(0, precision=0, minimum=SEEDS[0], maximum=SEEDS[1], label="Seed")
                count = gr.Slider(*COUNTS, value=16, step=1, label="Count")
                guidance = gr.Slider(*guidance_range(pipeline), value=pipeline.sampling["guidance"], step=1,
                                     label="Class guidance",
                                     info="keep samples the flow itself calls this class (0: plain sampling)")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="Samples, highest log-density first (#rank: log-density in nats)",
                                 columns=8, format="png", object_fit="contain", elem_id="samples",
                                 buttons=["download", "download_all", "fullscreen"])  # no "share" (to the Hub)
            button.click(generate, [label, temperature, seed, count, guidance], gallery, api_name="generate",
                         concurrency_id="model", concurrency_limit=1)
        with gr.Tab("Interpolate", id="interpolate-tab"):
            with gr.Row():
                start = gr.Dropdown(names, value=names[0], label="From", elem_id="from")
                end = gr.Dropdown(names, value=names[-1], label="To", elem_id="to")
                steps = gr.Slider(*STEPS, value=8, step=1, label="Steps")
                walk_seed = gr.Number(0, precision=0, minimum=SEEDS[0], maximum=SEEDS[1], label="Seed")
                walk_temperature = gr.Slider(*TEMPERATURES, value=1.0, step=0.05, label="Temperature")
            walk_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
            note = gr.Markdown(elem_id="interpolation-note")
            rows: dict[str, Any] = {"type": "pil", "format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
            linear = gr.Image(label="linear: a straight line in the base space", elem_id="linear", **rows)
            spherical = gr.Image(label="spherical: keeps the norm of a typical sample", elem_id="spherical", **rows)
            walk_button.click(walk, [start, end, steps, walk_seed, walk_temperature], [linear, spherical, note],
                              api_name="interpolate", concurrency_id="model", concurrency_limit=1)
    return demo


def launch_demo(pipeline: LatentFlowPipeline, host: str | None = LOCALHOST, port: int | None = None,
                share: bool = False, *, quiet: bool = True, queue_size: int = QUEUE_SIZE,
                display_size: int = DISPLAY_SIZE) -> gradio.Blocks:
    """Serve ``pipeline``'s demo and return once it answers (the server runs in a thread).

    Args:
        host: the address to listen on: 127.0.0.1 (the default, and for ``None``) is this
            machine only; 0.0.0.0 is every network interface.
        port: the port; ``None`` takes the first free one from 7860.
        share: also open a temporary public link through gradio.live (needs the internet).
        quiet: leave out Gradio's own start-up messages.
        queue_size: requests that may wait at most; more are refused ("queue full").

    Returns:
        The running ``gradio.Blocks``: ``local_url``, ``share_url``, ``server_name``,
        ``server_port``; ``close()`` stops it.
    """
    _gradio()
    demo = build_demo(pipeline, display_size)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    host = host or LOCALHOST
    # no server-side rendering (a Node process), MCP server, installable app or monitoring page, whatever
    # GRADIO_* variables say; older gradio versions lack some of these options
    extras: dict[str, Any] = {"ssr_mode": False, "mcp_server": False, "pwa": False, "enable_monitoring": False}
    accepted = inspect.signature(demo.launch).parameters
    try:
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
                    show_error=True, inbrowser=False, **{k: v for k, v in extras.items() if k in accepted})
    except OSError as error:
        where = f"{host}:{port}" if port is not None else f"{host} (ports 7860 and up)"
        reason = ("the port is in use, or the host is not an address of this machine; choose another --port "
                  "or --host" if "Cannot find empty port" in str(error) else str(error))
        raise LatentflowsError(f"cannot serve the demo on {where}: {reason}") from None
    return demo


# ---------------------------------------------------------------------- command line
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``latentflows demo``."""
    from .runtime import add_compute_options

    parser.add_argument("run", type=Path, help="a trained run folder")
    parser.add_argument("--host", default=LOCALHOST,
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "the network, without any login)")
    parser.add_argument("--port", type=_port, help="port to listen on (default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also open a temporary public link through gradio.live (needs the internet)")
    add_compute_options(parser)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _wait_for_interrupt() -> None:
    while True:
        time.sleep(3600)


def run(args: argparse.Namespace) -> None:
    """``latentflows demo``: load the run, serve it, print its address, and serve until Ctrl-C."""
    from .pipeline import load

    _gradio()  # a missing extra is reported before the model loads
    try:
        pipeline = load(args.run, args.device, args.precision)
    except ValueError as error:  # an unavailable device
        raise LatentflowsError(f"--device {args.device}: {error}") from None
    demo = launch_demo(pipeline, args.host, args.port, args.share)
    try:
        name = getattr(args, "hub_id", None) or args.run  # the CLI resolves a Hub id to a local folder
        print(f"latentflows demo of {name} ({', '.join(pipeline.class_names)}) at {demo.local_url} "
              f"(Ctrl-C to stop)", flush=True)
        if not _is_loopback(args.host):
            print(f"latentflows: the demo listens on {args.host}: other machines can reach it", file=sys.stderr)
        if args.share:
            if demo.share_url:
                print(f"public link (temporary): {demo.share_url}", flush=True)
            else:
                print("latentflows: no public link could be made; the demo is served locally only", file=sys.stderr)
        _wait_for_interrupt()
    except KeyboardInterrupt:
        print("latentflows: demo stopped", file=sys.stderr)
    finally:
        demo.close(verbose=False)
