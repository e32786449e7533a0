"""``--config FILE``: a command's settings from a YAML or JSON file, command-line flags overriding them.

Format (also in ``vlprompt train --help`` and the README):

- a mapping of settings keyed by the flag's name without the leading dashes, ``-`` or ``_`` alike (``shots``,
  ``batch_size`` or ``batch-size``, ``n_ctx``) or by the flag's destination where it differs (``classnames_file``
  for ``--classnames``); on/off flags take ``true``/``false`` (``flip: false`` is ``--no-flip``); ``learner_opt``
  takes a list of ``KEY=VALUE`` strings; ``null`` leaves a setting at its default (``shots: null`` means all images,
  as a run folder records ``--shots 0``);
- optionally grouped in sections, for readability only: ``data``, ``backbone``, ``learner``, ``train`` and
  ``output`` (a section may hold any setting). ``learner`` also takes any option of the method's config
  (``kg_weight``, ``meta_reduction``, ``init_std``, …; what ``--learner-opt`` sets), ``train`` the
  :class:`~vlprompt.engine.config.TrainConfig` field names (``num_workers`` for ``--workers``), ``backbone`` its
  ``name`` and ``dataset`` its ``spec``;
- a finished run's own ``config.json`` is such a file: it re-runs that run. Its recorded structure maps back onto
  the flags (``dataset.spec`` → ``--dataset``, ``backbone.name`` → ``--backbone``, ``learner`` and ``train`` as
  sections, ``data`` holds ``--root``/``--classnames``/…); :data:`INFORMATIONAL`, :data:`DATASET_INFO` and
  :data:`BACKBONE_INFO` list the entries that are records, not settings; the recorded few-shot lists, class names
  and weight fingerprint are checked (:mod:`vlprompt.engine.replay`); values the run *resolved* are re-resolved
  when the command line changes what they came from (:func:`~vlprompt.cli.config_record.drop_resolved`); each command maps its own
  ``learner`` entries (:func:`train_record`, :func:`linear_probe_record`, :func:`zeroshot_record`);
- paths are read as on the command line (relative to the working directory).

Precedence: a flag given on the command line > the file > the defaults. "Given on the command line" is known
exactly: :func:`enable_config` makes every default of the command's parser :data:`argparse.SUPPRESS`, so the parsed
namespace holds only what was typed, and :func:`apply_config` fills in the file's values, then the defaults.
Every value goes through the flag's own ``type`` converter and ``choices``, so a file is validated exactly as the
command line is; an unknown key, a wrong type or a malformed file is one :class:`~vlprompt.errors.ConfigError`
naming the file, the key and what is valid.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from vlprompt.cli.config_read import (
    BACKBONE_INFO,
    DATASET_INFO,
    INFORMATIONAL,
    SECTIONS,
    TRAIN_ALIASES,
    FlagTable,
    Reading,
    check_learner_value,
    convert,
    flag_name,
    method_defaults,
    read_config_file,
    read_settings,
)
from vlprompt.cli.config_record import (
    BACKBONE_DESTS,
    DATA_DESTS,
    LEARNER_FLAGS,
    drop_resolved,
    linear_probe_record,
    recorded_pretrained_tag,
    replay_expectations,
    train_record,
    zeroshot_record,
)
from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)

#: Short text for ``--config``'s help.
CONFIG_HELP = ("YAML (.yaml/.yml) or JSON (.json) file of settings, keyed by flag name (see 'config files' below); "
               "flags given on the command line override it. A finished run's config.json re-runs that run")

#: The ``--help`` epilog of every command with ``--config`` (argparse reflows it).
CONFIG_EPILOG = (
    "config files: --config FILE reads YAML (.yaml, .yml) or JSON (.json). It is a mapping of settings keyed by "
    "the flag's name without dashes, '-' or '_' alike (dataset, shots, seed, backbone, pretrained, method, n_ctx, "
    "lr, epochs, batch_size or batch-size, ...); on/off flags take true/false (flip: false is --no-flip); null "
    "keeps the default; paths are read as on the command line. Settings may be grouped in sections data:, backbone:, learner:, train:, output: (for "
    "readability; learner: also takes any option of the method's config such as kg_weight, train: the TrainConfig "
    "names such as num_workers). Precedence: command-line flag > file > default. Unknown keys and wrong types are "
    "refused, naming the key. A run folder's config.json is accepted as it is and re-runs that run (same images, "
    "same result); its informational entries (versions, threads, started, resumes, the dataset's name, root, "
    "classes, template and info, the backbone's activation, fingerprint and sizes) are not settings, and the "
    "recorded few-shot images, class names and weight fingerprint are checked: a re-run that would draw other "
    "images or build other weights is refused. Example: vlprompt train --config runs/a/config.json --out runs/b "
    "--seed 2"
)


# ----------------------------------------------------------------------------------------------- the parser side


class _ConfigAction(argparse.Action):
    """``--config FILE``: stores the path; a file may supply the command's required arguments, so they are
    checked after the file is merged (by :func:`apply_config`) rather than by argparse."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        for action in parser._actions:  # main() builds the parser per invocation: nothing outlives this parse
            action.required = False  # apply_config checks them once the file is merged


