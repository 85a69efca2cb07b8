"""Domain prose for continued pretraining: the shop database described in words, and the Python reference."""
