"""The edges: Hydra (its ConfigStore, run names, composing conf/) and the command line of every
console script, with one way of reporting a user's mistake: `error: ...` on one line, exit
status 2, no traceback.

    hydra_app(task)           ablate-train and ablate-prepare: a Hydra app over conf/ whose job
                              runs task(RunConfig)
    command(doc, argv, body)  the others: -h prints the doc; body(argv) runs under user_errors()
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.checkpoint import CheckpointError
from ablate.config import IDENTITY, OPERATIONAL, ModelConfig, RunConfig
from ablate.registry import ConfigError
from ablate.rundir import RunDirError, RunError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# the mistakes a user can make, each reported as one line
USER_ERRORS = (ConfigError, RunError, RunDirError, CheckpointError)


# ---- reporting ----------------------------------------------------------------------------------
@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake ends the command with its message and exit status 2, not a traceback."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def command(doc: str, argv: list[str] | None, body: Callable[[list[str]], int], needs_args: bool = True) -> int:
    """Run a console script: its doc on -h / --help (or with no argument when it needs some),
    else body(argv), a user's mistake reported by user_errors()."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv) or (needs_args and not argv):
        print(doc)
        return 0 if argv else 2
    try:
        with user_errors():
            return body(argv)
    except SystemExit as done:
        return int(done.code or 0)


def key_values(argv: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    """{key: value} from `key=value` arguments; ConfigError naming the valid keys otherwise."""
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ConfigError("argument", arg, "expected key=value", valid=[f"{k}=..." for k in allowed])
        args[key] = value
    return args


# ---- Hydra ----------------------------------------------------------------------------------------
def register_configs() -> None:
    """Put every field's default into Hydra's ConfigStore (`model_base`, `data_base`, `eval_base`,
    which the YAML files extend): any field can then be overridden on the command line
    (model.attention.head_dim=64) without a `+`, and the defaults live only in the dataclasses.
    Types are checked by from_dict, not by OmegaConf, so errors name the valid values."""
    import dataclasses

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from ablate.config import DataConfig, EvalConfig

    OmegaConf.register_new_resolver("ablate_run_name", run_name, replace=True)
    store = ConfigStore.instance()
    store.store(name="model_base", node=dataclasses.asdict(ModelConfig()))
    store.store(name="data_base", node=dataclasses.asdict(DataConfig()))
    store.store(name="eval_base", node=dataclasses.asdict(EvalConfig()))


def run_name(choices: Mapping[str, Any], overrides: list[str], seed: int) -> str:
    """A readable run name: the model preset and its axis choices, the data set when not the
    built-in one, the other command-line overrides that change what is computed (last part of the
    key, the last value given), and the seed.
    E.g. default-rope-mha-rmsnorm-pre-swiglu-s0, gpt2-alibi-mqa-layernorm-pre-gelu_tanh-dim=512-s1."""
    axes = ("model/position", "model/attention", "model/norm", "model/placement", "model/mlp")
    extra = sorted(g for g in choices if g.startswith("model/") and g not in axes)  # e.g. model/softcap
    parts = [choices.get(g) for g in ("model", *axes, *extra)]
    if choices.get("data") not in (None, "synthetic"):
        parts.append(choices["data"])
    named: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        # group choices are named above, the seed at the end; identity and operational fields name nothing
        if key in choices or key == "seed" or key.startswith(("hydra.", *IDENTITY, *OPERATIONAL)):
            continue
        named[key] = value  # a key given twice keeps its first place and its last value
    # the key's last part names it (dim=512), unless that is `seed`, which -s<seed> names: data_seed=1
    parts += [f"{k.rsplit('.', 1)[-1] if not k.endswith('.seed') else k.replace('.', '_')}={v}".replace("/", "_")
              for k, v in named.items()]
    return "-".join(str(p) for p in parts if p is not None) + f"-s{seed}"


def check_run(cfg: RunConfig) -> RunConfig:
    """The whole check of a run's config, after a ladder rung has set its shape and budget
    (ablate.ladder.apply): its numbers (RunConfig.validate) and its named choices, each checked
    beside its registry (model axes, data source). Returns cfg."""
    from ablate.data.sources import check_data
    from ablate.distill import teacher_info
    from ablate.ladder import apply
    from ablate.model import check_model

    apply(cfg)  # a ladder's rung sets the shape and the budget
    cfg.validate()
    check_model(cfg.model, "model")
    check_data(cfg.data, "data")
    teacher_info(cfg.train.distill, cfg.seq_len)  # a teacher that is not there, or not finished
    from ablate.trackers import check_loggers

    check_loggers(cfg.train.loggers)  # a tracker whose package is missing: the extra to install
    return cfg


def run_config(node: Any) -> RunConfig:
    """The checked RunConfig of a composed Hydra config (its `hydra` node dropped)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=False)
    data.pop("hydra", None)  # resolving it needs a running job; ${hydra:...} reads HydraConfig instead
    return check_run(RunConfig.from_dict(OmegaConf.to_container(OmegaConf.create(data), resolve=True)))


def hydra_app(task: Callable[[RunConfig], Any]) -> None:
    """Run `task` as a Hydra app over conf/ (command line, multirun, launchers), its config checked
    and a user's mistake reported as one line. `--plan` is spelled as a flag for plan=true."""
    import hydra

    register_configs()
    if "--plan" in sys.argv:  # the dry run of a sweep
        sys.argv = [a for a in sys.argv if a != "--plan"] + ["plan=true"]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def app(node: Any) -> Any:
        import logging

        logging.getLogger("ablate").setLevel(logging.INFO)
        with user_errors():
            return task(run_config(node))

    app()


def compose_root(overrides: list[str] | None = None, config_dir: str | None = None) -> dict[str, Any]:
    """Compose conf/config.yaml with Hydra's compose API (no app running) and return it as a plain
    dict (the `hydra` node and run_name, which need a running app, left out). An unknown group
    option raises ConfigError listing the options there are."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    register_configs()
    conf = Path(config_dir) if config_dir else CONF_DIR
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            composed = compose(config_name="config", overrides=overrides)
    except MissingConfigException:
        for item in overrides:
            group, _, option = item.lstrip("+~").partition("=")
            options = sorted(p.stem for p in (conf / group).glob("*.yaml")) if (conf / group).is_dir() else []
            if options and option not in options:
                raise ConfigError(group, option, "no such option", valid=options) from None
        raise
    composed = OmegaConf.to_container(composed, resolve=False)
    composed.pop("run_name", None)
    return OmegaConf.to_container(OmegaConf.create(composed), resolve=True)


def compose_model(overrides: list[str] | None = None, config_dir: str | None = None) -> ModelConfig:
    """The checked ModelConfig of conf/ under `overrides` (e.g. ["model=gemma2",
    "model/position=alibi"]); for notebooks and tests, where no Hydra app is running."""
    from ablate.model import check_model

    return check_model(ModelConfig.from_dict(compose_root(overrides, config_dir)["model"]))
