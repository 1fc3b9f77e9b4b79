"""Notifier implementations (the seam is controller.seams.notifier): GitHub commit statuses or
check runs, and a generic signed webhook. Both speak HTTP through `requests` and classify what
comes back the same way (`_http.post`): 2xx is done, 5xx / 429 / a timeout / a refused
connection is a TemporaryError (the reconciler retries with backoff), any other 4xx a
PermanentError naming what the server said."""
from controller.notify.github import GitHubNotifier
from controller.notify.webhook import WebhookNotifier

__all__ = ["GitHubNotifier", "WebhookNotifier"]
