"""`python -m steprune.integrations.lmms` prints the `--include_path` of the built-in world's lmms-eval tasks."""

from steprune.integrations.lmms import TASKS_DIR

print(TASKS_DIR)
