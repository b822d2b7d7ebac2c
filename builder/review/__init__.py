"""Review: what people and training dynamics say about pairs (`labels`, `pair_dynamics`)."""
