"""The deployments for real: `prefect server start`, `ptgpt serve`, `prefect deployment run`.

The test starts Prefect's own server (SQLite, a temporary PREFECT_HOME, a free 127.0.0.1 port) and
the serving process, starts runs the way a user would, and judges them by their final state read
from the API: a failed flow run can still leave some commands with exit status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """One SIGTERM (Prefect's server and `serve` stop on it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if requests.get(env["PREFECT_API_URL"] + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "Prefect server did not come up in 180 s"
            time.sleep(0.5)
        yield env
    finally:
        stop(server)


@pytest.fixture(scope="module")
def served(prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`ptgpt serve` running against the server, its three deployments registered."""
    workdir = tmp_path_factory.mktemp("serve")
    with open(workdir / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "ptgpt"), "serve"], env=prefect_env, cwd=workdir, stdout=log, stderr=log
        )
    try:
        api = prefect_env["PREFECT_API_URL"]
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (workdir / "serve.log").read_text()[-3000:]
            names = {
                d["name"] for d in requests.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            }
            flows = {f["name"] for f in requests.post(f"{api}/flows/filter", json={}, timeout=10).json()}
            if names == {"ptgpt"} and {"build-corpus", "train-model", "corpus-and-train"} <= flows:
                break
            assert time.monotonic() < deadline, "deployments were not registered in 120 s"
            time.sleep(0.5)
        yield prefect_env
    finally:
        stop(proc)


def run_deployment(env: dict[str, str], name: str, params: dict, timeout: float = 300) -> dict:
    """`prefect deployment run NAME --params JSON`, then wait for a final state through the API."""
    out = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    deadline = time.monotonic() + timeout
    while True:
        run = requests.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10).json()
        if run["state"]["type"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"flow run {run_id} still {run['state']['type']}"
        time.sleep(1)


def test_deployment_runs_build_the_corpus_and_train(served, mirror_factory, tmp_path):
    """build-corpus, then train-model as 2 DDP processes launched by torchrun from the deployment."""
    import pyarrow.parquet as pq

    from fakegutenberg.books import sample_books, sample_catalog_csv
    from fakegutenberg.mirror import mirror_books_from_samples

    books = sample_books(extra=40)  # enough rows for a row group per DDP rank
    m = mirror_factory(mirror_books_from_samples(books), sample_catalog_csv(books))
    out, run_dir = tmp_path / "corpus", tmp_path / "run"
    build = run_deployment(
        served,
        "build-corpus/ptgpt",
        {"source": m.url, "out": str(out), "vocab_size": 400, "workers": 1, "rate": 0},
    )
    assert build["state"]["type"] == "COMPLETED", build["state"]
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "validation", "test"):
        shards = manifest["splits"][split]["shards"]
        assert (
            shards
            and sum(pq.read_metadata(out / s["file"]).num_rows for s in shards)
            == manifest["splits"][split]["rows"]
            > 0
        )

    train = run_deployment(
        served,
        "train-model/ptgpt",
        {
            "corpus": str(out),
            "run": str(run_dir),
            "preset": "tiny",
            "max_steps": 6,
            "nproc": 2,
            "overrides": {
                "batch_size": 2,
                "block_size": 32,
                "eval_every": 3,
                "checkpoint_every": 3,
                "eval_batches": 2,
                "warmup_steps": 2,
                "samples": False,
            },
        },
    )
    assert train["state"]["type"] == "COMPLETED", train["state"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6 and any("val_bpb" in r for r in records)
    last = max((r for r in records if "tokens" in r), key=lambda r: r["step"])
    assert last["tokens"] == 6 * 2 * 2 * 32  # steps x 2 DDP ranks x batch 2 x block 32
    assert any((run_dir / "checkpoints").glob("step_*"))


def test_failed_flow_run_is_seen_through_the_api(served, tmp_path):
    run = run_deployment(
        served, "build-corpus/ptgpt", {"source": str(tmp_path / "missing"), "out": str(tmp_path / "o")}
    )
    assert run["state"]["type"] == "FAILED"
    assert not (tmp_path / "o" / "manifest.json").exists()
