"""Model files: one ``.npz`` (read with ``allow_pickle=False``) holding a JSON header and arrays.

The header is stored as a uint8 array named ``header`` (UTF-8 JSON) so the whole model is one
file that NumPy can read without unpickling anything:

    {"format": "lattenb", "format_version": 1, "species": [...], "cutoff": 5.0,
     "blocks": "...", "hidden": [...], "activation": "gaussian", "seed": 0,
     "units": {"energy": "eV", "length": "Angstrom"}}

This module knows the file format only: `write_model_file` and `read_model_file` move a header
dict and named arrays. The model's own fields are `lattenb.model.LatteModel.file_header` and
`LatteModel.from_file_data`; `lattenb.model.load_model` / `read_model` read a model.
"""
import json
import zipfile

import numpy as np

from .conventions import UNITS  # noqa: F401  (formerly defined here)

FORMAT_VERSION = 1


def strict_json(value):
    """value with every non-finite float as None, in nested dicts, lists and tuples too, so that
    it is strict JSON (an infinite validation loss is written as null)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_model_file(path, header, arrays):
    """Write `header` (a JSON-serialisable dict, after the format fields; non-finite numbers are
    written as null, `strict_json`) and `arrays` (name -> array, in this order) to `path`
    (exactly that name; no suffix is added)."""
    header = strict_json({"format": "lattenb", "format_version": FORMAT_VERSION, **header})
    blob = np.frombuffer(json.dumps(header, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, header=blob, **arrays)


def read_model_file(path):
    """(header dict, arrays dict) of a model or checkpoint file, with the file and its header
    checked (an .npz archive, JSON object header, format "lattenb", a version this code reads);
    ValueError naming `path` and the problem otherwise. `lattenb.model.read_model` makes the
    model of them."""
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
    return header, arrays
