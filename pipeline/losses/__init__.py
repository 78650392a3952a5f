"""Losses as small callables named after the papers' symbols; never computed inside a model's forward."""
