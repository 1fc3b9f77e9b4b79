"""The data step that gates every training run (issue 3).

One module per concern, so each can be tested and benchmarked on its own:

- `normalize`: NFC + whitespace normalisation and `example_hash`, the one identity of an
  example that reviews, dedupe, the split and evaluation all share.
- `check`: chat-JSONL structural checks with line numbers, warnings and counts per kind.
- `tokens`: token statistics and length warnings with the base model's tokenizer.
- `dedupe`: exact and MinHash/LSH near-duplicate detection, with clusters.
- `split`: the deterministic train/test split seeded from the data hash, and the leak check.
- `prepare`: the whole pass, writing `<workdir>/prepared/<spec>/<md5>/`.
- `review`: expert review sample, reviews file and readiness.
- `dvc`: versioning with DVC and verified pulls at an exact git revision.
- `params`: the spec fields this step reads, in one flat object.
- `pipeline`: the controller's entry point, `prepare_spec(repo, rev, finetune, workdir)`, and the
  DataReady condition.
- `progress`: progress bars, shown only on a TTY.

Importing this package is cheap: numpy, transformers and DVC load only where used.
"""
