"""Tools for trying hookdrop and measuring it: the demo, the benchmark and the harness that
runs a whole stack (mock receiver, monitor, workers) in child processes for both."""
