import torch

from regbench.data.subject import load_prepared
from regbench.data.xrays import read_xrays
from regbench.geometry.priors import PosePrior
from regbench.rendering.renderer import make_renderer
from regbench.rendering.simulator import degrade, simulate_xrays

RENDER = {"renderer": "trilinear", "n_points": 64, "bone_attenuation": 1.0}
SIM = {
    "bone_attenuation": 1.6,
    "photons": 2e4,
    "attenuation_scale": 3.0,
    "blur_px": 0.6,
    "gamma": 1.2,
    "collimation_px": 2,
}
PRIOR = PosePrior((0, 0, 0), (4, 4, 4), (0, 850, 0), (8, 20, 8))


def test_rendering_at_the_saved_pose_reproduces_the_simulated_xray(prepared_dir, tmp_path):
    """Same geometry end to end: files written by simulate, read back, rendered again."""
    xrays = simulate_xrays(load_prepared(prepared_dir), PRIOR, 3, 7, RENDER, SIM)
    xrays.write(tmp_path)
    again = load_prepared(prepared_dir)
    loaded = read_xrays(tmp_path, again.geometry)
    renderer = make_renderer(again, SIM["bone_attenuation"])
    with torch.no_grad():
        rerendered = renderer.render(loaded.poses, RENDER["n_points"])
    assert torch.allclose(rerendered, loaded.clean, rtol=1e-4, atol=1e-4)
    assert loaded.border_px == 2 and loaded.ids == ["0000", "0001", "0002"]
    # ...and not at another pose: the check can fail.
    shifted = loaded.poses.clone()
    shifted[:, 0, 3] += 10.0
    with torch.no_grad():
        elsewhere = renderer.render(shifted, RENDER["n_points"])
    assert not torch.allclose(elsewhere, loaded.clean, rtol=1e-2, atol=1e-2)


def test_simulation_is_deterministic(prepared):
    a = simulate_xrays(prepared, PRIOR, 2, 11, RENDER, SIM)
    b = simulate_xrays(prepared, PRIOR, 2, 11, RENDER, SIM)
    assert torch.equal(a.images, b.images) and torch.equal(a.poses, b.poses)


def test_degrade_models_the_domain_gap():
    clean = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 50
    g = torch.Generator().manual_seed(1)
    out = degrade(
        clean, g, photons=1e4, attenuation_scale=3.0, blur_px=0.0, gamma=1.0, collimation_px=2
    )
    assert out.shape == clean.shape and out.min() >= 0 and out.max() <= 1
    assert (out[..., :2, :] == 0).all() and (out[..., :, -2:] == 0).all()
    # Without noise and blur the degradation is monotone in the line integral.
    exact = degrade(
        clean, g, photons=1e12, attenuation_scale=3.0, blur_px=0.0, gamma=1.0, collimation_px=0
    )
    order_in = clean[0, 0].flatten().argsort()
    assert (exact[0, 0].flatten()[order_in].diff() >= -1e-4).all()
