"""HTTP service benchmark over real sockets: ``genrec serve`` in a subprocess with the real models and both real
data sets; movielens's ``movies`` platform is answered by its default pipeline (fitted on first use, cached).

Measures, on this machine:
- ``/v1/recommend`` latency one request at a time (p50, p95): k=10 without rationales (target p50 <= 0.5 s on a
  machine with native bf16/AMX), and k=5 with the LLM's rationales (target: they add <= 2 s there);
- throughput with 8 concurrent clients, micro-batched (``max_batch`` 8: the worker writes every waiting client's
  rationales in one generation) versus unbatched (``max_batch`` 1), with and without rationales (target >= 3x);
- with ``--onboarding``: onboarding a 20,000-item catalog through ``POST /v1/platforms`` (Office titles plus Arts
  titles under new ids, cold embedding cache; target <= 60 s).

The machine's load average is recorded before and after: on a shared machine the numbers are taken under load.

Usage: ``python benchmarks/bench_server.py [--requests 10] [--per-client 3] [--plain-per-client 25] [--onboarding]
[--out benchmarks/results/server.json]``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from genrec.config import default_data_dir, genrec_home
from genrec.data.loading import import_dataset
from genrec.data.store import Store

TARGET_P50_S = 0.5
TARGET_RATIONALES_S = 2.0
TARGET_SPEEDUP = 3.0
RATIONALE_K = 5
TARGET_ONBOARD_S = 60.0
CLIENTS = 8
ONBOARD_ITEMS = 20_000
ONBOARD_PLATFORM = "bench-onboarding"
API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(db: Path, folder: Path, **settings: Any):
    """A ready ``genrec serve`` process; yields its base URL."""
    config = folder / f"server-{settings.get('max_batch', 'default')}.yaml"
    config.write_text(yaml.safe_dump({"server": {"max_queue": 64, "request_timeout_s": 600,
                                                 "max_upload_bytes": 100_000_000} | settings}))
    port = free_port()
    env = os.environ | {"GENREC_API_KEYS": API_KEY, "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    with open(folder / f"server-{port}.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--port", str(port), "--db",
                                    str(db), "--config", str(config), "--log-level", "warning"], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited: see {log.name}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not get ready")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            process.wait(60)


def recommend(client: httpx.Client, user: str, explain: bool = False) -> float:
    started = time.perf_counter()
    response = client.post("/v1/recommend", json={"user_id": user, "platform": "movies", "explain": explain,
                                                  "k": RATIONALE_K if explain else 10})
    response.raise_for_status()
    if explain:
        assert all(item["rationale"] for item in response.json()["items"]), response.text
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(url: str, users: list[str], explain: bool = False) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": API_KEY}) as client:
        recommend(client, "600", explain)  # warm: first-request effects are not the steady state
        seconds = [recommend(client, user, explain) for user in users]
    return {"k": RATIONALE_K if explain else 10, "requests": len(seconds),
            "p50_s": round(statistics.median(seconds), 3), "p95_s": round(percentile(seconds, 0.95), 3),
            "mean_s": round(statistics.fmean(seconds), 3), "max_s": round(max(seconds), 3)}


def throughput(url: str, users: list[str], per_client: int, explain: bool = False) -> dict[str, Any]:
    seconds: list[float] = []
    lock = threading.Lock()

    def client_loop(number: int) -> None:
        with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": API_KEY}) as client:
            for j in range(per_client):
                elapsed = recommend(client, users[(number * per_client + j) % len(users)], explain)
                with lock:
                    seconds.append(elapsed)

    with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": API_KEY}) as client:
        recommend(client, "600", explain)  # warm, and the worker's first batch measured
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CLIENTS)]
    before = httpx.get(f"{url}/healthz").json()["worker"]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = httpx.get(f"{url}/healthz").json()["worker"]
    batches = after["batches"] - before["batches"]
    return {"clients": CLIENTS, "rationales": explain, "requests": len(seconds), "wall_s": round(wall, 2),
            "requests_per_s": round(len(seconds) / wall, 3), "p50_s": round(statistics.median(seconds), 2),
            "batches": batches, "mean_jobs_per_batch": round((after["jobs"] - before["jobs"]) / max(1, batches), 2),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def onboarding_catalog(data_dir: Path) -> bytes:
    """20,000 real titles (all Office, then Arts) under new ids, as a CSV upload."""
    titles: list[str] = []
    for name in ("item_listO_AA_F.csv", "item_listA_F.csv"):
        with (data_dir / "amazon-arts-office" / name).open(newline="", encoding="utf-8") as handle:
            titles += [row["item_title"] for row in csv.DictReader(handle)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sku", "name"])
    for number, title in enumerate(dict.fromkeys(titles)):
        if number == ONBOARD_ITEMS:
            break
        writer.writerow([f"b{number}", title])
    return buffer.getvalue().encode()


def clear_embedding_cache(name: str) -> None:
    for folder in (genrec_home() / "embeddings").glob(f"*/{name}"):
        shutil.rmtree(folder, ignore_errors=True)


def onboard(url: str, catalog: bytes) -> dict[str, Any]:
    clear_embedding_cache(ONBOARD_PLATFORM)  # cold: every title is embedded
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/platforms", headers={"X-API-Key": API_KEY}, timeout=1800,
                          data={"name": ONBOARD_PLATFORM, "mapping": ["item_id=sku", "title=name"]},
                          files={"catalog": ("catalog.csv", catalog)})
    response.raise_for_status()
    wall = time.perf_counter() - started
    first = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": API_KEY}) as client:
        served = client.post("/v1/recommend", json={"user_id": "A7PVZNHRTX1J7", "platform": ONBOARD_PLATFORM,
                                                    "k": 10})
        served.raise_for_status()
    clear_embedding_cache(ONBOARD_PLATFORM)
    return {"items": response.json()["items"], "seconds": round(wall, 2),
            "server_report": response.json(), "first_recommendation_s": round(time.perf_counter() - first, 2)}


def machine() -> dict[str, Any]:
    import torch

    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def save_result(result: dict[str, Any], out: Path) -> None:
    """Record the load average at the end beside the one at the start, write ``out`` (JSON) and print it."""
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10, help="sequential requests for the latency numbers")
    parser.add_argument("--per-client", type=int, default=3,
                        help="requests per client in the throughput runs with rationales")
    parser.add_argument("--plain-per-client", type=int, default=25,
                        help="requests per client in the throughput runs without rationales")
    parser.add_argument("--onboarding", action="store_true", help="also onboard a 20,000-item catalog")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "server.json")
    args = parser.parse_args()

    result: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                              "note": "shared machine: numbers taken under the load recorded in machine"}
    users = [str(u) for u in range(1, 500, 7)]
    rest = users[args.requests:]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="genrec-bench-server-") as folder:
        root = Path(folder)
        db = root / "bench.duckdb"
        with Store(db) as store:
            import_dataset(store, "movielens-latest-small")
            import_dataset(store, "amazon-arts-office")
        with server(db, root, max_batch=1) as url:
            runs["unbatched"] = {"no_rationales": throughput(url, rest, args.plain_per_client),
                                 "rationales": throughput(url, rest, args.per_client, explain=True)}
        with server(db, root, max_batch=8) as url:
            plain = latency(url, users[: args.requests])
            explained = latency(url, users[: args.requests], explain=True)
            result["recommend"] = {"no_rationales": plain | {"target_p50_s": TARGET_P50_S},
                                   "rationales": explained,
                                   "rationales_add_p50_s": round(explained["p50_s"] - plain["p50_s"], 3),
                                   "target_rationales_add_s": TARGET_RATIONALES_S}
            runs["micro_batched"] = {"no_rationales": throughput(url, rest, args.plain_per_client),
                                     "rationales": throughput(url, rest, args.per_client, explain=True)}
            if args.onboarding:  # last: a later server start would index the onboarded platform again
                result["onboarding_20k"] = onboard(url, onboarding_catalog(default_data_dir())) | {
                    "target_s": TARGET_ONBOARD_S}
    result["throughput_8_clients"] = {}
    for kind in ("no_rationales", "rationales"):
        batched, unbatched = runs["micro_batched"][kind], runs["unbatched"][kind]
        result["throughput_8_clients"][kind] = {
            "micro_batched": batched, "unbatched": unbatched,
            "speedup": round(batched["requests_per_s"] / unbatched["requests_per_s"], 2)}
    result["throughput_8_clients"]["target_speedup"] = TARGET_SPEEDUP
    result["targets_met"] = {
        "p50_no_rationales": plain["p50_s"] <= TARGET_P50_S,
        "rationales_add": result["recommend"]["rationales_add_p50_s"] <= TARGET_RATIONALES_S,
        "batching_speedup_rationales": result["throughput_8_clients"]["rationales"]["speedup"] >= TARGET_SPEEDUP,
    }
    if args.onboarding:
        result["targets_met"]["onboarding"] = result["onboarding_20k"]["seconds"] <= TARGET_ONBOARD_S
    save_result(result, args.out)


if __name__ == "__main__":
    main()
