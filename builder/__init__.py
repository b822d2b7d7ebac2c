"""ttspo.builder: the data half, everything up to a versioned preference set and
the analysis of generated runs. It never imports the trainer.

Stages, each importing only earlier ones: ``core`` (errors, schemas, ids, the
store with lineage, the query session, rendering, the distributed runtime),
``prompts`` (step 1), ``ingest`` (step 2 in), ``scoring``, ``sets`` (recipes,
build, export, diff, sweep), ``analysis`` (compare runs); then ``api`` (the data
half of the notebook API) and ``cli`` (the root command group, which assembles
both halves' commands from the registry in ``ttspo/__init__.py``).
"""
