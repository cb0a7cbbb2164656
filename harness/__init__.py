"""One harness for starting what the tests, the benchmarks and the chaos rounds run against.

``processes``: real daphne, runleader and runagent processes (ports, readiness, log capture, the
kill of a whole process group). ``pg``: throwaway PostgreSQL servers (initdb, streaming standbys,
promotion). ``stats``: the one percentile every measurement uses.

Guaranteed: nothing here imports pytest or the test suite, so bench/ and chaos/ use it as they
are; tests/ adds its fixtures on top (tests/fixtures.py). NOT shipped: the image copies only
``iacplatform`` and ``apps`` (Dockerfile, .dockerignore), as it ships no tests.
"""
