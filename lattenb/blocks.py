"""Descriptor block strings and the index tables that drive the generic contraction kernel.

A descriptor is written as blocks separated by ':'; a block is ``n,body,body,...``: n terms of
one contraction pattern. A body is a set of index letters; every letter appears exactly twice in
the pattern (so the full contraction is rotation invariant). ``-`` is the radial-only 2-body
block. Example (the "fast" preset): ``8,-:8,i,i:8,ij,ij:8,i,j,ij``.

A body in capital letters is the symmetric traceless (irreducible) part of the same body in lower
case (Allen et al.'s S, v, Q, T): ``IJ,IJ`` is Q:Q, ``I,IJ,J`` is v.Q.v, ``IJK,IJK`` is T:T. A body
is all capitals or all lower case; index letters match whatever their case, so patterns may mix
them (``I,ij,J``). The projection is applied between the moments and the contraction
(`lattenb.projection`); a rank-1 body is already traceless, so ``I`` and ``i`` are the same.

A block ``nc,pattern`` ("n channels") shares its bodies between its terms, as MTP's and ACE's
moments are shared between their contractions: the pattern's bodies of one kind (rank and case)
draw from one set of n channels (each a body tensor with its own radial functions), and the block
has one term per way of assigning channels to the bodies, up to the pattern's symmetries (``4c,i,i``:
the 10 products v_a . v_b with a <= b of 4 rank-1 channels; ``4c,i,j,ij``: v_a . Q_c . v_b, a <= b,
40 terms from 8 bodies). Terms grow as a power of n while the bodies, which set the cost of the
pair loops, grow as n.

For each pattern we build a table with one row per index assignment alpha in {0,1,2}^|L| and one
column per body holding the flat (C-order) index into that body's 3^p array, so that
``G = sum_rows prod_k A_k[table[row, k]]`` (design page, §3).
"""
import itertools
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .projection import PROJECTIONS

MAX_RANK = 4

_BODY_RE = re.compile(r"^([a-z]+|[A-Z]+)$")


@dataclass(frozen=True)
class Block:
    """n terms of one contraction pattern, each with bodies of its own; or, with `channels`, n
    channels per kind of body shared by every term of the block (see the module docstring)."""
    n: int
    bodies: tuple          # tuple of strings, e.g. ("i", "j", "ij"); ("",) for the radial block
    channels: bool = False

    @property
    def pattern(self):
        return "-" if self.bodies == ("",) else ",".join(self.bodies)

    @property
    def count(self):
        """The block's count as written: "8" or, for shared channels, "8c"."""
        return f"{self.n}c" if self.channels else str(self.n)

    @cached_property
    def body_kinds(self):
        """Per body of the pattern, the index of its kind (rank and projection) in order of
        first appearance: the bodies of one kind share the block's channels."""
        keys = list(zip(self.ranks, self.projections))
        first = list(dict.fromkeys(keys))
        return tuple(first.index(k) for k in keys)

    @cached_property
    def body_places(self):
        """Per body tensor of the whole block, in the layout's order, the place in the pattern
        of the body it stands for: each term's bodies in pattern order, term after term; with
        shared channels, each kind's n channels, kind after kind, at the kind's first place."""
        if not self.channels:
            return tuple(range(len(self.bodies))) * self.n
        kinds = self.body_kinds
        return tuple(kinds.index(kind) for kind in sorted(set(kinds)) for _ in range(self.n))

    @property
    def n_bodies(self):
        """Body tensors (each with its own radial functions) of the whole block."""
        return len(self.body_places)

    @cached_property
    def channel_assignments(self):
        """The channel of every body, one tuple per term: all assignments, keeping the
        lexicographically smallest of each set that a symmetry of the pattern maps into each
        other (those terms are equal). None without shared channels."""
        if not self.channels:
            return None
        symmetries = pattern_symmetries(self.bodies, self.body_kinds)
        return tuple(c for c in itertools.product(range(self.n), repeat=len(self.bodies))
                     if all(tuple(c[k] for k in perm) >= c for perm in symmetries))

    @property
    def n_terms(self):
        return self.n if not self.channels else len(self.channel_assignments)

    def term_bodies(self):
        """(n_terms, bodies of the pattern) int64: the block's bodies (numbered from 0 within the
        block, in `body_places` order) that each term contracts."""
        nb = len(self.bodies)
        if not self.channels:
            return np.arange(self.n * nb, dtype=np.int64).reshape(self.n, nb)
        kinds = np.array(self.body_kinds)
        return (kinds * self.n + np.array(self.channel_assignments, dtype=np.int64)).reshape(-1, nb)

    @property
    def ranks(self):
        return tuple(len(b) for b in self.bodies)

    @property
    def projections(self):
        """The `lattenb.projection` code of every body: traceless for capital bodies of rank >= 2
        (rank 0 and 1 tensors are their own traceless parts)."""
        return tuple(PROJECTIONS["traceless"] if body.isupper() and len(body) >= 2
                     else PROJECTIONS["none"] for body in self.bodies)

    def table(self):
        """(rows, n_bodies) int64 table of flat indices into each body's 3^p array."""
        bodies = [body.lower() for body in self.bodies]
        letters = sorted(set("".join(bodies)), key="".join(bodies).index)
        rows = []
        for alpha in itertools.product(range(3), repeat=len(letters)):
            value = dict(zip(letters, alpha))
            row = []
            for body in bodies:
                flat = 0
                for letter in body:
                    flat = 3 * flat + value[letter]
                row.append(flat)
            rows.append(row)
        return np.array(rows, dtype=np.int64).reshape(len(rows), len(self.bodies))


