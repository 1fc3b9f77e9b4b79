"""`ftops data prepare`: normalisation, dedupe, the split, the leak check, size thresholds."""
from __future__ import annotations

import json
import random

import pytest
from data_helpers import WORDS, chat, diverse_examples, run_ftops, write_lines

from controller.data import dedupe
from controller.data.normalize import example_hash, normalize_text
from controller.data.params import DataParams
from controller.data.prepare import DataInvalid, load_manifest, prepare
from controller.errors import PermanentError
from controller.data.split import check_leaks


def test_normalisation_rules_and_hash_identity():
    assert normalize_text("  cafe\u0301\u00a0ok \r\nnext\t\n\n\n\nend\u200b ") == "caf\u00e9 ok\nnext\n\nend"
    assert normalize_text("  keep   inner  spacing\n    and indentation") == "keep   inner  spacing\n    and indentation"
    a = {"messages": [{"role": "user", "content": "Hello  world "}, {"content": "Hi\r\n", "role": "assistant"}]}
    b = {"messages": [{"content": "Hello  world", "role": "user"}, {"role": "assistant", "content": "Hi"}]}
    c = {"messages": [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi"}]}
    assert example_hash(a) == example_hash(b)  # key order and invisible whitespace do not matter
    assert example_hash(a) != example_hash(c)  # inner spacing does
    assert len(example_hash(a)) == 64


def near_copy(text: str, rng: random.Random, edits: int = 1) -> str:
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(5, len(words))] = rng.choice(WORDS) + "x"
    return " ".join(words)


def dataset_with_near_duplicates(n_base: int = 400, n_near: int = 80, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    bases = [(" ".join(rng.choices(WORDS, k=40)), " ".join(rng.choices(WORDS, k=40))) for _ in range(n_base)]
    lines = [chat(q, a) for q, a in bases]
    for k in range(n_near):
        q, a = bases[k]
        lines.append(chat(near_copy(q, rng), a))  # a one-word edit: Jaccard ~0.9
    rng.shuffle(lines)
    return lines


def texts_of(path):
    return [dedupe.example_text(json.loads(x)) for x in path.read_text().splitlines()]


def test_naive_split_leaks_near_duplicates_but_prepared_split_does_not(tmp_path):
    src = write_lines(tmp_path / "data.jsonl", dataset_with_near_duplicates())
    lines = src.read_text().splitlines()

    # The naive way: shuffle and cut. Near-twins end up on both sides.
    naive = lines[:]
    random.Random(0).shuffle(naive)
    cut = int(len(naive) * 0.85)
    naive_train, naive_test = naive[:cut], naive[cut:]
    ex = lambda ls: [json.loads(x) for x in ls]  # noqa: E731
    report = check_leaks(
        [example_hash(e) for e in ex(naive_train)], [dedupe.example_text(e) for e in ex(naive_train)],
        [example_hash(e) for e in ex(naive_test)], [dedupe.example_text(e) for e in ex(naive_test)], 0.85,
    )
    assert report.near, "the fixture must make a naive split leak"

    result = prepare(src, tmp_path / "work", DataParams(spec_name="leaky", test_fraction=0.15))
    m = result.manifest
    assert m["leakCheck"]["passed"] and m["counts"]["nearDuplicates"] == 80
    assert m["counts"]["kept"] == 400 and m["counts"]["test"] == 60 and m["counts"]["train"] == 340
    assert all(d["reason"] == "nearDuplicate" and d["similarity"] >= 0.85 for d in m["dropped"])
    # Independent of LSH: compare every test text with every train text exactly.
    train, test = texts_of(result.train_path), texts_of(result.test_path)
    worst = max(dedupe.jaccard(t, r) for t in test for r in train)
    assert worst < 0.85
    assert not set(result.train_path.read_text().splitlines()) & set(result.test_path.read_text().splitlines())


def test_chains_of_near_duplicates_stay_on_one_side(tmp_path):
    """a~b and b~c but not a~c: b is dropped as a's twin, and a and c (linked through b) must
    land on the same side. With 30 such chains a split that ignored clusters would separate
    some pair with near certainty (each pair has about a 1 in 4 chance)."""
    rng = random.Random(5)
    lines, chains, a_texts = [], [], []
    for k in range(30):
        words = rng.choices(WORDS, k=60)
        a = " ".join(words)
        words[20] = f"zz{k}changed"
        b = " ".join(words)
        words[40] = f"yy{k}changed"
        c = " ".join(words)
        assert dedupe.jaccard(a, b) >= 0.85 and dedupe.jaccard(b, c) >= 0.85 and dedupe.jaccard(a, c) < 0.85
        start = len(lines) + 1
        lines += [chat(a, "same"), chat(b, "same"), chat(c, "same")]
        chains.append((start, start + 1, start + 2))
        a_texts.append(a)
    lines += [chat(" ".join(rng.choices(WORDS, k=60)), "x") for _ in range(300)]
    src = write_lines(tmp_path / "chain.jsonl", lines)
    for fraction in (0.15, 0.20):
        result = prepare(src, tmp_path / f"w{fraction}", DataParams(spec_name="chain", test_fraction=fraction))
        m = result.manifest
        assert [c["lines"] for c in m["clusters"]] == [list(c) for c in chains]
        assert [c["kept"] for c in m["clusters"]] == [[a, c] for a, _, c in chains]
        assert [(d["line"], d["of"]["line"]) for d in m["dropped"]] == [(b, a) for a, b, _ in chains]
        test_text = result.test_path.read_text()
        train_text = result.train_path.read_text()
        for k in range(30):
            # c carries both markers, a's full text appears only in a's line: both on the cluster's side.
            side_text = test_text if m["clusters"][k]["side"] == "test" else train_text
            other_text = train_text if m["clusters"][k]["side"] == "test" else test_text
            assert f"yy{k}changed" in side_text and a_texts[k] in side_text
            assert f"yy{k}changed" not in other_text and a_texts[k] not in other_text
        assert {c["side"] for c in m["clusters"]} == {"train", "test"}


def test_exact_duplicates_are_dropped_with_the_line_they_repeat(tmp_path):
    lines = diverse_examples(250)
    lines.insert(10, lines[3].replace('"content": "ticket 3:', '"content": "  ticket 3:'))  # same after normalisation
    src = write_lines(tmp_path / "d.jsonl", lines)
    m = prepare(src, tmp_path / "w", DataParams(spec_name="d")).manifest
    assert m["counts"]["exactDuplicates"] == 1
    [drop] = m["dropped"]
    assert drop["line"] == 11 and drop["reason"] == "exactDuplicate" and drop["of"]["line"] == 4


def test_same_data_same_split_and_bytes(tmp_path):
    src = write_lines(tmp_path / "data.jsonl", dataset_with_near_duplicates(seed=3))
    one = prepare(src, tmp_path / "a", DataParams(spec_name="s"))
    two = prepare(src, tmp_path / "b", DataParams(spec_name="s"))
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (one.dir / name).read_bytes() == (two.dir / name).read_bytes()
    assert one.dir.name == two.dir.name == one.manifest["source"]["md5"]
    # Preparing again into the same place rewrites nothing.
    before = {p.name: p.stat().st_mtime_ns for p in one.dir.iterdir()}
    prepare(src, tmp_path / "a", DataParams(spec_name="s"))
    assert {p.name: p.stat().st_mtime_ns for p in one.dir.iterdir()} == before
    # The prepared lines hash to the same example hashes as their source lines.
    src_hashes = {example_hash(json.loads(x)) for x in src.read_text().splitlines()}
    out = [json.loads(x) for x in (one.train_path.read_text() + one.test_path.read_text()).splitlines()]
    assert {example_hash(e) for e in out} <= src_hashes


def test_split_is_seeded_from_the_data_hash(tmp_path):
    lines = diverse_examples(300)
    a = prepare(write_lines(tmp_path / "a.jsonl", lines), tmp_path / "w", DataParams(spec_name="a"))
    b = prepare(write_lines(tmp_path / "b.jsonl", lines[:-1]), tmp_path / "w", DataParams(spec_name="b"))
    assert a.manifest["seed"] != b.manifest["seed"]
    assert a.test_path.read_text() != b.test_path.read_text()


@pytest.mark.parametrize(
    "n, complexity, trainable, reason, warning",
    [
        (199, "simple", False, "TooFewExamples", "500"),
        (300, "simple", True, "EnoughExamples", "500"),
        (520, "complex", True, "EnoughExamples", "2000"),
        (520, "simple", True, "EnoughExamples", None),
    ],
)
def test_size_thresholds(tmp_path, n, complexity, trainable, reason, warning):
    src = write_lines(tmp_path / "d.jsonl", diverse_examples(n))
    result = prepare(src, tmp_path / "w", DataParams(spec_name="d", complexity=complexity))
    r = result.manifest["readiness"]
    assert (r["trainable"], r["reason"]) == (trainable, reason)
    assert any(warning in w for w in r["warnings"]) if warning else not r["warnings"]


def test_errors_stop_prepare_and_name_the_lines(tmp_path):
    lines = diverse_examples(250)
    lines[6] = '{"messages": "oops"}'
    lines[100] = "not json"
    src = write_lines(tmp_path / "bad.jsonl", lines)
    before = src.read_bytes()
    with pytest.raises(DataInvalid) as err:
        prepare(src, tmp_path / "w", DataParams(spec_name="bad"))
    text = str(err.value)
    assert "bad.jsonl:7: error [missing_messages]" in text and "bad.jsonl:101: error [invalid_json]" in text
    assert not (tmp_path / "w" / "prepared").exists()
    assert src.read_bytes() == before


def test_cli_prepare_exit_codes(tmp_path):
    small = write_lines(tmp_path / "small.jsonl", diverse_examples(150))
    proc = run_ftops("data", "prepare", "--data", str(small), "--name", "small", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 1
    assert "TooFewExamples" in proc.stderr and "fewer than the 200 required" in proc.stderr
    ok = write_lines(tmp_path / "ok.jsonl", diverse_examples(260))
    proc = run_ftops("data", "prepare", "--data", str(ok), "--name", "ok", "--workdir", str(tmp_path / "w"), "--test-fraction", "0.2", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["counts"]["test"] == 52 and out["params"]["testFraction"] == 0.2
    proc = run_ftops("data", "prepare", "--data", str(ok), "--test-fraction", "0.3")
    assert proc.returncode == 1 and "15-20%" in proc.stderr


def test_load_manifest_verifies_the_split_files(tmp_path):
    result = prepare(write_lines(tmp_path / "d.jsonl", diverse_examples(220)), tmp_path / "w", DataParams(spec_name="d"))
    assert load_manifest(result.dir)["counts"]["kept"] == 220
    with open(result.train_path, "a", encoding="utf-8") as fh:
        fh.write(diverse_examples(1, seed=99)[0] + "\n")  # someone "adds one more" by hand
    with pytest.raises(PermanentError, match=r"train\.jsonl: sha256 .* does not match the manifest"):
        load_manifest(result.dir)


def test_prepare_again_reuses_only_what_still_matches(tmp_path):
    src = write_lines(tmp_path / "d.jsonl", diverse_examples(260))
    first = prepare(src, tmp_path / "w", DataParams(spec_name="d"))
    good_test = first.test_path.read_bytes()
    # Different settings: a different split, not the cached one.
    wider = prepare(src, tmp_path / "w", DataParams(spec_name="d", test_fraction=0.2))
    assert wider.manifest["counts"]["test"] == 52 and first.manifest["counts"]["test"] == 39
    # A hand-edited prepared file is never reused: the next prepare puts the right bytes back.
    first.test_path.write_text("tampered\n")
    again = prepare(src, tmp_path / "w", DataParams(spec_name="d"))
    assert again.test_path.read_bytes() == good_test and again.manifest == first.manifest
