"""Stage 6, evaluation: baselines, the evaluate protocol and its companion models, cold start,
diversity, paired comparison and seed sweeps."""
