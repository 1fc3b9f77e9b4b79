"""`ftops model init-tiny --out DIR`: the tiny test/demo model, pretrained on general skills
(see controller.tiny.model), from the cache when it has been built before.

Heavy imports (torch, transformers) happen inside the command function, so registering this
command costs nothing for `ftops validate` and `ftops plan`."""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="Base-model utilities (tiny test model).")
    sub = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND")
    sub.required = True
    init = sub.add_parser(
        "init-tiny",
        help="Pretrain a tiny Llama on general skills (cached) and write it as safetensors with its tokenizer.",
        description=(
            "Write a tiny Llama (hidden 128, 2 layers, a 512-token byte-level BPE trained here, a ChatML template "
            "with generation markers) pretrained on general skills: copy a span, read a value out of the prompt, "
            "pick the first or last word, answer in JSON when asked. The default regression suite "
            "(controller/defaults/regression.jsonl) measures those skills on prompts never trained on. "
            "Pretraining is deterministic (same arguments, code and library versions give byte-identical files) "
            "and cached under $FTOPS_TINY_CACHE (default ~/.cache/ftops/tiny): the first build takes about two minutes "
            "on one CPU thread, later ones copy the cached files."
        ),
    )
    init.add_argument("--out", required=True, help="Directory to write the model into (created; its model files are replaced).")
    init.add_argument("--seed", type=int, default=0, help="Seed for the tokenizer, the weights and the pretraining data (default 0).")
    init.add_argument("--corpus", default=None, metavar="DIR",
                      help="Also pretrain on the text documents in DIR (.md, .txt, .rst), e.g. the corpus the model is served with.")
    init.add_argument("--steps", type=int, default=None,
                      help="Pretraining steps (default 1000; fewer is faster and learns the skills less well).")
    init.set_defaults(func=_init_tiny)


def _init_tiny(args: argparse.Namespace) -> int:
    from controller.tiny.cache import copy_out
    from controller.tiny.model import pretrained

    entry = pretrained(args.seed, corpus=args.corpus, steps=args.steps)
    out = copy_out(entry, _path(args.out))
    if entry.built:
        print(f"pretrained the tiny model in {entry.info['seconds']} s ({entry.info['settings']['steps']} steps, "
              f"final loss {entry.info['finalLoss']}); cached in {entry.path}", file=sys.stderr)
    else:
        print(f"tiny model from the cache ({entry.path})", file=sys.stderr)
    print(out)
    return 0


def _path(text: str):
    from pathlib import Path

    return Path(text)
