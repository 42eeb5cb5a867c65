"""Scorers for the `quality` stage and the embedding sources for `select`'s diversity.

One module per scorer: `heuristic` (text statistics), `fasttext` (a supervised fastText
classifier), `lm` (perplexity and instruction-following difficulty with a local causal LM,
plus mean-hidden-state embeddings), `verifier` (user functions). Modules are imported
lazily by the stages, so only runs that use the LM pay for torch.
"""
