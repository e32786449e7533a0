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
  when the command line changes what they came from (:func:`_record_derived`); each command maps its own
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
import difflib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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

#: Sections: mappings whose entries are settings (any flag), with the extra names each accepts.
SECTIONS = ("data", "backbone", "learner", "train", "output", "dataset")

#: Record entries that are not settings (written for the record, ignored on reading; ``fewshot`` is checked).
INFORMATIONAL = {"versions", "threads", "started", "resumes", "fewshot", "evaluated_from", "source_dataset"}
#: Entries of a recorded ``dataset`` mapping besides ``spec`` (``classnames`` is checked).
DATASET_INFO = {"name", "root", "num_classes", "classnames", "template", "info"}
#: Entries of a recorded ``backbone`` mapping besides ``name`` and ``pretrained`` (``fingerprint`` is checked).
BACKBONE_INFO = {"activation", "fingerprint", "token_dim", "embed_dim"}
#: ``TrainConfig`` field → flag destination, where they differ.
TRAIN_ALIASES = {"num_workers": "workers"}
#: Flags that choose which images a run draws: overriding one skips the check of the recorded few-shot lists.
#: (``--root`` is not one: the lists are relative to the dataset folder, so data moved elsewhere is still checked.)
DATA_DESTS = ("dataset", "shots", "seed", "subsample", "classnames_file", "fewshot_file", "strict",
              "allow_outside_root")
#: Flags that choose the backbone's weights: overriding one skips the check of the recorded fingerprint.
BACKBONE_DESTS = ("backbone", "pretrained", "precision")
#: Learner flags (their values are learner options).
LEARNER_FLAGS = ("n_ctx", "ctx_init", "csc", "class_token_position")


# ----------------------------------------------------------------------------------------------------- reading


class _UniqueKeyLoader:
    """PyYAML SafeLoader that refuses duplicate keys (built lazily: PyYAML is imported only for a YAML file)."""

    _cls = None

    @classmethod
    def get(cls):
        if cls._cls is None:
            import yaml

            class Loader(yaml.SafeLoader):
                pass

            def mapping(loader, node, deep=False):
                keys = set()
                for key_node, _ in node.value:
                    key = loader.construct_object(key_node, deep=deep)
                    if key in keys:
                        raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                    keys.add(key)
                return loader.construct_mapping(node, deep)

            Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
            cls._cls = Loader
        return cls._cls


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML or JSON config file.

    ``.json`` files are read as JSON; ``.yaml``/``.yml`` and any other name as YAML (a superset of JSON). Duplicate
    keys are refused (JSON and YAML parsers silently keep the last one).

    Raises:
        ConfigError: the file is missing, unreadable, malformed, or does not hold a mapping.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--config '{path}': no such file (give a YAML or JSON file of settings, e.g. a run "
                          "folder's config.json).")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config '{path}': cannot read it ({e}).") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_json_pairs)
        else:
            import yaml

            data = yaml.load(text, Loader=_UniqueKeyLoader.get())  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"--config '{path}': {e}; each setting may appear once.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config '{path}' is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}.") from None
    except Exception as e:  # yaml.YAMLError (its message names the line)
        msg = " ".join(str(e).split())
        raise ConfigError(f"--config '{path}' is not valid YAML: {msg}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config '{path}' holds a {type(data).__name__}, not a mapping of settings "
                          "(e.g. 'shots: 16' lines in YAML, or a JSON object).")
    return data


# ----------------------------------------------------------------------------------------------- the parser side


@dataclass
class _Table:
    """What :func:`enable_config` learned about a command's parser."""

    actions: dict[str, argparse.Action]  # accepted key → action (dest and flag names, '-' as '_')
    defaults: dict[str, Any]  # dest → the real default (the parser's are SUPPRESS)
    required: list[argparse.Action]
    appends: set[str] = field(default_factory=set)  # dests of append actions (default [], "given" = non-empty)
    record: Callable[[dict, _Reading], set[str]] | None = None  # maps a command's own recorded entries
    exclusive: list[set[str]] = field(default_factory=list)  # dests of each mutually exclusive group


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


def enable_config(p: argparse.ArgumentParser, record: Callable[[dict, _Reading], set[str]] | None = None) -> None:
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
    table = _Table(actions, defaults, [a for a in p._actions if a.required], appends, record, exclusive)
    func = p.get_default("func")

    def run_with_config(args: argparse.Namespace) -> int:
        return func(apply_config(args))

    p.set_defaults(func=run_with_config, _config_table=table)


