"""What the tests and the benchmarks both stand on, outside the shipped package: an independent
reference of the official model with checkpoint writers in its released layouts (``official``)
and a loopback-only Ray cluster (``ray_cluster``)."""
