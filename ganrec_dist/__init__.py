"""ganrec-dist: a GAN-based generative item recommender on Ray."""

__version__ = "0.2.0"
