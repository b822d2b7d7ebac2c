"""Generate: sample a checkpoint into the generations table (``run``), the rows it writes (``rows``)."""
