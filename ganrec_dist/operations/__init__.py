"""Stage 7, operations: the command line, cluster manifests and job submission, the daily
update and the demo. `ganrec_dist.bench` (the benchmarks) sits at this level too."""
