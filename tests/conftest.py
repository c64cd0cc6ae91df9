"""Test-session settings. Tiny models gain nothing from intra-op threads, and on a shared,
busy CPU the thread hand-offs cost more than the math: run them on one thread."""

import torch

torch.set_num_threads(1)
