"""varlib: a small, reproducible study of Visual Autoregressive Modeling (VAR, Tian et al., NeurIPS 2024).

Layout (one home per concept):
  config      typed configurations and the named profiles (smoke | quick | full)
  data        Fashion-MNIST (IDX files) and image folders, as float tensors in [-1, 1]
  artifacts   content-keyed cache of trained models, atomic checkpoints, resume
  tokenizer   multi-scale VQVAE (paper Alg. 1 and 2), loadable from the authors' checkpoint
  transformer VAR (next-scale prediction) and the raster-scan AR baseline
  sampling    KV-cached samplers, guidance, top-k/top-p, zero-shot editing
  train       training loops for the tokenizer and the transformers (one process or torchrun)
  metrics     FID/IS/KID/precision-recall through torch-fidelity, reconstruction metrics
  scaling     power-law fits with bootstrap intervals
  report      tables, figures and their provenance records
"""

__version__ = "0.1.0"
