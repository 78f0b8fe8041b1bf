"""`lattenb audit`: the exact descriptor Jacobian against finite differences, and the
functional dependences it must find (and must not invent)."""
import json

import numpy as np
import pytest

from lattenb import LatteModel, cli
from lattenb.audit import audit, descriptor_jacobian, random_environment

HOP13 = ["-", "I,I", "IJ,IJ", "IJK,IJK", "I,IJ,J", "IJ,JK,KI", "IJ,JKL,IKL", "I,J,K,IJK",
         "I,IJ,JK,K", "I,IJK,JKL,L", "IJ,JK,ILM,KLM", "IJ,IJK,KLM,LM", "IJK,IJL,MNK,MNL"]


def share_radials(model, same):
    """Give body b the radial function and species weights of body same[b]."""
    P = {k: model.params[k].copy() for k in ("centres", "widths", "sigma")}
    for b, src in same.items():
        P["centres"][:, b] = P["centres"][:, src]
        P["widths"][:, b] = P["widths"][:, src]
        P["sigma"][..., b] = P["sigma"][..., src]
    model.set_parameters(**P)
    return model


@pytest.mark.parametrize("radial_rows", [{}, {"shared_radial": True}, {"pair_radial": True}],
                         ids=["central", "shared", "pair"])
def test_jacobian_matches_finite_differences_of_the_descriptor(radial_rows):
    m = LatteModel(["Ni", "Mo"], cutoff=4.5, blocks="2,-:1,IJ,IJ:1,i,j,ij:1,IJK,IJK", hidden=(3,),
                   **radial_rows)
    rng = np.random.default_rng(1)
    pos, pick = random_environment(rng, 7, m.cutoff, 2)
    numbers = np.array(m.numbers)[pick]
    G, J = descriptor_jacobian(m, pos, numbers)
    assert np.allclose(G, m.descriptors(pos, None, False, numbers)[0], rtol=1e-12, atol=0)
    fd = np.zeros_like(J)
    h = 1e-5
    for k in range(1, len(pos)):
        for c in range(3):
            step = np.zeros_like(pos)
            step[k, c] = h
            g = [m.descriptors(pos + s * step, None, False, numbers)[0] for s in (2, 1, -1, -2)]
            fd[:, 3 * (k - 1) + c] = (8 * (g[1] - g[2]) - (g[0] - g[3])) / (12 * h)
    assert np.abs(J).max() > 1e-3
    assert np.allclose(J, fd, rtol=0, atol=1e-8 * np.abs(J).max())


def test_a_term_repeated_with_the_same_radial_functions_is_dependent():
    m = share_radials(LatteModel(["Ni"], cutoff=5.0, blocks="1,-:3,i,j,ij", hidden=(2,)),
                      {7: 4, 8: 5, 9: 6})          # term 3 (bodies 7-9) repeats term 2 (4-6)
    report = audit(m)
    assert report["dependent"] == ["3:i,j,ij"]
    assert report["rank"] == 3


def test_raw_ij_ij_depends_on_its_traceless_part_and_the_two_traces():
    # ij:ij = IJ:IJ + S_1 S_2 / 3 with S_k the '-' terms of the same radial functions
    spec = "2,-:1,IJ,IJ:1,ij,ij"
    m = share_radials(LatteModel(["Ni", "Mo"], cutoff=5.0, blocks=spec, hidden=(2,)),
                      {2: 0, 3: 1, 4: 0, 5: 1})
    report = audit(m)
    assert report["dependent"] == ["3:ij,ij"], report
    # with its own radial functions the raw term is independent again
    fresh = LatteModel(["Ni", "Mo"], cutoff=5.0, blocks=spec, hidden=(2,))
    assert audit(fresh)["dependent"] == []


def test_the_13_invariants_of_one_channel_are_independent():
    """Allen et al.: S, v, Q, T of one channel give 13 independent invariants once there are
    enough neighbours (3n - 3 >= 13)."""
    m = LatteModel(["Ni"], cutoff=5.0, blocks=":".join(f"1,{p}" for p in HOP13), hidden=(2,))
    B = m.layout.n_bodies
    m.set_parameters(centres=np.full((1, B), 2.5), widths=np.full((1, B), 2.5),
                     sigma=np.ones((1, 1, B)))
    report = audit(m, counts=(6, 8, 12))
    assert report["dependent"] == [] and report["rank"] == 13
    assert all(e["rank"] == 13 for e in report["environments"])
    # and with 3 neighbours (9 coordinates less 3 rotations) at most 6 can be independent
    assert max(e["rank"] for e in audit(m, counts=(3,))["environments"]) <= 6


def test_cli_audit_json_and_errors(capsys, tmp_path):
    assert cli.main(["audit", "--blocks", "2,-:1,IJ,IJ", "--species", "Ni,Mo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_terms"] == 3 and report["rank"] == 3 and report["dependent"] == []
    path = tmp_path / "m.npz"
    share_radials(LatteModel(["Ni"], cutoff=4.0, blocks="2,i,i", hidden=(2,)), {2: 0, 3: 1}).save(path)
    assert cli.main(["audit", str(path)]) == 0
    out = capsys.readouterr().out
    assert "numerical rank: 1 of 2" in out and "1:i,i" in out
    with pytest.raises(SystemExit, match="either a model file or --blocks"):
        cli.main(["audit"])
    with pytest.raises(SystemExit, match="either a model file or --blocks"):
        cli.main(["audit", str(path), "--blocks", "2,i,i"])
    with pytest.raises(SystemExit, match="Xx"):
        cli.main(["audit", "--blocks", "2,i,i", "--species", "Xx"])


def test_hop_presets_hold_the_13_patterns():
    from lattenb.model import PRESETS
    from lattenb.blocks import parse_blocks
    hop = parse_blocks(PRESETS["hop"]["blocks"])
    assert sorted(b.pattern for b in hop) == sorted(HOP13) and all(b.n == 2 for b in hop)
    r2 = parse_blocks(PRESETS["hop-r2"]["blocks"])
    assert sorted(b.pattern for b in r2) == sorted(
        p for p in HOP13 if all(len(body) <= 2 for body in p.split(",")))
    assert all(max(b.ranks) <= 2 for b in r2)
    for name in ("hop", "hop-r2"):
        m = LatteModel.preset(name, ["Ni"])
        assert m.layout.body_projection.any()
