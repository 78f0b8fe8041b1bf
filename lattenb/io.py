"""Model files: one ``.npz`` (read with ``allow_pickle=False``) holding a JSON header and arrays.

The header is stored as a uint8 array named ``header`` (UTF-8 JSON) so the whole model is one
file that NumPy can read without unpickling anything:

    {"format": "lattenb", "format_version": 1, "species": [...], "cutoff": 5.0,
     "blocks": "...", "hidden": [...], "activation": "gaussian", "seed": 0,
     "units": {"energy": "eV", "length": "Angstrom"}}
"""
import json
import zipfile

import numpy as np

FORMAT_VERSION = 1
UNITS = {"energy": "eV", "length": "Angstrom", "force": "eV/Angstrom", "stress": "eV/Angstrom^3"}


def save_model(model, path, params=None, extra_arrays=None, extra_header=None):
    """Write `model` to `path` (exactly that name; no suffix is added).

    params: parameter arrays to write instead of model.params; extra_arrays / extra_header:
    additional arrays and header fields (training checkpoints use them; readers ignore them)."""
    header = {"format": "lattenb", "format_version": FORMAT_VERSION,
              "species": list(model.species), "cutoff": model.cutoff, "blocks": model.blocks,
              "hidden": list(model.hidden), "activation": model.activation, "seed": model.seed,
              "units": UNITS, **(extra_header or {})}
    fit_info = getattr(model, "fit_info", None)
    if fit_info:
        # strict JSON: a non-finite number (an infinite validation loss) is written as null
        header["fit_info"] = {k: (v if not isinstance(v, float) or np.isfinite(v) else None)
                              for k, v in fit_info.items()}
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, header=blob, **(params if params is not None else model.params),
                 **(extra_arrays or {}))


def load_model(path, device="cpu", dtype=None):
    """Read a model written by `save_model`; ValueError naming the problem if the file is bad.

    device "cpu" or "cuda", dtype "float64" or "float32" (CUDA only): the model's defaults for
    `compute` and `calculator` (see `LatteModel.to`)."""
    return read_model_file(path)[0].to(device, dtype)


def read_model_file(path):
    """(model, header dict, extra arrays dict) from a model or checkpoint file."""
    from .model import PARAMETER_NAMES, LatteModel
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError(f"{path}: not a lattenb model file (a single array, not an .npz archive)")
        with data:
            names = set(data.files)
            if "header" not in names:
                raise ValueError(f"{path}: not a lattenb model file (no 'header' array)")
            arrays = {name: data[name] for name in names}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the model file (truncated or corrupt?): {exc}") from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read the model file (truncated, corrupt or pickled "
                         f"data?): {exc}") from None
    try:
        header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the model header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the model header is not a JSON object")
    if header.get("format") != "lattenb":
        raise ValueError(f"{path}: not a lattenb model file (format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: model format version {version} is newer than this lattenb "
                         f"reads (up to {FORMAT_VERSION}); upgrade lattenb")
    missing = [n for n in PARAMETER_NAMES if n not in arrays]
    if missing:
        raise ValueError(f"{path}: model file lacks arrays {missing}")
    try:
        model = LatteModel(header["species"], cutoff=header["cutoff"], blocks=header["blocks"],
                           hidden=header["hidden"], activation=header["activation"],
                           seed=header.get("seed", 0))
    except KeyError as exc:
        raise ValueError(f"{path}: model header lacks the field {exc}") from None
    shapes = model.parameter_shapes()
    for name in PARAMETER_NAMES:
        if arrays[name].shape != shapes[name]:
            raise ValueError(f"{path}: array {name!r} has shape {arrays[name].shape}, expected "
                             f"{shapes[name]} for this header")
    model.set_parameters(**{n: arrays[n] for n in PARAMETER_NAMES})
    if isinstance(header.get("fit_info"), dict):
        model.fit_info = dict(header["fit_info"])
    extra = {n: v for n, v in arrays.items() if n not in PARAMETER_NAMES}
    return model, header, extra
