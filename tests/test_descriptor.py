"""The LATTE descriptor against an independent plain-NumPy/einsum reference (design page, section 3),
and the parsing of block strings.

The reference below uses only NumPy and ASE: ASE's neighbour list, the radial function written out
from the design page, body tensors as explicit outer products of unit vectors and the full
contraction with ``np.einsum`` on the pattern string itself. Bodies are numbered as lattenb's
parameter arrays number them: blocks in order, then the terms of a block, then the bodies of the
pattern.
"""
import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from lattenb import LatteModel, parse_blocks
from lattenb.blocks import format_blocks
from structures import random_atoms

ALL_PATTERNS = "3,-:2,i,i:2,ij,ij:2,ijk,ijk:2,i,j,ij:2,ij,jk,ki:1,i,ij,jk,k:1,i,j,k,ijk"
DESIGN_PATTERNS = ["-", "i,i", "ij,ij", "ijk,ijk", "i,j,ij", "ij,jk,ki", "i,ij,jk,k", "i,j,k,ijk"]
#: patterns with rank-4 bodies (angular resolution l = 4), beyond the design page's list
RANK4_PATTERNS = "2,ijkl,ijkl:2,ij,ijkl,kl:2,i,jkl,ijkl:2,IJKL,IJKL:2,IJ,IJKL,KL"
#: Allen et al.'s 13 invariants of the irreducible tensors S, v, Q, T (the `hop` preset's patterns)
#: and a pattern mixing raw and traceless bodies
TRACELESS_PATTERNS = ["-", "I,I", "IJ,IJ", "IJK,IJK", "I,IJ,J", "IJ,JK,KI", "IJ,JKL,IKL",
                      "I,J,K,IJK", "I,IJ,JK,K", "I,IJK,JKL,L", "IJ,JK,ILM,KLM", "IJ,IJK,KLM,LM",
                      "IJK,IJL,MNK,MNL", "i,IJ,j"]
CUTOFF = 4.0


# ----------------------------------------------------------------------------- reference
def reference_terms(spec):
    """[(pattern, bodies)] per term, bodies as tuples of index strings ('' for '-'), from the
    block string parsed here (not by lattenb)."""
    terms = []
    for block in spec.split(":"):
        parts = block.split(",")
        n = int(parts[0])
        bodies = ("",) if parts[1:] == ["-"] else tuple(parts[1:])
        pattern = "-" if bodies == ("",) else ",".join(bodies)
        terms.extend([(pattern, bodies)] * n)
    return terms


def reference_radial(r, c, w):
    """f = t^3 / c^2, t = max(0, 1 - ((r - c)/w)^2)."""
    t = np.maximum(0.0, 1.0 - ((r - c) / w) ** 2)
    return t ** 3 / c ** 2


def reference_traceless(A):
    """The symmetric traceless part of symmetric body tensors A (N, 3, ..., 3) of rank 2 to 4,
    written out from the textbook formulas (Q = A - I tr A / 3; T_ijk = A_ijk - (d_ij a_k +
    d_ik a_j + d_jk a_i) / 5 with a_k = A_mmk; rank 4 with b_kl = A_mmkl and c = b_mm:
    A_ijkl - (d_ij b_kl + its 5 other pairings) / 7 + c (d_ij d_kl + d_ik d_jl + d_il d_jk) / 35)."""
    eye = np.eye(3)
    if A.ndim == 3:
        return A - np.einsum("ab,z->zab", eye, np.einsum("zmm->z", A)) / 3.0
    if A.ndim == 5:
        b = np.einsum("zmmkl->zkl", A)
        c = np.einsum("zmm->z", b)
        pairings = sum(np.einsum(f"{d},z{rest}->zabcd", eye, b)
                       for d, rest in [("ab", "cd"), ("ac", "bd"), ("ad", "bc"), ("bc", "ad"),
                                       ("bd", "ac"), ("cd", "ab")])
        dd = (np.einsum("ab,cd->abcd", eye, eye) + np.einsum("ac,bd->abcd", eye, eye)
              + np.einsum("ad,bc->abcd", eye, eye))
        return A - pairings / 7.0 + np.einsum("z,abcd->zabcd", c, dd) / 35.0
    a = np.einsum("zmmk->zk", A)
    return A - (np.einsum("ab,zc->zabc", eye, a) + np.einsum("ac,zb->zabc", eye, a)
                + np.einsum("bc,za->zabc", eye, a)) / 5.0


