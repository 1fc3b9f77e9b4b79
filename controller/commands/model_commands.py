"""`ftops model init-tiny --out DIR`: build the tiny test/demo model (see controller.tiny.model).

Heavy imports (torch, transformers) happen inside the command function, so registering this
command costs nothing for `ftops validate` and `ftops plan`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="Base-model utilities (tiny test model).")
    sub = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND")
    sub.required = True
    init = sub.add_parser(
        "init-tiny",
        help="Build a tiny Llama with a locally trained tokenizer and chat template (safetensors).",
        description="Build a tiny Llama (hidden 64, 2 layers, ~400-token byte-level BPE) for tests and the demo.",
    )
    init.add_argument("--out", required=True, help="Directory to write the model into (created).")
    init.add_argument("--seed", type=int, default=0, help="Seed for weights and tokenizer (default 0).")
    init.set_defaults(func=_init_tiny)


def _init_tiny(args: argparse.Namespace) -> int:
    from controller.tiny.model import init_tiny_model

    out = init_tiny_model(args.out, seed=args.seed)
    print(out)
    return 0