def _keys_of(action: argparse.Action) -> set[str]:
    keys = {action.dest}
    inverted = action.nargs == 0 and action.const is False  # --no-flip stores flip=False: only 'flip' names it
    if not inverted:
        keys |= {o.lstrip("-").replace("-", "_") for o in action.option_strings if o.startswith("--")}
    return keys


def enable_config(p: argparse.ArgumentParser, record: Callable[[dict, Reading], set[str]] | None = None) -> None:
    """Add ``--config FILE`` to command parser ``p`` (call it after every other argument and ``set_defaults(func=)``).

    Every argument default becomes :data:`argparse.SUPPRESS` (the real defaults are kept here), and ``func`` is
    wrapped to run :func:`apply_config` first: a namespace parsed by ``p`` holds only what was typed until then.

    Args:
        p: the command's parser.
        record: maps the command's own entries of a recorded run (e.g. linear probe's ``learner``) onto its flags
            and returns the top-level keys it consumed (:func:`train_record`, :func:`linear_probe_record`, …).
    """
    p.add_argument("--config", metavar="FILE", default=None, action=_ConfigAction, help=CONFIG_HELP)
    p.epilog = (p.epilog + "\n\n" if p.epilog else "") + CONFIG_EPILOG
    actions: dict[str, argparse.Action] = {}
    defaults: dict[str, Any] = {}
    appends: set[str] = set()
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or a.dest in ("config", argparse.SUPPRESS):
            continue
        for k in _keys_of(a):
            actions[k] = a
        defaults[a.dest] = a.default
        if isinstance(a, argparse._AppendAction):
            appends.add(a.dest)  # the copy argparse makes of a SUPPRESS default could not be appended to
        else:
            a.default = argparse.SUPPRESS
    exclusive = [{a.dest for a in g._group_actions} for g in p._mutually_exclusive_groups]
    table = FlagTable(actions, defaults, [a for a in p._actions if a.required], appends, record, exclusive)
    func = p.get_default("func")

    def run_with_config(args: argparse.Namespace) -> int:
        return func(apply_config(args))

    p.set_defaults(func=run_with_config, _config_table=table)


def _given(args: argparse.Namespace, table: FlagTable) -> set[str]:
    """The destinations given on the command line."""
    return {d for d in table.defaults if (getattr(args, d, None) if d in table.appends else hasattr(args, d))}


# ------------------------------------------------------------------------------------------------------- merging


def _warn_environment(record: dict, path: str) -> None:
    """Warn when versions or the CPU thread count differ from the record (results may differ in the last bits)."""
    import torch

    from vlprompt.engine.run import _versions

    recorded = record.get("versions") or {}
    now = _versions()
    diffs = [f"{k} {recorded[k]} → {now[k]}" for k in ("vlprompt", "torch", "open_clip") if k in recorded
             and recorded[k] != now.get(k)]
    if diffs:
        _logger.warning("%s was recorded with other versions (%s): the re-run may not reproduce it exactly",
                        path, ", ".join(diffs))
    threads = record.get("threads")
    if isinstance(threads, int) and threads != torch.get_num_threads() and str(record.get("device", "")) == "cpu":
        _logger.warning("%s ran with %d CPU threads, this process uses %d: results may differ in the last bits "
                        "(set OMP_NUM_THREADS=%d to reproduce it exactly)", path, threads, torch.get_num_threads(),
                        threads)