#: shared-channel blocks ("nc,pattern"), and the rule for their terms written out here: which
#: channel assignments (one channel per body, channels numbered per kind of body) are kept
CHANNEL_RULES = {
    "i,i": lambda c: c[0] <= c[1],
    "IJ,IJ": lambda c: c[0] <= c[1],
    "i,j,ij": lambda c: c[0] <= c[1],                     # v_a . Q_c . v_b = v_b . Q_c . v_a
    "ij,jk,ki": lambda c: c[0] <= c[1] <= c[2],           # tr(Q_a Q_b Q_c), symmetric in all
    "i,ij,jk,k": lambda c: c <= c[::-1],                  # v_a Q_b Q_c v_d = v_d Q_c Q_b v_a
    "-": lambda c: True,
}
CHANNEL_SPEC = "2c,-:3c,i,i:2c,IJ,IJ:2c,i,j,ij:2c,ij,jk,ki:2c,i,ij,jk,k"


def reference_channel_terms(spec):
    """[(pattern, bodies, body numbers)] per term of a block string of "nc" blocks: per block
    the n channels of each kind of body (rank and case, in order of first appearance) are
    numbered kind after kind; a term per channel assignment that CHANNEL_RULES keeps."""
    import itertools
    terms, b0 = [], 0
    for block in spec.split(":"):
        parts = block.split(",")
        n = int(parts[0][:-1])
        bodies = ("",) if parts[1:] == ["-"] else tuple(parts[1:])
        pattern = "-" if bodies == ("",) else ",".join(bodies)
        kinds = list(dict.fromkeys((len(b), b.isupper() and len(b) >= 2) for b in bodies))
        kind = [kinds.index((len(b), b.isupper() and len(b) >= 2)) for b in bodies]
        for c in itertools.product(range(n), repeat=len(bodies)):
            if CHANNEL_RULES[pattern](c):
                terms.append((pattern, bodies, [b0 + kind[k] * n + c[k] for k in range(len(bodies))]))
        b0 += n * len(kinds)
    return terms


def reference_descriptors(spec, params, model_numbers, atoms, cutoff, pair_radial=False,
                          terms=None):
    """(G, scale) (N, T): the descriptor, and the same contraction of |A| (the natural size of
    rounding errors of each entry). pair_radial: the radial arrays have one row per species pair
    (row s S + s' for central s and neighbour s'), else one per central species. terms: [(pattern,
    bodies, body numbers)] (default: every term has bodies of its own, numbered in order)."""
    index_of = {int(z): k for k, z in enumerate(model_numbers)}
    s = np.array([index_of[int(z)] for z in atoms.numbers])
    n_atoms = len(atoms)
    i, j, D = ase_neighbor_list("ijD", atoms, cutoff)
    r = np.linalg.norm(D, axis=1)
    u = D / r[:, None]
    powers = [np.ones(len(r)), u, np.einsum("pa,pb->pab", u, u), np.einsum("pa,pb,pc->pabc", u, u, u),
              np.einsum("pa,pb,pc,pd->pabcd", u, u, u, u)]
    centres, widths, sigma = params["centres"], params["widths"], params["sigma"]
    G, scale = [], []
    if terms is None:
        terms, b = [], 0
        for pattern, bodies in reference_terms(spec):
            terms.append((pattern, bodies, list(range(b, b + len(bodies)))))
            b += len(bodies)
    for pattern, bodies, numbers in terms:
        tensors = []
        for body, b in zip(bodies, numbers):
            p = len(body)
            row = s[i] * len(model_numbers) + s[j] if pair_radial else s[i]
            weight = sigma[s[i], s[j], b] * reference_radial(r, centres[row, b], widths[row, b])
            A = np.zeros((n_atoms,) + (3,) * p)
            np.add.at(A, i, weight.reshape((-1,) + (1,) * p) * powers[p])
            if body.isupper() and p >= 2:        # capital letters: the traceless part
                A = reference_traceless(A)
            tensors.append(A)
        if pattern == "-":
            G.append(tensors[0])
            scale.append(np.abs(tensors[0]))
        else:
            subscripts = ",".join("z" + body.lower() for body in bodies) + "->z"
            G.append(np.einsum(subscripts, *tensors))
            scale.append(np.einsum(subscripts, *[np.abs(A) for A in tensors]))
    assert max(max(n) for _, _, n in terms) + 1 == params["centres"].shape[1]
    return np.stack(G, axis=1), np.stack(scale, axis=1)


