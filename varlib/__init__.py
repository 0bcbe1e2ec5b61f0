"""varlib: a small, reproducible study of Visual Autoregressive Modeling (VAR, Tian et al., NeurIPS 2024).

Layout (one home per concept):
  config         typed configurations, the named profiles (smoke | quick | full), tokenizer/transformer agreement
  data           Fashion-MNIST (IDX files) and image folders as uint8 tensors; datasets known by their content
  artifacts      the checksummed, weights-only cache of trained models; atomic writes, read-only caches, resume
  study          `Study`: builds every stage (tokenizer, tokens, transformers, classifier), owns keys and seeds
  tokenizer      multi-scale VQVAE (paper Alg. 1 and 2) and its one decoding path (`VQVAE.fhat_to_img`)
  tokenizer_train  the tokenizer's training loop, encoding and reconstruction evaluation
  transformer    VAR (next-scale prediction) and the raster-scan AR baseline
  train          the transformers' training loop and evaluation (one process or torchrun)
  parallel       torchrun: process group, batch shares, reductions over ranks
  sampling       KV-cached samplers: token choice (guidance, top-k/top-p), the plain VAR and AR loops, many batches
  fast_sampling  CUDA-graph replay of the sampling steps (VARSampler), held equal to sampling by a test
  editing        zero-shot in-/out-painting and class-conditional editing, batched over a set (edit_many)
  classifier     the feature classifier behind FID/IS and its training loop
  metrics        FID/IS/KID/precision-recall through torch-fidelity, reconstruction metrics, corruptions
  scaling        power-law fits with bootstrap intervals
  paper          the paper's published numbers, labelled as the paper's
  authors        the authors' code (run side by side) and their released checkpoints
  device         device choice, autocast, synchronisation
  timing         wall clocks, profiler tables, GPU-busy share, host syncs, MFU
  report         tables, figures and their provenance records, one folder per notebook and profile
  cli            the command lines (python -m varlib.tokenizer_train, python -m varlib.train)
"""

__version__ = "0.1.0"
