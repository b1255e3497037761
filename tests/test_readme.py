"""Every ablate command the README shows composes: each `ablate-*` line of its bash blocks (and each
inline command without placeholders) is parsed and its config composed and validated as the command
would, with nothing trained, evaluated or submitted (sweeps run with --plan)."""

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from ablate import report
from ablate.cli import compose_root, key_values
from ablate.config import RunConfig
from ablate.evaluate import parse as parse_eval
from ablate.run.lifecycle import for_train

from conftest import ROOT, cli_in_process, plan_in_process

PLACEHOLDER = re.compile(r"[\[<]|\b[A-Z]{1,}\b(?!=)")  # [OPTIONS], <run>, NAME, PATH, X


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += [span for span in re.findall(r"`([^`\n]+)`", text)
              if span.startswith("ablate-") and not PLACEHOLDER.search(span)]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            words = [w for w in shlex.split(part, comments=True) if w != "..."]
            if "-m" in words and words[0] == "torchrun":  # torchrun ... -m ablate.train ARGS
                words = ["ablate-train", *words[words.index("-m") + 2:]]
            if words and words[0].startswith("ablate-"):
                commands.append(words)
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_kind():
    kinds = {c[0] for c in COMMANDS}
    assert {"ablate-train", "ablate-eval", "ablate-report", "ablate-prepare"} <= kinds, kinds
    assert any("5e6" in " ".join(c) for c in COMMANDS)  # numbers as people type them


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c)[:80] for c in COMMANDS])
def test_readme_command_composes(command, tmp_path, request):
    name, args = command[0], command[1:]
    if "+experiment=distillation" in args:  # its teacher must exist before anything is planned
        args = [*args, f"train.distill.teacher={request.getfixturevalue('any_teacher')}"]
    if name in ("ablate-train", "ablate-prepare") and "-m" in args:
        out = plan_in_process(*[a for a in args if a != "-m"], f"results_dir={tmp_path}")
        assert "to run:" in out
    elif name in ("ablate-train", "ablate-prepare"):
        overrides = [a for a in args if a not in ("--cfg", "job")]
        for_train(RunConfig.from_dict(compose_root(overrides)))
    elif name == "ablate-eval":
        parse_eval(args)
    elif name == "ablate-report":
        key_values(args, report.ARGUMENTS)
    elif name == "ablate-export":
        from ablate.evaluate import export

        key_values(args, export.ARGUMENTS)
    elif name == "ablate-model":
        cli_in_process("ablate.plan.model", *args)
    elif name == "ablate-coord-check":
        from ablate.plan import coord_check

        _, overrides = coord_check.arguments(args)
        for_train(RunConfig.from_dict(compose_root(overrides)))
    elif name == "ablate-tokenizers":
        from omegaconf import OmegaConf

        from ablate.config import from_dict
        from ablate.tokenizer_study import StudyConfig

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            node = compose(config_name="tokenizers", overrides=args)
        data = OmegaConf.to_container(node, resolve=True)
        data.pop("hydra", None)
        from_dict(StudyConfig, data, "").validate()
    else:
        pytest.fail(f"no check for {name}")


def test_the_readme_shows_what_ablate_model_prints():
    """The README's `$ ablate-model ...` examples (memory per GPU) are what the command prints today."""
    text = (ROOT / "README.md").read_text()
    examples = [(command, shown) for command, shown in
                re.findall(r"\$ (ablate-model .*?)\n((?:[^$`].*\n)+)", text.replace("\\\n", ""))
                if "memory/GPU" in shown]
    assert len(examples) >= 2
    for command, shown in examples:
        out = cli_in_process("ablate.plan.model", *shlex.split(command)[1:]).stdout
        for line in shown.splitlines():
            assert line in out.splitlines(), (command, line)
