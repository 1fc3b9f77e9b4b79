"""A stand-in for vLLM's `vllm serve`, the entrypoint of the fake cluster's vLLM image
(tests/serve/test_vllm_pool.py puts a `vllm` that runs this file first on that image's PATH).

vLLM cannot run here (no GPU, not installed), so this behaves like it where ftops depends on it,
and serves with ftops' embedded engine (controller.serve.engine_server), which speaks the same
API subset:

* `vllm serve MODEL [options]`: the options ftops renders (controller/render/vllm.py) are
  parsed; any other is refused as vLLM's argument parser refuses it (exit 2, "unrecognized
  arguments"), and so is `--model` given to serve, and a --max-lora-rank vLLM does not offer;
* the base is served under --served-model-name, prompts are formatted with the --chat-template
  file (not the tokenizer's own), in the --dtype asked for;
* GET /health, GET /v1/models (the base, and each loaded adapter with `parent` = the base),
  POST /v1/chat/completions; POST /v1/load_lora_adapter and /v1/unload_lora_adapter exist only
  with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (else 404, as vLLM registers
  no such routes);
* it listens only once the model is loaded (a startup probe waits for /health);
* a restart comes back with no adapter loaded (what the adapter sidecar is for).
"""
from __future__ import annotations

import argparse
import os
import sys

RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm serve")
    parser.add_argument("model_tag")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int, default=16, choices=RANKS)
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--chat-template", default=None)
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.model is not None:
        parser.error("With `vllm serve`, you should provide the model as a positional argument instead of via the "
                     "`--model` option.")
    return args


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        print("usage: vllm serve MODEL [options]", file=sys.stderr)
        return 2
    args = parse(argv[1:])
    from controller.importguard import without_bitsandbytes

    without_bitsandbytes()  # as in ftops' own engine processes (controller.serve.engine_server.run_engine)
    from controller.serve.asgi import bind, serve
    from controller.serve.engine_server import EngineApp, EngineConfig, load_engine

    name = (args.served_model_name or [args.model_tag])[0]
    dtype = {"half": "float16", "float": "float32"}.get(args.dtype, args.dtype)
    engine = load_engine(EngineConfig(model_dir=args.model_tag, name=name, device="cpu", dtype=dtype, threads=1))
    if args.chat_template:
        with open(args.chat_template) as f:
            engine.base.tokenizer.chat_template = f.read()
    app = EngineApp(name)
    app.engine = engine
    runtime = args.enable_lora and os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("true", "1")
    if not runtime:
        app.app.router.routes = [r for r in app.app.router.routes
                                 if getattr(r, "path", "") not in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")]
    print(f"INFO: serving {name} from {args.model_tag} on {args.host or '0.0.0.0'}:{args.port} "
          f"(LoRA {'on, runtime updates' if runtime else 'off'})", flush=True)
    return serve([(app.app, bind(args.host or "0.0.0.0", args.port))])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
