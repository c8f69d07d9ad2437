"""Streaming token windows from the Parquet corpus (docs/formats.md, section 2) for training and evaluation.

The corpus is a list of Parquet shards per split, each cut into row groups of about 1000 paragraphs. The
unit of reading, shuffling and distribution is one row group, `(shard, row_group)`: the loader never holds
more than one row group's tokens, so memory does not grow with the corpus.

Token stream. The paragraphs of a row group are laid end to end as

    BOS p0 SEP p1 SEP p2 EOS BOS q0 SEP q1 ...

BOS opens a book, the separator ids (`manifest["tokenizer"]["separator_ids"]`, the encoding of a paragraph
break) go between two paragraphs of the same book and EOS closes a book. A book may span row groups, so
whether the first row of a row group opens its book, and whether its last row closes it, is decided by
reading the `book_id` of the neighbouring row groups of the same shard (books never span shards). Only
`book_id` is used, not `paragraph_index == 0`, so a book whose first paragraph was filtered out still gets
its BOS. The boundary tokens depend only on the file, never on the reading order.

Windows. The stream is cut into windows of `block_size + 1` tokens with a stride of `block_size`: the last
token of a window is the first of the next, so every token after the first is a target (y) exactly once.
Tokens that do not fill a window carry into the next row group; at the end of an epoch the rank's last
partial window (under `block_size` tokens) is dropped and the next epoch starts clean.

Shuffling, per epoch and seeded: the row groups are permuted (same permutation on every rank: the
permutation is a function of `(seed, epoch)` only), and windows go through a shuffle buffer of
`shuffle_buffer` windows (its generator is seeded with `(seed, rank, epoch)`). The buffer is drained at the
end of each epoch, so an epoch's windows all come out before the next epoch's. A row group read in a
shuffled order may start or end in the middle of a book; such a seam gets a separator or nothing, not a
BOS/EOS, which is why boundary tokens come from the file neighbours and not from the stream neighbours.

Distributed: rank r of w reads the row groups at positions r, r+w, r+2w, ... of the epoch's permuted list:
the shares are disjoint and together cover the split. They can differ by one row group, so ranks reach
the end of an epoch at slightly different steps; that is why the training loader never stops: it rolls
into the next epoch by itself, every rank yields a batch on every call, and DDP can never hang on a rank
that ran dry. The trainer counts steps (or tokens), not epochs; `loader.epoch` is for logging.

Exact resume: `state_dict()` holds the epoch, the position (row group in the epoch's list, windows already
taken from it), the tokens carried into that row group, the live windows of the shuffle buffer and the
state of its generator, as JSON values and numpy arrays (no pickle). A fresh loader given that state yields
exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common import corpus_format
from common.errors import UserError
from common.files import sha256_file

SCHEMA_VERSION = corpus_format.SCHEMA_VERSION
STATE_VERSION = 1
IGNORE_INDEX = -1  # target id of padding in evaluation windows (F.cross_entropy(..., ignore_index=-1))
READ_COLUMNS = ["book_id", "tokens"]  # the loader reads nothing else; eval also reads n_bytes
REQUIRED_COLUMNS = {  # name -> (check of the arrow type, what to say when it fails)
    "book_id": (pa.types.is_integer, "an integer"),
    "tokens": (
        lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type == pa.int32(),
        "list<int32>",
    ),
    "n_bytes": (pa.types.is_integer, "an integer"),
}


# -----------------------------------------------------------------------------
# The corpus manifest


class CorpusError(UserError, ValueError):
    """The corpus on disk is missing, incomplete, or not what the model was configured with."""


@dataclass(frozen=True)
class CorpusInfo:
    """A parsed `manifest.json`: what the trainer needs to know about a corpus folder."""

    root: Path
    manifest: dict

    @classmethod
    def from_dir(cls, corpus_dir: str | Path) -> CorpusInfo:
        try:
            return cls(Path(corpus_dir), corpus_format.read_manifest(corpus_dir))
        except corpus_format.ManifestError as e:
            raise CorpusError(str(e)) from e

    @property
    def tokenizer(self) -> dict:
        return self.manifest["tokenizer"]

    @property
    def tokenizer_sha256(self) -> str:
        return self.tokenizer["sha256"]

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.tokenizer.get("file", "tokenizer.model")

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer["bos_id"])

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer["eos_id"])

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.get("pad_id", self.eos_id))

    @property
    def separator_ids(self) -> list[int]:
        return [int(i) for i in self.tokenizer["separator_ids"]]

    def split(self, split: str) -> dict:
        splits = self.manifest["splits"]
        if split not in splits:
            raise CorpusError(
                f"split {split!r} not in {self.root / corpus_format.MANIFEST_FILE} (has: {sorted(splits)})"
            )
        return splits[split]

    def split_fingerprint(self, split: str) -> str:
        """A short hash of the split's shard list (names, sizes, checksums): a resumed run must read the
        same data, not just the same number of row groups."""
        shards = json.dumps(self.split(split)["shards"], sort_keys=True)
        return hashlib.sha256(shards.encode()).hexdigest()[:16]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / shard["file"] for shard in self.split(split)["shards"]]

    def split_units(self, split: str) -> list[tuple[int, int]]:
        """Every `(shard, row_group)` of a split in file order. Reads only the Parquet footers."""
        units = []
        for s, (shard, path) in enumerate(
            zip(self.split(split)["shards"], self.shard_paths(split), strict=True)
        ):
            if not path.is_file():
                raise CorpusError(f"shard {path} listed in the manifest is missing")
            n = pq.ParquetFile(path).metadata.num_row_groups
            if "row_groups" in shard and shard["row_groups"] != n:
                raise CorpusError(
                    f"{path} has {n} row groups but the manifest says {shard['row_groups']}: "
                    "the corpus was modified after it was written"
                )
            units += [(s, g) for g in range(n)]
        return units


def verify_shards(info: CorpusInfo, splits: list[str], checksums: bool = True) -> None:
    """Check the shards of `splits` against the manifest before training reads them: each is present,
    its Parquet footer has the row groups and rows the manifest lists, and (checksums) its sha256 matches.

    A shard replaced or damaged after the corpus was written would otherwise train on other data silently.
    """
    for split in splits:
        for shard, path in zip(info.split(split)["shards"], info.shard_paths(split), strict=True):
            if not path.is_file():
                raise CorpusError(f"shard {path} listed in the manifest is missing: rebuild the corpus")
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as e:  # noqa: BLE001 - whatever pyarrow raises, the footer is unreadable
                raise CorpusError(f"{path} is not a readable Parquet file ({e}): rebuild the corpus") from e
            found = {"row_groups": meta.num_row_groups, "rows": meta.num_rows}
            for key, value in found.items():
                if key in shard and shard[key] != value:
                    raise CorpusError(
                        f"{path} has {value} {key.replace('_', ' ')} but the manifest says {shard[key]}: "
                        "the shard was modified after the corpus was written; rebuild the corpus"
                    )
            if checksums and "sha256" in shard and sha256_file(path) != shard["sha256"]:
                raise CorpusError(
                    f"{path} does not match its sha256 in {info.root / 'manifest.json'}: the shard was "
                    "modified after the corpus was written; rebuild the corpus (or pass --verify-shards "
                    "false to train on it anyway)"
                )


def check_tokenizer(corpus_dir: str | Path, expected_sha256: str) -> None:
    """Refuse a corpus tokenized with another tokenizer than the model's: its ids would mean other pieces."""
    info = CorpusInfo.from_dir(corpus_dir)
    if info.tokenizer_sha256 != expected_sha256:
        raise CorpusError(
            f"tokenizer mismatch: the corpus at {info.root} was tokenized with a tokenizer of "
            f"sha256 {info.tokenizer_sha256}, but the model is configured for {expected_sha256}. "
            "Use the corpus the model was built for, or start a new model from this corpus."
        )
    if info.tokenizer_path.is_file() and sha256_file(info.tokenizer_path) != info.tokenizer_sha256:
        raise CorpusError(
            f"{info.tokenizer_path} does not match the sha256 in its manifest: "
            "the file was replaced after the corpus was written"
        )


