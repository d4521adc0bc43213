"""Stage 5, inference: offline scoring with Ray Data actors and online serving with Ray Serve,
both over one shared read-only copy of a run per node."""
