"""The tiny-model kit: a tiny Llama with a locally trained tokenizer, and a synthetic task.

Nothing can be downloaded from a hub on the machines that run the tests and the demo, so
the trainer, the evaluator and the server all exercise the real code paths on a model that
is built here in about a second and learns a three-label task in seconds on a CPU.
This package imports nothing heavy at import time: `controller.tiny.task` is pure Python,
`controller.tiny.model` imports torch/transformers/tokenizers inside its functions.
"""
