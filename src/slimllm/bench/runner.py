"""The benchmark loop: the dense model and every (row, ratio, seed) cell, measured alike.

For each cell: prune (wall time, peak RSS / GPU memory, the method's log lines), count the
parameters, evaluate (perplexity on fixed token windows, zero-shot on seeded document subsets),
and time prefill and decoding against the dense model (once per distinct set of shapes). Every
finished cell is written to ``cells/KEY.json`` at once; a rerun with the same settings skips it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from slimllm.bench import measure
from slimllm.bench.files import CELLS_DIR, FORMAT_VERSION, RESULTS_JSON, write_record
from slimllm.bench.spec import BenchSpec, Cell
from slimllm.config import ConfigError, PruneConfig
from slimllm.eval.harness import zero_shot_with
from slimllm.eval.ppl import perplexity_of_stream
from slimllm.methods import without_default_options
from slimllm.progress import progress_bar
from slimllm.runtime import count_parameters, release_memory


@contextlib.contextmanager
def _captured_logs(name: str = "slimllm") -> Iterator[list[str]]:
    """Collect the log lines of ``name`` (e.g. Taylor's memory estimate) for the cell record."""
    lines: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = _Handler(level=logging.INFO)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def prune_config(spec: BenchSpec, cell: Cell) -> PruneConfig:
    return PruneConfig.from_dict({"ratio": cell.ratio, "seed": cell.seed, **spec.prune_overrides(), **cell.overrides})


def _recorded_config(record: dict) -> PruneConfig | None:
    """The settings a cell was pruned with; a field added since takes its default, which is
    what the code did before the field existed. Plug-in options at their defaults are dropped:
    records written before they moved into ``options`` list every one."""
    try:
        return without_default_options(PruneConfig.from_dict(record.get("config") or {}))
    except (ConfigError, TypeError):
        return None


def compact_zero_shot(result: dict | None) -> dict | None:
    """The zero-shot numbers without the data provenance (recorded once per cell in ``task_data``).

    The per-document scores stay: paired comparisons between cells are computed from them.
    """
    if result is None:
        return None
    tasks = {task: {k: v for k, v in value.items() if k != "data"} for task, value in result["tasks"].items()}
    return {**{k: v for k, v in result.items() if k != "tasks"}, "tasks": tasks}


class Bench:
    """One benchmark run over ``spec``. ``model``/``tokenizer`` may be passed in (tests, or an
    already loaded model); ``calib_data`` replaces the tokenised calibration windows and
    ``ppl_streams`` the tokenised perplexity texts."""

    def __init__(
        self,
        spec: BenchSpec,
        *,
        model=None,
        tokenizer=None,
        calib_data: torch.Tensor | None = None,
        ppl_streams: dict[str, torch.Tensor] | None = None,
        progress: bool = True,
        redo: bool = False,
        command: str | None = None,
        log: Callable[[str], None] | None = None,
    ):
        spec.validate()
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.calib_data, self.ppl_streams = calib_data, ppl_streams
        self.progress, self.redo, self.command = progress, redo, command
        self.out = Path(spec.out)
        self.cells_dir = self.out / CELLS_DIR
        self.log = log or (lambda text: tqdm.write(text))
        self.fingerprint = spec.fingerprint()
        self.eval_settings = spec.eval_settings()
        self.code = code_version()
        self._dense_slim = None
        self._speed_cache: dict[str, dict] = {}

    # -- records --------------------------------------------------------------------------------
    def _path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.json"

    def load_record(self, cell: Cell) -> dict | None:
        path = self._path(cell)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_finished(self, cell: Cell, record: dict | None) -> bool:
        if record is None or record.get("status") != "done" or record.get("fingerprint") != self.fingerprint:
            return False
        # A row's settings can change under the same label (a preset redefined): measure it again.
        if cell.kind != "dense" and _recorded_config(record) != without_default_options(prune_config(self.spec, cell)):
            return False
        wants_tasks = cell.zero_shot and bool(self.spec.tasks)
        return not wants_tasks or record.get("eval", {}).get("zero_shot") is not None

    # -- setup ----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.model is None:
            from slimllm.io import load

            self.model, self.tokenizer = load(self.spec.model, dtype=self.spec.dtype, device=self.spec.device)
        if self.ppl_streams is None:
            from slimllm.data.sources import load_text, tokenize_stream

            self.ppl_streams = {}
            self.ppl_info = {}
            for source in self.spec.ppl:
                text, info = load_text(source, quiet=True)
                self.ppl_streams[source] = tokenize_stream(self.tokenizer, text)
                self.ppl_info[source] = info.to_dict()
        else:
            self.ppl_info = {source: {"source": source, "origin": "tensor"} for source in self.ppl_streams}

    def _dense_for_speed(self):
        """The dense model in the pruned models' class (weights shared), so both run the same code."""
        if self._dense_slim is None:
            from slimllm.models import adapter_for

            self._dense_slim = adapter_for(self.model.config).to_slim(self.model)
        return self._dense_slim

    # -- measuring ------------------------------------------------------------------------------
    def evaluate(self, model, with_tasks: bool) -> dict:
        settings = self.eval_settings
        ppl = {}
        for source, stream in self.ppl_streams.items():
            result = perplexity_of_stream(
                model,
                stream,
                seqlen=settings.seqlen,
                batch_size=settings.batch_size,
                limit=settings.ppl_limit,
                bos_token_id=self.tokenizer.bos_token_id if settings.bos else None,
            )
            ppl[source] = {**result, "data": self.ppl_info.get(source)}
        accuracies = zero_shot_with(model, self.tokenizer, settings) if with_tasks and settings.tasks else None
        return {"perplexity": ppl, "zero_shot": accuracies}

    def speed(self, pruned, signature: str, cell: Cell) -> dict | None:
        spec = self.spec
        if not spec.speed:
            return None
        if signature in self._speed_cache:  # same shapes, same speed: measured once
            return dict(self._speed_cache[signature])
        if not cell.speed:
            return None
        result = measure.compare_speed(
            self._dense_for_speed(),
            pruned,
            vocab_size=self.model.config.vocab_size,
            runs=spec.speed_runs,
            prefill_tokens=spec.prefill_tokens,
            decode_tokens=spec.decode_tokens,
            decode_prompt=spec.decode_prompt,
        )
        result["measured_in"] = cell.key
        self._speed_cache[signature] = result
        return result

    def run_dense(self, cell: Cell) -> dict:
        start = time.perf_counter()
        evaluation = self.evaluate(self.model, with_tasks=cell.zero_shot)
        record = self._base_record(cell)
        record.update(
            params={"dense": (dense := count_parameters(self.model)), "pruned": dense, "realised_ratio": 0.0},
            eval={"perplexity": evaluation["perplexity"], "zero_shot": evaluation["zero_shot"]},
            wall_s={"eval": time.perf_counter() - start},
        )
        if evaluation["zero_shot"] is not None:
            record["task_data"] = {t: v.get("data") for t, v in evaluation["zero_shot"]["tasks"].items()}
            record["eval"]["zero_shot"] = compact_zero_shot(evaluation["zero_shot"])
        return record

    def run_cell(self, cell: Cell) -> dict:
        from slimllm.prune import prune

        config = prune_config(self.spec, cell)
        release_memory()
        memory = measure.PeakMemory(config.device)
        start = time.perf_counter()
        with _captured_logs() as notes, memory:
            pruned, plan = prune(self.model, self.tokenizer, config, data=self.calib_data, progress=False)
        prune_wall = time.perf_counter() - start
        report = plan.report
        signature = measure.shape_signature(pruned)
        eval_start = time.perf_counter()
        evaluation = self.evaluate(pruned, with_tasks=cell.zero_shot)
        eval_wall = time.perf_counter() - eval_start
        speed_start = time.perf_counter()
        speed = self.speed(pruned, signature, cell)
        speed_wall = time.perf_counter() - speed_start
        params = report["params"]
        record = self._base_record(cell)
        record.update(
            config=config.to_dict(),
            params={
                "dense": params["dense"],
                "pruned": params["pruned"],
                "realised_ratio": params["realised_ratio"],
                "target_ratio": params["target_ratio"],
                "ideal_speedup": params["dense"] / params["pruned"],
            },
            prune={"wall_s": prune_wall, "seconds": report["seconds"], "memory": memory.to_dict(), "notes": notes},
            calibration=report["calibration"],
            versions=report["versions"],
            allocation=report["allocation"],
            layers=report["layers"],
            shape_signature=signature,
            eval={"perplexity": evaluation["perplexity"], "zero_shot": compact_zero_shot(evaluation["zero_shot"])},
            speed=speed,
            wall_s={"prune": prune_wall, "eval": eval_wall, "speed": speed_wall},
        )
        del pruned, plan
        gc.collect()
        return record

    def _base_record(self, cell: Cell) -> dict:
        return {
            "format": FORMAT_VERSION,
            "status": "done",
            "key": cell.key,
            "label": cell.label,
            "kind": cell.kind,
            "ratio": cell.ratio,
            "seed": cell.seed,
            "fingerprint": self.fingerprint,
            "eval_settings": self.eval_settings.to_dict(),
            "code": self.code,
            "finished_at": _now(),
        }

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Measure every unfinished cell, then write the outputs."""
        return self._run(compute=True)

    def report(self) -> dict:
        """Write the outputs from the finished cells only (nothing is measured)."""
        return self._run(compute=False)

    def _run(self, compute: bool) -> dict:
        from slimllm.bench.report import write_outputs

        spec = self.spec
        started = time.perf_counter()
        started_at = _now()
        previous = _previous_results(self.out)
        # The load average means something only when taken before measuring; a rebuilt report keeps the old one.
        machine = measure.machine_info(spec.threads) if compute else previous.get("machine")
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        cells = spec.cells()
        records: dict[str, dict] = {}
        todo = []
        for cell in cells:
            record = self.load_record(cell)
            if not self.redo and self.is_finished(cell, record):
                records[cell.key] = record
                if record.get("speed") and record.get("shape_signature"):
                    self._speed_cache.setdefault(record["shape_signature"], record["speed"])
            else:
                if compute and record is not None and record.get("status") == "done" and not self.redo:
                    self.log(f"bench: settings changed since {cell.key} was measured; measuring it again")
                todo.append(cell)
        self.log(f"bench: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run")
        skipped: list[str] = [] if compute else [c.key for c in todo]
        if compute and todo:
            with measure.torch_threads(spec.threads):
                self._load()
                bar = progress_bar(todo, desc="bench cells", unit="cell", disable=not self.progress)
                for index, cell in enumerate(bar):
                    elapsed_min = (time.perf_counter() - started) / 60
                    if spec.budget_minutes is not None and elapsed_min >= spec.budget_minutes:
                        skipped = [c.key for c in todo[index:]]
                        self.log(f"bench: time budget of {spec.budget_minutes:g} min used; {len(skipped)} cells left")
                        break
                    bar.set_postfix_str(cell.key)
                    finished = self.load_record(cell)  # another invocation sharing the folder may have done it
                    if not self.redo and self.is_finished(cell, finished):
                        records[cell.key] = finished
                        continue
                    record = self.run_dense(cell) if cell.kind == "dense" else self.run_cell(cell)
                    write_record(self._path(cell), record)
                    records[cell.key] = record
                    self.log(_one_line(record))
                bar.close()
        ordered = [records[c.key] for c in cells if c.key in records]
        invocations = list(previous.get("invocations", []))
        if compute:
            invocations.append(
                {
                    "started_at": started_at,
                    "command": self.command,
                    "wall_s": time.perf_counter() - started,
                    "cells_run": len(todo) - len(skipped),
                }
            )
        return write_outputs(
            spec,
            ordered,
            out=self.out,
            command=self.command,
            invocations=invocations,
            skipped=skipped,
            machine=machine or measure.machine_info(spec.threads),
        )


def code_version() -> dict:
    """A hash of the sources the numbers depend on (pruning, models, data, evaluation; not the
    CLI, fine-tuning or this benchmark's reporting) and the git commit, if any. Cells measured
    with different code show up in the report."""
    import hashlib
    import subprocess

    import slimllm

    root = Path(slimllm.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.suffix not in (".py", ".yaml") or relative.parts[0] in ("finetune", "commands", "bench"):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    try:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"src_sha256": digest.hexdigest()[:16], "git": git}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _previous_results(out: Path) -> dict:
    """An earlier results.json (its invocations, so resumed runs add up, and its machine), or {}."""
    try:
        previous = json.loads((out / RESULTS_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _one_line(record: dict) -> str:
    ppl = record["eval"]["perplexity"]
    parts = [f"{record['key']}:"] + [f"{src} {v['ppl']:.2f}" for src, v in ppl.items()]
    zs = record["eval"].get("zero_shot")
    if zs:
        parts.append(f"acc {100 * zs['mean']:.2f}")
    if record.get("prune"):
        parts.append(f"prune {record['prune']['wall_s']:.0f}s")
    speed = record.get("speed")
    if speed:
        parts.append(f"prefill ×{speed['prefill_speedup']:.2f} decode ×{speed['decode_speedup']:.2f}")
    return "bench: " + ", ".join(parts)


def run_bench(spec: BenchSpec, **kwargs) -> dict:
    """Run (or resume) the benchmark and write results.json, results.md and the plots."""
    return Bench(spec, **kwargs).run()
