"""Step 1: text-context pairs (NeMo's create_text_contextpairs, seeded)."""
