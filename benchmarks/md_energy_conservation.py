"""Energy conservation of a lattenb Cu model in LAMMPS: 864 atoms, 300 K, NVE, 1 fs.

    python benchmarks/md_energy_conservation.py                      # 10 ps, 1 rank
    python benchmarks/md_energy_conservation.py --ps 1 --ranks 2     # shorter, 2 MPI ranks
    python benchmarks/md_energy_conservation.py --model cu.npz       # a fitted model

Prints the drift of the total energy in eV/atom/ps (slope of a straight-line fit of E_tot / N
against time; target below 1e-5) and the largest excursion, and writes E_tot against time as a
PNG (if matplotlib is installed) and as text.

The run goes through the command line, ``python -m lattenb.lammps`` (``-np N`` for N ranks),
with a plain LAMMPS input in which ``pair_style lattenb`` / ``pair_coeff * * MODEL Cu`` stand
for the pair style; the input is written next to the outputs.

The model: --model PATH; otherwise ``lattenb.fit`` ("fast" preset) on
../shared/data/mlearn/Cu_train.xyz, within --fit-time seconds, saved as <out>_model.npz;
otherwise (no ``lattenb.fit``, or --stand-in) a stand-in, stated in the output: the "fast"
preset with random radial functions, species weights and hidden layers, descriptor
standardisation from the training set, and only the output layer and e0 fitted (linear least
squares on energies and forces of every --stride'th training structure). A wholly random model
is no use here (its random energy surface collapses the crystal within ~0.2 ps: "overlapping
atoms"); --random forces one anyway.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import lattenb  # noqa: E402

DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "mlearn"))
A_CU = 3.615   # Å


def readout_fit(model, frames, e_weight=1 / 0.005, f_weight=1 / 0.1, ridge=1e-8):
    """Fit only the output layer (weights of the last hidden layer) and e0 of a one-species
    model by linear least squares on per-atom energies (weight e_weight, 1/eV) and force
    components (f_weight, Å/eV); descriptor standardisation from the frames. In place."""
    if model.n_species != 1:
        raise ValueError("readout_fit handles one-species models")
    G = np.concatenate([model.descriptors(a.positions, a.cell.array, a.pbc, a.numbers)
                        for a in frames])
    model.set_parameters(g_mean=G.mean(0)[None], g_std=(G.std(0) + 1e-8)[None])
    h = int(model.layer_sizes[-2])
    base = model.params["mlp"].copy()
    natoms = np.array([len(a) for a in frames], float)
    energy_features = np.zeros((len(frames), h))
    force_features = [np.zeros((h, 3 * len(a))) for a in frames]
    for k in range(h):        # the energy is linear in the output weights: one pass per unit
        p = base.copy()
        p[0, -(h + 1):] = 0.0
        p[0, -(h + 1) + k] = 1.0
        model.set_parameters(mlp=p, e0=np.zeros(1))
        for n, a in enumerate(frames):
            out = model.compute(a.positions, a.cell.array, a.pbc, a.numbers)
            energy_features[n, k] = out["energy"]
            force_features[n][k] = out["forces"].ravel()
    rows = [np.column_stack([energy_features / natoms[:, None], np.ones(len(frames))]) * e_weight]
    rhs = [np.array([a.get_potential_energy() for a in frames]) / natoms * e_weight]
    for a, F in zip(frames, force_features):
        rows.append(np.column_stack([F.T, np.zeros(F.shape[1])]) * f_weight)
        rhs.append(a.get_forces().ravel() * f_weight)
    A, b = np.vstack(rows), np.concatenate(rhs)
    w = np.linalg.solve(A.T @ A + ridge * np.eye(h + 1), A.T @ b)
    p = base.copy()
    p[0, -(h + 1):-1] = w[:h]
    p[0, -1] = 0.0
    model.set_parameters(mlp=p, e0=w[h:])
    return model


def test_errors(model, frames):
    de, df = [], []
    for a in frames:
        out = model.compute(a.positions, a.cell.array, a.pbc, a.numbers)
        de.append(abs(out["energy"] - a.get_potential_energy()) / len(a))
        df.append(np.abs(out["forces"] - a.get_forces()).ravel())
    return 1000 * np.mean(de), float(np.mean(np.concatenate(df)))


def make_model(args):
    """(path of the model file, description)."""
    if args.model:
        return args.model, f"model {args.model}"
    from ase.io import read
    path = args.out + "_model.npz"
    train = os.path.join(DATA, "Cu_train.xyz")
    if args.random:
        model = lattenb.LatteModel.preset("fast", ["Cu"], seed=args.seed)
        atoms = read(train, ":")[:40]
        G = np.concatenate([model.descriptors(a.positions, a.cell.array, a.pbc, a.numbers)
                            for a in atoms])
        model.set_parameters(g_mean=G.mean(0)[None], g_std=G.std(0)[None] + 1e-8)
        model.save(path)
        return path, "RANDOM 'fast' preset Cu model, standardised on training descriptors"
    frames = read(train, ":")
    test = read(os.path.join(DATA, "Cu_test.xyz"), ":")
    fit = getattr(lattenb, "fit", None)
    if callable(fit) and not args.stand_in:
        t0 = time.perf_counter()
        valid = frames[::10]              # as benchmarks/mlearn.py: validation from the train file
        train_frames = [a for k, a in enumerate(frames) if k % 10]
        model = fit(train_frames, species=["Cu"], valid=valid, preset="fast", seed=args.seed,
                    max_iter=args.fit_iter, max_time=args.fit_time,
                    log=lambda line: print(f"  [fit] {line}", flush=True), log_every=25)
        wall = time.perf_counter() - t0
        e_mae, f_mae = test_errors(model, test)
        model.save(path)
        return path, (f"lattenb.fit on Cu_train.xyz ('fast' preset, {wall:.0f} s, at most "
                      f"{args.fit_iter} iterations / {args.fit_time:.0f} s); Cu_test MAE "
                      f"{e_mae:.2f} meV/atom, {f_mae:.3f} eV/A")
    t0 = time.perf_counter()
    model = lattenb.LatteModel.preset("fast", ["Cu"], seed=args.seed)
    readout_fit(model, frames[::args.stride])
    e_mae, f_mae = test_errors(model, test)
    model.save(path)
    return path, (f"STAND-IN model (no lattenb.fit): 'fast' preset, random features, output "
                  f"layer + e0 fitted by least squares on {len(frames[::args.stride])} "
                  f"Cu_train structures in {time.perf_counter() - t0:.0f} s; Cu_test MAE "
                  f"{e_mae:.1f} meV/atom, {f_mae:.3f} eV/A")


INPUT = """\
# NVE energy conservation: fcc Cu, {natoms} atoms
units metal
atom_style atomic
lattice fcc {a}
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 63.546