def pattern_symmetries(bodies, kinds):
    """The permutations of a pattern's bodies that some renaming of its index letters maps onto
    the pattern (each body's letters as a set: the body tensors are symmetric), between bodies of
    the same kind; they include the identity. G of a term is unchanged when its bodies' channels
    are permuted by one of them."""
    sets = [frozenset(body.lower()) for body in bodies]
    letters = sorted(set().union(*sets))
    found = []
    for perm in itertools.permutations(range(len(bodies))):
        if any(kinds[perm[k]] != kinds[k] for k in range(len(bodies))):
            continue
        for image in itertools.permutations(letters):
            rename = dict(zip(letters, image))
            if all(frozenset(rename[c] for c in sets[k]) == sets[perm[k]]
                   for k in range(len(bodies))):
                found.append(perm)
                break
    return found


def parse_blocks(spec):
    """Parse and validate a block string; returns a tuple of `Block`.

    Raises ValueError naming the offending block for: an empty block, a count that is not a
    positive integer, a body with characters other than letters or mixing capital and lower
    case, a letter repeated inside one body, a letter not used exactly twice (whatever its case),
    a body of rank > 3, or a pattern of a single body.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"block string must be a non-empty string like '8,-:8,i,i', got {spec!r}")
    blocks = []
    for raw in spec.replace(" ", "").split(":"):
        parts = raw.split(",")
        if len(parts) < 2 or not parts[0]:
            raise ValueError(f"block {raw!r}: expected 'count,body,...' (e.g. '8,i,i' or '8,-')")
        count = parts[0]
        channels = count.endswith("c")
        if channels:
            count = count[:-1]
        if not count.isdigit() or int(count) <= 0:
            raise ValueError(f"block {raw!r}: the count {parts[0]!r} is not a positive integer "
                             "(or one followed by 'c' for shared channels)")
        bodies = parts[1:]
        if bodies == ["-"]:
            blocks.append(Block(int(count), ("",), channels))
            continue
        for body in bodies:
            if not _BODY_RE.match(body):
                raise ValueError(f"block {raw!r}: body {body!r} must be index letters, all lower "
                                 "case (raw tensor) or all capitals (its traceless part), or the "
                                 "whole pattern '-'")
            if len(set(body)) != len(body):
                raise ValueError(f"block {raw!r}: body {body!r} repeats a letter (a self-trace "
                                 "of unit vectors is trivial)")
            if len(body) > MAX_RANK:
                raise ValueError(f"block {raw!r}: body {body!r} has rank {len(body)}; "
                                 f"supported ranks are 1..{MAX_RANK}")
        if len(bodies) < 2:
            raise ValueError(f"block {raw!r}: a contraction needs at least two bodies")
        joined = "".join(bodies).lower()
        for letter in sorted(set(joined)):
            if joined.count(letter) != 2:
                raise ValueError(f"block {raw!r}: letter {letter!r} is used {joined.count(letter)} "
                                 "times; every letter must appear exactly twice")
        blocks.append(Block(int(count), tuple(bodies), channels))
    return tuple(blocks)


def format_blocks(blocks):
    return ":".join(f"{b.count},{b.pattern}" for b in blocks)


@dataclass(frozen=True)
class DescriptorLayout:
    """Flat integer tables describing every term and body of a descriptor, for the kernels.

    n_terms T, n_bodies B, moment_size M (per-atom length of all body tensors together).
    body_rank (B,), body_offset (B,): rank and offset of body b in the per-atom moment vector.
    term_body_start (T + 1,), term_bodies: term t contracts the bodies
    term_bodies[term_body_start[t]:term_body_start[t + 1]] (for blocks without shared channels
    term_bodies is 0 .. B - 1: every term has bodies of its own, in order).
    term_pattern (T,): pattern index of term t.
    pattern_rows (P,), pattern_table_start (P,): row count and start of the pattern's table in
    `tables` (row-major, n_bodies columns).
    body_projection (B,): the linear map applied to body b's tensor between the moments and the
    contraction, a code of `lattenb.projection.PROJECTIONS` (0: none, the raw tensor).

    The CPU kernels contract along a cheaper path (`contraction_plan`): a term of three or four
    bodies may first contract two of its bodies into an intermediate tensor X (a "virtual body"
    stored after the real ones in the moment vector), then contract X with the rest:
    operand_start (T + 1,): term t has operand_start[t + 1] - operand_start[t] operands;
    index_start (T + 1,), index: its rows, each the places of its operands in the extended moment
    vector (as the CUDA kernels read `tables`); pair_rows (R, 3): X[r0] += A[r1] A[r2], the rows
    forming every virtual body; moment_sizes (2,): the size of the real moments M and of the
    extended vector.
    """
    blocks: tuple
    body_rank: np.ndarray
    body_offset: np.ndarray
    term_body_start: np.ndarray
    term_pattern: np.ndarray
    pattern_rows: np.ndarray
    pattern_table_start: np.ndarray
    tables: np.ndarray
    body_projection: np.ndarray
    operand_start: np.ndarray
    index_start: np.ndarray
    index: np.ndarray
    pair_rows: np.ndarray
    moment_sizes: np.ndarray
    term_bodies: np.ndarray

    @property
    def shared(self):
        """True when some block shares its bodies between terms ("nc" blocks)."""
        return any(block.channels for block in self.blocks)

    @property
    def n_terms(self):
        return len(self.term_pattern)

    @property
    def n_bodies(self):
        return len(self.body_rank)

    @property
    def moment_size(self):
        return int(self.body_offset[-1] + 3 ** self.body_rank[-1]) if self.n_bodies else 0

    def kernel_tuple(self):
        """The arrays the Numba kernels take, as one tuple."""
        return (self.body_rank, self.body_offset, self.term_body_start, self.term_pattern,
                self.pattern_rows, self.pattern_table_start, self.tables, self.body_projection,
                self.operand_start, self.index_start, self.index, self.pair_rows,
                self.moment_sizes)


def _flat(letters, value):
    """Flat C-order index of the assignment `value` (letter -> 0..2) of `letters`."""
    flat = 0
    for letter in letters:
        flat = 3 * flat + value[letter]
    return flat


def _open_letters(bodies, order):
    """Letters used once within `bodies` (the ones that connect them to the rest of the
    pattern), in the pattern's order of first appearance."""
    joined = "".join(bodies)
    return [c for c in order if joined.count(c) == 1]


