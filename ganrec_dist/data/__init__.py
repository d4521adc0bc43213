"""Stage 1, data: raw logs in (sources), validated id-mapped split shards out (prepare, append);
the in-memory interaction structures, a worker's shard, and the DATA and RUN directory layouts
(layout owns every file name on disk)."""
