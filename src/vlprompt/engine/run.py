"""Moved (issue 13: the application modules live under ``runs/``): training to :mod:`vlprompt.runs.train`,
zero-shot and evaluation runs to :mod:`vlprompt.runs.evaluate`, the run folder's shared steps to
:mod:`vlprompt.runs.folder`, the spec to :mod:`vlprompt.engine.spec`.

This path stays for users and scripts that import it, with every name it had. It is a re-export, not the modules
themselves: patch a name where it is used (``vlprompt.runs.train.save_learner``), not here.
"""

from vlprompt.engine.spec import RunSpec, spec_to_dict
from vlprompt.runs.evaluate import eval_run, zeroshot_run
from vlprompt.runs.folder import (
    RunInputs,
    base_config,
    data_options,
    default_label,
    load_inputs,
    log_eval_only,
    prepare_out,
    refuse_finished,
    test_features,
    versions,
)
from vlprompt.runs.train import train_run

# the former private names, still imported by callers written against this module
_base_config, _data_options, _load, _refuse_finished, _test_features, _versions = (
    base_config, data_options, load_inputs, refuse_finished, test_features, versions)

__all__ = ["RunInputs", "RunSpec", "base_config", "default_label", "eval_run", "load_inputs", "log_eval_only",
           "prepare_out", "refuse_finished", "spec_to_dict", "test_features", "train_run", "zeroshot_run"]
