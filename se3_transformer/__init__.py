"""SE(3)-Transformer (Fuchs et al., NeurIPS 2020) on QM9, plain-PyTorch graph ops and e3nn."""
