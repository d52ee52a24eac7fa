"""The rl-zoo trainer of sb3-av: ``python train.py`` / ``python enjoy.py`` (see :mod:`sb3_av.zoo.train`).

Built on :mod:`rl_zoo3`: its experiment manager, hyperparameter YAML, Optuna objective and callbacks, with this
project's algorithms (:mod:`sb3_av.algorithms`), checked configs (:mod:`sb3_av.zoo.config`) and samplers
(:mod:`sb3_av.zoo.samplers`).
"""

from sb3_av.algorithms import ALGO_NAMES, get_algorithm
from sb3_av.zoo.config import ConfigError
from sb3_av.zoo.run_folder import RunInfo, read_run_info, resolve_model_path
from sb3_av.zoo.samplers import SAMPLERS

__all__ = ["ALGO_NAMES", "SAMPLERS", "ConfigError", "RunInfo", "get_algorithm", "read_run_info", "resolve_model_path"]
