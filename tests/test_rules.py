"""rules.py: one table of flag rules, checked alike for a command line and for a config.json read back on resume."""

import json
from argparse import Namespace

import pytest
from conftest import run_cli

import rules
from config import OutputConfig, RunConfig
from dataloader import DataConfig
from errors import UsageError
from models import ModelConfig
from optim import TrainConfig


def exercise1_config(**train):
    cfg = RunConfig(ModelConfig(), DataConfig(), TrainConfig(**train), OutputConfig())
    return cfg.to_dict()


def test_a_config_the_flags_make_breaks_no_rule():
    rules.check(rules.restored(exercise1_config()), "exercise1", "run", restored=True)
    rules.check(rules.restored(exercise1_config(optimizer="sgd", momentum=0.5)), "run", restored=True)


def test_a_config_no_command_line_could_give_breaks_the_flags_rule():
    with pytest.raises(UsageError, match="--momentum: it is SGD's"):
        rules.check(rules.restored(exercise1_config(momentum=0.5)), "run", restored=True)
    with pytest.raises(UsageError, match="--warmup_epochs must be shorter"):
        rules.check(rules.restored(exercise1_config(warmup_epochs=10, epochs=10)), "run", restored=True)


def test_command_line_and_config_meet_the_same_rule():
    """The message for momentum with Adam, from typed flags and from a config.json, is one rule's."""
    typed = Namespace(momentum=0.5, optimizer=None)
    with pytest.raises(UsageError) as a:
        rules.check(rules.typed(typed), "run")
    with pytest.raises(UsageError) as b:
        rules.check(rules.restored(exercise1_config(momentum=0.5)), "run", restored=True)
    assert str(a.value) == str(b.value)


def test_every_rule_says_what_kind_it_is():
    assert {r.says for r in rules.RULES} == {"needs", "excludes", "applies to"}
    assert {r.scope for r in rules.RULES} == {"exercise1", "exercise2", "finetune", "launch", "run"}


def test_resume_refuses_an_edited_config_that_breaks_a_rule_in_one_line(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", "--seeds", "0", "1"]
    assert run_cli("exercise1.py", *args, "--hidden_size", "16", "--wandb", "disabled").returncode == 0
    path = tmp_path / "r" / "config.json"
    config = json.loads(path.read_text())
    config["base"]["train"]["momentum"] = 0.5  # Adam never reads it: no command line makes this
    path.write_text(json.dumps(config))
    p = run_cli("exercise1.py", "--resume", tmp_path / "r", "--epochs", "3")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "config.json is damaged (--momentum: it is SGD's" in p.stderr
