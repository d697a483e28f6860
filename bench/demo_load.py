"""A bounded load test of the web demo on loopback: concurrent ``gradio_client`` clients
calling ``/generate``; prints the p50/p95 latency and exits non-zero on any error.

    python bench/demo_load.py RUN --clients 8 --requests 20       # serve RUN here (127.0.0.1), then load it
    python bench/demo_load.py http://127.0.0.1:7860/ --clients 8  # a demo that is already running

Each client is its own ``gradio_client.Client`` in its own thread, making ``--requests``
calls one after another (``--count`` images each, a different seed each call); each answer
is checked (number of images, captions ranked by log-density). The demo serves one request
at a time, so a latency is the wait in its queue plus the generation: with N clients it is
about N times one request's time. Client and server share this process (and its GIL) when a
run folder is given.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def load_test(url: str, clients: int = 8, requests: int = 20, count: int = 4, label: str | None = None,
              temperature: float = 1.0, timeout: float = 300.0) -> dict[str, Any]:
    """``clients`` threads, each with its own client, each making ``requests`` calls to ``/generate``.

    Returns latencies (seconds, one per successful request), errors (one line each),
    p50/p95/max and the wall time. Raises TimeoutError when a client is still busy after
    ``timeout`` seconds (the test stays bounded).
    """
    from gradio_client import Client

    from latentflows.demo import parse_caption

    latencies: list[float] = []
    errors: list[str] = []
    guard = threading.Lock()
    start_line = threading.Barrier(clients)
    with tempfile.TemporaryDirectory(prefix="demo-load-") as downloads:

        def work(k: int) -> None:
            try:
                client = Client(url, verbose=False, analytics_enabled=False, download_files=downloads)
            except Exception as error:  # every failure is counted, none is raised
                with guard:
                    errors.append(f"client {k}: could not connect: {type(error).__name__}: {error}")
                start_line.abort()
                return
            try:
                start_line.wait()
            except threading.BrokenBarrierError:
                return
            for i in range(requests):
                began = time.perf_counter()
                try:
                    arguments = {"temperature": temperature, "seed": k * requests + i, "count": count}
                    if label is not None:  # else the demo's default class
                        arguments["label"] = label
                    gallery = client.predict(**arguments, api_name="/generate")
                    elapsed = time.perf_counter() - began
                    if len(gallery) != count:
                        raise AssertionError(f"{len(gallery)} images instead of {count}")
                    ranks, values = zip(*(parse_caption(item["caption"]) for item in gallery))
                    if list(ranks) != list(range(1, count + 1)) or list(values) != sorted(values, reverse=True):
                        raise AssertionError(f"captions not ranked by log-density: {[i['caption'] for i in gallery]}")
                except Exception as error:
                    with guard:
                        errors.append(f"client {k} request {i}: {type(error).__name__}: {error}")
                    continue
                with guard:
                    latencies.append(elapsed)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        deadline = began + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        seconds = time.perf_counter() - began
        if any(thread.is_alive() for thread in threads):
            raise TimeoutError(f"the load test did not finish in {timeout:.0f} s")
    result = {"url": url, "clients": clients, "requests": requests, "count": count, "seconds": seconds,
              "latencies": latencies, "errors": errors}
    if latencies:
        result.update(p50=percentile(latencies, 50), p95=percentile(latencies, 95), max=max(latencies),
                      throughput=len(latencies) / seconds)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"demo load test: {result['clients']} clients x {result['requests']} requests "
             f"({result['count']} images each) on {result['url']}",
             f"{len(result['latencies'])} answered, {len(result['errors'])} errors in {result['seconds']:.1f} s"
             + (f" ({result['throughput']:.1f} requests/s)" if result["latencies"] else "")]
    if result["latencies"]:
        lines.append(f"latency p50 {result['p50'] * 1000:.0f} ms, p95 {result['p95'] * 1000:.0f} ms, "
                     f"max {result['max'] * 1000:.0f} ms")
    lines += [f"error: {line}" for line in result["errors"][:10]]
    if len(result["errors"]) > 10:
        lines.append(f"... and {len(result['errors']) - 10} more errors")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", metavar="RUN_OR_URL", help="a trained run folder (served here) or a running demo's URL")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    parser.add_argument("--count", type=int, default=4, help="images per request (default 4)")
    parser.add_argument("--class", dest="label", help="class to generate (default: the first)")
    parser.add_argument("--device", default="auto", help="where the served run computes (default auto)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    args = parser.parse_args(argv)
    # loopback only: no analytics, and no list fetched from huggingface.co for gradio_client's headers
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if min(args.clients, args.requests, args.count) < 1:
        parser.error("--clients, --requests and --count must be at least 1")

    demo = None
    if args.target.startswith(("http://", "https://")):
        url = args.target
    else:
        from latentflows import LatentflowsError
        from latentflows.demo import launch_demo
        from latentflows.pipeline import load

        try:
            demo = launch_demo(load(args.target, args.device), queue_size=max(64, 2 * args.clients))
        except LatentflowsError as error:
            print(f"demo_load: error: {error}", file=sys.stderr)
            return 2
        url = demo.local_url
    try:
        result = load_test(url, args.clients, args.requests, args.count, args.label, timeout=args.timeout)
    except TimeoutError as error:
        print(f"demo_load: error: {error}", file=sys.stderr)
        return 1
    finally:
        if demo is not None:
            demo.close(verbose=False)
    print(report(result))
    return 1 if result["errors"] or not result["latencies"] else 0


if __name__ == "__main__":
    sys.exit(main())
