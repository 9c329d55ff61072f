"""wandb's own log lines (its Python loggers, its service process) never reach the console, also with HOME and
W&B's folders unwritable, unless the user asked for W&B's debug output."""

import pytest
from conftest import messages, run_cli


@pytest.mark.parametrize("debug", [False, True])
def test_unwritable_wandb_folders_print_nothing_of_wandbs_own(mnist_root, tmp_path, debug):
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a file where folders should be: nothing can be made below it
    # WANDB_DIR is left out: where the user sets it, the run's files go there (README), and there it could not start.
    env = {v: str(blocked / v.lower()) for v in ("HOME", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    env.update({"WANDB_DATA_DIR": str(blocked / "data"), **({"WANDB_CORE_DEBUG": "true"} if debug else {})})
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")  # matplotlib's own warning about HOME is not W&B's
    argv = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", "--hidden_size", "8"]
    p = run_cli("exercise1.py", *argv, "--wandb", "offline", env=env, process=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "wandb sync" in p.stdout and (tmp_path / "r" / "wandb").is_dir()  # logged all the same
    if debug:  # asked for: W&B's service says where its log could not go
        assert any("log" in line for line in messages(p.stderr)), p.stderr
    else:
        assert messages(p.stderr) == [], p.stderr
