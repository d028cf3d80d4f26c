"""One recipe per training objective, side by side (torchtune-style).

Each is a class with a fixed lifecycle: `__init__` (rejects what cannot run, declares every
attribute), public `setup()`, `train()` or `run()`, and `publish()`. Recipes share the layer below
them (inputs, model, checkpoints, publish, progress, callbacks) instead of inheriting from each other.
"""