# ----------------------------------------------------------------------------- structures
def structures():
    rng = np.random.default_rng(7)
    tric = np.array([[6.1, 0.0, 0.0], [1.7, 5.6, 0.0], [-1.1, 1.3, 5.9]])
    small = np.array([[3.0, 0.0, 0.0], [1.2, 2.9, 0.0], [0.7, 0.9, 3.1]])   # heights < cutoff
    return {
        "triclinic": random_atoms(rng, 12, tric, True),
        "small_triclinic": random_atoms(rng, 3, small, True),
        "cluster": random_atoms(rng, 12, np.zeros((3, 3)), False, box=5.5),
    }


STRUCTURES = structures()


def random_windows(m, rng):
    """`m` with random radial windows inside the cutoff (widths 0.6-1.6 Å), so that the
    references see bodies of different supports; returns m."""
    rows, bodies = m.params["centres"].shape
    widths = rng.uniform(0.6, 1.6, size=(rows, bodies))
    m.set_parameters(centres=rng.uniform(widths, CUTOFF - widths), widths=widths)
    return m


@pytest.fixture(scope="module")
def model():
    m = LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=ALL_PATTERNS, hidden=(4,), seed=3)
    return random_windows(m, np.random.default_rng(11))


def descriptors_and_reference(blocks, atoms, seed, window_seed):
    """(G, G_ref, scale) on `atoms` of a model with `blocks` whose radial windows are drawn
    at random (`random_windows` with the seed window_seed): lattenb's and the reference's."""
    m = random_windows(LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=blocks, hidden=(2,),
                                  seed=seed), np.random.default_rng(window_seed))
    G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    return (G,) + reference_descriptors(blocks, m.params, m.numbers, atoms, CUTOFF)


