"""Experiment tooling, outside the refiner product: generated datasets (`synthetic`), the CPU demo (`demo`),
the TopoMortar converter (`topomortar`), the baselines the benchmarks compare with (`baselines`) and the
classification of topology errors (`topology_errors`). The product (`rnca_nnunet`) never imports from here."""
