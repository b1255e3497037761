"""The edges: Hydra (its ConfigStore, the run-name resolver, composing conf/) and the command line of every
console script, with one way of reporting a user's mistake: `error: ...` on one line, exit
status 2, no traceback.

    hydra_app(task)           ablate-train and ablate-prepare: a Hydra app over conf/ whose job
                              runs task(RunConfig)
    command(doc, argv, body)  the others: -h prints the doc; body(argv) runs under user_errors()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.config import ModelConfig, RunConfig
from ablate.files import WriteError
from ablate.registry import ConfigError
from ablate.run.checkpoint import CheckpointError
from ablate.run.rundir import RunDirError, RunError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# the mistakes a user can make, and a disk that is full, each reported as one line
USER_ERRORS = (ConfigError, RunError, RunDirError, CheckpointError, WriteError)


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
    from ablate.naming import run_name

    OmegaConf.register_new_resolver("ablate_run_name", run_name, replace=True)
    store = ConfigStore.instance()
    store.store(name="model_base", node=dataclasses.asdict(ModelConfig()))
    store.store(name="data_base", node=dataclasses.asdict(DataConfig()))
    store.store(name="eval_base", node=dataclasses.asdict(EvalConfig()))


def run_config(node: Any, phase: str = "train") -> RunConfig:
    """The RunConfig of a composed Hydra config (its `hydra` node dropped), checked for `phase`
    (ablate.run.lifecycle: plan or train)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=False)
    data.pop("hydra", None)  # resolving it needs a running job; ${hydra:...} reads HydraConfig instead
    from ablate.run import lifecycle

    return lifecycle.check(RunConfig.from_dict(OmegaConf.to_container(OmegaConf.create(data), resolve=True)), phase)


def hydra_app(task: Callable[[RunConfig], Any]) -> None:
    """Run `task` as a Hydra app over conf/ (command line, multirun, launchers), its config checked
    and a user's mistake reported as one line. `--plan` is spelled as a flag for plan=true."""
    import hydra

    register_configs()
    if "--plan" in sys.argv:  # the dry run of a sweep
        sys.argv = [a for a in sys.argv if a != "--plan"] + ["plan=true"]
    if any(a.lower() in ("plan=true", "plan=1", "plan=yes") for a in sys.argv[1:]) \
            and not {"-m", "--multirun"} & set(sys.argv[1:]):
        sys.argv.insert(1, "-m")  # the plan is the sweeper's: one job is a sweep of one, planned, not run
    check_command_line()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def app(node: Any) -> Any:
        import logging

        logging.getLogger("ablate").setLevel(logging.INFO)
        try:
            with user_errors():
                return task(run_config(node))
        except SystemExit:  # a job that stopped before writing leaves no directory behind
            remove_if_empty(_job_dir())
            remove_if_empty(Path(os.path.abspath(Path(str(node.get("results_dir"))) / str(node.get("experiment")))))
            raise

    app()


# the options of Hydra's own command line that take a value (everything else is an override or a flag)
_VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
           "--experimental-rerun", "--shell-completion"}


def check_command_line() -> None:
    """A Hydra app's overrides checked before Hydra sees them (its own report of a parse error or an
    unknown option is a screenful): one line and exit 2 instead."""
    with user_errors():
        check_overrides(command_line_overrides(sys.argv[1:]))


def command_line_overrides(argv: list[str]) -> list[str]:
    """The overrides of a Hydra app's command line (its flags and their values left out)."""
    found, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUED or (arg in ("--info", "-i") and i + 1 < len(argv) and "=" not in argv[i + 1])
        else:
            found.append(arg)
    return found


def check_overrides(overrides: list[str], config_dir: Path | None = None) -> None:
    """ConfigError (one line) for an override Hydra cannot parse, or an option of a config group
    (model/position=..., +experiment=..., hydra/launcher=...) that does not exist, naming the
    options there are."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for item in overrides:
        try:
            parsed += parser.parse_overrides([item])
        except OverrideParseException as err:
            first = str(err).strip().splitlines()[0]
            raise ConfigError("argument", item, f"cannot be parsed ({first}); quote values with spaces or "
                              "brackets, e.g. 'data.paths=[a.txt,b.txt]'") from None
    if GlobalHydra.instance().is_initialized():
        _check_groups(parsed, GlobalHydra.instance().config_loader())
        return
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base=None):
        _check_groups(parsed, GlobalHydra.instance().config_loader())


def _check_groups(parsed: list[Any], loader: Any) -> None:
    from hydra.core.override_parser.types import ChoiceSweep

    for o in parsed:
        group = o.key_or_group
        if o.is_delete() or o.package is not None or not loader.repository.group_exists(group):
            continue
        value = o.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        options = loader.get_group_options(group)
        for v in values:
            if isinstance(v, str) and v not in options:
                raise ConfigError(group, v, "no such option", valid=options)


def _job_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(os.path.abspath(HydraConfig.get().runtime.output_dir))  # run_name=../x made ../x
    except Exception:  # no Hydra job running
        return None


def remove_if_empty(directory: Path | None) -> None:
    """Remove `directory` and then its parents while they are empty (what Hydra made for a job),
    stopping at the working directory."""
    stop = Path.cwd().resolve()
    while directory is not None and directory.resolve() != stop and directory.is_dir():
        try:
            directory.rmdir()
        except OSError:  # not empty: someone's files
            return
        directory = directory.parent


def compose_root(overrides: list[str] | None = None, config_dir: str | None = None) -> dict[str, Any]:
    """Compose conf/config.yaml with Hydra's compose API (no app running) and return it as a plain
    dict (the `hydra` node and run_name, which need a running app, left out). An unknown group
    option raises ConfigError listing the options there are."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    conf = Path(config_dir) if config_dir else CONF_DIR
    overrides = list(overrides or [])
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        check_overrides(overrides)
        composed = compose(config_name="config", overrides=overrides)
    composed = OmegaConf.to_container(composed, resolve=False)
    composed.pop("run_name", None)
    return OmegaConf.to_container(OmegaConf.create(composed), resolve=True)


def compose_model(overrides: list[str] | None = None, config_dir: str | None = None) -> ModelConfig:
    """The checked ModelConfig of conf/ under `overrides` (e.g. ["model=gemma2",
    "model/position=alibi"]); for notebooks and tests, where no Hydra app is running."""
    from ablate.model import check_model

    return check_model(ModelConfig.from_dict(compose_root(overrides, config_dir)["model"]))
