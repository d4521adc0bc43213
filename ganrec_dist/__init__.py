"""ganrec-dist: a GAN-based generative item recommender on Ray."""

__version__ = "0.1.0"
