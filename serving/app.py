"""Ray Serve entry point for `serve run serving/config.yaml` or `serve deploy`: import and bind."""

from ganrec_dist.inference.serve import app_builder

app = app_builder
