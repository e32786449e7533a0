"""``vlprompt datasets check``: validate a dataset's layout, split sizes, files and class names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlprompt.data.benchmarks import get_benchmark
from vlprompt.data.images import check_images, format_list
from vlprompt.data.load import CUSTOM_PREFIXES, load_dataset
from vlprompt.data.readers import load_benchmark
from vlprompt.data.records import DatasetSplits


@dataclass
class CheckReport:
    """What ``check_dataset`` found.

    Attributes:
        name: dataset name.
        root: folder that record paths are relative to.
        num_classes: ``(found, expected)``; expected is ``None`` for custom data.
        counts: split → ``(found, expected)``.
        missing: image paths listed by the split but not on disk.
        unreadable: with ``images=True``, files that exist but do not decode.
        name_mismatches: ``(relative path, stored name, name the official rule gives)`` examples.
        num_name_mismatches: how many records disagree with the official class-name rule.
    """

    name: str
    root: str
    num_classes: tuple[int, int | None]
    counts: dict[str, tuple[int, int | None]]
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    name_mismatches: list[tuple[str, str, str]] = field(default_factory=list)
    num_name_mismatches: int = 0

    @property
    def ok(self) -> bool:
        """True when every file exists and every count matches the official one."""
        counts_ok = all(exp is None or found == exp for found, exp in self.counts.values())
        classes_ok = self.num_classes[1] is None or self.num_classes[0] == self.num_classes[1]
        return counts_ok and classes_ok and not (self.missing or self.unreadable or self.num_name_mismatches)

    def lines(self) -> list[str]:
        """Human-readable report, one line per fact."""
        out = [f"dataset {self.name}: images under {self.root}"]
        found, exp = self.num_classes
        out.append(f"  classes: {found}" + ("" if exp is None else f" (official {exp})" + _mark(found == exp)))
        for split, (n, e) in self.counts.items():
            out.append(f"  {split:5s}: {n}" + ("" if e is None else f" (official {e})" + _mark(n == e)))
        if self.missing:
            out.append(f"  MISSING {len(self.missing)} file(s):")
            out += [f"    {p}" for p in self.missing[:50]]
            if len(self.missing) > 50:
                out.append(f"    … and {len(self.missing) - 50} more")
        if self.unreadable:
            out.append(f"  UNREADABLE {len(self.unreadable)} file(s): {format_list(self.unreadable)}")
        if self.num_name_mismatches:
            ex = "; ".join(f"{p}: {a!r} vs rule {b!r}" for p, a, b in self.name_mismatches)
            out.append(f"  CLASS NAMES: {self.num_name_mismatches} record(s) disagree with the official rule: {ex}")
        out.append("  OK" if self.ok else "  PROBLEMS FOUND")
        return out


def _mark(ok: bool) -> str:
    return "  ok" if ok else "  MISMATCH"


def check_dataset(spec: str, root: str | None = None, *, images: bool = False,
                  classnames_file: str | None = None, allow_outside_root: bool = False) -> CheckReport:
    """Load ``spec`` and check it: official counts, existence of every file, class-name rules, decodability.

    Args:
        spec: benchmark name or custom spec (as for :func:`vlprompt.data.load_dataset`).
        root: data root.
        images: also decode every image (slow on large datasets).
        classnames_file: as for ``load_dataset``.
        allow_outside_root: accept CSV/split-file paths outside the dataset folder (as for ``load_dataset``).

    Raises:
        DataError: the layout cannot be read at all (missing folder, split file, ...).
    """
    bench = None
    if spec.startswith(CUSTOM_PREFIXES):
        splits: DatasetSplits = load_dataset(spec, root, classnames_file=classnames_file,
                                             allow_outside_root=allow_outside_root)
    else:
        bench = get_benchmark(spec)
        splits = load_benchmark(spec, root, check_first=False, allow_outside_root=allow_outside_root)
    expected = bench.counts if bench else (None, None, None)
    counts = {s: (len(getattr(splits, s)), e) for s, e in zip(("train", "val", "test"), expected)}
    records = list({r.path: r for part in (splits.train, splits.val, splits.test) for r in part}.values())
    report = CheckReport(splits.name, splits.root, (splits.num_classes, bench.num_classes if bench else None), counts)
    report.missing = [r.path for r in records if not os.path.isfile(r.path)]
    if bench and bench.name_from_path:
        for r in records:
            rel = os.path.relpath(r.path, splits.root)
            want = bench.name_from_path(rel)
            if want != r.classname:
                report.num_name_mismatches += 1
                if len(report.name_mismatches) < 5:
                    report.name_mismatches.append((rel, r.classname, want))
    if images:
        present = [r for r in records if r.path not in set(report.missing)]
        ok = {r.path for r in check_images(present, strict=False)}
        report.unreadable = [r.path for r in present if r.path not in ok]
    return report
