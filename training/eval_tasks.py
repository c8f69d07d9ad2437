"""A Portuguese evaluation suite built from the corpus's held-out books: is the model any good?

Validation loss says a model is learning, not what it can do. The benchmarks Portuguese LM projects
report (CALAME-PT, LAMBADA-PT, HellaSwag-PT through lm-evaluation-harness) cannot be downloaded on the
machines this project runs on, so this module builds the same *kinds* of task from the corpus's own
test split: books no model of this corpus ever trained on (the split is by whole book, corpus/split.py).

Tasks:

- **bpb**: bits per byte on validation and test (training/evaluate.py, the trainer's own figure), and
  per book, so the worst and best books can be listed.
- **lastword** (CALAME-PT / LAMBADA style): a passage of a few sentences whose final word has at least
  4 letters; the model sees the passage without that word and must produce it greedily. Exact match
  after NFC, the generated word read up to its first non-letter (so punctuation is stripped).
- **choice** (HellaSwag / cloze style): a context of a few sentences and 4 candidate next sentences,
  the true one and 3 from other test books of similar length. The headline: the candidate with the
  highest PMI per UTF-8 byte, log p(candidate | context) - log p(candidate | start of text), wins; the
  highest log-likelihood per byte is reported beside it (per byte, so the normalisation does not depend
  on the tokenizer; see _choice for why PMI leads).

Items are plain text, built deterministically (fixed seed, books in id order) from the Parquet `text`
column; only scoring tokenizes. So runs with different tokenizers answer the very same questions.
Each task reports its chance level and the baselines a model must beat, so a number means something:
uniform and token-unigram bpb, the corpus's Kneser-Ney n-gram (training/ngram.py: its bpb, its greedy last
word, its choice), the context-overlap heuristic, the most frequent word and a word unigram model.

Scoring only needs `model(ids).logits` of shape (B, T, V), so the same functions score a ptgpt GPT
and the `transformers` model `export-hf` writes (tests/test_eval_tasks.py checks they agree).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from training.data import CorpusInfo, cut_windows, pack_paragraphs

TASKS = ("bpb", "lastword", "choice")
EVAL_SPLITS = ("validation", "test")

# A word: letters, possibly joined by hyphens (Portuguese "disse-lhe", "guarda-chuva"); no digits.
WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
# A sentence ends at . ! ? or … (plus closing quotes), before whitespace and a capital, a dash or a quote.
SENTENCE_END = re.compile(r"[.!?…]+[\"»”’)]*(?=\s+[«\"“—(-]?[A-ZÀ-ÖØ-Þ—«\"“])")


@dataclass(frozen=True)
class SuiteConfig:
    """How many items of each task, drawn how. Defaults are the full suite; QUICK is for training."""

    n_lastword: int = 300
    n_choice: int = 300
    seed: int = 1234
    split: str = "test"  # where items come from
    min_word_letters: int = 4  # lastword targets have at least this many letters
    min_passage_chars: int = 150  # a lastword passage is this long at least...
    max_passage_chars: int = 700  # ...and at most (whole sentences)
    context_sentences: int = 3  # sentences of context in a choice item
    n_candidates: int = 4  # the true next sentence + n_candidates - 1 from other books
    min_sentence_chars: int = 20  # choice sentences (candidates) between these lengths
    max_sentence_chars: int = 300
    book_windows: int | None = 32  # per-book bpb scores at most this many windows of each book (None: all)


QUICK = SuiteConfig(n_lastword=64, n_choice=64, book_windows=2)


@dataclass(frozen=True)
class LastWordItem:
    book_id: int
    context: str  # the passage up to its last word, without the space before it
    target: str  # the last word


@dataclass(frozen=True)
class ChoiceItem:
    book_id: int
    context: str
    candidates: tuple[str, ...]
    label: int  # index of the true continuation in candidates
    distractor_books: tuple[int, ...] = field(default=())


# -----------------------------------------------------------------------------
# Reading the held-out text


def read_split_text(corpus_dir: str | Path, split: str) -> dict[int, list[str]]:
    """Paragraph texts of every book of a split, books in id order (only the book_id and text columns)."""
    info = CorpusInfo.from_dir(corpus_dir)
    books: dict[int, list[str]] = {}
    for path in info.shard_paths(split):
        table = pq.read_table(path, columns=["book_id", "text"])
        for book_id, text in zip(
            table.column("book_id").to_pylist(), table.column("text").to_pylist(), strict=True
        ):
            books.setdefault(int(book_id), []).append(text)
    return dict(sorted(books.items()))


def split_sentences(paragraph: str) -> list[str]:
    """A prose paragraph cut into sentences (the cut keeps each sentence's punctuation)."""
    sentences, start = [], 0
    for m in SENTENCE_END.finditer(paragraph):
        sentences.append(paragraph[start : m.end()].strip())
        start = m.end()
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def normalize_word(word: str) -> str:
    """NFC and no punctuation around it: how a target and a generated word are compared."""
    word = unicodedata.normalize("NFC", word.strip())
    m = WORD.search(word)
    return m.group(0) if m else ""


def first_word(text: str) -> str:
    """The word a generated continuation starts with ('' if it starts with anything but a word)."""
    m = WORD.match(unicodedata.normalize("NFC", text.lstrip()))
    return m.group(0) if m else ""


def _letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


def _prose(books: dict[int, list[str]]) -> dict[int, list[list[str]]]:
    """Per book, the sentences of each prose paragraph (verse keeps line breaks: left out)."""
    return {b: [split_sentences(p) for p in paragraphs if "\n" not in p] for b, paragraphs in books.items()}


def _draw(candidates: list, n: int, per_book: int, rng: np.random.Generator) -> list:
    """n candidates in a seeded random order, at most per_book from one book (items spread over books)."""
    taken: Counter = Counter()
    out = []
    for i in rng.permutation(len(candidates)):
        book = candidates[i][0]
        if taken[book] < per_book:
            out.append(candidates[i])
            taken[book] += 1
            if len(out) == n:
                break
    return out


# -----------------------------------------------------------------------------
# Item construction (text only, no tokenizer)


def build_lastword_items(
    books: dict[int, list[str]], config: SuiteConfig = SuiteConfig()
) -> list[LastWordItem]:
    """Passages of whole sentences ending in a word of >= min_word_letters letters, then punctuation."""
    c = config
    tail = re.compile(r"\s(" + WORD.pattern + r")[^\w\s]*$")
    candidates = []
    for book, paragraphs in _prose(books).items():
        for sentences in paragraphs:
            for j in range(len(sentences)):
                i = j
                while i > 0 and len(" ".join(sentences[i - 1 : j + 1])) <= c.max_passage_chars:
                    i -= 1
                passage = " ".join(sentences[i : j + 1])
                if not c.min_passage_chars <= len(passage) <= c.max_passage_chars:
                    continue
                m = tail.search(passage)
                if m is None or _letters(m.group(1)) < c.min_word_letters:
                    continue
                candidates.append(
                    (book, passage[: m.start()].rstrip(), unicodedata.normalize("NFC", m.group(1)))
                )
    if not candidates:
        return []
    per_book = max(1, -(-3 * c.n_lastword // len(books)))
    drawn = _draw(candidates, c.n_lastword, per_book, np.random.default_rng([c.seed, 1]))
    return [LastWordItem(book, context, target) for book, context, target in drawn]


def build_choice_items(books: dict[int, list[str]], config: SuiteConfig = SuiteConfig()) -> list[ChoiceItem]:
    """Context of context_sentences sentences, the true next sentence and distractors from other books.

    A candidate must not give itself away without the context: distractors are within a factor 1.5 of
    the true sentence's length, and their books are drawn as often as the items' own books are (a
    sentence drawn uniformly from all others would come mostly from the longest books, whose style a
    weak model finds likelier, and push it below chance).
    """
    c = config
    k = c.context_sentences
    ok = lambda s: c.min_sentence_chars <= len(s) <= c.max_sentence_chars  # noqa: E731
    pool: dict[int, list[str]] = {}  # book -> its distinct candidate sentences
    seen: set[str] = set()  # each distinct sentence once, so the candidates of an item differ
    candidates = []
    for book, paragraphs in _prose(books).items():
        for sentences in paragraphs:
            for s in sentences:
                if ok(s) and s not in seen:
                    seen.add(s)
                    pool.setdefault(book, []).append(s)
            for j in range(k, len(sentences)):
                if ok(sentences[j]):
                    candidates.append((book, " ".join(sentences[j - k : j]), sentences[j]))
    if len(pool) < c.n_candidates or not candidates:
        return []
    rng = np.random.default_rng([c.seed, 2])
    per_book = max(1, -(-3 * c.n_choice // len(books)))
    drawn = _draw(candidates, len(candidates), per_book, rng)
    weight = Counter(book for book, _, _ in drawn[: c.n_choice])  # how often each book asks the question
    lengths = {b: np.array([len(s) for s in texts]) for b, texts in pool.items()}
    items = []
    for book, context, true in drawn:
        others = [b for b in sorted(pool) if b != book and weight[b]]
        if len(others) < c.n_candidates - 1:
            continue
        p = np.array([weight[b] for b in others], dtype=np.float64)
        texts, from_books = [], []
        for other in rng.choice(others, size=len(others), replace=False, p=p / p.sum()):  # weighted order
            near = np.flatnonzero((lengths[other] * 1.5 >= len(true)) & (lengths[other] <= 1.5 * len(true)))
            if len(near):
                texts.append(pool[other][int(rng.choice(near))])
                from_books.append(int(other))
                if len(texts) == c.n_candidates - 1:
                    break
        if len(texts) < c.n_candidates - 1:
            continue
        label = int(rng.integers(c.n_candidates))
        texts.insert(label, true)
        items.append(ChoiceItem(book, context, tuple(texts), label, tuple(from_books)))
        if len(items) == c.n_choice:
            break
    return items


@functools.lru_cache(maxsize=8)
def _cached_items(
    corpus_dir: str, config: SuiteConfig
) -> tuple[tuple[LastWordItem, ...], tuple[ChoiceItem, ...]]:
    books = read_split_text(corpus_dir, config.split)
    return tuple(build_lastword_items(books, config)), tuple(build_choice_items(books, config))


def load_items(
    corpus_dir: str | Path, config: SuiteConfig = SuiteConfig()
) -> tuple[list[LastWordItem], list[ChoiceItem]]:
    """Both tasks' items for a corpus (cached per process: the trainer asks at every evaluation)."""
    lastword, choice = _cached_items(str(Path(corpus_dir).resolve()), config)
    return list(lastword), list(choice)


# -----------------------------------------------------------------------------
# Scoring: anything with model(ids).logits -> (B, T, V) (a ptgpt GPT, a transformers model)


def max_length(model: torch.nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_seq_len", None) or cfg.max_position_embeddings)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and of " " + continuation after it.

    Encoded together and split where the context's own encoding ends, so the continuation is tokenized
    the way it appears in running text; if the tokenizer merges across that point, separately.
    """
    ctx = tokenizer.encode(context)
    full = tokenizer.encode(context + " " + continuation)
    if full[: len(ctx)] == ctx and len(full) > len(ctx):
        return ctx, full[len(ctx) :]
    return ctx, tokenizer.encode(continuation)


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair.

    Sequences longer than the model's context lose context tokens on the left. Batches are padded on the
    right, which a causal model never looks at, so padding changes nothing.
    """
    limit = max_length(model)
    device = _model_device(model)
    out = []
    for start in range(0, len(pairs), batch_size):
        seqs, spans = [], []
        for ctx, cont in pairs[start : start + batch_size]:
            cont = cont[: limit - 1]
            seq = (ctx + cont)[-limit:]
            seqs.append(seq)
            spans.append((len(seq) - len(cont), len(seq)))
        width = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, : len(s)] = torch.tensor(s)
        logp = F.log_softmax(model(x.to(device)).logits.float(), dim=-1)
        for r, (a, b) in enumerate(spans):
            targets = x[r, a:b].to(device)
            out.append(float(logp[r, a - 1 : b - 1].gather(-1, targets[:, None]).sum()))
    return out


@torch.no_grad()
def greedy_continue(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ids: ptgpt's KV-cached generate, or a plain loop over model(ids).logits."""
    device = _model_device(model)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    from training.model import GPT

    if isinstance(model, GPT):
        return model.generate(x, n, temperature=0.0)[0, len(ids) :].tolist()
    for _ in range(n):
        nxt = model(x).logits[:, -1].float().argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], dim=1)
    return x[0, len(ids) :].tolist()


def _decode(tokenizer, ids: list[int]) -> str:
    n = tokenizer.get_piece_size() if hasattr(tokenizer, "get_piece_size") else None
    return tokenizer.decode([t for t in ids if n is None or t < n])


def _lastword(continue_ids, tokenizer, items: list[LastWordItem], limit: int) -> dict:
    """Greedy exact match for any continue_ids(prompt ids, n) -> n ids: a model's or the n-gram's."""
    correct, predictions = 0, []
    for item in items:
        n_new = min(len(tokenizer.encode(item.target)) + 2, limit - 1)
        prompt = tokenizer.encode(item.context)[-(limit - n_new) :]
        predicted = first_word(_decode(tokenizer, continue_ids(prompt, n_new)))
        predictions.append(predicted)
        correct += predicted == normalize_word(item.target)
    return {
        "acc": correct / len(items) if items else float("nan"),
        "n": len(items),
        "predictions": predictions,
    }


def score_lastword(model: torch.nn.Module, tokenizer, items: list[LastWordItem]) -> dict:
    """Greedy exact-match accuracy; each item may generate the target's token count + 2 tokens."""
    was_training = model.training
    model.eval()
    try:
        return _lastword(lambda ids, n: greedy_continue(model, ids, n), tokenizer, items, max_length(model))
    finally:
        model.train(was_training)


def neutral_start(tokenizer) -> list[int]:
    """What a candidate is scored after for its unconditional likelihood: the start of a text (BOS)."""
    bos = tokenizer.bos_id() if hasattr(tokenizer, "bos_id") else -1
    return [bos if bos >= 0 else tokenizer.eos_id()]


def _choice(logprobs, tokenizer, items: list[ChoiceItem]) -> dict:
    """Both choice scores from any logprobs(pairs) -> sum of log p(continuation | context) per pair.

    per byte: log p(candidate | context) / bytes, the HellaSwag-style normalised likelihood. Its weakness
    here: distractors come from other books, and a candidate that is likely anywhere (short words, common
    style) wins without the context playing a part. PMI per byte, (log p(candidate | context) - log
    p(candidate | start of text)) / bytes, takes out what the candidate scores on its own and so measures
    how much the context helps: it is the headline figure ("acc").
    """
    pairs, n_bytes = [], []
    for item in items:
        for cand in item.candidates:
            pairs.append(continuation_ids(tokenizer, item.context, cand))
            n_bytes.append(len((" " + cand).encode()))
    start = neutral_start(tokenizer)
    logps = np.array(logprobs(pairs + [(start, cont) for _, cont in pairs]), dtype=np.float64)
    conditional, unconditional = logps[: len(pairs)], logps[len(pairs) :]
    n_bytes = np.array(n_bytes, dtype=np.float64)
    k = len(items[0].candidates) if items else 0
    out: dict = {"n": len(items)}
    for name, score in (("", conditional - unconditional), ("_per_byte", conditional)):
        picks = (score / n_bytes).reshape(len(items), k).argmax(1) if items else np.zeros(0, int)
        correct = sum(int(p) == item.label for p, item in zip(picks, items, strict=True))
        out["acc" + name] = correct / len(items) if items else float("nan")
        out["picks" + name] = picks.tolist()
    return out


def score_choice(model: torch.nn.Module, tokenizer, items: list[ChoiceItem], batch_size: int = 16) -> dict:
    """Accuracy of the candidate with the highest PMI per UTF-8 byte ("acc", the headline) and with the
    highest log-likelihood per byte ("acc_per_byte"); see _choice for why two."""
    was_training = model.training
    model.eval()
    try:
        return _choice(lambda pairs: continuation_logprobs(model, pairs, batch_size), tokenizer, items)
    finally:
        model.train(was_training)


# -----------------------------------------------------------------------------
# Bits per byte, per book


@torch.no_grad()
def bpb_per_book(
    model: torch.nn.Module,
    corpus_dir: str | Path,
    split: str,
    block_size: int,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> dict[int, dict]:
    """Per book of a split: bits per byte over max_windows windows spread evenly through it (None: all).

    Each book is packed on its own (BOS p0 SEP p1 ... EOS, training/data.py) and cut into windows like
    the trainer's evaluation, so its figure does not depend on which book precedes it in the shard.
    """
    info = CorpusInfo.from_dir(corpus_dir)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    result = {}
    try:
        for path in info.shard_paths(split):
            table = pq.read_table(path, columns=["book_id", "tokens", "n_bytes"])
            book_ids = table.column("book_id").to_numpy()
            lists = table.column("tokens").combine_chunks()
            offsets = lists.offsets.to_numpy()
            tokens = lists.flatten().to_numpy()
            n_bytes = table.column("n_bytes").to_numpy()
            starts = np.flatnonzero(np.r_[True, book_ids[1:] != book_ids[:-1]])
            for a, b in zip(starts, np.r_[starts[1:], len(book_ids)], strict=True):
                stream, token_bytes = pack_paragraphs(
                    book_ids[a:b],
                    np.diff(offsets[a : b + 1]),
                    tokens[offsets[a] : offsets[b]],
                    starts_book=True,
                    ends_book=True,
                    bos_id=info.bos_id,
                    eos_id=info.eos_id,
                    separator_ids=info.separator_ids,
                    n_bytes=n_bytes[a:b],
                )
                windows, rest = cut_windows(stream, block_size)
                wbytes, rest_bytes = cut_windows(token_bytes, block_size)
                if len(rest) > 1:  # the last partial window, padded (targets of -1 are not scored)
                    pad = np.full((1, block_size + 1), -1, windows.dtype)
                    pad[0, : len(rest)] = rest
                    padb = np.zeros((1, block_size + 1))
                    padb[0, : len(rest)] = rest_bytes
                    windows, wbytes = np.concatenate([windows, pad]), np.concatenate([wbytes, padb])
                if max_windows is not None and len(windows) > max_windows:
                    # spread over the book, ends left out: title pages, prefaces and notes are not its prose
                    keep = ((np.arange(max_windows) + 0.5) * len(windows) / max_windows).astype(int)
                    windows, wbytes = windows[keep], wbytes[keep]
                nats = 0.0
                for i in range(0, len(windows), batch_size):
                    w = torch.from_numpy(windows[i : i + batch_size].astype(np.int64))
                    x, y = w[:, :-1].clone(), w[:, 1:]
                    x[x < 0] = info.pad_id
                    logits = model(x.to(device)).logits.float()
                    nats += float(
                        F.cross_entropy(
                            logits.reshape(-1, logits.size(-1)),
                            y.reshape(-1).to(device),
                            ignore_index=-1,
                            reduction="sum",
                        )
                    )
                total_bytes = float(wbytes[:, 1:].sum())
                result[int(book_ids[a])] = {
                    "bpb": nats / (math.log(2) * total_bytes) if total_bytes else float("nan"),
                    "bytes": int(total_bytes),
                }
    finally:
        model.train(was_training)
    return result


# -----------------------------------------------------------------------------
# Chance levels and trivial baselines (no model)


def _word_counts(texts) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(w.lower() for w in WORD.findall(t))
    return counts


def lastword_baselines(items: list[LastWordItem]) -> dict:
    """Two answers that need no model: the most frequent >= 4-letter word of all the items' contexts,
    and, per item, the most frequent >= 4-letter word of its own context (words do repeat in a passage)."""
    if not items:
        return {}
    long_words = lambda text: [w for w in WORD.findall(text) if _letters(w) >= 4]  # noqa: E731
    overall = Counter(w for item in items for w in long_words(item.context))
    constant = overall.most_common(1)[0][0] if overall else ""
    hits_constant = sum(item.target == constant for item in items)
    hits_context = 0
    for item in items:
        words = long_words(item.context)
        if words:
            hits_context += item.target == Counter(reversed(words)).most_common(1)[0][0]
    return {
        "chance": 0.0,
        "most_frequent_word": hits_constant / len(items),
        "most_frequent_word_answer": constant,
        "most_frequent_context_word": hits_context / len(items),
    }


def choice_baselines(items: list[ChoiceItem], reference_texts: list[str]) -> dict:
    """Chance (1 / candidates) and a word unigram model (add-one, fitted on reference_texts, scored per
    byte like the model), which tells how far word frequencies alone get."""
    if not items:
        return {}
    chance = 1 / len(items[0].candidates)
    if not reference_texts:
        return {"chance": chance, "unigram": None}
    counts = _word_counts(reference_texts)
    total, vocab = sum(counts.values()), len(counts) + 1
    correct = 0
    for item in items:
        scores = [
            sum(math.log((counts[w.lower()] + 1) / (total + vocab)) for w in WORD.findall(cand))
            / len((" " + cand).encode())
            for cand in item.candidates
        ]
        correct += int(np.argmax(scores)) == item.label
    return {"chance": chance, "unigram": correct / len(items)}


def unigram_bpb(corpus_dir: str | Path, split: str, fit_split: str = "train") -> float:
    """Bits per byte of a token unigram model (add-one) fitted on fit_split: what no context gives."""
    info = CorpusInfo.from_dir(corpus_dir)

    def tokens_and_bytes(s: str) -> tuple[np.ndarray, int]:
        counts, n_bytes = np.zeros(info.vocab_size, np.int64), 0
        for path in info.shard_paths(s):
            table = pq.read_table(path, columns=["tokens", "n_bytes"])
            counts += np.bincount(
                table.column("tokens").combine_chunks().flatten().to_numpy(), minlength=info.vocab_size
            )
            n_bytes += int(np.sum(table.column("n_bytes").to_numpy()))
        return counts, n_bytes

    fit, _ = tokens_and_bytes(fit_split)
    logp = np.log((fit + 1) / (fit.sum() + info.vocab_size))
    counts, n_bytes = tokens_and_bytes(split)
    return float(-(counts * logp).sum() / (math.log(2) * n_bytes)) if n_bytes else float("nan")


def overlap_choice(items: list[ChoiceItem]) -> float:
    """The context-overlap heuristic: the candidate in which most of the context's distinct >= 4-letter
    words reappear (lowercased). Ties are split evenly: the expected accuracy of a random pick among them."""
    if not items:
        return float("nan")
    words = lambda text: {w.lower() for w in WORD.findall(text) if _letters(w) >= 4}  # noqa: E731
    total = 0.0
    for item in items:
        context = words(item.context)
        scores = [len(context & words(cand)) for cand in item.candidates]
        tied = [i for i, score in enumerate(scores) if score == max(scores)]
        total += (item.label in tied) / len(tied)
    return total / len(items)


def ngram_lastword(ngram, tokenizer, items: list[LastWordItem]) -> dict:
    """The n-gram model's greedy last word (training/ngram.py), scored like a model's."""
    return _lastword(ngram.greedy, tokenizer, items, limit=1 << 20)


def ngram_choice(ngram, tokenizer, items: list[ChoiceItem]) -> dict:
    """The n-gram model's next-sentence choice, by the same two scores as a model's."""
    return _choice(lambda pairs: [ngram.sequence_logprob(c, x) for c, x in pairs], tokenizer, items)


@functools.lru_cache(maxsize=1)
def _ngram(corpus_dir: str, key: str, order: int | None, block_size: int):
    """The corpus's n-gram model, kept for the process (the trainer asks at every evaluation)."""
    from training.ngram import corpus_model

    return corpus_model(corpus_dir, order, block_size)


def corpus_ngram(corpus_dir: str | Path, order: int | None = None, block_size: int = 256):
    """The corpus's Kneser-Ney model (of `order`, or the order best on validation), fitted once and cached
    on disk next to the corpus; None for a corpus without a training split to fit it on."""
    from training.ngram import corpus_key

    info = CorpusInfo.from_dir(corpus_dir)
    if not info.manifest["splits"].get("train", {}).get("shards"):
        return None
    root = str(Path(corpus_dir).resolve())
    return _ngram(root, corpus_key(root), order, block_size)


NO_LASTWORD = "no items: no prose passage of the {split} split ends in a word of {letters}+ letters"
NO_CHOICE = "no items: the {split} split has too few prose paragraphs of {k}+ sentences, or too few books"


# -----------------------------------------------------------------------------
# The suite


def run_suite(
    model: torch.nn.Module,
    tokenizer,
    corpus_dir: str | Path,
    tasks: tuple[str, ...] = TASKS,
    config: SuiteConfig = SuiteConfig(),
    splits: tuple[str, ...] = EVAL_SPLITS,
    block_size: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    precision: str = "auto",
    ngram_order: int | None = None,
) -> dict:
    """Every requested task on one model, under the autocast of its run's `precision`: figures, item
    counts, chance levels and every baseline (uniform, unigram, the corpus's Kneser-Ney n-gram, the
    overlap heuristic, the most frequent word) (JSON-able). A task with no items gets None and a note."""
    from training.evaluate import autocast_context, evaluate
    from training.ngram import cached_split_bpb

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    block_size = min(block_size or max_length(model), max_length(model))
    info = CorpusInfo.from_dir(corpus_dir)
    device = _model_device(model)
    ngram = corpus_ngram(corpus_dir, ngram_order, block_size)
    out: dict = {"ngram_order": ngram.order if ngram is not None else None}
    if "bpb" in tasks:
        out["bpb"], out["loss"], out["bpb_per_book"], out["bpb_baselines"] = {}, {}, {}, {}
        for split in splits:
            if not info.manifest["splits"].get(split, {}).get("shards"):
                continue  # a corpus without that split (tiny test corpora have no test split)
            figures = evaluate(
                model, corpus_dir, split, block_size, batch_size, max_batches, device, precision
            )
            out["bpb"][split], out["loss"][split] = figures["bpb"], figures["loss"]
            with autocast_context(device, precision):
                per_book = bpb_per_book(model, corpus_dir, split, block_size, batch_size, config.book_windows)
            ranked = sorted(per_book.items(), key=lambda kv: kv[1]["bpb"])
            out["bpb_per_book"][split] = {str(b): v["bpb"] for b, v in ranked}
            max_targets = max_batches * batch_size * block_size if max_batches is not None else None
            out["bpb_baselines"][split] = {
                "uniform": math.log2(info.vocab_size) * figures["tokens"] / figures["bytes"],
                "unigram": unigram_bpb(corpus_dir, split),
                "ngram": (
                    cached_split_bpb(corpus_dir, ngram.order, split, block_size, max_targets, ngram)
                    if ngram
                    else None
                ),
            }
    if "lastword" in tasks or "choice" in tasks:
        lastword_items, choice_items = load_items(corpus_dir, config)
    if "lastword" in tasks:
        out["lastword_n"] = len(lastword_items)
        out["lastword_baselines"] = lastword_baselines(lastword_items)
        if lastword_items:
            with autocast_context(device, precision):
                out["lastword_acc"] = score_lastword(model, tokenizer, lastword_items)["acc"]
            if ngram is not None:
                out["lastword_baselines"]["ngram"] = ngram_lastword(ngram, tokenizer, lastword_items)["acc"]
        else:
            out["lastword_acc"] = None
            out["lastword_note"] = NO_LASTWORD.format(split=config.split, letters=config.min_word_letters)
    if "choice" in tasks:
        out["choice_n"] = len(choice_items)
        reference = (
            [t for ps in read_split_text(corpus_dir, "validation").values() for t in ps]
            if config.split != "validation" and info.manifest["splits"].get("validation", {}).get("shards")
            else []
        )
        out["choice_baselines"] = choice_baselines(choice_items, reference)
        if choice_items:
            with autocast_context(device, precision):
                scores = score_choice(model, tokenizer, choice_items, batch_size)
            out["choice_acc"], out["choice_acc_per_byte"] = scores["acc"], scores["acc_per_byte"]
            out["choice_baselines"]["overlap"] = overlap_choice(choice_items)
            if ngram is not None:
                scores = ngram_choice(ngram, tokenizer, choice_items)
                out["choice_baselines"]["ngram"] = scores["acc"]
                out["choice_baselines"]["ngram_per_byte"] = scores["acc_per_byte"]
        else:
            out["choice_acc"] = out["choice_acc_per_byte"] = None
            out["choice_note"] = NO_CHOICE.format(split=config.split, k=config.context_sentences + 1)
    return out


def quick_eval(
    model: torch.nn.Module, tokenizer, corpus_dir: str | Path, config: SuiteConfig = QUICK
) -> dict:
    """What the trainer logs at each evaluation: a flat dict of floats (items are built once per process).

    A task with no items (a corpus without a test split, or without prose in it) is left out, so a
    trainer can always call it and log what comes back.
    """
    if not CorpusInfo.from_dir(corpus_dir).manifest["splits"].get(config.split, {}).get("shards"):
        return {}
    lastword_items, choice_items = load_items(corpus_dir, config)
    figures = {}
    if lastword_items:
        figures["lastword_acc"] = score_lastword(model, tokenizer, lastword_items)["acc"]
    if choice_items:
        scores = score_choice(model, tokenizer, choice_items)
        figures["choice_acc"], figures["choice_acc_per_byte"] = scores["acc"], scores["acc_per_byte"]
    return figures


@functools.lru_cache(maxsize=4)
def _baseline_figures(corpus_dir: str, key: str, block_size: int, config: SuiteConfig, order: int | None):
    from training.ngram import cached_split_bpb

    info = CorpusInfo.from_dir(corpus_dir)
    ngram = corpus_ngram(corpus_dir, order, block_size)
    if ngram is None:
        return {}
    figures: dict = {"ngram_order": float(ngram.order)}
    present = {s for s, v in info.manifest["splits"].items() if v.get("shards")}
    for split, name in (("validation", "val"), ("test", "test")):
        if split in present:
            figures[f"ngram_{name}_bpb"] = cached_split_bpb(
                corpus_dir, ngram.order, split, block_size, model=ngram
            )
    if config.split in present:
        import sentencepiece as spm

        tokenizer = spm.SentencePieceProcessor(model_file=str(info.tokenizer_path))
        lastword_items, choice_items = load_items(corpus_dir, config)
        if lastword_items:
            figures["ngram_lastword_acc"] = ngram_lastword(ngram, tokenizer, lastword_items)["acc"]
            figures["most_frequent_word_acc"] = lastword_baselines(lastword_items)["most_frequent_word"]
        if choice_items:
            figures["ngram_choice_acc"] = ngram_choice(ngram, tokenizer, choice_items)["acc"]
            figures["overlap_choice_acc"] = overlap_choice(choice_items)
    return figures


def baseline_figures(
    corpus_dir: str | Path, block_size: int = 256, config: SuiteConfig = QUICK, order: int | None = None
) -> dict[str, float]:
    """The baselines the trainer's periodic evaluation logs beside the model's figures, as a flat dict of
    floats: ngram_order, ngram_val_bpb, ngram_test_bpb (the model's bpb accounting at this block_size),
    and on the quick items ngram_lastword_acc, most_frequent_word_acc, ngram_choice_acc (PMI, like
    choice_acc) and overlap_choice_acc. The first call fits the n-gram (minutes on 20M tokens, then cached
    next to the corpus); later calls, in this process or another, cost next to nothing. Keys of a split
    or task the corpus lacks are left out ({} for a corpus without a training split)."""
    from training.ngram import corpus_key

    root = str(Path(corpus_dir).resolve())
    figures = dict(_baseline_figures(root, corpus_key(root), block_size, config, order))
    _ngram.cache_clear()  # the figures are kept; the model's tables need not stay in the trainer's memory
    return figures