# ----------------------------------------------------------------------------- tests
def test_reference_terms_cover_every_design_pattern():
    patterns = {p for p, _ in reference_terms(ALL_PATTERNS)}
    assert patterns == set(DESIGN_PATTERNS)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_material_blocks_match_einsum_reference(name):
    """The blocks plain `lattenb fit` chooses for materials, with their rank-3 pattern i,jk,ijk
    that ALL_PATTERNS does not contain, against the einsum reference."""
    from lattenb.auto import MATERIAL_BLOCKS
    atoms = STRUCTURES[name]
    G, G_ref, scale = descriptors_and_reference(MATERIAL_BLOCKS, atoms, seed=5, window_seed=12)
    assert G.shape == G_ref.shape == (len(atoms), 48)
    assert np.all(np.abs(G - G_ref) <= 1e-12 * (scale + 1e-300))
    terms = reference_terms(MATERIAL_BLOCKS)
    cols = [t for t, (p, _) in enumerate(terms) if p == "i,jk,ijk"]
    assert len(cols) == 8 and np.abs(G_ref[:, cols]).max() > 1e-6     # not vacuous


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_descriptors_match_einsum_reference(model, name):
    atoms = STRUCTURES[name]
    G = model.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    G_ref, scale = reference_descriptors(ALL_PATTERNS, model.params, model.numbers, atoms, CUTOFF)
    assert G.shape == G_ref.shape == (len(atoms), len(reference_terms(ALL_PATTERNS)))
    err = np.abs(G - G_ref)
    tol = 1e-12 * (scale + 1e-300)
    terms = reference_terms(ALL_PATTERNS)
    for t, (pattern, _) in enumerate(terms):
        assert np.all(err[:, t] <= tol[:, t]), (
            f"{name}: term {t} (pattern {pattern}): max error {err[:, t].max():.3g}, "
            f"scale {scale[:, t].max():.3g}")
    # the comparison must not be vacuous: every pattern is non-zero somewhere
    for pattern in DESIGN_PATTERNS:
        cols = [t for t, (p, _) in enumerate(terms) if p == pattern]
        assert np.abs(G_ref[:, cols]).max() > 1e-6, f"{name}: pattern {pattern} is all zero"


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_pair_radial_descriptors_match_einsum_reference(name):
    """Radial functions per (central, neighbour) species pair (`pair_radial`): every pair row its
    own window, the reference picks the row from both species of each pair."""
    m = LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=ALL_PATTERNS, hidden=(4,), seed=3,
                   pair_radial=True)
    assert m.params["centres"].shape[0] == 4
    random_windows(m, np.random.default_rng(12))
    atoms = STRUCTURES[name]
    G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    G_ref, scale = reference_descriptors(ALL_PATTERNS, m.params, m.numbers, atoms, CUTOFF,
                                         pair_radial=True)
    # 1e-18 absolute: a pair just inside a window's edge, where f ~ 1e-25 (the reference's
    # max(0, t) and the kernel's polynomial round differently there)
    assert np.all(np.abs(G - G_ref) <= 1e-12 * scale + 1e-18)
    # not vacuous: the per-central-species reading of the same arrays gives other descriptors
    G_central, _ = reference_descriptors(ALL_PATTERNS, m.params, m.numbers, atoms, CUTOFF)
    assert np.abs(G_central - G_ref).max() > 1e-3 * np.abs(G_ref).max()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_rank4_descriptors_match_einsum_reference(name):
    """Rank-4 bodies (their 15 unique components summed, then mirrored) against the reference's
    explicit fourfold outer products, alone and with bodies of ranks 1-3 in one term, raw and
    traceless."""
    atoms = STRUCTURES[name]
    G, G_ref, scale = descriptors_and_reference(RANK4_PATTERNS, atoms, seed=4, window_seed=13)
    assert G.shape == G_ref.shape == (len(atoms), 10)
    assert np.all(np.abs(G - G_ref) <= 1e-12 * scale + 1e-300)
    assert np.abs(G_ref).min(axis=0).max() > 0 and np.all(np.abs(G_ref).max(axis=0) > 1e-6)


