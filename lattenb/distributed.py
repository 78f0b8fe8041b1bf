"""Data-parallel training over MPI ranks: a communicator for the reductions of a sharded dataset,
and the contiguous, pair-balanced split of the structures.

Every rank holds a shard of the training structures (a `Dataset` whose `comm` is the world
communicator) and runs the same `fit`: the loss, its gradient, the validation loss, the
standardisation statistics, the composition fit, the output-layer solve and the active set reduce
their per-shard parts through `comm`, so each rank ends with the same numbers, and so with the same
L-BFGS-B steps. Rank 0's parameters are broadcast at every evaluation (`MpiComm.same`), rank 0
prints and writes files. With one process, `SERIAL` stands in and nothing is communicated.

Reductions are MPI_Reduce to rank 0 followed by MPI_Bcast rather than MPI_Allreduce, so every rank
holds rank 0's bits (an Allreduce may round differently on different ranks, and L-BFGS-B must take
the same steps everywhere). Shards are contiguous runs of the structures in file order, so the
per-structure arrays gathered in rank order (`concat`) are exactly the one-process arrays.

    mpiexec -np 4 lattenb fit train.xyz -o model.npz        # or: lattenb fit --np 4 ...
"""
import os
import sys

import numpy as np

#: environment variables MPI launchers set (MPICH/Hydra, Open MPI, PMIx, Slurm's srun)
LAUNCH_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class SerialComm:
    """The communicator protocol, for one process (where each operation returns its argument):

    sum, max, min (float or float array)   over ranks; every rank gets rank 0's result
    concat (array)                         the ranks' arrays along axis 0 in rank order, everywhere
    gather (array)                         as concat, on rank 0 only (None elsewhere)
    bcast (object)                         rank 0's object on every rank
    allgather (object)                     every rank's object in rank order, as a list
    same (array)                           rank 0's array on every rank; RuntimeError if a rank's
                                           own differs (its optimiser went another way)
    """
    size = 1
    rank = 0

    def sum(self, value):
        return value

    max = min = concat = gather = bcast = same = sum

    def allgather(self, obj):
        return [obj]


class MpiComm(SerialComm):
    """MPI through mpi4py (`world`)."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm, self.MPI = comm, MPI
        self.size, self.rank = comm.Get_size(), comm.Get_rank()

    def _reduce(self, value, op):
        scalar = np.isscalar(value) or np.ndim(value) == 0
        send = np.array(value, dtype=np.float64, ndmin=1, order="C")
        out = np.empty_like(send)
        self.comm.Reduce(send, out, op=op, root=0)
        self.comm.Bcast(out, root=0)
        return float(out[0]) if scalar else out

    def sum(self, value):
        return self._reduce(value, self.MPI.SUM)

    def max(self, value):
        return self._reduce(value, self.MPI.MAX)

    def min(self, value):
        return self._reduce(value, self.MPI.MIN)

    def concat(self, array):
        return np.concatenate(self.comm.allgather(np.asarray(array)), axis=0)

    def gather(self, array):
        parts = self.comm.gather(np.asarray(array), root=0)
        return np.concatenate(parts, axis=0) if self.rank == 0 else None

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def same(self, x):
        x = np.ascontiguousarray(x, dtype=np.float64)
        ref = x.copy()
        self.comm.Bcast(ref, root=0)
        if self.max(float(not np.array_equal(ref, x))):
            raise RuntimeError("the ranks' optimisers took different steps (different CPUs or "
                               "libraries on the nodes?); rerun on identical nodes")
        return ref


SERIAL = SerialComm()


def launched_by_mpi():
    """True when this process was started by an MPI launcher with more than one rank."""
    for name in LAUNCH_ENV:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def world():
    """The communicator of all ranks: `MpiComm` under an MPI launcher with several ranks (mpi4py
    needed: pip install "lattenb[mpi]"), else `SERIAL` (mpi4py is not imported)."""
    if not launched_by_mpi():
        return SERIAL
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("lattenb was started by mpiexec with several ranks, which needs "
                          "mpi4py: pip install 'lattenb[mpi]'") from None
    comm = MPI.COMM_WORLD
    return SERIAL if comm.Get_size() == 1 else MpiComm(comm)


def set_threads(threads=None, mpi_comm=None):
    """Set Numba's threads: `threads` if given; else, for a rank of `mpi_comm` (an mpi4py
    communicator) with several ranks on its node and no NUMBA_NUM_THREADS, cores / ranks on the
    node. Returns the number of threads."""
    import numba
    if threads is None and mpi_comm is not None and "NUMBA_NUM_THREADS" not in os.environ:
        from mpi4py import MPI
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)    # ranks on this node
        local = node.Get_size()
        node.Free()
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, local))
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()


def abort(comm, code=1):
    """End every rank (MPI_Abort) after an error on one: the others would wait forever."""
    sys.stdout.flush()
    sys.stderr.flush()
    if comm.size > 1:
        comm.comm.Abort(code)
    os._exit(code)


def shard_bounds(weights, n_shards):
    """Split items with `weights` (F,) (e.g. each structure's pair count) into `n_shards`
    contiguous runs of near-equal total weight: (n_shards + 1,) boundaries. Every shard gets at
    least one item while there are items enough."""
    weights = np.asarray(weights, dtype=np.float64)
    n = len(weights)
    if n < n_shards:
        raise ValueError(f"{n} structures cannot be shared among {n_shards} ranks; use fewer "
                         f"ranks")
    cum = np.concatenate([[0.0], np.cumsum(weights)])
    targets = cum[-1] * np.arange(1, n_shards) / n_shards
    inner = np.searchsorted(cum, targets, side="left")
    bounds = np.concatenate([[0], inner, [n]]).astype(np.int64)
    for k in range(1, n_shards):           # at least one structure per shard, in order
        bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), n - (n_shards - k))
    return bounds


def pair_counts(frames, cutoff):
    """Each structure's number of neighbour pairs within `cutoff` (the cost of its share of a
    loss evaluation)."""
    from .neighbors import neighbor_list
    return np.array([len(neighbor_list(a.positions, a.cell.array, a.pbc, cutoff)[1]) + len(a)
                     for a in frames], dtype=np.float64)


def scatter_frames(comm, frames, cutoff):
    """Rank 0's structures (a list; ignored elsewhere) split into contiguous, pair-balanced
    shards; returns this rank's shard (a list of Atoms). One process: `frames` itself."""
    if comm.size == 1:
        return frames
    parts = None
    if comm.rank == 0:
        bounds = shard_bounds(pair_counts(frames, cutoff), comm.size)
        parts = [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return comm.comm.scatter(parts, root=0)


def tsqr_factor(comm, block):
    """The triangular factor R of a matrix whose rows are spread across ranks (`block` (n_k, C)
    on rank k), on rank 0 (None elsewhere): each rank reduces its rows to their own factor, rank
    0 stacks them in rank order and factorises again (TSQR), so only C^2 numbers per rank
    travel. |block x| = |R x| for every x: least squares over the rows can run on R."""
    C = block.shape[1]
    r = np.linalg.qr(block, mode="r") if len(block) else np.zeros((0, C))
    stacked = comm.gather(r)
    if comm.rank != 0:
        return None
    return np.linalg.qr(stacked, mode="r") if len(stacked) > C else stacked
