"""Benchmark ``lit-mnist serve``: requests per second and latency under 1, 8 and 64 concurrent clients.

``python scripts/benchmark.py --serve [flags]`` (or this file). For each server -- the PyTorch checkpoint
and its ONNX export, each with dynamic batching on (``--max-batch-size``, ``--batch-timeout``) and off
(``--max-batch-size 1``) -- it starts ``scripts/serve.py`` on a free loopback port, and clients upload real
MNIST test images as PNG files (multipart, the way ``curl -F`` does) over keep-alive connections, each
sending its next request when the last is answered. Beside the table: the raw batched inference rate of
the same model in this process (forward passes of batches of 64 prepared images: the ceiling), and what
reading one PNG with predict's preprocessing costs (the work the server adds per request).

The clients are one asyncio thread in this process, on the same CPUs as the server: on a small machine
they take a share of the CPU the server would otherwise have.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py --serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="The real MNIST (its test images are uploaded).")
    parser.add_argument(
        "--model", default=None, help="A .ckpt to serve (default: train the cnn-fast recipe on --data-dir)."
    )
    parser.add_argument("--clients", default="1,8,64", help="Concurrent clients, comma-separated.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Measured time of each client count.")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="The batching server's --max-batch-size."
    )
    parser.add_argument(
        "--batch-timeout", type=float, default=0.005, help="The batching server's --batch-timeout."
    )
    parser.add_argument("--no-onnx", action="store_true", help="Serve the checkpoint only.")
    return parser


# --------------------------------------------------------------------------- the load
def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_bytes(port: int, png: bytes) -> bytes:
    body, content_type = multipart(png)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def one_client(port: int, requests: list[bytes], stop_at: float, latencies: list[float], k: int) -> int:
    """Send requests one after another on one keep-alive connection until ``stop_at``; returns the failures."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    failures, i = 0, k
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            await writer.drain()
            status = (await reader.readline()).split(b" ")[1]
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            failures += status != b"200"
            i += 1
    finally:
        writer.close()
    return failures


def load(port: int, requests: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` concurrent clients for ``seconds`` (after a short warm-up): requests/s, p50, p99 (ms)."""

    async def run(duration: float) -> tuple[list[float], int]:
        latencies: list[float] = []
        stop_at = time.perf_counter() + duration
        failed = await asyncio.gather(
            *(one_client(port, requests, stop_at, latencies, k) for k in range(clients))
        )
        return latencies, sum(failed)

    asyncio.run(run(1.0))  # warm-up: connections, the worker's first batches
    start = time.perf_counter()
    latencies, failures = asyncio.run(run(seconds))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(ordered),
        "failures": failures,
        "rps": len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


# --------------------------------------------------------------------------- servers and models
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [sys.executable, str(SERVE), str(model), "--port", str(port), "--accelerator", "cpu", *flags]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{' '.join(argv)} did not start; its output: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def test_pngs(data_dir: str | None, count: int = 256) -> list[bytes]:
    """The first ``count`` MNIST test images as PNG files (the tiny synthetic digits without ``data_dir``)."""
    import numpy as np
    from PIL import Image

    if data_dir is not None:
        from lit_mnist.mnist import MNISTDataModule

        images = MNISTDataModule(data_dir).load(train=False)[0][:count].reshape(-1, 28, 28).numpy()
    else:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import make_digits

        images = make_digits(count, seed=1)[0]
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def train_model(data_dir: str, folder: Path) -> Path:
    import yaml

    from lit_mnist.config import RunConfig
    from lit_mnist.recipes import recipe_path
    from lit_mnist.run import train

    settings = yaml.safe_load(recipe_path("cnn-fast").read_text())
    config = RunConfig(**{**settings, "data_dir": data_dir, "log_dir": str(folder), "accelerator": "cpu",
                          "devices": 1, "progress_bar": False})  # fmt: skip
    result = train(config)
    assert result.last_checkpoint is not None
    return Path(result.last_checkpoint)


def raw_rates(model: Path, pngs: list[bytes]) -> dict[str, float]:
    """Images/s of forward passes in batches of 64 (the ceiling), and ms to prepare one PNG."""
    import torch

    from lit_mnist.inference import prepare_input
    from lit_mnist.serve import load_runner, open_model

    served = open_model(model)
    start = time.perf_counter()
    prepared = [prepare_input(p, served.info, served.input_shape) for p in pngs]
    prepare_ms = 1000 * (time.perf_counter() - start) / len(pngs)
    batch = torch.stack(prepared[:64])
    runner = load_runner(served, "cpu")
    for _ in range(20):
        runner(batch)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 3.0:
        runner(batch)
        calls += 1
    return {"images_per_s": calls * 64 / (time.perf_counter() - start), "prepare_ms": prepare_ms}


def export_onnx(model: Path, folder: Path) -> Path | None:
    from lit_mnist.cli.export import main as export_main

    onnx = folder / "model.onnx"
    try:
        return onnx if export_main(["--ckpt-path", str(model), "--output", str(onnx)]) == 0 else None
    except ImportError:
        return None


# --------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.model is None and args.data_dir is None:
        print("benchmark.py --serve: error: give --data-dir (the real MNIST) or --model", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else train_model(args.data_dir, folder / "logs")
        pngs = test_pngs(args.data_dir)
        models = {"checkpoint": model}
        if not args.no_onnx and (onnx := export_onnx(model, folder)) is not None:
            models["onnx"] = onnx
        print(f"\nload before: {os.getloadavg()[0]:.2f} (1-minute average), {os.cpu_count()} CPUs")
        raw = {kind: raw_rates(path, pngs) for kind, path in models.items()}
        rows: list[dict[str, Any]] = []
        for kind, path in models.items():
            for batching in (True, False):
                flags = ["--max-batch-size", str(args.max_batch_size if batching else 1)]
                flags += ["--batch-timeout", str(args.batch_timeout if batching else 0)]
                process, port = start_server(path, flags, folder / "server.log")
                try:
                    requests = [request_bytes(port, png) for png in pngs]
                    for n in clients:
                        row = load(port, requests, n, args.seconds)
                        rows.append({"model": kind, "batching": batching, **row})
                        print(f"  {kind} batching={'on' if batching else 'off'} {n} clients: "
                              f"{row['rps']:.0f} req/s p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms")  # fmt: skip
                finally:
                    stop_server(process)
        print(f"load after: {os.getloadavg()[0]:.2f} (1-minute average)\n")
        print_table(rows, raw, args)
    return 0 if all(r["failures"] == 0 for r in rows) else 1


def print_table(
    rows: list[dict[str, Any]], raw: dict[str, dict[str, float]], args: argparse.Namespace
) -> None:
    print("| model | batching | clients | requests/s | p50 | p99 | raw rate (batches of 64) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        batching = f"on ({args.max_batch_size}, {args.batch_timeout * 1000:g} ms)" if r["batching"] else "off"
        failed = f" ({r['failures']} failed)" if r["failures"] else ""
        print(f"| {r['model']} | {batching} | {r['clients']} | {r['rps']:.0f}{failed} | {r['p50_ms']:.1f} ms | "
              f"{r['p99_ms']:.1f} ms | {raw[r['model']]['images_per_s']:.0f} images/s |")  # fmt: skip
    for kind, rates in raw.items():
        print(f"\n{kind}: reading one PNG with predict's preprocessing: {rates['prepare_ms']:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