def test_descriptors_of_each_pattern_alone():
    """A single-block model per pattern (bodies numbered from 0 again) also matches."""
    atoms = STRUCTURES["triclinic"]
    rng = np.random.default_rng(5)
    for pattern in DESIGN_PATTERNS:
        spec = f"2,{pattern}"
        m = random_windows(LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=spec,
                                      hidden=(2,), seed=1), rng)
        G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        G_ref, scale = reference_descriptors(spec, m.params, m.numbers, atoms, CUTOFF)
        assert np.all(np.abs(G - G_ref) <= 1e-12 * scale + 1e-300), pattern
        assert np.abs(G_ref).max() > 1e-6, pattern


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_traceless_descriptors_match_einsum_reference(name):
    """Capital-letter bodies: the reference projects its einsum body tensors with the textbook
    traceless formulas; lattenb projects between its moments and the contraction."""
    atoms = STRUCTURES[name]
    spec = ":".join(f"1,{p}" for p in TRACELESS_PATTERNS)
    m = LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=spec, hidden=(2,), seed=4)
    rng = np.random.default_rng(9)
    S, B = m.params["centres"].shape
    widths = rng.uniform(0.8, 1.8, size=(S, B))
    m.set_parameters(widths=widths, centres=rng.uniform(widths, CUTOFF - widths))
    G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    G_ref, scale = reference_descriptors(spec, m.params, m.numbers, atoms, CUTOFF)
    # the projection's own rounding (a few operations on entries of size |A|) is covered by
    # the contraction of |A|; 1e-11 leaves room for the extra sums
    for t, pattern in enumerate(TRACELESS_PATTERNS):
        err = np.abs(G[:, t] - G_ref[:, t])
        assert np.all(err <= 1e-11 * scale[:, t] + 1e-300), (name, pattern, err.max())
        assert np.abs(G_ref[:, t]).max() > 1e-8 * scale[:, t].max(), (name, pattern)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_shared_channel_descriptors_match_einsum_reference(name):
    """"nc" blocks: every term contracts the block's shared channels, one term per assignment
    that the rules written out above keep (a rule of this file, not lattenb's symmetry search)."""
    atoms = STRUCTURES[name]
    m = LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=CHANNEL_SPEC, hidden=(2,), seed=4)
    terms = reference_channel_terms(CHANNEL_SPEC)
    assert m.layout.n_terms == len(terms) == 2 + 6 + 3 + 2 * 3 + 4 + 10
    assert m.layout.n_bodies == 2 + 3 + 2 + 2 * 2 + 2 + 2 * 2
    rng = np.random.default_rng(10)
    S, B = m.params["centres"].shape
    widths = rng.uniform(0.8, 1.8, size=(S, B))
    m.set_parameters(widths=widths, centres=rng.uniform(widths, CUTOFF - widths))
    G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    G_ref, scale = reference_descriptors(CHANNEL_SPEC, m.params, m.numbers, atoms, CUTOFF,
                                         terms=terms)
    assert G.shape == G_ref.shape
    err = np.abs(G - G_ref)
    assert np.all(err <= 1e-11 * scale + 1e-300), err.max()
    # not vacuous: every term is non-zero somewhere, and no two kept terms are equal
    assert np.all(np.abs(G_ref).max(axis=0) > 1e-8 * scale.max(axis=0))
    for t in range(G.shape[1]):
        for u in range(t):
            assert np.abs(G_ref[:, t] - G_ref[:, u]).max() > 1e-9 * scale.max(), (t, u)


def test_raw_and_traceless_contractions_differ_by_the_trace_terms():
    """ij,ij = IJ,IJ + (1/3) S_1 S_2 and i,j,ij = I,IJ,J + (1/3) S_3 (i,i) when the bodies share
    radial functions: an identity between two kernels' outputs that no code path shares."""
    atoms = STRUCTURES["triclinic"]
    spec = "1,ij,ij:1,IJ,IJ:1,-:1,-:1,i,j,ij:1,I,IJ,J:1,-:1,i,i"
    m = LatteModel(species=["Ni", "Mo"], cutoff=CUTOFF, blocks=spec, hidden=(2,), seed=4)
    # bodies: 0,1 ij,ij | 2,3 IJ,IJ | 4 - | 5 - | 6,7,8 i,j,ij | 9,10,11 I,IJ,J | 12 - | 13,14 i,i
    same = {2: 0, 3: 1, 4: 0, 5: 1, 9: 6, 10: 8, 11: 7, 12: 8, 13: 6, 14: 7}
    P = {k: v.copy() for k, v in m.params.items() if k in ("centres", "widths", "sigma")}
    for b, src in same.items():
        P["centres"][:, b] = P["centres"][:, src]
        P["widths"][:, b] = P["widths"][:, src]
        P["sigma"][..., b] = P["sigma"][..., src]
    m.set_parameters(**P)
    G = m.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    scale = np.abs(G).max()
    assert np.allclose(G[:, 0], G[:, 1] + G[:, 2] * G[:, 3] / 3.0, rtol=0, atol=1e-12 * scale)
    assert np.allclose(G[:, 4], G[:, 5] + G[:, 6] * G[:, 7] / 3.0, rtol=0, atol=1e-12 * scale)
    assert np.abs(G[:, 2] * G[:, 3]).max() > 1e-3 * scale          # the trace part is not 0


def test_descriptor_is_species_blind_in_length():
    """Descriptor length = sum of block counts, whatever the number of species."""
    for species in (["Ni"], ["Ni", "Mo"], ["Ni", "Mo", "Cu"]):
        m = LatteModel(species=species, cutoff=CUTOFF, blocks=ALL_PATTERNS, hidden=(2,))
        assert m.params["g_mean"].shape == (len(species), 15)


