"""One POST, classified: what both notifiers need from HTTP."""
from __future__ import annotations

import json
from typing import Mapping

from controller.errors import PermanentError, TemporaryError
from controller.seams import JsonObject, JsonValue

TIMEOUT_S = 10.0


def post(url: str, body: JsonObject | bytes, headers: Mapping[str, str], what: str, timeout: float = TIMEOUT_S) -> JsonObject:
    """POST `body` (JSON) to `url`; the response's JSON object (empty when it has none).
    TemporaryError on 5xx, 429, timeouts and connection errors; PermanentError on other 4xx."""
    parsed = request("POST", url, body, headers, what, timeout)
    return parsed if isinstance(parsed, dict) else {}


def request(method: str, url: str, body: JsonObject | bytes | None, headers: Mapping[str, str], what: str,
            timeout: float = TIMEOUT_S) -> JsonValue:
    """One HTTP request with a JSON body (or none), classified as `post` says; the JSON answer."""
    import requests

    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        response = requests.request(method, url, data=data, headers={"Content-Type": "application/json", **headers},
                                    timeout=timeout)
    except requests.Timeout:
        raise TemporaryError(f"{what}: {url} did not answer within {timeout:g}s") from None
    except requests.ConnectionError as exc:
        raise TemporaryError(f"{what}: cannot connect to {url} ({type(exc).__name__})") from None
    said = _message(response)
    if response.status_code >= 500 or response.status_code == 429:
        raise TemporaryError(f"{what}: {url} answered {response.status_code}{said}; retried with backoff")
    if response.status_code >= 400:
        raise PermanentError(f"{what}: {url} refused the report with {response.status_code}{said}")
    try:
        answer: JsonValue = response.json()
    except ValueError:
        return None
    return answer


def _message(response: object) -> str:
    try:
        parsed = response.json()  # type: ignore[attr-defined]
    except ValueError:
        text = str(getattr(response, "text", ""))[:200]
        return f" ({text})" if text else ""
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return f" ({message})" if message else ""
