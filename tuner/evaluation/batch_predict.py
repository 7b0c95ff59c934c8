"""`leukotune predict --out FILE`: batch prediction on Ray Data, over the cluster's workers.

The cells are a Ray dataset of file paths, one block per part; `map_batches` hands each block to a pool of actors
(`CellPredictor`), each holding the model once, which read, fit and score their cells through the very code of the
one-process path (`predict.predict_files`: data/ reads and normalises, `inference.probabilities` gives P(ALL) with the
registered version's temperature and threshold). Each actor takes one GPU when the cluster's nodes have GPUs, else
one CPU. The driver streams the results back block by block and writes each as a part file of the output
(batch_output.py), so a kill loses only the blocks in flight and a rerun resumes. Files must be visible at the same
path to every worker (one machine, or a shared file system).
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from leukotune.tuner.cluster.capacity import UNLIMITED, read_cluster_shape
from leukotune.tuner.cluster.ray_cluster import init_ray
from leukotune.tuner.evaluation.batch_output import SCHEMA, BatchOutput, Row
from leukotune.tuner.evaluation.inference import TrainedModel
from leukotune.tuner.tune.console import changing_line

DEFAULT_PART_SIZE = 1000
# Not on a terminal (a log file, CI) the progress line is printed again at most every this many seconds.
PLAIN_PROGRESS_EVERY_S = 30.0
UNREADABLE_LISTED = 20


@dataclass(frozen=True)
class BatchPlan:
    """What one run does: the files still to predict (absolute paths) and the rows of files that do not exist."""

    todo: list[str]
    missing: list[Row]
    already: int  # files of this listing that earlier runs classified


@dataclass
class BatchSummary:
    """The end of a run: what the output holds now, and what this run did."""

    output: str
    images: int
    classified: int
    unreadable: int
    all: int
    hem: int
    predicted: int  # by this run
    skipped: int  # already in the output
    seconds: float  # predicting: from the dataset's start (actors starting included) to the last part
    images_per_s: float
    startup_s: float  # joining or starting Ray, and sizing the actor pool
    actors: int
    device: str

    def lines(self, unreadable_rows: list[Row]) -> list[str]:
        lines = [f"unreadable: {row['file']}: {row['error']}" for row in unreadable_rows[:UNREADABLE_LISTED]]
        if len(unreadable_rows) > UNREADABLE_LISTED:
            lines.append(f"... and {len(unreadable_rows) - UNREADABLE_LISTED} more unreadable (the error column of "
                         f"{Path(self.output).name})")
        lines.append(f"{self.output}: {self.images} images, {self.classified} classified (ALL {self.all}, "
                     f"hem {self.hem}), {self.unreadable} unreadable (listed in its error column)")
        again = f"{self.skipped} already in the output were not predicted again" if self.skipped else ""
        if not self.predicted:
            lines.append(f"this run: nothing to predict{'; ' + again if again else ''}")
            return lines
        lines.append(f"this run: {self.predicted} predicted in {self.seconds:.1f} s ({self.images_per_s:.1f} "
                     f"images/s) by {self.actors} {self.device} actor(s), after {self.startup_s:.1f} s starting Ray"
                     + (f"; {again}" if again else ""))
        return lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_label(model_uri: str, version: str | None, tta: bool) -> str:
    """What predicted a row, written in its `model` column and checked on resume: the registered name and version
    (whichever alias led there), the logged model, or the URI; `+ TTA` when the rotations were averaged."""
    rest = model_uri.removeprefix("models:/")  # NAME@alias, NAME/N, or a logged model's id
    name = rest.split("@")[0] if "@" in rest else rest.rsplit("/", 1)[0] if "/" in rest else ""
    registered = model_uri.startswith("models:/") and name and version and version.startswith("version ")
    label = f"{name} {version}" if registered else version or model_uri
    return label + (" + TTA" if tta else "")


def plan_batch(files: list[tuple[Path, str | None]], output: BatchOutput, model: str) -> BatchPlan:
    """The listed files minus those the output already classified (by absolute path); a file that was unreadable
    is tried again."""
    done = output.read_done(model)
    todo, missing, already = [], [], 0
    for path, error in files:
        name = str(Path(path).absolute())
        if done.get(name, {}).get("class") is not None:
            already += 1
        elif error:
            missing.append({"file": name, "class": None, "p_all": None, "error": error, "model": model})
        else:
            todo.append(name)
    return BatchPlan(todo, missing, already)


class CellPredictor:
    """One Ray Data actor: the model, taken once from the object store onto the device Ray gave this actor."""

    def __init__(self, model_ref: list, model_label: str, tta: bool, batch_size: int) -> None:
        from leukotune.tuner.process import configure_process
        from leukotune.tuner.train.ray_sessions import assigned_device

        configure_process("worker")
        model: TrainedModel = ray.get(model_ref[0])
        self.model = model.to(assigned_device())
        self.model_label, self.tta, self.batch_size = model_label, tta, batch_size

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        from leukotune.tuner.evaluation.predict import predict_files

        rows = predict_files(self.model, [(Path(name), None) for name in batch["file"]], tta=self.tta,
                             batch_size=self.batch_size)
        return pa.Table.from_pylist([{"file": row.file, "class": row.label, "p_all": row.p_all, "error": row.error,
                                      "model": self.model_label} for row in rows], schema=SCHEMA)


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, and what each asks for."""

    size: int | tuple[int, int]
    num_cpus: float
    num_gpus: float

    @property
    def count(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[1]

    @property
    def device(self) -> str:
        return "GPU" if self.num_gpus else "CPU"


def plan_actors(blocks: int, log: Callable[[str], None]) -> ActorPlan:
    """One actor per GPU when the cluster's node types have GPUs, else one per CPU, at most one per block. A cluster
    that can add nodes starts with what is up and grows the pool as its autoscaler adds workers."""
    shape = read_cluster_shape(log)
    num_gpus = 1.0 if shape.has_gpus else 0.0
    bundle = {"CPU": 1.0, "GPU": num_gpus} if num_gpus else {"CPU": 1.0}
    capacity = shape.capacity(bundle)
    most = max(1, min(blocks, blocks if capacity == UNLIMITED else int(capacity)))
    if not shape.can_add_nodes:
        return ActorPlan(most, 1.0, num_gpus)
    return ActorPlan((1, most), 1.0, num_gpus)


def predict_on_ray(model: TrainedModel, model_label: str, plan: BatchPlan, output: BatchOutput, *,
                   address: str | None, tta: bool, batch_size: int, part_size: int,
                   log: Callable[[str], None]) -> tuple[BatchSummary, list[Row]]:
    """Predict `plan.todo` on Ray Data, a part file per block as results arrive, then merge the output; the
    summary, and the rows of this listing's files that could not be read."""
    started = time.monotonic()
    predicting = started
    output.clear_temporaries()
    number = output.next_part_number()
    if plan.missing:
        output.write_part(number, plan.missing)
        number += 1
    blocks = math.ceil(len(plan.todo) / part_size) if plan.todo else 0
    actors = ActorPlan(0, 0.0, 0.0)
    if blocks:
        init_ray(address, {}, log=log)
        actors = plan_actors(blocks, log)
        log(f"predicting {len(plan.todo)} images in {blocks} part(s) of up to {part_size} on {actors.count} "
            f"{actors.device} actor(s)" + (f"; {plan.already} already in {output.path.name}" if plan.already else ""))
        predicting = time.monotonic()
        results = _dataset(model, model_label, plan.todo, blocks, actors, tta, batch_size)
        progress = Progress(len(plan.todo))
        try:
            for table in results.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                rows = table.to_pylist()
                output.write_part(number, rows)
                number += 1
                progress.advance(rows)
        except BaseException:  # Ctrl-C, a lost actor or node: what was written stays, and a rerun resumes from it
            progress.close()
            log(f"{progress.done} of {len(plan.todo)} images written to {output.parts}/; run the same command "
                f"again to resume")
            raise
        progress.close()
    seconds = time.monotonic() - predicting
    merged = output.merge(model_label)
    todo_set = set(plan.todo) | {row["file"] for row in plan.missing}
    unreadable = [row for row in merged if row["class"] is None and row["file"] in todo_set]
    classes = Counter(row["class"] for row in merged if row["class"] is not None)
    return BatchSummary(str(output.path), len(merged), sum(classes.values()), len(merged) - sum(classes.values()),
                        classes["all"], classes["hem"], len(plan.todo), plan.already, seconds,
                        len(plan.todo) / seconds if plan.todo and seconds > 0 else 0.0,
                        predicting - started, actors.count, actors.device), unreadable


def _dataset(model: TrainedModel, model_label: str, files: list[str], blocks: int, actors: ActorPlan, tta: bool,
             batch_size: int) -> ray.data.Dataset:
    """Paths in `blocks` blocks -> a pool of CellPredictor actors; Ray Data's own progress bars stay off (the
    command draws one line)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    model_ref = ray.put(model.to("cpu"))
    paths = ray.data.from_items([{"file": name} for name in files], override_num_blocks=blocks)
    with warnings.catch_warnings():
        # max_restarts=0: Ray Data's default restarts a dead actor, and Ray's core then prints an error line per
        # actor because its constructor arguments live in the object store. A run that loses an actor stops; the
        # rerun resumes from the parts written. Ray 2.60 deprecates passing it this way (removal in 2.64).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return paths.map_batches(
            CellPredictor, fn_constructor_args=([model_ref], model_label, tta, batch_size), batch_size=None,
            batch_format="numpy", compute=ActorPoolStrategy(size=actors.size) if isinstance(actors.size, int)
            else ActorPoolStrategy(min_size=actors.size[0], max_size=actors.size[1]),
            num_cpus=actors.num_cpus, num_gpus=actors.num_gpus or None, max_restarts=0)


class Progress:
    """`predicted 1200 of 20000 images (6%), 412 images/s, 1 unreadable`: one line that changes on a terminal,
    a plain line every PLAIN_PROGRESS_EVERY_S otherwise."""

    def __init__(self, total: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.show = changing_line(self.stream)
        self.total, self.done, self.unreadable = total, 0, 0
        self.started = self.last_plain = time.monotonic()

    def advance(self, rows: list[Row]) -> None:
        self.done += len(rows)
        self.unreadable += sum(row["class"] is None for row in rows)
        now = time.monotonic()
        if self.stream.isatty() or now - self.last_plain >= PLAIN_PROGRESS_EVERY_S:
            self.last_plain = now
            self.show(self.text(now))

    def text(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        return (f"predicted {self.done} of {self.total} images ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.0f} images/s, {self.unreadable} unreadable")

    def close(self) -> None:
        if self.stream.isatty() and self.done:
            self.show(self.text(time.monotonic()), final=True)