pair_style lattenb
pair_coeff * * {model} Cu

neighbor 1.0 bin
velocity all create {t_init} {seed} mom yes rot yes dist gaussian loop geom
timestep {dt}
fix md all nve
thermo {thermo}
thermo_style custom step time temp pe ke etotal press
fix record all print {every} "$(time:%.6f) $(pe:%.12f) $(ke:%.12f) $(etotal:%.12f) \
$(temp:%.4f)" file {record} screen no title "# time_ps pe_eV ke_eV etotal_eV temp_K"
run {steps}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="saved lattenb Cu model")
    parser.add_argument("--random", action="store_true", help="use a random model (see above)")
    parser.add_argument("--ps", type=float, default=10.0, help="simulated time, ps")
    parser.add_argument("--dt", type=float, default=1.0, help="time step, fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (velocities are "
                        "drawn at twice this; equipartition brings the crystal to about it)")
    parser.add_argument("--cells", type=int, default=6, help="fcc cubic cells per side (6: 864)")
    parser.add_argument("--ranks", type=int, default=1, help="MPI ranks")
    parser.add_argument("--every", type=int, default=10, help="record E every N steps")
    parser.add_argument("--fit-time", type=float, default=600.0, help="lattenb.fit time limit, s")
    parser.add_argument("--fit-iter", type=int, default=500, help="lattenb.fit iterations")
    parser.add_argument("--stand-in", action="store_true",
                        help="skip lattenb.fit: fit only the output layer (see above)")
    parser.add_argument("--stride", type=int, default=4, help="stand-in fit: every Nth structure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "md_energy_conservation"),
                        help="output prefix (.png, .txt, .lammps, _model.npz; default "
                             "benchmarks/results/md_energy_conservation)")
    args = parser.parse_args()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    model_path, description = make_model(args)
    print(f"model: {description}")
    print(f"       {lattenb.load(model_path)!r}")
    natoms = 4 * args.cells ** 3
    steps = int(round(args.ps * 1000 / args.dt))
    record = os.path.abspath(args.out + ".txt")
    input_path = os.path.abspath(args.out + ".lammps")
    with open(input_path, "w") as fh:
        fh.write(INPUT.format(natoms=natoms, a=A_CU, n=args.cells,
                              model=os.path.abspath(model_path), t_init=2 * args.temperature, seed=4928459 + args.seed,
                              dt=args.dt / 1000, thermo=max(1, steps // 20), every=args.every,
                              record=record, steps=steps))
    command = [sys.executable, "-m", "lattenb.lammps", input_path, "-log", "none"]
    if args.ranks > 1:
        command[3:3] = ["-np", str(args.ranks)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))
    print(f"running {natoms} atoms, {steps} steps of {args.dt} fs ({args.ps} ps) on "
          f"{args.ranks} rank(s): {' '.join(command)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - t0

    data = np.loadtxt(record)
    t, pe, ke, etot, temp = data.T
    e = etot / natoms
    slope, intercept = np.polyfit(t, e, 1)
    excursion = np.abs(e - e[0]).max()
    fluctuation = np.std(e - (slope * t + intercept))
    print()
    print(f"wall time {wall:.0f} s ({wall / (steps * natoms) * 1e6:.1f} us/atom/step, "
          f"start-up included)")
    print(f"mean temperature {temp[len(temp) // 5:].mean():.1f} K (after the first 20 %)")
    print(f"E_tot/N: start {e[0]:.8f} eV, end {e[-1]:.8f} eV, max |E - E0| {excursion:.2e} "
          f"eV/atom, fluctuation about the fit {fluctuation:.2e} eV/atom")
    print(f"drift: {slope:.3e} eV/atom/ps (straight-line fit over {t[-1] - t[0]:.2f} ps; "
          f"target |drift| < 1e-5) -> {'OK' if abs(slope) < 1e-5 else 'ABOVE TARGET'}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: no plot; data in {record}")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, (e - e[0]) * 1e6, lw=0.8, label="E_tot - E_tot(0)")
    ax.plot(t, (slope * t + intercept - e[0]) * 1e6, "k--", lw=1,
            label=f"fit: {slope:.2e} eV/atom/ps")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("total energy change (ueV/atom)")
    ax.set_title(f"lattenb in LAMMPS: {natoms} Cu atoms, NVE, {args.dt} fs, "
                 f"~{temp[len(temp) // 5:].mean():.0f} K")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print(f"plot: {os.path.abspath(args.out + '.png')}; data: {record}")


if __name__ == "__main__":
    main()
