"""Species modes (`lattenb.species_modes`): the "embedding" mode's species weights against a plain
loop, forces, stress and every training gradient (embeddings included) against finite
differences, equality with the "pair" mode given the same table, model files, the CLI, and the
element features the embeddings start from."""
import json

import numpy as np
import pytest

import lattenb
from lattenb import LatteModel, cli
from lattenb.species_modes import element_features, period_and_group

BLOCKS = "2,-:2,i,i:1,ij,ij:1,ijk,ijk:1,i,j,ij"
CUTOFF = 3.8


def embedding_model(seed=0, d=3, species=("Ni", "Mo")):
    m = LatteModel(list(species), cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4), activation="tanh",
                   seed=seed, species_mode="embedding", embedding_dim=d)
    rng = np.random.default_rng(seed)
    S = len(species)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1, e0=rng.normal(size=S))
    return m


def test_embedding_weights_are_the_factorisation_written_as_a_loop():
    m = embedding_model(d=4, species=("Nb", "Mo", "Ta", "W"))
    u, v, w = (m.params[n] for n in ("embedding_central", "embedding_neighbour", "embedding_body"))
    S, B = 4, m.layout.n_bodies
    assert u.shape == v.shape == (S, 4) and w.shape == (B, 4) and "sigma" not in m.params
    reference = np.zeros((S, S, B))
    for s in range(S):
        for t in range(S):
            for b in range(B):
                reference[s, t, b] = sum(u[s, k] * v[t, k] * w[b, k] for k in range(4))
    np.testing.assert_allclose(m.species_weights(), reference, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(m.kernel_arrays().sigma, reference, rtol=1e-13, atol=1e-14)
    # not symmetric in (central, neighbour): the two roles have their own embeddings
    assert not np.allclose(reference, reference.transpose(1, 0, 2))
    # parameters linear in S: 2 S d + B d, against S^2 B for "pair"
    assert sum(m.params[n].size for n in m.species_parameter_names) == 2 * S * 4 + B * 4


def test_embedding_model_equals_the_pair_model_with_its_table():
    from structures import random_atoms
    m = embedding_model(seed=5)
    pair = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4), activation="tanh",
                      seed=5)
    pair.set_parameters(sigma=m.species_weights(),
                        **{n: m.params[n] for n in ("centres", "widths", "mlp", "e0", "g_mean", "g_std")})
    atoms = random_atoms(np.random.default_rng(3), 9, [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]],
                         True)
    a = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = pair.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert len(set(atoms.numbers)) == 2 and np.abs(a["forces"]).max() > 0
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)


def test_embedding_forces_and_stress_match_finite_differences():
    from structures import random_atoms
    from test_model import finite_difference_errors
    m = embedding_model(seed=1)
    atoms = random_atoms(np.random.default_rng(7), 8, [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]],
                         True)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    errors = finite_difference_errors(m, atoms, out)
    print("\nembedding: relative errors against finite differences", errors)
    assert np.abs(out["forces"]).max() > 0
    assert max(errors.values()) < 1e-8, errors


def test_embedding_training_gradients_match_finite_differences():
    from test_training import fd_check, random_frame
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 3, 3.2)]
    m = embedding_model(seed=2)
    worst = fd_check(m, prepare_dataset(frames, m), LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng,
                     per_group=12)
    print("\nembedding: largest relative gradient errors", worst)
    assert {"embedding_central", "embedding_neighbour", "embedding_body", "mlp", "e0",
            "centres", "widths"} <= set(worst)
    assert max(worst.values()) < 1e-6, worst


