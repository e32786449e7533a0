"""Reading and validating a ``--config FILE``: the YAML/JSON reader, the keys a file may hold and the conversion of
each value through its flag's own ``type`` and ``choices`` (the format is described in :mod:`vlprompt.cli.config_file`).

:func:`read_settings` turns a file into flag destinations (a :class:`Reading`), not yet merged with the command line;
the entries of a recorded run that belong to one command are mapped by :mod:`vlprompt.cli.config_record`.
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



# ------------------------------------------------------------------------------------------- the flags' table


@dataclass
class FlagTable:
    """What :func:`vlprompt.cli.config_file.enable_config` learned about a command's parser."""

    actions: dict[str, argparse.Action]  # accepted key → action (dest and flag names, '-' as '_')
    defaults: dict[str, Any]  # dest → the real default (the parser's are SUPPRESS)
    required: list[argparse.Action]
    appends: set[str] = field(default_factory=set)  # dests of append actions (default [], "given" = non-empty)
    record: Callable[[dict, Reading], set[str]] | None = None  # maps a command's own recorded entries
    exclusive: list[set[str]] = field(default_factory=list)  # dests of each mutually exclusive group


# ------------------------------------------------------------------------------------------- validating values

_TYPE_NAMES = {int: "an integer", float: "a number", None: "a string"}


def _describe(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true or false"
    if isinstance(action, argparse._AppendAction):
        return "a list of strings"
    return _TYPE_NAMES.get(action.type, "a string")


def flag_name(action: argparse.Action) -> str:
    """The ``--long`` name of a flag (its destination for a positional argument), for messages."""
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
            return ConfigError(f"{where} ({flag_name(action)}): {reason}.")
        return ConfigError(f"{where} ({flag_name(action)}): {reason}; expected {_describe(action)}"
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
class Reading:
    """The settings read from one file (destination → value), and what a re-run of a record must check."""

    path: str
    table: FlagTable
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
                              f"{flag_name(action)}; keep one.")
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


def _section(reading: Reading, name: str, entries: Mapping) -> None:
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
            reading.seen["pretrained"] = "backbone.pretrained"  # recorded None: see config_record.recorded_pretrained_tag
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


def read_settings(path: str, table: FlagTable) -> Reading:
    """Read config file ``path`` into flag destinations (not yet merged with the command line)."""
    data = read_config_file(path)
    reading = Reading(str(path), table)
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


# ---------------------------------------------------------------------------------------------- learner options


def method_defaults(method: str) -> dict:
    from vlprompt.cli.common import method_config_class  # a prompt learner's or an adapter's (issue 16)

    return {f.name: f.default for f in fields(method_config_class(method))}


def check_learner_value(method: str, key: str, value: Any, default: Any, where: str) -> Any:
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
