"""Names for the array types tpgrid passes around, so signatures read as what they hold.

One module, so ``npt.NDArray[np.float64]`` is spelt once rather than redefined per module.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
#: Any float array (float32 or float64): what a computation accepts whatever the precision.
FloatArray = npt.NDArray[np.floating]
