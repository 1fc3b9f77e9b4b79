"""Serving: retrieval over a document corpus in front of the fine-tuned model (RAG with citations),
an OpenAI-compatible HTTP server, and the deploy step that promotes only runs whose gate passed.

One module per concern: corpus (chunking + corpus version), index (persisted, keyed by corpus
version), embed + retrievers (bm25 / dense / hybrid), prompt and validation (pure), model (load a
run with its manifest's chat template), server (HTTP), gatecheck + history + deploy (rollouts).
Nothing heavy is imported here, so `controller.commands.serve_commands` stays cheap to import.
"""