# ----------------------------------------------------------------------------- block strings
@pytest.mark.parametrize("spec", [
    "8,-:8,i,i:8,ij,ij:8,i,j,ij",
    ALL_PATTERNS,
    "1,ab,ab",
    "4,a,b,ab:2,-",
    "10,-:10,i,i:10,i,j,ij",
    "2,IJ,IJ:1,i,IJ,j:3,IJK,IJL,MNK,MNL",
    CHANNEL_SPEC,
    "4,-:3c,i,i",
])
def test_block_string_round_trip(spec):
    blocks = parse_blocks(spec)
    assert format_blocks(blocks) == spec
    assert parse_blocks(format_blocks(blocks)) == blocks
    expected = [part.split(",") for part in spec.split(":")]
    assert [b.count for b in blocks] == [p[0] for p in expected]
    assert [b.channels for b in blocks] == [p[0].endswith("c") for p in expected]
    assert [b.pattern for b in blocks] == [",".join(p[1:]) for p in expected]
    m = LatteModel(species=["Ni"], cutoff=CUTOFF, blocks=spec, hidden=(2,))
    assert m.blocks == spec
    n_terms = [b.n if not b.channels else len(reference_channel_terms(f"{b.count},{b.pattern}"))
               for b in blocks]
    assert m.params["g_mean"].shape[1] == sum(n_terms)


def test_block_string_whitespace_is_ignored():
    assert parse_blocks(" 8, i, i : 2, - ") == parse_blocks("8,i,i:2,-")


@pytest.mark.parametrize("spec, message", [
    ("8,i,j", r"exactly twice"),
    ("8,i,i,i", r"exactly twice"),
    ("2,ijklm,ijklm", r"rank 5; supported ranks are 1..4"),
    ("x,i,i", r"'x' is not a positive integer"),
    ("0,i,i", r"'0' is not a positive integer"),
    ("0c,i,i", r"'0c' is not a positive integer"),
    ("c,i,i", r"'c' is not a positive integer"),
    ("2x,i,i", r"'2x' is not a positive integer"),
    ("-1,i,i", r"'-1' is not a positive integer"),
    ("8,i,i:", r"block ''"),
    ("8,i,i::8,-", r"block ''"),
    ("2,ii,jj", r"repeats a letter"),
    ("8,i", r"at least two bodies"),
    ("8,Ij,Ij", r"all lower case .* or all capitals"),
    ("8,i,I,ij", r"letter 'i' is used 3 times"),
    ("8", r"count,body"),
    ("", r"non-empty"),
])
def test_block_string_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_blocks(spec)
    with pytest.raises(ValueError, match=message):
        LatteModel(species=["Ni"], cutoff=CUTOFF, blocks=spec)


def test_four_body_patterns_contract_through_intermediates():
    """The 4-body patterns take the pairwise path (`blocks.pattern_path`), the fast preset's do
    not; the einsum comparisons above check the values of both paths."""
    from lattenb.blocks import descriptor_layout, pattern_path
    assert pattern_path(["ijk", "ijl", "mnk", "mnl"]) == ((0, 1), (2, 3))
    assert pattern_path(["i", "ij", "jk", "k"]) is not None
    for pattern in ("i,i", "ij,ij", "i,j,ij", "ij,jk,ki"):
        assert pattern_path(pattern.split(",")) is None, pattern
    fast = descriptor_layout("8,-:8,i,i:8,ij,ij:8,i,j,ij")
    assert fast.pair_rows.shape == (0, 3) and fast.moment_sizes[0] == fast.moment_sizes[1]
    tttt = descriptor_layout("2,IJK,IJL,MNK,MNL")
    # per term: two 9-entry intermediates from 81 rows each, and 9 rows of the final product
    assert tttt.pair_rows.shape == (2 * 2 * 81, 3)
    assert tttt.moment_sizes[1] - tttt.moment_sizes[0] == 2 * 2 * 9
    assert np.diff(tttt.index_start).tolist() == [18, 18]