def pattern_path(bodies):
    """How to contract one pattern (bodies lower case): None for the direct sum over all index
    assignments, or (pair, rest): contract the two bodies `pair` into an intermediate X over
    their open letters, then X with the body or pair `rest` (a second intermediate Y).

    Multiplications per term: the direct sum costs 3^L (n_bodies - 1) for L letters; the path
    3^(letters of each pair) per pair plus 3^(open letters) for the final product. The path is
    taken only when it costs less than half (e.g. T_ijk T_ijl T_mnk T_mnl: 171 against 2187):
    its extra pass over the intermediates is not free, and the fast preset's 3-body patterns
    (12 against 18 for i,j,ij) stay direct."""
    nb = len(bodies)
    if nb not in (3, 4):
        return None
    order = sorted(set("".join(bodies)), key="".join(bodies).index)
    best, best_cost = None, 0.5 * 3 ** len(order) * (nb - 1)
    splits = {3: [((0, 1), (2,)), ((0, 2), (1,)), ((1, 2), (0,))],
              4: [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]}[nb]
    for pair, rest in splits:
        cost = 3 ** len(set(bodies[pair[0]] + bodies[pair[1]]))
        if len(rest) == 2:
            cost += 3 ** len(set(bodies[rest[0]] + bodies[rest[1]]))
        cost += 3 ** len(_open_letters([bodies[k] for k in pair], order))
        if cost < best_cost:
            best, best_cost = (pair, rest), cost
    return best


