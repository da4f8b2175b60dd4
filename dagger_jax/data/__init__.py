"""Training data: the built-in sample corpus, chat encoding with loss masks, packing.

Modules are imported directly (dagger_jax.data.encode, .packing, .sample_corpus) so
that importing one does not pull in the heavy dependencies of the others.
"""
