"""``s3files_bench``: the benchmark harness behind ``s3files bench`` (installed from the bench/ folder).

Modules, one concern each: ``cli`` (command line and the order of a run), ``plan`` (sizes, estimates),
``servers`` (embedded moto/RadosGW or a given bucket), ``mounts`` (s3files and the peers as child
processes), ``sdk`` (boto3 clients that count requests), ``workloads`` (what is measured, per variant),
``measure`` (timed loops), ``runner`` (interleaved rounds), ``report`` (JSON, table, markdown, chart),
``transform`` (the transform workload's child process); ``handlers/`` (``--workloads handlers``: real
function handlers, SDK + /tmp against the same files code on the mount and on open_fs). Results and how
to read them: RESULTS.md.
"""