# -----------------------------------------------------------------------------
# Packing: one row group of paragraphs -> one run of the token stream, with boundary tokens, vectorised


def pack_paragraphs(
    book_ids: np.ndarray,
    lengths: np.ndarray,
    tokens: np.ndarray,
    *,
    starts_book: bool,
    ends_book: bool,
    bos_id: int,
    eos_id: int,
    separator_ids: list[int],
    n_bytes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Lay consecutive paragraphs end to end with BOS/separator/EOS, without a loop over rows.

    book_ids, lengths: one entry per paragraph; tokens: all their tokens, concatenated. starts_book: the
    first paragraph opens its book; ends_book: the last one closes it (both known only from outside).
    With n_bytes (UTF-8 length per paragraph) also returns, per output token, the bytes it stands for:
    a paragraph's bytes spread evenly over its tokens, 0 for boundary tokens (see iter_eval_windows).
    """
    n = len(book_ids)
    if n == 0:
        return np.empty(0, np.int32), (np.empty(0, np.float64) if n_bytes is not None else None)
    lengths = lengths.astype(np.int64, copy=False)
    opens = np.empty(n, dtype=bool)  # the paragraph is the first of its book -> BOS, else separator
    opens[0] = starts_book
    np.not_equal(book_ids[1:], book_ids[:-1], out=opens[1:])
    closes = np.empty(n, dtype=bool)  # the paragraph is the last of its book -> EOS after it
    closes[:-1] = opens[1:]
    closes[-1] = ends_book

    sep = np.asarray(separator_ids, dtype=np.int32)
    prefix_len = np.where(opens, 1, len(sep))
    row_len = prefix_len + lengths + closes
    row_end = np.cumsum(row_len)
    row_start = row_end - row_len
    out = np.empty(int(row_end[-1]), dtype=np.int32)
    boundary = np.zeros(len(out), dtype=bool)

    bos_at = row_start[opens]
    sep_at = (row_start[~opens][:, None] + np.arange(len(sep))).ravel()
    eos_at = row_end[closes] - 1
    out[bos_at] = bos_id
    out[sep_at] = np.tile(sep, len(sep_at) // max(len(sep), 1))
    out[eos_at] = eos_id
    boundary[bos_at] = boundary[sep_at] = boundary[eos_at] = True
    text = ~boundary
    out[text] = tokens  # paragraph tokens fill the remaining positions, in order

    token_bytes = None
    if n_bytes is not None:
        per_token = n_bytes.astype(np.float64) / np.maximum(lengths, 1)
        token_bytes = np.zeros(len(out), dtype=np.float64)
        token_bytes[text] = np.repeat(per_token, lengths)
    return out, token_bytes


class RowGroupReader:
    """Reads and packs one row group at a time; keeps a few shard files open. Counts what it reads."""

    def __init__(self, info: CorpusInfo, split: str, max_open: int = 16):
        self.info = info
        self.paths = info.shard_paths(split)
        self.max_open = max_open
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self._edges: dict[tuple[int, int], tuple[int, int] | None] = {}
        self.row_groups_read = 0  # token-bearing row groups read so far (tests check memory is bounded)

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            f = pq.ParquetFile(self.paths[shard])
            types = {field.name: field.type for field in f.schema_arrow}
            for name, (ok, want) in REQUIRED_COLUMNS.items():
                if name not in types or not ok(types[name]):
                    raise CorpusError(
                        f"{self.paths[shard]}: column {name!r} is {types.get(name, 'missing')}, "
                        f"the loader needs {want} (docs/formats.md)"
                    )
            self._files[shard] = f
            if len(self._files) > self.max_open:
                self._files.popitem(last=False)
        return self._files[shard]

    def _edge_book_ids(self, shard: int, group: int) -> tuple[int, int] | None:
        """book_id of the first and last row of a row group (cached: a few bytes per row group)."""
        f = self._file(shard)
        if group < 0 or group >= f.metadata.num_row_groups:
            return None  # books never span shards: nothing before the first or after the last row group
        if (shard, group) not in self._edges:
            col = f.read_row_group(group, columns=["book_id"], use_threads=False).column(0)
            self._edges[shard, group] = (col[0].as_py(), col[-1].as_py()) if len(col) else None
        return self._edges[shard, group]

    def read(self, shard: int, group: int, with_bytes: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The packed token stream of one row group (and per-token bytes when with_bytes)."""
        columns = READ_COLUMNS + (["n_bytes"] if with_bytes else [])
        table = self._file(shard).read_row_group(group, columns=columns, use_threads=False)
        self.row_groups_read += 1
        if table.num_rows == 0:
            return np.empty(0, np.int32), (np.empty(0, np.float64) if with_bytes else None)
        book_ids = table.column("book_id").to_numpy()
        lists = table.column("tokens").combine_chunks()
        lengths = np.diff(lists.offsets.to_numpy())
        tokens = lists.flatten().to_numpy()
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.info.vocab_size):
            raise CorpusError(
                f"{self.paths[shard]} row group {group}: token ids outside [0, "
                f"{self.info.vocab_size}) (vocab_size in the manifest)"
            )
        # Rows of a book are contiguous, so the book goes on across a row-group seam iff the neighbour
        # row on the other side of the seam has the same book_id.
        self._edges[shard, group] = (int(book_ids[0]), int(book_ids[-1]))
        before, after = self._edge_book_ids(shard, group - 1), self._edge_book_ids(shard, group + 1)
        starts_book = before is None or before[1] != book_ids[0]
        ends_book = after is None or after[0] != book_ids[-1]
        n_bytes = table.column("n_bytes").to_numpy() if with_bytes else None
        return pack_paragraphs(
            book_ids,
            lengths,
            tokens,
            starts_book=starts_book,
            ends_book=ends_book,
            bos_id=self.info.bos_id,
            eos_id=self.info.eos_id,
            separator_ids=self.info.separator_ids,
            n_bytes=n_bytes,
        )


