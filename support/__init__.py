"""Fixtures shared by the test suite (``tests/``) and the benchmarks (``bench/``), owned by
neither: a redis-server of the test's own, real worker/beat clusters, recording runners."""
