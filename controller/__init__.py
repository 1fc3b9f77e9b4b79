"""ftops: GitOps for LLM fine-tuning. See README.md and DESIGN notes in docs/."""

__version__ = "0.1.0"
