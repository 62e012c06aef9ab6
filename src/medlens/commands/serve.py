"""``medlens serve``: the HTTP service (upload page and JSON API) with uvicorn.

Only the standard library is imported here; FastAPI, uvicorn and the model backends load when
the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

API_KEY_ENV = "MEDLENS_API_KEY"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: list[str] | None) -> list[str] | None:
    """The names the ``Host`` header may carry for a server bound to ``host`` (None: any).

    Loopback: the loopback names only, so that a web page whose DNS name is rebound to 127.0.0.1
    cannot reach the model from the user's browser. A named address: that name. The wildcard
    addresses (0.0.0.0, ::) do not say which names reach the machine: any, unless
    ``--allowed-hosts`` names them.
    """
    names = list(extra or [])
    if _is_loopback(host):
        return ["127.0.0.1", "localhost", "::1", *names]
    if host in ("0.0.0.0", "::", ""):
        return names or None
    return [host, *names]


def run(args: argparse.Namespace) -> int:
    """Load RUN's model (exporting ONNX first if needed) and serve it until interrupted."""
    from medlens.engine.run_folder import RunFolder

    run = Path(args.run)
    folder = RunFolder(run)
    if not folder.best.is_file():
        raise FileNotFoundError(f"{run} is not a run folder with {folder.best.relative_to(run).as_posix()}; "
                                "train one with 'medlens train DATA --out RUN'")
    if args.api_key is not None and not args.api_key:
        raise ValueError("--api-key must not be empty; leave it out to serve without a key")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None

    import uvicorn

    from medlens.serve.app import create_app, server_settings
    from medlens.serve.predictor import Predictor

    if args.backend == "onnx" and not (folder.onnx.is_file() and folder.onnx_card.is_file()):
        from medlens.serve.onnx_export import export_onnx

        print(f"medlens serve: {folder.onnx} is missing; exporting it now", file=sys.stderr)
        export_onnx(run)
    predictor = Predictor.load(run, backend=args.backend)
    if predictor.ood is None:  # results then carry no ood flag; say why once (issue 19)
        print(f"medlens serve: no out-of-distribution flags: {predictor.ood_reason}", file=sys.stderr)
    max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)
    hosts = allowed_hosts(args.host, args.allowed_hosts)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, max_files=args.max_files,
                     max_pixels=args.max_pixels, api_key=api_key, freeze_gc=True, allowed_hosts=hosts,
                     upload_timeout=args.upload_timeout)
    if not _is_loopback(args.host) and api_key is None:
        print(f"medlens serve: warning: listening on {args.host} without an API key; anyone who can reach "
              f"port {args.port} can use the model (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    print(f"medlens serve: {predictor.card.architecture} ({predictor.backend}) on http://{args.host}:{args.port}/ "
          f"(API /v1/predict, docs /docs){'; API key required' if api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                **server_settings(max_upload_bytes=max_upload_bytes))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a run's model over HTTP: upload page at /, JSON API at /v1, docs at /docs",
        description="Serve RUN's best model with uvicorn. POST images to /v1/predict (multipart field 'files', "
                    "?explain=true for Grad-CAM), GET /v1/model, /healthz, /readyz; open / in a browser to upload.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (its checkpoints/best model is served)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                   help="onnx (default; exports RUN/export/model.onnx first when missing) or torch")
    p.add_argument("--api-key", help=f"require this key in the X-API-Key header of /v1/* (default: ${API_KEY_ENV}; "
                                      "unset = no key). The variable keeps the key out of the process list")
    p.add_argument("--max-upload-mb", type=_positive(float), default=10.0,
                   help="largest request body in MiB (default 10)")
    p.add_argument("--max-files", type=_positive(int), default=16, help="most images per request (default 16)")
    p.add_argument("--max-pixels", type=_positive(int), default=50_000_000,
                   help="most pixels (voxels) an image may declare, against decompression bombs (default 50000000)")
    p.add_argument("--allowed-hosts", nargs="+", metavar="NAME",
                   help="names the Host header may carry besides --host's own (e.g. medlens.example.org "
                        "'*.example.org'); with --host 0.0.0.0 any name unless given (against DNS rebinding)")
    p.add_argument("--upload-timeout", type=_positive(float), default=60.0,
                   help="seconds a request body may take to arrive (default 60; slower uploads answer 408)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn log level (default info)")
    p.set_defaults(func=run)
