"""`--extra` sources: books + a JSONL file + a `datasets` folder, cleaned, filtered, deduplicated, traced."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from common import corpus_format as fmt
from common.errors import UserError
from corpus.build import CorpusConfig, build_corpus
from corpus.clean import clean_book
from corpus.dedup import SignatureFile, near_duplicates
from corpus.doc_filters import DocumentRejected, clean_document
from corpus.documents import assign_document_split, train_copies
from corpus.shards import ShardConfig
from corpus.sources import ExtraSource, iter_documents, parse_extra, parse_extras
from corpus.split import SplitConfig
from corpus.tokenizer import TokenizerConfig
from ptgpt.cli.corpus import corpus as corpus_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gen_source import portuguese_document  # noqa: E402

CONFIG = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=500), shards=ShardConfig(row_group_rows=50))
COPIED = 91002  # a web copy of this book must lose against the cleaned book

ENGLISH = (
    "The city council approved a new budget for the coming year after a long and heated debate. "
    "Residents said they hoped the changes would bring better roads, cleaner streets and more parks "
    "to their neighbourhoods, and the mayor promised that the work would start before the winter.\n"
) * 3
SPANISH = (
    "El gobierno anunció ayer un nuevo plan para la educación pública, que incluye más escuelas y "
    "maestros en las zonas rurales. Según el ministro, la medida va a beneficiar a miles de alumnos ya "
    "en el próximo curso, y el dinero vendrá de un fondo especial creado para ello.\n"
) * 2
GALICIAN = (
    "O goberno anunciou onte un novo plan para a educación pública, que inclúe máis escolas e mestres "
    "nas zonas rurais. Segundo o ministro, a medida vai beneficiar a miles de alumnos xa no próximo "
    "curso, e os cartos virán dun fondo especial creado para iso.\nA cidade recibiu a visita de moitos "
    "turistas que viñeron coñecer a súa historia e as súas tradicións, e todos gustaron moito da comida."
)
MENU = (
    "Início\nNotícias\nClique aqui para assinar a newsletter\nPolítica de privacidade\nwww.exemplo.com.br\n"
    * 3
)
KEYWORDS = "\n".join(  # a page of search keywords: Portuguese words, no sentence
    ", ".join(["apartamento barato", "aluguel temporada", "praia", "piscina aquecida", "garagem coberta"])
    + f", imóveis região {bairro}"
    for bairro in ["norte", "sul", "leste", "oeste", "centro", "litoral", "serra", "interior"]
)
TABLE = "\n".join(" ".join(str(100 * i + j) for j in range(12)) for i in range(20))


def passes(text: str) -> bool:
    try:
        clean_document(text)
        return True
    except DocumentRejected:
        return False


def good(seed: int) -> str:
    """A generated Portuguese document that passes every filter (checked, so the test cannot lie)."""
    rng = random.Random(seed)
    while True:
        text = portuguese_document(rng)
        if passes(text):
            return text


def edit_words(text: str, every: int = 40) -> str:
    """The same text with one word in `every` changed: a near duplicate."""
    words = text.split(" ")
    return " ".join("alterado" if i % every == 7 else w for i, w in enumerate(words))


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    from fakegutenberg.books import sample_books, write_sample_books

    root = tmp_path_factory.mktemp("mix")
    books = sample_books(extra=4, extra_kb=8)
    # The copied book: fakegutenberg's generated prose repeats itself more than the web filters allow
    # (a web copy of it would be dropped for that alone), so its body is made of documents that pass.
    lines: list[str] = []
    for i in range(100, 140):
        more = lines + good(i).split("\n")
        if passes("\n".join(more)):
            lines = more
    assert len(lines) >= 12
    body = "\n\n".join(lines)
    books = [dataclasses.replace(b, body=body) if b.id == COPIED else b for b in books]
    write_sample_books(root / "raw", books)
    copied = clean_book(next(b for b in books if b.id == COPIED).raw_bytes(), COPIED)
    long_paragraphs = [p for p in copied.paragraphs if len(p) >= 80 and "\n" not in p]
    quoted, quoted_loosely = long_paragraphs[0], long_paragraphs[1]

    web = {
        "web-good-0": good(0),
        "web-good-1": good(1),
        "web-good-2": good(2),
        "web-gl": GALICIAN,
        "web-en": ENGLISH,
        "web-es": SPANISH,
        "web-menu": MENU,
        "web-short": "Uma frase curta demais para ser um documento.",
        "web-table": TABLE,
        "web-repeat": "\n".join([good(3).split("\n")[0]] * 12),
        "web-copy-of-good-0": good(0),  # exact copy under another id
        "web-book-copy": edit_words("\n".join(copied.paragraphs)),  # a web copy of the whole book
        "web-book-excerpt": "\n".join(long_paragraphs[:4]),  # four paragraphs of the book verbatim
        # new text quoting one book paragraph exactly and one with case and punctuation changed
        "web-quotes": good(4) + "\n" + quoted + "\n" + quoted_loosely.lower().replace(",", ""),
    }
    with open(root / "web.jsonl", "w", encoding="utf-8") as f:
        for doc_id, text in web.items():
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")

    import datasets

    hub = {
        "hub-good-0": good(10),
        "hub-good-1": good(11),
        "hub-near-web-good-1": edit_words(web["web-good-1"], every=60),  # near duplicate across sources
        "hub-fr": "Le conseil municipal a approuvé un nouveau budget pour l'année prochaine après un long "
        "débat. Les habitants ont dit qu'ils espéraient de meilleures routes et plus de parcs. " * 3,
    }
    (root / "hubset" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"id": list(hub), "text": list(hub.values())}).to_parquet(
        str(root / "hubset" / "data" / "train-00000-of-00001.parquet")
    )
    extras = parse_extras([f"{root / 'web.jsonl'}:2", str(root / "hubset")])
    manifest = build_corpus(root / "raw", root / "out", CONFIG, workers=2, progress=False, extras=extras)
    return root, manifest, web, hub, {"quoted": quoted, "quoted_loosely": quoted_loosely}


def rows(out: Path, split: str | None = None) -> list[dict]:
    splits = [split] if split else list(fmt.SPLITS)
    table = []
    for s in splits:
        for f in sorted((out / s).glob("*.parquet")):
            table += pq.read_table(f).to_pylist()
    return table


def test_what_is_kept_and_dropped_by_reason(mix) -> None:
    root, m, web, hub, _ = mix
    web_stats, hub_stats = m["sources"]["web"], m["sources"]["hubset"]
    assert web_stats["documents"] == len(web) and hub_stats["documents"] == len(hub)
    assert web_stats["dropped"] == {
        "boilerplate": 1,  # the menu
        "digits": 1,  # the table
        "duplicate_lines": 1,
        "mostly_duplicate": 1,  # the verbatim excerpt of the book
        "near_duplicate": 2,  # the copy of good-0 and the edited copy of the book
        "not_portuguese": 2,  # English, Spanish (Galician is kept)
        "too_short": 1,
    }
    assert hub_stats["dropped"] == {"near_duplicate": 1, "not_portuguese": 1}
    kept = {r["source_id"] for r in rows(root / "out") if r["source"] != "gutenberg"}
    assert kept == {
        "web-good-0",
        "web-good-1",
        "web-good-2",
        "web-gl",
        "web-quotes",
        "hub-good-0",
        "hub-good-1",
    }
    assert web_stats["kept"] == 5 and hub_stats["kept"] == 2
    # The web copy of the book lost against the cleaned book; the copy of good-0 against good-0.
    examples = {e["id"]: e["duplicate_of"] for e in web_stats["near_duplicate_examples"]}
    assert examples == {"web-book-copy": f"gutenberg:{COPIED}", "web-copy-of-good-0": "web#0"}
    assert m["sources"]["gutenberg"]["kept"] == len(m["splits"]["train"]["books"]) + sum(
        len(m["splits"][s]["books"]) for s in ("validation", "test")
    )


def test_duplicate_paragraphs_of_books_are_dropped_from_documents(mix) -> None:
    root, m, _, _, quoted = mix
    assert m["sources"]["web"]["paragraphs_dropped"]["duplicate_paragraph"] == 1
    assert m["sources"]["web"]["paragraphs_dropped"]["near_duplicate_paragraph"] == 1
    all_rows = rows(root / "out")
    quotes = [r["text"] for r in all_rows if r["source_id"] == "web-quotes"]
    assert quotes and quoted["quoted"] not in quotes
    assert not any(t.lower() == quoted["quoted_loosely"].lower().replace(",", "") for t in quotes)
    # the book itself still holds both paragraphs
    book = [r["text"] for r in all_rows if r["source"] == "gutenberg" and r["book_id"] == COPIED]
    assert quoted["quoted"] in book and quoted["quoted_loosely"] in book


def test_rows_keep_their_origin_and_splits_follow_ids(mix) -> None:
    root, m, _, _, _ = mix
    by_doc: dict[tuple[str, str], Counter] = {}
    for split in fmt.SPLITS:
        for r in rows(root / "out", split):
            assert set(r) == set(fmt.SOURCES_SHARD_SCHEMA.names)
            if r["source"] == "gutenberg":
                assert r["book_id"] > 0 and int(r["source_id"].split(".")[0]) == r["book_id"]
                assert r["book_id"] in m["splits"][split]["books"]
                continue
            assert r["book_id"] < 0 and r["title"] == ""
            assert assign_document_split(r["source"], r["source_id"], SplitConfig()) == split
            by_doc.setdefault((r["source"], r["source_id"]), Counter())[r["book_id"]] += 1
    # weight 2: each train web document appears twice (two book ids: the copies stay two documents);
    # weight 1 (hubset) and validation/test documents once.
    for (source, doc_id), copies in by_doc.items():
        split = assign_document_split(source, doc_id, SplitConfig())
        assert len(copies) == (2 if source == "web" and split == "train" else 1), (source, doc_id)
        assert len(set(copies.values())) == 1
    for split in fmt.SPLITS:  # the split totals are the sum over the sources
        assert m["splits"][split]["tokens"] == sum(
            src["splits"][split]["tokens"] for src in m["sources"].values()
        )
    assert m["sources"]["web"]["weight"] == 2.0 and m["sources"]["hubset"]["weight"] == 1.0
    card = (root / "out" / "README.md").read_text(encoding="utf-8")
    assert "## Sources" in card and "| web | 2 |" in card and "not_portuguese 2" in card


def test_hf_datasets_loads_the_mix_with_its_source_column(mix) -> None:
    import datasets

    root, m, _, _, _ = mix
    out = root / "out"
    train = datasets.load_dataset("parquet", data_dir=str(out / "train"), split="train")
    assert "source" in train.column_names and "source_id" in train.column_names
    assert set(train["source"]) <= {"gutenberg", "web", "hubset"} and "gutenberg" in set(train["source"])
    assert train.num_rows == m["splits"]["train"]["rows"]
    whole = datasets.load_dataset("parquet", data_dir=str(out))
    assert {k: v.num_rows for k, v in whole.items()} == {k: v["rows"] for k, v in m["splits"].items()}


def test_without_extras_the_corpus_has_the_books_schema(tmp_path) -> None:
    """No --extra: no source columns and no `sources` in the manifest (the corpus of before)."""
    from fakegutenberg.books import sample_books, write_sample_books

    write_sample_books(tmp_path / "raw", sample_books(extra=3, extra_kb=4))
    m = build_corpus(tmp_path / "raw", tmp_path / "out", CONFIG, workers=1, progress=False)
    assert "sources" not in m and "sources_config" not in m
    shard = tmp_path / "out" / m["splits"]["train"]["shards"][0]["file"]
    assert pq.read_schema(shard).names == fmt.SHARD_SCHEMA.names


def test_cli_builds_with_extra(tmp_path) -> None:
    from fakegutenberg.books import sample_books, write_sample_books

    write_sample_books(tmp_path / "raw", sample_books(extra=3, extra_kb=4))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"nota-{i}.txt").write_text(good(20 + i), encoding="utf-8")
    result = CliRunner().invoke(
        corpus_cli,
        ["build", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--vocab-size", "400"]
        + ["--workers", "1", "--quiet", "--extra", f"{docs}:0.5"],
    )
    assert result.exit_code == 0, result.output
    assert "source docs (weight 0.5): 3 read, 3 kept" in result.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # weight 0.5: a train document is in the mix once or not at all, decided by its id
    expected = Counter()
    for i in range(3):
        doc_id = f"nota-{i}.txt"
        split = assign_document_split("docs", doc_id, SplitConfig())
        expected[split] += train_copies("docs", doc_id, 0.5) if split == "train" else 1
    written = Counter()
    for split in fmt.SPLITS:
        written[split] = len({r["source_id"] for r in rows(tmp_path / "out", split) if r["source"] == "docs"})
        assert m["sources"]["docs"]["splits"][split]["copies"] == expected[split]
    assert written == expected


def test_bad_extra_sources_fail_before_any_work(tmp_path) -> None:
    from fakegutenberg.books import sample_books, write_sample_books

    write_sample_books(tmp_path / "raw", sample_books())
    (tmp_path / "other.jsonl").write_text('{"body": "texto"}\n', encoding="utf-8")
    cases = {
        str(tmp_path / "missing.jsonl"): "no such file",
        str(tmp_path / "other.jsonl"): "no field 'text'",
    }
    for spec, message in cases.items():
        with pytest.raises(UserError, match=message):
            build_corpus(
                tmp_path / "raw", tmp_path / "out", CONFIG, extras=parse_extras([spec]), progress=False
            )
        assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="weight"):
        parse_extra("web.jsonl:-1")


def test_source_specs_and_reading(tmp_path) -> None:
    assert parse_extra("a/b.jsonl:0.5") == ExtraSource("a/b.jsonl", 0.5)
    assert parse_extra("org/dataset") == ExtraSource("org/dataset", 1.0)
    assert parse_extra("C:/x.parquet:3").weight == 3.0
    (tmp_path / "a.jsonl").write_text('{"text": "um"}\n\n{"text": "dois", "id": 7}\n', encoding="utf-8")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.jsonl").write_text('{"text": "três"}\n', encoding="utf-8")
    names = [s.name for s in parse_extras([str(tmp_path / "a.jsonl"), str(tmp_path / "b" / "a.jsonl")])]
    assert names == ["a", "a-2"]
    src = parse_extras([str(tmp_path / "a.jsonl")])[0]
    assert list(iter_documents(src)) == [("0", "um"), ("7", "dois")]


def test_near_duplicates_keeps_the_earliest() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2**32, size=(2, 128), dtype=np.uint64)
    a_near = a.copy()
    a_near[:10] = b[:10]  # ~92% equal values
    sigs = np.stack([a, b, a_near, b])
    assert near_duplicates(sigs, threshold=0.7, rows=5).tolist() == [-1, -1, 0, 1]


def test_near_duplicates_from_disk_match_every_pair_compared(tmp_path) -> None:
    """Signatures read back from a file, a few rows per window, give the groups that comparing every
    pair gives (connected components of pairs at or above the threshold, the earliest row kept)."""
    import numpy as np

    rng = np.random.default_rng(1)
    originals = rng.integers(0, 2**32, size=(40, 128), dtype=np.uint64)
    rows_ = []
    for i in range(120):  # every third row a noisy copy of an earlier original (~95% or ~60% equal)
        if i % 3 or i < 3:
            rows_.append(originals[i // 3])
        else:
            copy = originals[int(rng.integers(0, i // 3))].copy()
            changed = rng.random(128) < (0.05 if i % 2 else 0.4)
            copy[changed] = rng.integers(0, 2**32, size=int(changed.sum()), dtype=np.uint64)
            rows_.append(copy)
    sigs = np.stack(rows_)
    sigs[5] = 2**32 - 1  # two empty documents (no shingles) match nothing, not even each other
    sigs[6] = 2**32 - 1
    store = SignatureFile(tmp_path / "sig", 128, window_rows=7)
    for start in range(0, len(sigs), 11):
        store.append(sigs[start : start + 11])
    assert len(store) == len(sigs)
    assert (store.take(np.array([9, 2, 9])) == sigs[[9, 2, 9]]).all()

    n, parent = len(sigs), list(range(len(sigs)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    empty = (sigs == 2**32 - 1).all(axis=1)
    for i in range(n):
        for j in range(i + 1, n):
            if not empty[i] and not empty[j] and (sigs[i] == sigs[j]).mean() >= 0.7:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    expected = [-1 if find(i) == i else find(i) for i in range(n)]
    got = near_duplicates(store, threshold=0.7, rows=5).tolist()
    assert sum(d >= 0 for d in expected) > 30  # the test has duplicates to find
    assert got == expected


@pytest.mark.parametrize(
    "reason, text",
    [
        ("empty", " \n \n"),
        ("boilerplate", MENU),
        ("too_short", "Uma frase curta demais para ser um documento."),
        ("not_portuguese", ENGLISH),
        ("not_portuguese", SPANISH),
        ("digits", TABLE + "\n" + "o que é isto de facto e para quem " * 3),
        ("uppercase", good(5).upper()),
        ("few_stop_words", KEYWORDS),
        ("duplicate_lines", "\n".join([good(6).split("\n")[0]] * 6)),
        ("mean_word_length", " ".join(["de a o e um"] * 30) + " é isso que há."),
    ],
)
def test_each_document_filter_names_its_reason(reason: str, text: str) -> None:
    with pytest.raises(DocumentRejected) as e:
        clean_document(text)
    assert e.value.reason == reason


def test_page_furniture_lines_are_removed_from_kept_documents() -> None:
    text = good(7)
    doc = clean_document("Início\nhttps://www.exemplo.com.br/noticias\n" + text + "\nLeia mais: compartilhe")
    assert doc.paragraphs == text.split("\n")
    assert doc.drops == {"url_line": 1, "boilerplate_line": 1, "too_short": 1}  # "Início": the books' rule
    assert clean_document(GALICIAN).paragraphs  # Galician is kept with Portuguese


def test_the_trainer_reads_the_mix(mix) -> None:
    """Schema version 1 still: the trainer's loader reads book_id/tokens of a mixed corpus as before."""
    from training.data import CorpusInfo, LoaderConfig, TokenWindowLoader, verify_shards

    out = mix[0] / "out"
    info = CorpusInfo.from_dir(out)
    verify_shards(info, list(fmt.SPLITS))
    bos = info.tokenizer["bos_id"]
    loader = TokenWindowLoader(
        out, LoaderConfig(block_size=64, batch_size=2, shuffle=False, shuffle_buffer=0)
    )
    x, y = next(loader)
    assert x.shape == y.shape == (2, 64) and int(x[0, 0]) == bos  # the stream opens with a book's BOS


