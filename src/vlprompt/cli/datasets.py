"""``vlprompt datasets list`` and ``vlprompt datasets check NAME --root DIR``."""

from __future__ import annotations

import argparse

from vlprompt.data.benchmarks import BENCHMARKS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``datasets`` command with its ``list`` and ``check`` sub-commands."""
    p = subparsers.add_parser("datasets", help="list the built-in benchmark datasets or check a dataset's files",
                              description="List the built-in benchmark datasets, or check that a dataset is laid out as "
                                          "expected and has the official split sizes.")
    sub = p.add_subparsers(dest="datasets_command", metavar="{list,check}")
    p_list = sub.add_parser("list", help="list the built-in benchmark datasets")
    p_list.add_argument("--sources", action="store_true", help="also print where each dataset's files come from")
    p_check = sub.add_parser("check", help="validate a dataset's layout and split sizes")
    p_check.add_argument("name", help="benchmark name, or folder:PATH, csv:PATH, split:PATH.json")
    p_check.add_argument("--root", default=None, help="data root ($DATA) holding the benchmark folders")
    p_check.add_argument("--classnames", default=None, help="file with readable class names")
    p_check.add_argument("--images", action="store_true", help="also decode every image (slow)")
    p_check.add_argument("--allow-outside-root", action="store_true",
                         help="accept CSV/split-file paths that point outside the dataset folder")
    p.set_defaults(func=run, _parser=p)


def _list(sources: bool) -> int:
    header = f"{'name':16s} {'folder':22s} {'split source':38s} {'classes':>7s} {'train/val/test':>20s}  template"
    print(header)
    for b in BENCHMARKS.values():
        split = b.split_file or {"fgvc_lists": "images_variant_*.txt", "imagenet": "images/{train,val}/<wnid>",
                                 "imagenet_v2": "<0..999>/ + classnames.txt"}.get(b.reader, "<wnid>/ + classnames.txt")
        counts = "/".join("-" if c is None else str(c) for c in b.counts)
        print(f"{b.name:16s} {b.dataset_dir + '/':22s} {split:38s} {b.num_classes:7d} {counts:>20s}  {b.template}")
        if sources:
            print(f"    files: {b.source}\n    class names: {b.classname_rule}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``datasets list`` or ``datasets check``; ``check`` exits 1 when it finds problems."""
    if args.datasets_command == "list":
        return _list(args.sources)
    if args.datasets_command == "check":
        from vlprompt.data.check import check_dataset

        report = check_dataset(args.name, args.root, images=args.images, classnames_file=args.classnames,
                               allow_outside_root=args.allow_outside_root)
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    args._parser.print_help()
    return 2
