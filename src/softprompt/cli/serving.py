"""``softprompt serve``: serve a folder of prompts over HTTP (see docs/serving.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from softprompt.cli.common import UsageError, add_allow_other_model, add_model, backbone_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every prompt in a folder as a task over HTTP (FastAPI, /docs)")
    add_model(p, default=None)
    p.add_argument("--prompts", type=Path, required=True,
                   help="folder: NAME.safetensors → task NAME; sub-folder NAME/ of prompt files → ensemble task NAME "
                        "(a `softprompt train` output folder works: its side files are skipped)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-token", default=None,
                   help="enable PUT/DELETE /v1/prompts with this bearer token (or set SOFTPROMPT_ADMIN_TOKEN)")
    p.add_argument("--admin", action="store_true", help="enable the admin endpoints; refuses to start without a token")
    p.add_argument("--max-batch-rows", type=int, default=64, help="rows gathered into one forward")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-input-tokens", type=int, default=256, help="longer inputs keep their end")
    p.add_argument("--max-upload-mb", type=float, default=16.0)
    add_allow_other_model(p)
    p.add_argument("--no-prefix-cache", action="store_true", help="always run prompts through the splice")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from softprompt.server import Engine, ServerConfig, create_app
    from softprompt.server.app import ConfigError

    token = args.admin_token or os.environ.get("SOFTPROMPT_ADMIN_TOKEN") or None
    try:  # check the configuration before the (slow) model load
        config = ServerConfig(admin=args.admin or token is not None, admin_token=token,
                              max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms,
                              max_upload_bytes=int(args.max_upload_mb * 2**20))
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if not args.prompts.is_dir():
        raise UsageError(f"--prompts must be a folder of prompt files, got {args.prompts}")
    engine = Engine(backbone_from_args(args), max_batch_rows=args.max_batch_rows,
                    max_input_tokens=args.max_input_tokens, prefix_cache=not args.no_prefix_cache,
                    allow_other_model=args.allow_other_model)
    loaded = engine.load_dir(args.prompts)
    if loaded.skipped:
        names = [f"{p.relative_to(args.prompts)}{'/' if p.is_dir() else ''}" for p in loaded.skipped]
        print(f"softprompt serve: skipped {len(names)} training side file(s): {', '.join(names)}", file=sys.stderr)
    print(f"softprompt serve: {len(loaded.tasks)} task(s) on {args.model} (prefix cache "
          f"{'on' if engine.prefix_cache else 'off'}): {', '.join(loaded.tasks) or 'none'}", file=sys.stderr)
    uvicorn.run(create_app(engine, config), host=args.host, port=args.port, log_level="info")
    return 0
