"""Training data: trajectory records and their shards, examples, packing, the grain pipeline.

Modules are imported directly (dagger_jax.data.records, .shards, ...) so that importing one does
not pull in the heavy dependencies of the others.
"""
