"""Bridges from steprune to other tools' plugin systems (each optional: `pip install steprune[<extra>]`).

- `steprune.integrations.lmms`: an lmms-eval model (`--model steprune`) and the built-in world as lmms-eval tasks.
"""
