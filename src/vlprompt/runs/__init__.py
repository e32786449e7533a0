"""The application's run layer (DESIGN.md §3): grids of run folders over datasets × methods × shots × seeds for
every protocol of the field (:mod:`vlprompt.runs.grid` plans them, :mod:`vlprompt.runs.grid_run` executes them).

Nothing here is imported by the library (backbones, data, features, prompts, engine, eval, inference).
"""