def _given(args: argparse.Namespace, table: _Table) -> set[str]:
    """The destinations given on the command line."""
    return {d for d in table.defaults if (getattr(args, d, None) if d in table.appends else hasattr(args, d))}


# ------------------------------------------------------------------------------------------- validating values

_TYPE_NAMES = {int: "an integer", float: "a number", None: "a string"}


def _describe(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true or false"
    if isinstance(action, argparse._AppendAction):
        return "a list of strings"
    return _TYPE_NAMES.get(action.type, "a string")


def _flag(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.dest)


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from a config file, checked and converted as argparse would convert the flag's text.

    Args:
        action: the flag's argparse action.
        value: the YAML/JSON value (``None``: keep the default; never passed here).
        where: ``"FILE: key 'name'"`` for the error message.

    Raises:
        ConfigError: wrong type or invalid value, naming ``where``, the flag and what it expects.
    """

    def bad(reason: str, expected: bool = True) -> ConfigError:
        if not expected:  # the flag's own converter explained it (e.g. --method's close matches)
            return ConfigError(f"{where} ({_flag(action)}): {reason}.")
        return ConfigError(f"{where} ({_flag(action)}): {reason}; expected {_describe(action)}"
                           + (f", one of {', '.join(map(str, action.choices))}" if action.choices else "") + ".")

    if action.nargs == 0:  # on/off flags: true/false only (a string "false" would be truthy)
        if not isinstance(value, bool):
            raise bad(f"got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad(f"got {value!r}")
        return [_convert_text(action, v, bad) for v in items]
    if isinstance(value, (list, dict)):
        raise bad(f"got a {type(value).__name__}")
    if isinstance(value, bool) or (action.type is None and not isinstance(value, str)):
        raise bad(f"got {value!r}")
    return _convert_text(action, value if isinstance(value, str) else repr(value), bad)


def _convert_text(action: argparse.Action, text: str, bad: Callable[..., ConfigError]) -> Any:
    try:
        value = action.type(text) if action.type else text
    except argparse.ArgumentTypeError as e:
        raise bad(" ".join(str(e).split()).rstrip("."), expected=False) from None
    except (TypeError, ValueError):
        raise bad(f"got {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise bad(f"got {value!r}")
    return value


# -------------------------------------------------------------------------------------------------- reading keys


@dataclass
class _Reading:
    """The settings read from one file (destination → value), and what a re-run of a record must check."""

    path: str
    table: _Table
    values: dict[str, Any] = field(default_factory=dict)
    learner: dict[str, Any] = field(default_factory=dict)  # method-config options (beyond the learner flags)
    record: dict = field(default_factory=dict)  # the file itself when it is a run record (has 'versions')
    seen: dict[str, str] = field(default_factory=dict)  # dest → key it was read from (duplicates across sections)

    def where(self, key: str) -> str:
        return f"--config '{self.path}': key '{key}'"

    def unknown(self, key: str, valid: list[str], section: str | None = None) -> ConfigError:
        close = difflib.get_close_matches(key.replace("-", "_"), valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        inside = f" in section '{section}'" if section else ""
        return ConfigError(f"--config '{self.path}': unknown key '{key}'{inside}.{hint} Valid keys: "
                           f"{', '.join(sorted(valid))}.")

    def set(self, key: str, value: Any, section: str | None = None) -> None:
        """Read one setting ``key: value`` (``section``: the section it is in, for messages)."""
        name = key.replace("-", "_")
        action = self.table.actions.get(name)
        if action is None and self.record and value in (None, False):
            return  # a recorded entry this command has no flag for, at its "not used" value (zeroshot's shots)
        if action is None:
            raise self.unknown(key, self.valid_keys(section), section)
        label = f"{section}.{key}" if section else key
        if action.dest in self.seen:
            raise ConfigError(f"--config '{self.path}': '{label}' and '{self.seen[action.dest]}' both set "
                              f"{_flag(action)}; keep one.")
        self.seen[action.dest] = label
        if value is None:
            if action.dest == "shots":  # a run records --shots 0 (all images) as null
                self.values["shots"] = 0
            return
        self.values[action.dest] = convert(action, value, self.where(label))

    def valid_keys(self, section: str | None = None) -> list[str]:
        keys = set(self.table.actions)
        if section is None:
            return sorted(keys | set(SECTIONS) | INFORMATIONAL)
        if section == "dataset":
            return sorted({"spec"} | DATASET_INFO)
        if section == "backbone":
            return sorted(keys | {"name"} | BACKBONE_INFO)
        if section == "train":
            return sorted(keys | set(TRAIN_ALIASES))
        if section == "learner":
            return sorted(keys | {"<any option of the method's config>"})
        return sorted(keys)


def _section(reading: _Reading, name: str, entries: Mapping) -> None:
    """Read section ``name`` of a file."""
    for key, value in entries.items():
        key = str(key)
        k = key.replace("-", "_")
        if name == "dataset":  # the recorded form: {"spec": --dataset, name/root/classes/…: informational}
            if k == "spec":
                reading.set("dataset", value, "dataset")
            elif k not in DATASET_INFO:
                raise reading.unknown(key, reading.valid_keys("dataset"), "dataset")
        elif name == "backbone" and k == "name":
            reading.set("backbone", value, "backbone")
        elif name == "backbone" and k == "pretrained" and value is None and "versions" in reading.record:
            reading.seen["pretrained"] = "backbone.pretrained"  # recorded None: see _record_pretrained
        elif name == "backbone" and k in BACKBONE_INFO:
            continue
        elif name == "train" and k in TRAIN_ALIASES:
            reading.set(TRAIN_ALIASES[k], value, "train")
        elif name == "train" and reading.record and k not in reading.table.actions:
            _logger.debug("%s: train.%s has no flag in this command; ignored", reading.path, k)  # e.g. linear probe
        elif name == "learner" and k not in reading.table.actions:
            if k in reading.learner:
                raise ConfigError(f"--config '{reading.path}': learner option '{key}' appears twice; keep one.")
            reading.learner[k] = value  # checked against the method's config once the method is known
        else:
            reading.set(key, value, name)


def read_settings(path: str, table: _Table) -> _Reading:
    """Read config file ``path`` into flag destinations (not yet merged with the command line)."""
    data = read_config_file(path)
    reading = _Reading(str(path), table)
    if "versions" in data:  # a run folder's config.json (vlprompt always records the versions)
        reading.record = data
    if "config" in data:
        raise ConfigError(f"--config '{path}': key 'config': config files do not include other config files.")
    if reading.record and table.record:
        consumed = table.record(data, reading)  # the command's own recorded entries
        data = {k: v for k, v in data.items() if k not in consumed}
    for key, value in data.items():
        key = str(key)
        k = key.replace("-", "_")
        if k in INFORMATIONAL or (k in SECTIONS and value is None):
            continue
        if k in SECTIONS and isinstance(value, Mapping):
            _section(reading, k, value)
        elif k in ("learner", "train", "data", "output") and value is not None:
            raise ConfigError(f"--config '{path}': section '{key}' must be a mapping of settings, got {value!r}.")
        else:
            reading.set(key, value)
    return reading


# ------------------------------------------------------------------------------------------------------- merging


def _method_defaults(method: str) -> dict:
    from vlprompt.cli.common import method_config_class  # a prompt learner's or an adapter's (issue 16)

    return {f.name: f.default for f in fields(method_config_class(method))}


def _check_learner_value(method: str, key: str, value: Any, default: Any, where: str) -> Any:
    """A method-config option from a file, checked against the type of its default."""
    if value is None or default is None:
        return value
    ok = (isinstance(value, bool) if isinstance(default, bool) else
          isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
          isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
          isinstance(value, str) if isinstance(default, str) else True)
    if not ok:
        raise ConfigError(f"{where}: got {value!r}; method '{method}' expects a {type(default).__name__} "
                          f"(default {default!r}).")
    return float(value) if isinstance(default, float) else value


def _record_derived(record: dict, given: set[str], values: dict, learner: dict, method_now: str | None) -> None:
    """Drop the recorded values that were *resolved* from what the command line now overrides.

    A run records resolved values: the learner's full config (the method's defaults included), the recipe's epochs
    and batch size, the default label, the dataset's template (KgCoOp's ``template``). Re-run as recorded, they are
    all kept (exact replay). When the command line changes what they were resolved from, those equal to the
    recorded resolution are dropped, so they resolve again: ``--method`` → the learner options equal to the
    recorded method's defaults and the recipe's epochs and batch size (options the new method ``method_now`` does
    not have are dropped with a warning); ``--shots``/``--dataset`` → the recipe's epochs; ``--dataset``/``--method``
    → the template; any learner flag or ``--method`` → the default label.
    """
    from vlprompt.engine.recipe import method_recipe, method_template
    from vlprompt.engine.run import default_label
    from vlprompt.prompts import list_prompt_learners

    method = record.get("method")
    if method not in list_prompt_learners():
        return
    rec_learner = record.get("learner") or {}
    if "method" in given:
        defaults = _method_defaults(method)
        random_init = rec_learner.get("ctx_init", "") is None and defaults.get("ctx_init") is not None
        for k, v in rec_learner.items():
            if k in defaults and defaults[k] == v and not (k == "n_ctx" and random_init):
                values.pop(k, None)
                learner.pop(k, None)
    dataset = record.get("dataset") if isinstance(record.get("dataset"), Mapping) else {}
    if given & {"method", "dataset"} and isinstance(dataset.get("template"), str) and rec_learner.get("template") == \
            method_template(method, dataset.get("name"), dataset["template"]):
        learner.pop("template", None)  # resolved from the recorded dataset (and method)
    if "method" in given and method_now in list_prompt_learners():
        have = set(_method_defaults(method_now))
        gone = sorted(k for k in (*learner, *(k for k in LEARNER_FLAGS if k in values)) if k not in have)
        if gone:
            _logger.warning("--method %s: options of the recorded %s run that %s does not have are not used: %s",
                            method_now, method, method_now, ", ".join(f"{k}={rec_learner.get(k)!r}" for k in gone))
        for k in gone:
            learner.pop(k, None)
            values.pop(k, None)
    try:
        recipe = method_recipe(method, record.get("shots"), dataset.get("name"))
    except ConfigError:
        recipe = {}
    train = record.get("train") or {}
    if given & {"method", "shots", "dataset"} and train.get("epochs") == recipe.get("epochs"):
        values.pop("epochs", None)
    if "method" in given and train.get("batch_size") == recipe.get("batch_size"):
        values.pop("batch_size", None)
    if given & {"method", *LEARNER_FLAGS, "learner_opt"} and record.get("label") == default_label(method, rec_learner):
        values.pop("label", None)


def _record_pretrained(record: dict) -> str | None:
    from vlprompt.backbones import recorded_pretrained

    ident = record.get("backbone")
    return recorded_pretrained(ident) if isinstance(ident, Mapping) else None


def _expectations(reading: _Reading, given: set[str]) -> dict | None:
    """What a re-run of a record must find (see :func:`vlprompt.engine.replay.check_recorded`)."""
    record = reading.record
    expect: dict = {"source": reading.path}
    overridden = sorted(given & set(DATA_DESTS))
    if overridden:
        _logger.info("%s: not checking the recorded few-shot images (%s given on the command line)", reading.path,
                     ", ".join(overridden))
    else:
        if isinstance(record.get("fewshot"), Mapping):
            expect["fewshot"] = dict(record["fewshot"])
        dataset = record.get("dataset")
        if isinstance(dataset, Mapping) and isinstance(dataset.get("classnames"), list):
            expect["classnames"] = dataset["classnames"]
    backbone = record.get("backbone")
    if not given & set(BACKBONE_DESTS) and isinstance(backbone, Mapping) and backbone.get("fingerprint"):
        expect["fingerprint"] = backbone["fingerprint"]
    return expect if len(expect) > 1 else None


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
    table: _Table = args._config_table
    given = _given(args, table)
    path = getattr(args, "config", None)
    reading = read_settings(path, table) if path else None
    values = dict(reading.values) if reading else {}
    learner = dict(reading.learner) if reading else {}
    if reading and reading.record:
        _record_derived(reading.record, given, values, learner, getattr(args, "method", None))
        if "pretrained" not in values and "pretrained" not in given:
            values["pretrained"] = _record_pretrained(reading.record)
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
        names = ", ".join(_flag(a) for a in missing)
        where = f" or in --config '{path}' ({', '.join(a.dest for a in missing)})" if path else ""
        raise ConfigError(f"the following arguments are required: {names}; give them on the command line{where}.")
    if learner:
        _merge_learner(args, learner, reading)
    if reading and reading.record:
        args.replay_expect = _expectations(reading, given)
        _warn_environment(reading.record, path)
        _logger.info("settings from %s (command line overrides: %s)", path, ", ".join(sorted(given)) or "none")
    return args


def _merge_learner(args: argparse.Namespace, learner: dict, reading: _Reading) -> None:
    """Method-config options from the file's ``learner`` section: into the learner flags where one exists, else
    ``args.learner_config`` (read by :func:`vlprompt.cli.common.learner_options`); checked against the method."""
    method = getattr(args, "method", None)
    if method is None:
        raise ConfigError(f"--config '{reading.path}': section 'learner' sets {', '.join(sorted(learner))}, but "
                          "this command has no prompt learner.")
    defaults = _method_defaults(method)
    extra = {}
    for key, value in learner.items():
        if key not in defaults:
            raise reading.unknown(key, sorted(defaults), "learner")
        extra[key] = _check_learner_value(method, key, value, defaults[key], reading.where(f"learner.{key}"))
    args.learner_config = extra


# ---------------------------------------------------------------------------------------- recorded entries


def train_record(record: dict, reading: _Reading) -> set[str]:
    """``vlprompt train``'s view of a recorded run: a prompt-learning run's ``learner`` holds its options.

    Recorded ``learner`` entries that are learner flags (``n_ctx``, ``ctx_init``, ``csc``,
    ``class_token_position``) set those flags; the others (``init_std``, ``kg_weight``, …) are method options. A
    recorded ``ctx_init: null`` with a method whose default initialises from words is kept as ``n_ctx`` alone (M
    random vectors), which is what ``--n-ctx`` means.
    """
    from vlprompt.prompts import list_prompt_learners

    method = record.get("method")
    if "evaluated_from" in record:
        raise ConfigError(f"--config '{reading.path}' records an evaluation (vlprompt eval of "
                          f"{record['evaluated_from']}), not a training run; pass that run's config.json instead.")
    if method is not None and method not in list_prompt_learners():
        command = {"zeroshot": "vlprompt zeroshot", "linear-probe": "vlprompt linear-probe"}.get(method)
        raise ConfigError(f"--config '{reading.path}' records a '{method}' run, not a prompt-learning one"
                          + (f"; re-run it with {command} --config" if command else "") + ".")
    learner = record.get("learner")
    if isinstance(learner, Mapping):
        for key, value in learner.items():
            if key in LEARNER_FLAGS:
                if key == "ctx_init" and value is None:
                    continue  # random init: what --n-ctx alone means (n_ctx is recorded, effective M)
                reading.set(key, value, "learner")
            else:
                reading.learner[key] = value
    return {"learner"}


def linear_probe_record(record: dict, reading: _Reading) -> set[str]:
    """``vlprompt linear-probe``'s view of a recorded run: its ``learner`` holds the probe's search settings."""
    if record.get("method") != "linear-probe":
        raise ConfigError(f"--config '{reading.path}' records a '{record.get('method')}' run, not a linear probe; "
                          "re-run it with the command that made it.")
    learner = record.get("learner") or {}
    for key, dest in (("num_steps", "search_steps"), ("max_iter", "max_iter")):
        if key in learner:
            reading.set(dest, learner[key], "learner")
    train = record.get("train") or {}
    for key, dest in (("eval_batch_size", "eval_batch_size"), ("num_workers", "workers"), ("precision", "precision")):
        if key in train:
            reading.set(dest, train[key], "train")
    return {"method", "learner", "train"}


def zeroshot_record(record: dict, reading: _Reading) -> set[str]:
    """``vlprompt zeroshot``'s view of a recorded run: one recorded template is ``--template``; a recorded list of
    several cannot be given as a flag (``--templates`` takes a name or a file), so it is refused with the fix."""
    if record.get("method") != "zeroshot":
        raise ConfigError(f"--config '{reading.path}' records a '{record.get('method')}' run, not a zero-shot one; "
                          "re-run it with the command that made it.")
    templates = (record.get("learner") or {}).get("templates") or []
    if len(templates) == 1:
        reading.set("template", templates[0], "learner")
    elif templates:
        raise ConfigError(f"--config '{reading.path}' records {len(templates)} templates; write them to a file, one "
                          "per line, and pass --templates FILE with this --config.")
    train = record.get("train") or {}
    if "precision" in train:
        reading.set("precision", train["precision"], "train")
    return {"method", "learner", "train"}


__all__ = ["CONFIG_HELP", "CONFIG_EPILOG", "read_config_file", "enable_config", "apply_config", "convert",
           "read_settings", "train_record", "linear_probe_record", "zeroshot_record"]
