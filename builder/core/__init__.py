"""The shared core: errors, schemas, ids, the store with lineage, the query session, rendering."""