def contraction_plan(blocks, body_offset, moment_size):
    """(operand_start, index_start, index, pair_rows, moment_sizes) of `DescriptorLayout` for the
    CPU kernels: every term's rows over its operands (its bodies, or intermediates X/Y of
    `pattern_path`), with the intermediates placed after the real moments."""
    operand_start, index_start, index, pair_rows = [0], [0], [], []
    extended = moment_size
    b0 = 0
    for block in blocks:
        bodies = [body.lower() for body in block.bodies]
        order = sorted(set("".join(bodies)), key="".join(bodies).index)
        path = pattern_path(bodies)
        table = block.table() if path is None else None
        for term in block.term_bodies():
            offsets = [int(body_offset[b0 + b]) for b in term]
            if path is None:
                index.extend((table + np.array(offsets)).ravel().tolist())
                operand_start.append(operand_start[-1] + len(bodies))
                index_start.append(len(index))
                continue
            pair, rest = path
            groups = [pair] + ([rest] if len(rest) == 2 else [])
            open_letters = _open_letters([bodies[k] for k in pair], order)
            virtual = []
            for group in groups:                 # X (and Y): sums over the group's own letters
                x_off = extended
                extended += 3 ** len(open_letters)
                virtual.append(x_off)
                a, b = group
                letters = sorted(set(bodies[a] + bodies[b]), key=order.index)
                for alpha in itertools.product(range(3), repeat=len(letters)):
                    value = dict(zip(letters, alpha))
                    pair_rows.append((x_off + _flat(open_letters, value),
                                      offsets[a] + _flat(bodies[a], value),
                                      offsets[b] + _flat(bodies[b], value)))
            for alpha in itertools.product(range(3), repeat=len(open_letters)):
                value = dict(zip(open_letters, alpha))
                x = virtual[0] + _flat(open_letters, value)
                if len(rest) == 2:
                    index.extend((x, virtual[1] + _flat(open_letters, value)))
                else:
                    index.extend((x, offsets[rest[0]] + _flat(bodies[rest[0]], value)))
            operand_start.append(operand_start[-1] + 2)
            index_start.append(len(index))
        b0 += block.n_bodies
    return (np.array(operand_start, np.int64), np.array(index_start, np.int64),
            np.array(index, np.int64), np.array(pair_rows, np.int64).reshape(-1, 3),
            np.array([moment_size, extended], np.int64))


def descriptor_layout(blocks):
    """Build a `DescriptorLayout` from a block string or a tuple of `Block`."""
    if isinstance(blocks, str):
        blocks = parse_blocks(blocks)
    ranks, projections, term_start, term_bodies, term_pattern = [], [], [0], [], []
    p_rows, p_start, tables = [], [], []
    n_table = 0
    for p, block in enumerate(blocks):
        table = block.table()
        p_rows.append(table.shape[0])
        p_start.append(n_table)
        tables.append(table.ravel())
        n_table += table.size
        b0 = len(ranks)
        ranks.extend(block.ranks[k] for k in block.body_places)
        projections.extend(block.projections[k] for k in block.body_places)
        for term in block.term_bodies():
            term_bodies.extend((b0 + term).tolist())
            term_pattern.append(p)
            term_start.append(len(term_bodies))
    body_rank = np.array(ranks, dtype=np.int64)
    body_projection = np.array(projections, dtype=np.int64)
    # the kernels apply code 1 (traceless) to ranks 2 to 4 only and know no other code
    assert np.all((body_projection == 0) | ((body_projection == 1) & (body_rank >= 2)))
    sizes = 3 ** body_rank
    body_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    moment_size = int(sizes.sum())
    operand_start, index_start, index, pair_rows, moment_sizes = contraction_plan(
        blocks, body_offset, moment_size)
    return DescriptorLayout(
        blocks=tuple(blocks),
        body_rank=body_rank,
        body_offset=body_offset,
        term_body_start=np.array(term_start, dtype=np.int64),
        term_pattern=np.array(term_pattern, dtype=np.int64),
        pattern_rows=np.array(p_rows, dtype=np.int64),
        pattern_table_start=np.array(p_start, dtype=np.int64),
        tables=np.concatenate(tables).astype(np.int64),
        body_projection=body_projection,
        operand_start=operand_start,
        index_start=index_start,
        index=index,
        pair_rows=pair_rows,
        moment_sizes=moment_sizes,
        term_bodies=np.array(term_bodies, dtype=np.int64),
    )