def test_rebuild_reads_documents_from_the_cache_and_is_byte_identical(mix, monkeypatch) -> None:
    import corpus.documents

    root, m, _, _, _ = mix
    out = root / "out"

    def must_not_clean(*args, **kwargs):
        raise AssertionError("a cached chunk was cleaned again")

    monkeypatch.setattr(corpus.documents, "clean_document", must_not_clean)
    extras = parse_extras([f"{root / 'web.jsonl'}:2", str(root / "hubset")])
    again = build_corpus(root / "raw", out, CONFIG, workers=1, progress=False, extras=extras)
    for key in ("splits", "tokenizer", "sources"):
        assert again[key] == m[key]
    assert not (out / ".spool").exists()


def test_the_tokenizer_learns_from_the_weighted_mix(tmp_path) -> None:
    """A source's weight reaches the tokenizer: weighted up, its text costs fewer tokens per
    character than weighted down, while the books cost more (the vocabulary went to the source)."""
    from corpus.tokenizer import load_tokenizer
    from fakegutenberg.books import sample_books, write_sample_books

    write_sample_books(tmp_path / "raw", sample_books(extra=3, extra_kb=4))
    web = tmp_path / "news.jsonl"
    with open(web, "w", encoding="utf-8") as f:
        for i in range(60):
            f.write(json.dumps({"id": f"n{i}", "text": good(200 + i)}, ensure_ascii=False) + "\n")
    news_text = [good(900 + i) for i in range(5)]  # held out: not in either corpus
    cost = {}
    for weight in (0.25, 4):
        out = tmp_path / f"out-{weight:g}"
        m = build_corpus(
            tmp_path / "raw", out, CONFIG, workers=1, progress=False, extras=parse_extras([f"{web}:{weight}"])
        )
        assert m["sources"]["news"]["weight"] == weight
        sp = load_tokenizer(out / fmt.TOKENIZER_FILE)
        books_text = [r["text"] for r in rows(out, "train") if r["source"] == "gutenberg"][:200]
        cost[weight] = {
            name: sum(len(sp.encode(t)) for t in texts) / sum(map(len, texts))
            for name, texts in (("news", news_text), ("books", books_text))
        }
    assert cost[4]["news"] < 0.95 * cost[0.25]["news"]
    assert cost[4]["books"] > cost[0.25]["books"]


def test_repetition_rules_do_not_depend_on_the_process(tmp_path) -> None:
    """Two n-grams equally frequent: the rule judges by the one covering more characters, in every
    process (Python's string hash differs per process and must not decide which one counts)."""
    import subprocess

    script = """
import sys
from corpus.doc_filters import DocFilterConfig, _ngram_checks
filler = [f"p{i}" for i in range(200)]
words = []
for i in range(8):  # two 2-grams, 8 times each, between unique words
    words += filler[25 * i : 25 * i + 25] + ["extraordinariamente", "complicado", f"x{i}", "de", "a"]
config = DocFilterConfig(top_ngram_fractions=((2, 0.1),), duplicate_ngram_fractions=())
print(_ngram_checks(words, config))
"""
    repo = Path(__file__).resolve().parents[1]
    results = set()
    for seed in ("0", "1", "2", "3", "4", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(repo)}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        results.add(done.stdout.strip())
    assert results == {"top_ngram_2"}  # "extraordinariamente complicado": 8 x 29 chars of ~1.1k
