"""tpgrid: 1 km maps of soil micronutrients over the Tibetan Plateau, with per-pixel
uncertainty, predicted by random forests across a Dask cluster."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tpgrid")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
