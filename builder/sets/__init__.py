"""Step 3: preference sets: SQL recipes, build, export, diff, sweep."""
