"""Build and update the covariate cube: one Zarr v3 group, every layer on the target grid.

Each catalog layer is reprojected lazily onto the grid (odc-geo ``xr_reproject``), checked
against its catalog entry chunk by chunk, hashed, and written chunk by chunk, so memory is
bounded by the chunk size, not the map. Slope, northness and eastness are derived from the
projected DEM. A ``valid`` variable marks pixels inside the area of interest where every
layer has data.

Updates are incremental and safe:

* a layer whose source fingerprint (catalog entry + file content) is unchanged is carried over
  without being read; a changed layer is recomputed, and only chunks whose content hash
  changed are written (the others are hard-linked from the previous cube);
* the new cube is assembled beside the old one and swapped in only when complete, so a failed
  build leaves any previous cube untouched;
* nothing is carried over on trust: every chunk file's size and SHA-256 are recorded when it
  is written (``tpgrid:chunk_files``) and checked before it is linked into the next cube. A
  damaged chunk (missing, changed, or a file where none was written) is recomputed from its
  source, the rest stays carried over; a cube without records is rebuilt.

Per-chunk content hashes live in the group attributes (``tpgrid:chunk_hashes``); they are what
later stages key incremental work on.

Its parts, each importing only those listed after it:

- :mod:`~tpgrid.cube.build`: :func:`build_cube`, the orchestration, and its report.
- :mod:`~tpgrid.cube.write`: the layout, every variable chunk by chunk, ``valid``, the records;
  :mod:`~tpgrid.cube.carry`: the previous cube, carried over and checked, damage reported.
- :mod:`~tpgrid.cube.variables`: the variable plan, every variable as lazy data on the grid.
- :mod:`~tpgrid.cube.plan`: opening and checking the sources, :func:`plan_cube`,
  :func:`verify_cube`; :mod:`~tpgrid.cube.values`: the per-chunk value checks.
- :mod:`~tpgrid.cube.read`: reading a built cube, and the names it is stored under.

The names callers use are re-exported here.
"""

from tpgrid.cube.build import CubeReport, LayerUpdate, build_cube
from tpgrid.cube.plan import open_sources, plan_cube, verify_cube
from tpgrid.cube.read import (
    ATTR_FEATURES,
    ATTR_FINGERPRINTS,
    ATTR_GRID,
    ATTR_HASHES,
    VALID,
    ChunkKey,
    chunk_hashes,
    cube_grid,
    open_cube,
    read_window,
)
from tpgrid.cube.write import chunk_hash

__all__ = [
    "ATTR_FEATURES",
    "ATTR_FINGERPRINTS",
    "ATTR_GRID",
    "ATTR_HASHES",
    "VALID",
    "ChunkKey",
    "CubeReport",
    "LayerUpdate",
    "build_cube",
    "chunk_hash",
    "chunk_hashes",
    "cube_grid",
    "open_cube",
    "open_sources",
    "plan_cube",
    "read_window",
    "verify_cube",
]
