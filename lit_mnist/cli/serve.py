"""``serve``: an HTTP server for a checkpoint or an ONNX export, with a page to draw a digit on.

``python scripts/serve.py`` and ``lit-mnist serve`` both end up in :func:`main`. A model file that cannot be
served is refused with one line and exit status 2, before any port is opened.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from jsonargparse import ArgumentParser

from lit_mnist.cli.common import parse_or_exit, usage_exit
from lit_mnist.config import Dataset
from lit_mnist.errors import CheckpointError, UsageError
from lit_mnist.images import FIT_CHOICES, INVERT_CHOICES
from lit_mnist.runtime import ACCELERATORS

#: The addresses LitServe binds: the loopback interface (the default), or every interface (IPv4, IPv6).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def get_parser(prog: str = "serve.py") -> ArgumentParser:
    """Flags of ``serve``."""
    parser = ArgumentParser(
        prog=prog,
        description="Serve a checkpoint or an ONNX export over HTTP: POST /predict, the page at /, GET /info.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("model", type=str, help="A .ckpt written by training, or an .onnx written by export.")
    parser.add_argument(
        "--host",
        type=Literal[HOSTS],
        default="127.0.0.1",
        help="127.0.0.1: this machine only; 0.0.0.0 or ::, every interface (there is no authentication).",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 1024-65535.")
    parser.add_argument(
        "--invert",
        type=Literal[INVERT_CHOICES],
        default="auto",
        help="As predict's: auto inverts dark-on-light images (the model expects light strokes on dark).",
    )
    parser.add_argument(
        "--fit",
        type=Literal[FIT_CHOICES],
        default="frame",
        help="As predict's: frame pads to square and resizes; digit crops and centres the strokes.",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="Requests classified together at most (1: no batching).",
    )
    parser.add_argument(
        "--batch-timeout", type=float, default=0.005, help="Seconds a batch waits for more requests."
    )
    parser.add_argument("--workers", type=int, default=1, help="Inference processes per device.")
    parser.add_argument("--accelerator", type=Literal[ACCELERATORS], default="auto")
    parser.add_argument(
        "--dataset",
        type=Dataset | None,
        default=None,
        help="Dataset of a checkpoint that does not record it (default: the run's config.yaml, else mnist).",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "serve.py") -> int:
    """Entry point of ``scripts/serve.py``: serves until Ctrl-C or SIGTERM."""
    cfg = parse_or_exit(get_parser(prog), argv, prog, positionals=("model",))
    if not 1024 <= cfg.port <= 65535:
        usage_exit(prog, f"--port must be from 1024 to 65535, got {cfg.port}")
    if cfg.max_batch_size < 1:
        usage_exit(prog, f"--max-batch-size must be >= 1, got {cfg.max_batch_size}")
    if not 0 <= cfg.batch_timeout < 30:
        usage_exit(prog, f"--batch-timeout must be >= 0 and < 30 seconds, got {cfg.batch_timeout}")
    if cfg.workers < 1:
        usage_exit(prog, f"--workers must be >= 1, got {cfg.workers}")
    try:
        import litserve  # noqa: F401
    except ImportError:
        usage_exit(prog, "serve needs LitServe: pip install 'lit_mnist[serve]'")

    from lit_mnist.runtime import check_accelerator
    from lit_mnist.serve import build_server, open_model

    try:
        check_accelerator(cfg.accelerator)
        model = open_model(cfg.model, cfg.dataset)
    except (CheckpointError, UsageError) as err:
        usage_exit(prog, str(err))
    if cfg.host != "127.0.0.1":
        print(
            f"{prog}: warning: --host {cfg.host} accepts connections from other machines, and the server has no "
            "authentication; put it behind a reverse proxy that has",
            file=sys.stderr,
        )
    server = build_server(
        model, cfg.invert, cfg.fit, cfg.max_batch_size, cfg.batch_timeout, cfg.workers, cfg.accelerator
    )
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(
        f"Serving {model.path} ({model.info.name}, {model.network}, {model.kind}, model {model.short_hash}) at "
        f"http://{shown}:{cfg.port}/ : the page at /, POST /predict, GET /info, GET /health; Ctrl-C stops",
        flush=True,
    )
    server.run(host=cfg.host, port=cfg.port, generate_client_file=False, log_level="warning")
    return 0
