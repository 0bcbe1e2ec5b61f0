"""Small helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

import torch


def randomised(model, seed=0):
    """Weights far from the near-identity init, so every dependency shows up in the outputs; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()
