"""Predictions of a model on a whole `Dataset` (training, evaluation): one batched kernel call
through the model's CPU backend (`lattenb.backends.cpu`); `LatteModel.compute` is the
one-structure case of the same kernels."""


def dataset_descriptors(model, data):
    """Raw descriptors G (N, T) of every atom of a dataset."""
    return model.backend("cpu").dataset_descriptors(data)


def predict(model, data, n_chunks=None, repulsion=True):
    """Energies (F,), forces (N, 3), stresses (F, 6) eV/Å^3 (nan without volume) and per-atom
    energies (N,) of a dataset in one pass (repulsion=False: without the core repulsion)."""
    return model.backend("cpu").predict(data, n_chunks, repulsion)
