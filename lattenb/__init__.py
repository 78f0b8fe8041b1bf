"""lattenb: the LATTE machine-learning interatomic potential in NumPy + Numba.

    import lattenb
    model = lattenb.LatteModel(species=["Cu"], cutoff=5.0)
    atoms.calc = model.calculator()
    model.save("model.npz"); same = lattenb.load("model.npz")
"""
from .blocks import parse_blocks
from .model import PRESETS, LatteModel
from .model import load_model as load
from .training import fit

__version__ = "0.1.0"
__all__ = ["LatteModel", "PRESETS", "fit", "load", "parse_blocks", "__version__"]
