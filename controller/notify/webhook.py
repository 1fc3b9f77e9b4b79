"""Reporting to any HTTP endpoint: the report as JSON, signed like GitHub's webhooks.

Body: `controller.seams.CommitReport.to_json()` plus `"event": "ftops.commit_report"`. With a
secret, `X-Ftops-Signature-256: sha256=<hex HMAC-SHA256 of the body>` lets the receiver check
that the controller sent it (compare with `hmac.compare_digest`). A chat bot, a deploy tracker
or a GitLab commit-status bridge can sit behind it.
"""
from __future__ import annotations

import hashlib
import hmac
import json

from controller.errors import PermanentError
from controller.notify._http import TIMEOUT_S, post
from controller.seams import CommitReport

EVENT = "ftops.commit_report"
SIGNATURE_HEADER = "X-Ftops-Signature-256"


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, secret: str | None = None, timeout: float = TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise PermanentError(f"webhook URL '{url}' must start with http:// or https://")
        self.url = url
        self.secret = secret.encode() if secret else None
        self.timeout = timeout

    def notify(self, report: CommitReport) -> None:
        body = json.dumps({"event": EVENT, **report.to_json()}, sort_keys=True).encode()
        headers = {"User-Agent": "ftops-controller", "X-Ftops-Event": EVENT}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = "sha256=" + signature(self.secret, body)
        post(self.url, body, headers, f"webhook for {report.spec}", self.timeout)


def signature(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()
