"""Recipes that train and then evaluate: the base build (`make base`) and `make train`.

They sit above `steprune.training` and `steprune.eval` and import both; nothing below imports them.
"""