def test_embedding_model_fits_round_trips_and_old_files_load_as_pair(tmp_path):
    from test_training import assert_round_trip, random_frame
    rng = np.random.default_rng(4)
    frames = [random_frame(rng, 4, 4.0) for _ in range(4)]
    start = embedding_model(seed=3)
    fitted = lattenb.fit(frames, model=start, max_iter=3, log=None)
    assert not np.array_equal(fitted.params["embedding_central"], start.params["embedding_central"])
    loaded = assert_round_trip(fitted, tmp_path / "emb.npz", frames[0])
    assert (loaded.species_mode, loaded.embedding_dim) == ("embedding", 3)
    assert "species_mode='embedding'" in repr(loaded)
    # frozen species weights (train_sigma=False) hold the embeddings fixed
    from lattenb.steps import ParameterVector
    vector = ParameterVector(fitted, train_sigma=False)
    n_frozen = sum(fitted.params[n].size for n in fitted.species_parameter_names)
    assert vector.frozen.sum() == n_frozen
    # a file written before the field existed is a "pair" model
    old = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4))
    header = old.file_header()
    del header["species_mode"], header["embedding_dim"]
    from lattenb.io import write_model_file
    write_model_file(tmp_path / "old.npz", header, old.params)
    again = lattenb.load(tmp_path / "old.npz")
    assert again.species_mode == "pair" and np.array_equal(again.params["sigma"], old.params["sigma"])


def test_embedding_file_with_wrong_shapes_is_a_clear_error(tmp_path):
    m = embedding_model()
    header = m.file_header()
    header["embedding_dim"] = 5
    from lattenb.io import write_model_file
    write_model_file(tmp_path / "bad.npz", header, m.params)
    with pytest.raises(ValueError, match="embedding_central.*expected"):
        lattenb.load(tmp_path / "bad.npz")


def test_bad_species_mode_arguments():
    with pytest.raises(ValueError, match="unknown species mode 'dense'.*pair.*embedding"):
        LatteModel(["Ni"], species_mode="dense")
    for d in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
            LatteModel(["Ni"], species_mode="embedding", embedding_dim=d)


def test_cli_fit_with_species_embeddings(tmp_path, capsys):
    from ase.io import write
    from test_training import random_frame
    rng = np.random.default_rng(9)
    write(tmp_path / "train.xyz", [random_frame(rng, 4, 4.0) for _ in range(6)])
    assert cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                     "--blocks", "2,-:1,i,i", "--hidden", "4", "--cutoff", "3.5",
                     "--max-iter", "2", "--species-mode", "embedding", "--embedding-dim", "2"]) == 0
    m = lattenb.load(tmp_path / "m.npz")
    assert (m.species_mode, m.embedding_dim) == ("embedding", 2)
    with pytest.raises(SystemExit):
        cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                  "--species-mode", "dense"])
    assert "invalid choice: 'dense'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--embedding-dim applies to --species-mode embedding"):
        cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                  "--embedding-dim", "3"])


def test_periods_and_groups_of_the_periodic_table():
    known = {"H": (1, 1), "He": (1, 18), "Li": (2, 1), "C": (2, 14), "Ne": (2, 18), "Na": (3, 1),
             "Cl": (3, 17), "K": (4, 1), "Sc": (4, 3), "Ni": (4, 10), "Cu": (4, 11), "Kr": (4, 18),
             "Nb": (5, 5), "Mo": (5, 6), "Cs": (6, 1), "La": (6, 3), "Lu": (6, 3), "Hf": (6, 4),
             "Ta": (6, 5), "W": (6, 6), "Au": (6, 11), "Rn": (6, 18), "U": (7, 3), "Og": (7, 18)}
    from ase.data import atomic_numbers
    for symbol, expected in known.items():
        assert period_and_group(atomic_numbers[symbol]) == expected, symbol
    f = element_features([41, 73, 8])          # Nb, Ta (same group), O
    assert f.shape == (3, 5) and np.all(f[:, 0] == 1.0)
    # the same group and a similar radius: Nb and Ta are closer to each other than to O
    assert np.linalg.norm(f[0] - f[1]) < np.linalg.norm(f[0] - f[2])
    # an element's features do not depend on the other species of the model
    assert np.array_equal(element_features([41])[0], f[0])
    # and the embeddings start from them: Nb's and Ta's start closer than Nb's and O's
    m = LatteModel(["Nb", "Ta", "O"], species_mode="embedding", seed=0)
    e = m.params["embedding_central"]
    assert np.linalg.norm(e[0] - e[1]) < np.linalg.norm(e[0] - e[2])


def test_header_records_the_mode():
    m = embedding_model()
    header = json.loads(json.dumps(m.file_header()))
    assert header["species_mode"] == "embedding" and header["embedding_dim"] == 3
