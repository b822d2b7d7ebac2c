"""ttspo.builder: everything up to a versioned preference set.

Stages, each importing only earlier ones: ``core`` (errors, schemas, ids, the
store with lineage, the query session, rendering), ``prompts`` (step 1),
``ingest`` (step 2 in), ``scoring``, ``sets`` (recipes, build, export, diff,
sweep); after the trainer: ``api`` (the notebook API), ``demo``, ``cli``.
"""
