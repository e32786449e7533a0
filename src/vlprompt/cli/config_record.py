"""A finished run's ``config.json`` given to ``--config``: its recorded structure mapped back onto a command's flags.

Each command maps its own recorded entries (:func:`train_record`, :func:`linear_probe_record`,
:func:`zeroshot_record`, passed to :func:`vlprompt.cli.config_file.enable_config`); values the run *resolved* are
re-resolved when the command line changes what they came from (:func:`drop_resolved`); and what a re-run must find
again (the few-shot lists, class names, weight fingerprint) is collected for :mod:`vlprompt.engine.replay`
(:func:`replay_expectations`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from vlprompt.cli.config_read import Reading, method_defaults
from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)

#: Flags that choose which images a run draws: overriding one skips the check of the recorded few-shot lists.
#: (``--root`` is not one: the lists are relative to the dataset folder, so data moved elsewhere is still checked.)
DATA_DESTS = ("dataset", "shots", "seed", "subsample", "classnames_file", "fewshot_file", "strict",
              "allow_outside_root")
#: Flags that choose the backbone's weights: overriding one skips the check of the recorded fingerprint.
BACKBONE_DESTS = ("backbone", "pretrained", "precision")
#: Learner flags (their values are learner options).
LEARNER_FLAGS = ("n_ctx", "ctx_init", "csc", "class_token_position")


def drop_resolved(record: dict, given: set[str], values: dict, learner: dict, method_now: str | None) -> None:
    """Drop the recorded values that were *resolved* from what the command line now overrides.

    A run records resolved values: the learner's full config (the method's defaults included), the recipe's epochs
    and batch size, the default label, the dataset's template (KgCoOp's ``template``). Re-run as recorded, they are
    all kept (exact replay). When the command line changes what they were resolved from, those equal to the
    recorded resolution are dropped, so they resolve again: ``--method`` → the learner options equal to the
    recorded method's defaults and the recipe's epochs, batch size and lr (options the new method ``method_now`` does
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
        defaults = method_defaults(method)
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
        have = set(method_defaults(method_now))
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
    if "method" in given and train.get("lr") == recipe.get("lr"):
        values.pop("lr", None)  # the recorded method's own lr (IVLP 0.0035, CoOp 0.002): the new method's resolves
    if given & {"method", *LEARNER_FLAGS, "learner_opt"} and record.get("label") == default_label(method, rec_learner):
        values.pop("label", None)


def recorded_pretrained_tag(record: dict) -> str | None:
    from vlprompt.backbones import recorded_pretrained

    ident = record.get("backbone")
    return recorded_pretrained(ident) if isinstance(ident, Mapping) else None


def replay_expectations(reading: Reading, given: set[str]) -> dict | None:
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


def train_record(record: dict, reading: Reading) -> set[str]:
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


def linear_probe_record(record: dict, reading: Reading) -> set[str]:
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


def zeroshot_record(record: dict, reading: Reading) -> set[str]:
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


__all__ = ["DATA_DESTS", "BACKBONE_DESTS", "LEARNER_FLAGS", "drop_resolved", "recorded_pretrained_tag",
           "replay_expectations", "train_record", "linear_probe_record", "zeroshot_record"]
