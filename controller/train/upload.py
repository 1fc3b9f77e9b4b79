"""After a run finishes in a pod: its output directory goes to the artifact store.

The trainer writes `<output>/` on the pod's own disk (an emptyDir) and `manifest.json` last; this
step uploads every file and then the manifest (controller.artifacts.upload_dir), so the store
keeps the trainer's contract: a run whose manifest is in the store is finished. It runs in the
trainer's process after a successful exit (`python -m controller.train`), only where the
manifest is (rank 0's node), and only when the controller rendered a store target
($FTOPS_RUN_URI). A store that is away gives exit 75 (temporary): the Job retries, the
checkpoint makes the retry cheap, and the upload is idempotent."""
from __future__ import annotations

import json
import os
from pathlib import Path

from controller import exitcodes

RUN_URI_ENV = "FTOPS_RUN_URI"
"""Where the run's files go in the store (`<store>/<spec>/<run-id>`), rendered into the pod."""


def upload_finished_run(output_dir: str | Path, environ: "os._Environ[str] | dict[str, str]" = os.environ) -> int:
    """Upload `output_dir` to $FTOPS_RUN_URI when both exist; the exit code the pod ends with."""
    target = environ.get(RUN_URI_ENV)
    output = Path(output_dir)
    if not target or not (output / "manifest.json").is_file():
        return exitcodes.OK
    from controller.artifacts import open_store, upload_dir
    from controller.errors import FtopsError

    try:
        manifest = upload_dir(open_store(target), output, target)
    except FtopsError as exc:
        print(json.dumps({"event": "upload", "ok": False, "uri": target, "error": str(exc)}), flush=True)
        return exitcodes.TEMPORARY if exc.temporary else exitcodes.CONFIG_ERROR
    print(json.dumps({"event": "upload", "ok": True, "uri": target, "files": len(manifest.files)}), flush=True)
    return exitcodes.OK