def apply_config(args: argparse.Namespace) -> argparse.Namespace:
    """Merge ``args.config`` (if any) into ``args``: command line > file > defaults; then check required flags.

    ``args`` must come from a parser prepared by :func:`enable_config`. Returns the same namespace, completed.

    Raises:
        ConfigError: a problem with the file (see :func:`read_settings`), an option the method does not have, or a
            required setting given neither on the command line nor in the file.
    """
    table: FlagTable = args._config_table
    given = _given(args, table)
    path = getattr(args, "config", None)
    reading = read_settings(path, table) if path else None
    values = dict(reading.values) if reading else {}
    learner = dict(reading.learner) if reading else {}
    if reading and reading.record:
        drop_resolved(reading.record, given, values, learner, getattr(args, "method", None))
        if "pretrained" not in values and "pretrained" not in given:
            values["pretrained"] = recorded_pretrained_tag(reading.record)
    if "n_ctx" in given and "ctx_init" not in given:  # --n-ctx alone means M random vectors (its documented meaning)
        values.pop("ctx_init", None)
        learner.pop("ctx_init", None)
    if "ctx_init" in given and "n_ctx" not in given:  # --ctx-init sets M to its word count
        values.pop("n_ctx", None)
    for group in table.exclusive:  # e.g. zeroshot's --template / --templates
        if len(group & set(values)) > 1:
            raise ConfigError(f"--config '{path}': {', '.join(sorted(group & set(values)))} exclude each other; "
                              "keep one.")
        if group & given:
            for dest in group - given:
                values.pop(dest, None)
    for dest, value in values.items():
        if dest not in given:
            setattr(args, dest, value)
    for dest, default in table.defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
    missing = [a for a in table.required if getattr(args, a.dest, None) is None]
    if missing:
        names = ", ".join(flag_name(a) for a in missing)
        where = f" or in --config '{path}' ({', '.join(a.dest for a in missing)})" if path else ""
        raise ConfigError(f"the following arguments are required: {names}; give them on the command line{where}.")
    if learner:
        _merge_learner(args, learner, reading)
    if reading and reading.record:
        args.replay_expect = replay_expectations(reading, given)
        _warn_environment(reading.record, path)
        _logger.info("settings from %s (command line overrides: %s)", path, ", ".join(sorted(given)) or "none")
    return args


def _merge_learner(args: argparse.Namespace, learner: dict, reading: Reading) -> None:
    """Method-config options from the file's ``learner`` section: into the learner flags where one exists, else
    ``args.learner_config`` (read by :func:`vlprompt.cli.common.learner_options`); checked against the method."""
    method = getattr(args, "method", None)
    if method is None:
        raise ConfigError(f"--config '{reading.path}': section 'learner' sets {', '.join(sorted(learner))}, but "
                          "this command has no prompt learner.")
    defaults = method_defaults(method)
    extra = {}
    for key, value in learner.items():
        if key not in defaults:
            raise reading.unknown(key, sorted(defaults), "learner")
        extra[key] = check_learner_value(method, key, value, defaults[key], reading.where(f"learner.{key}"))
    args.learner_config = extra



__all__ = ["CONFIG_HELP", "CONFIG_EPILOG", "read_config_file", "enable_config", "apply_config", "convert",
           "read_settings", "train_record", "linear_probe_record", "zeroshot_record", "SECTIONS", "INFORMATIONAL",
           "DATASET_INFO", "BACKBONE_INFO", "TRAIN_ALIASES", "DATA_DESTS", "BACKBONE_DESTS", "LEARNER_FLAGS"]