def cut_windows(stream: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of block_size + 1 tokens at stride block_size (a view), and the rest to carry forward.

    The rest starts with the last token of the last window, so the stream stays continuous across cuts.
    """
    n = max(len(stream) - 1, 0) // block_size
    if n == 0:
        return np.empty((0, block_size + 1), stream.dtype), stream.copy()
    windows = np.lib.stride_tricks.sliding_window_view(stream[: n * block_size + 1], block_size + 1)
    return windows[::block_size], stream[n * block_size :].copy()


# -----------------------------------------------------------------------------
# Training loader


@dataclass
class LoaderConfig:
    block_size: int  # tokens the model sees per row; windows are block_size + 1 long
    batch_size: int  # windows per batch (per rank)
    seed: int = 0  # one seed for all ranks: they must agree on the row-group permutation
    shuffle: bool = True  # permute the row groups every epoch (False: file order, for tests and debugging)
    shuffle_buffer: int = 512  # windows mixed before batching; 0 = stream order. 512 x 1025 x 4 B = 2 MiB
    rank: int = 0
    world_size: int = 1
    split: str = "train"


class TokenWindowLoader:
    """Endless iterator of (x, y) int64 CPU tensors of shape [batch_size, block_size], y = x shifted by one.

    `.epoch` is the epoch of the last window yielded (after resuming from a DevicePrefetcher's state it
    runs ahead while the read-ahead windows are replayed). Memory: one row group's tokens, the shuffle
    buffer and a batch, whatever the size of the corpus. Give `tokenizer_sha256` (the model's) to refuse
    a corpus tokenized differently.
    """

    def __init__(self, corpus_dir: str | Path, config: LoaderConfig, tokenizer_sha256: str | None = None):
        c = config
        if c.block_size < 1 or c.batch_size < 1 or c.shuffle_buffer < 0:
            raise ValueError(f"need block_size >= 1, batch_size >= 1, shuffle_buffer >= 0: {c}")
        if not 0 <= c.rank < c.world_size:
            raise ValueError(f"rank {c.rank} is not in [0, world_size={c.world_size})")
        if tokenizer_sha256 is not None:
            check_tokenizer(corpus_dir, tokenizer_sha256)
        self.config = c
        self.info = CorpusInfo.from_dir(corpus_dir)
        self.units = self.info.split_units(c.split)  # (shard, row_group), file order
        if len(self.units) < c.world_size:
            raise CorpusError(
                f"split {c.split!r} has {len(self.units)} row groups, fewer than world_size "
                f"{c.world_size}: every rank needs at least one"
            )
        self.reader = RowGroupReader(self.info, c.split)
        self.window = c.block_size + 1
        self._buffer = np.empty((c.shuffle_buffer, self.window), dtype=np.int32)
        self._pending = np.empty((0, self.window), dtype=np.int32)  # windows to yield first (see resume)
        self._start_epoch(0)

    def units_for_epoch(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's row groups for an epoch, in reading order."""
        c = self.config
        order = np.arange(len(self.units))
        if c.shuffle:
            order = np.random.default_rng([c.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in order[c.rank :: c.world_size]]

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._units = self.units_for_epoch(epoch)
        self._unit_pos = 0  # row group being read, index into self._units
        self._window_pos = 0  # windows of that row group already taken
        self._carry = np.empty(0, dtype=np.int32)  # stream tokens carried into that row group
        self._unit_windows: np.ndarray | None = None  # its windows, once read (a cache, not state)
        self._unit_rest = self._carry  # and what it leaves to carry into the next one
        self._n_live = 0  # live windows in self._buffer[:n_live]
        self._rng = np.random.default_rng([self.config.seed, self.config.rank, epoch])

    # --- the window stream of the epoch, in reading order

    def _load_unit(self) -> None:
        tokens, _ = self.reader.read(*self._units[self._unit_pos])
        stream = np.concatenate([self._carry, tokens]) if len(self._carry) else tokens
        self._unit_windows, self._unit_rest = cut_windows(stream, self.config.block_size)

    def _stream(self, n: int) -> list[np.ndarray]:
        """Up to n next windows of the epoch (fewer only when its row groups run out), as array chunks."""
        chunks = []
        while n > 0:
            if self._unit_windows is None:
                if self._unit_pos >= len(self._units):
                    break
                self._load_unit()
            take = min(n, len(self._unit_windows) - self._window_pos)
            if take > 0:
                chunks.append(self._unit_windows[self._window_pos : self._window_pos + take])
                self._window_pos += take
                n -= take
            if self._window_pos == len(self._unit_windows):  # row group used up: move on
                self._carry, self._unit_windows = self._unit_rest, None
                self._unit_pos += 1
                self._window_pos = 0
        return chunks

    def _from_buffer(self, n: int) -> np.ndarray:
        """Up to n windows drawn at random from the shuffle buffer, each slot refilled from the stream.

        One uniform draw per window, so the stream of windows does not depend on the batch size (a run
        may resume with another one). When the epoch's stream runs out the buffer drains.
        """
        buf, cap = self._buffer, len(self._buffer)
        if self._n_live < cap:  # fill up (start of an epoch)
            for chunk in self._stream(cap - self._n_live):
                buf[self._n_live : self._n_live + len(chunk)] = chunk
                self._n_live += len(chunk)
        n = min(n, self._n_live)
        out = np.empty((n, self.window), dtype=np.int32)
        if n == 0:
            return out
        chunks = self._stream(n)
        fresh = np.concatenate(chunks) if chunks else out[:0]
        for j, u in enumerate(self._rng.random(n)):
            slot = int(u * self._n_live)
            out[j] = buf[slot]
            if j < len(fresh):
                buf[slot] = fresh[j]
            else:  # draining: the last live window takes the emptied slot
                self._n_live -= 1
                buf[slot] = buf[self._n_live]
        return out

    def _next_windows(self, n: int) -> np.ndarray:
        parts, fresh_epoch = [], False
        if len(self._pending):  # windows a prefetcher had read ahead when its state was saved
            parts.append(self._pending[:n])
            self._pending = self._pending[n:]
            n -= len(parts[0])
        while n > 0:
            if self.config.shuffle_buffer:
                got = self._from_buffer(n)
            else:
                chunks = self._stream(n)
                got = np.concatenate(chunks) if chunks else np.empty((0, self.window), np.int32)
            if len(got) == 0:
                if fresh_epoch:
                    raise CorpusError(
                        f"rank {self.config.rank} gets fewer than block_size + 1 = {self.window} "
                        f"tokens per epoch of split {self.config.split!r}"
                    )
                self._start_epoch(self.epoch + 1)
                fresh_epoch = True
                continue
            parts.append(got)
            n -= len(got)
            fresh_epoch = False
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __iter__(self) -> TokenWindowLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._next_windows(self.config.batch_size)
        return torch.from_numpy(w[:, :-1].astype(np.int64)), torch.from_numpy(w[:, 1:].astype(np.int64))

    # --- checkpointing

    def _stream_identity(self) -> dict:
        """What decides the window stream: a saved state only fits a loader that agrees on all of it."""
        c = self.config
        return {
            "block_size": c.block_size,
            "seed": c.seed,
            "shuffle": c.shuffle,
            "shuffle_buffer": c.shuffle_buffer,
            "rank": c.rank,
            "world_size": c.world_size,
            "split": c.split,
            "n_units": len(self.units),
            "corpus": self.info.split_fingerprint(c.split),
        }

    def state_dict(self) -> dict:
        """Where the stream stands, between two batches: JSON values and numpy arrays only."""
        return {
            "version": STATE_VERSION,
            **self._stream_identity(),
            "epoch": self.epoch,
            "unit_pos": self._unit_pos,
            "window_pos": self._window_pos,
            "carry": self._carry.copy(),
            "buffer": self._buffer[: self._n_live].copy(),
            "pending": self._pending.copy(),
            # PCG64 state holds 128-bit integers: kept as a JSON string so no JSON tool rounds them.
            "rng": json.dumps(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        # batch_size may change on resume (batches are cut from the window stream); these may not.
        ours = self._stream_identity()
        diff = {k: (state.get(k), v) for k, v in ours.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "loader state does not match this loader (saved, now): "
                + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in diff.items())
            )
        self._start_epoch(int(state["epoch"]))
        self._unit_pos = int(state["unit_pos"])
        self._window_pos = int(state["window_pos"])
        self._carry = np.asarray(state["carry"], dtype=np.int32).copy()
        buffer = np.asarray(state["buffer"], dtype=np.int32).reshape(-1, self.window)
        self._buffer[: len(buffer)] = buffer
        self._n_live = len(buffer)
        self._pending = np.asarray(state["pending"], dtype=np.int32).reshape(-1, self.window).copy()
        self._rng.bit_generator.state = json.loads(state["rng"])


# -----------------------------------------------------------------------------
# Device prefetch


class DevicePrefetcher:
    """Prepares the next batches in a background thread while the model computes.

    On CUDA the thread pins each batch, and the copy is issued non_blocking, so it overlaps with the
    previous step's kernels. On CPU batches pass through unchanged (still prefetched, which overlaps
    reading with compute). Load a resumed state into the loader before wrapping it.

    `state_dict()` is the state just after the last batch handed out: the loader's own state, which has
    run ahead by the batches waiting in the queue, plus those batches as `pending` windows that a resumed
    loader yields first. So checkpoints resume exactly, and nothing is copied per batch to allow it.
    """

    def __init__(self, loader: TokenWindowLoader, device: str | torch.device = "cpu", depth: int = 4):
        self.loader = loader
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._ahead: deque[tuple[torch.Tensor, torch.Tensor]] = deque()  # read but not yet handed out
        self._lock = threading.Lock()  # the loader and _ahead change together, under this lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    x, y = next(self.loader)
                    self._ahead.append((x, y))
                self._put((x.pin_memory(), y.pin_memory()) if self.pin else (x, y))
        except BaseException as e:  # handed to the consumer, raised there
            self._put((None, e))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ptgpt-prefetch", daemon=True)
            self._thread.start()
        x, y = self._queue.get()
        if x is None:
            self.close()
            raise RuntimeError("the data loader failed in its prefetch thread") from y
        with self._lock:
            self._ahead.popleft()
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict:
        with self._lock:
            state = self.loader.state_dict()
            ahead = [torch.cat([x, y[:, -1:]], dim=1).numpy().astype(np.int32) for x, y in self._ahead]
        state["pending"] = np.concatenate([state["pending"], *ahead]) if ahead else state["pending"]
        return state

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


# -----------------------------------------------------------------------------
# Evaluation


def iter_eval_windows(
    corpus_dir: str | Path, split: str, block_size: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Every token of a split, once, in file order: batches of (x, y, n_bytes) for loss and bits per byte.

    Same stream and windows as training, unshuffled, plus a last window padded with pad_id in x and
    IGNORE_INDEX (-1) in y, so every token but the first of the rank's stream is a target exactly once.
    The last batch may hold fewer windows. n_bytes is the UTF-8 size of the text the batch's targets
    stand for: each paragraph's n_bytes spread evenly over its tokens, and 0 for BOS/separator/EOS (their
    cost in nats is charged to the text they delimit). Summed over a split, n_bytes is the split's byte
    count, so bits per byte = sum of nats / (ln 2 * sum of n_bytes). With world_size > 1, rank r reads
    row groups r, r+w, ...; ranks may yield different numbers of batches, so sum nats and bytes locally
    and all_reduce once at the end (no collective per batch).
    """
    info = CorpusInfo.from_dir(corpus_dir)
    reader = RowGroupReader(info, split)
    units = info.split_units(split)[rank::world_size]
    window = block_size + 1
    carry, carry_bytes = np.empty(0, np.int32), np.empty(0, np.float64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (windows, per-token bytes) not yet batched

    def batches(final: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        tokens = np.concatenate([w for w, _ in pending]) if pending else np.empty((0, window), np.int32)
        nbytes = np.concatenate([b for _, b in pending]) if pending else np.empty((0, window), np.float64)
        pending.clear()
        n_full = len(tokens) // batch_size * batch_size
        for i in range(0, len(tokens), batch_size):
            if i >= n_full and not final:
                pending.append((tokens[i:], nbytes[i:]))
                break
            w = tokens[i : i + batch_size]
            x, y = torch.from_numpy(w[:, :-1].astype(np.int64)), torch.from_numpy(w[:, 1:].astype(np.int64))
            x[x < 0] = info.pad_id
            y[y < 0] = IGNORE_INDEX
            yield x, y, float(nbytes[i : i + batch_size, 1:].sum())

    for shard, group in units:
        tokens, token_bytes = reader.read(shard, group, with_bytes=True)
        windows, carry = cut_windows(np.concatenate([carry, tokens]), block_size)
        window_bytes, carry_bytes = cut_windows(np.concatenate([carry_bytes, token_bytes]), block_size)
        if len(windows):
            pending.append((windows, window_bytes))
            if sum(len(w) for w, _ in pending) >= batch_size:
                yield from batches(final=False)
    if len(carry) > 1:  # the last, partial window: pad (ids of -1 become pad_id in x, IGNORE_INDEX in y)
        last = np.full((1, window), -1, np.int32)
        last[0, : len(carry)] = carry
        last_bytes = np.zeros((1, window), np.float64)
        last_bytes[0, : len(carry)] = carry_bytes
        pending.append((last, last_bytes))
    yield from batches(final=True)


# -----------------------------------------------------------------------------------------------
# In-memory examples (SFT conversations, labelled texts)


class EpochSampler:
    """Shuffled batches of example indices, epoch after epoch. Its state is two ints, so resume is exact."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next_batch(self) -> list[int]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
            take = min(self.batch_size - len(batch), self.n - self.position)
            batch += self._order()[self.position : self.position + take].tolist()
            self.position += take
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(
                f"the checkpoint was trained on {state['n']} conversations, the data now has {self.n}: "
                "resume with the same --data, or use a new --run"
            )
        self.epoch, self.position = state["epoch"], state["position"]
