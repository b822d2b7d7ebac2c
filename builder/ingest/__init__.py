"""Step 2 in: NeMo generation folders and JSON lines into the `generations` table."""
