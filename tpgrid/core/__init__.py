"""The numerical core: numpy in, numpy out.

Kernels, packed forests, feature matrices, the per-chunk computations, metrics, explanations
and uncertainty. Nothing here reads or writes Zarr, xarray or Dask objects (an import-linter
contract keeps them out), so all of it can be tested and reused without a cluster or a store.
"""
