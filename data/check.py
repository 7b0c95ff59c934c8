"""`leukotune data check`: what a dataset folder holds, what was skipped and why, and whether training can use it."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .cnmc import CLASS_NAMES, CellRecord, Manifest, SkippedFile, fold_sort_key, load_manifest
from .errors import DatasetError, ImageError
from .images import probe_image

__all__ = ["CheckReport", "check_dataset", "format_report"]


@dataclass
class CheckReport:
    """Counts over the readable cells; `usable` is False when nothing is readable or a class is missing."""

    root: str
    counts: dict[str, int] = field(default_factory=lambda: {"all": 0, "hem": 0})
    folds: dict[str, dict[str, int]] = field(default_factory=dict)
    subject_counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    usable: bool = False

    @property
    def subjects(self) -> int:
        return len(self.subject_counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the ``--json`` output)."""
        return {
            "root": self.root, "usable": self.usable, "counts": dict(self.counts), "subjects": self.subjects,
            "subject_counts": dict(self.subject_counts), "folds": {k: dict(v) for k, v in self.folds.items()},
            "sizes": dict(self.sizes), "modes": dict(self.modes),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped], "problems": list(self.problems),
        }


def check_dataset(root: str | os.PathLike[str]) -> CheckReport:
    """Index `root` and fully decode every image (so truncated files are caught); never raises for bad data."""
    report = CheckReport(root=str(root))
    try:
        manifest = load_manifest(root)
    except DatasetError as exc:
        report.problems.append(str(exc))
        return report
    report.root = manifest.root
    report.skipped = list(manifest.skipped)
    readable = _probe_all(manifest, report)
    for record in readable:
        name = CLASS_NAMES[record.label]
        report.counts[name] += 1
        report.folds.setdefault(record.fold, {"all": 0, "hem": 0})[name] += 1
    report.folds = dict(sorted(report.folds.items(), key=lambda item: fold_sort_key(item[0])))
    report.subject_counts = dict(sorted(Counter(r.subject for r in readable).items()))
    report.skipped.sort(key=lambda s: s.path)
    report.problems.extend(_problems(report, readable))
    report.usable = all(report.counts.values())
    return report


def _probe_all(manifest: Manifest, report: CheckReport) -> list[CellRecord]:
    """Records whose image decodes; sizes and modes are tallied, failures added to the skipped list."""
    readable: list[CellRecord] = []
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for record in manifest.records:
        try:
            (width, height), mode = probe_image(record.path)
        except ImageError as exc:
            report.skipped.append(SkippedFile(record.path, exc.reason))
            continue
        readable.append(record)
        sizes[f"{width}x{height}"] += 1
        modes[mode] += 1
    report.sizes, report.modes = dict(sizes.most_common()), dict(modes.most_common())
    return readable


def _problems(report: CheckReport, readable: list[CellRecord]) -> list[str]:
    """Warnings a user should read before training; the first two also make the dataset unusable."""
    problems = []
    if not readable:
        problems.append("no image could be decoded")
    for name in ("all", "hem"):
        if readable and report.counts[name] == 0:
            problems.append(f"no readable {name} cells: a classifier needs both classes")
    for name, label in (("all", 1), ("hem", 0)):
        subjects = {r.subject for r in readable if r.label == label}
        if len(subjects) == 1:
            problems.append(f"only one {name} subject: the default subject split needs at least two per class")
    if report.skipped:
        problems.append(f"{len(report.skipped)} files skipped (see the list)")
    if len(report.sizes) > 1 or (report.sizes and "450x450" not in report.sizes):
        problems.append(f"image sizes other than 450x450 ({', '.join(report.sizes)}); they will be resized")
    if set(report.modes) - {"RGB"}:
        problems.append(f"image modes other than RGB ({', '.join(report.modes)}); they will be converted")
    return problems


def format_report(report: CheckReport) -> str:
    """Readable summary: counts, folds, sizes, problems and the first skipped files with their reasons."""
    lines = [f"dataset: {report.root}",
             f"usable: {'yes' if report.usable else 'NO'}",
             f"cells: {report.counts['all']} ALL, {report.counts['hem']} hem; {report.subjects} subjects"]
    for fold, counts in report.folds.items():
        lines.append(f"  fold {fold}: {counts['all']} ALL, {counts['hem']} hem")
    if report.sizes:
        lines.append("sizes: " + ", ".join(f"{size} ({n})" for size, n in report.sizes.items()))
        lines.append("modes: " + ", ".join(f"{mode} ({n})" for mode, n in report.modes.items()))
    lines += [f"problem: {problem}" for problem in report.problems]
    if report.skipped:
        lines.append(f"skipped ({len(report.skipped)}):")
        shown = report.skipped[:20]
        lines += [f"  {s.path}: {s.reason}" for s in shown]
        if len(report.skipped) > len(shown):
            lines.append(f"  ... and {len(report.skipped) - len(shown)} more (--json lists all)")
    return "\n".join(lines)
