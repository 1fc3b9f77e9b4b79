"""A local fake of an OpenAI-compatible fine-tuning API (files, fine_tuning.jobs with events and
checkpoints, models, chat completions for the models it trains), served over real HTTP on
127.0.0.1 for the official openai SDK. provider.py holds its state and rules, server.py the
HTTP routes, answer.py how its models answer; fixtures.py starts one per test."""
from fakeprovider.provider import FakeProvider, ProviderError, auto_epochs
from fakeprovider.server import Served

__all__ = ["FakeProvider", "ProviderError", "Served", "auto_epochs"]
