"""Volume branch: equivariance of the e3nn network, shapes, and gradients into its weights."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from e3nn.nn import Gate

from regbench.geometry.poses import carm_pose, se3_exp
from regbench.models.volume import EquivariantVolumeNet, build_volume_net
from regbench.rendering.torch_projector import FeatureProjector

ROTATIONS = [(1, (2, 3)), (1, (3, 4)), (-1, (2, 4)), (2, (2, 3))]


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: on a shared 2-core machine, threading costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def volume(shape=(1, 1, 12, 14, 10), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1) * 2  # some structure


def rotation_error(net: torch.nn.Module, x: torch.Tensor, k: int, dims: tuple[int, int]) -> float:
    """Relative mismatch of net(rot(x)) and rot(net(x)) on the learned channels."""
    with torch.no_grad():
        rotated_out = torch.rot90(net(x), k, dims)[:, 1:]
        out_of_rotated = net(torch.rot90(x, k, dims))[:, 1:]
    return float((out_of_rotated - rotated_out).norm() / rotated_out.norm())


def test_equivariant_net_commutes_with_lattice_rotations():
    torch.manual_seed(0)
    equivariant = build_volume_net("e3nn", 4, layers=3)
    torch.manual_seed(0)
    plain = build_volume_net("cnn3d", 4, layers=3)
    x = volume()
    for k, dims in ROTATIONS:
        e3nn_error = rotation_error(equivariant, x, k, dims)
        plain_error = rotation_error(plain, x, k, dims)
        assert e3nn_error < 1e-4, (k, dims, e3nn_error)
        assert plain_error > 100 * max(e3nn_error, 1e-6), (k, dims, plain_error)


def test_voxel_convolutions_and_gate_match_e3nn():
    """The fused evaluation (self-connection in the kernel, factorised first layer) and the
    channel-first gate compute e3nn's functions."""
    torch.manual_seed(1)
    net = EquivariantVolumeNet(3, layers=2)
    gate = Gate("8x0e", [F.silu], "6x0e", [torch.sigmoid], "4x1o + 2x2e")
    x = torch.randn(2, 36, 5, 4, 3)
    expected = gate(x.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(net.gates[0](x), expected)
    for conv in net.convs:
        x = torch.randn(2, conv.conv.irreps_in.dim, 9, 8, 7)
        with torch.no_grad():
            expected = conv.conv(x)
        torch.testing.assert_close(
            conv(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())
        )


@pytest.mark.parametrize(
    ("kind", "channels"), [("e3nn", 4), ("cnn3d", 4), ("identity", 1)], ids=str
)
def test_shapes_and_non_negative_features(kind, channels):
    net = build_volume_net(kind, out_channels=3)
    assert net.channels == channels
    x = volume((2, 1, 9, 8, 7))
    out = net(x)
    assert out.shape == (2, channels, 9, 8, 7)
    torch.testing.assert_close(out[:, :1], x)  # channel 0 is the density itself
    assert (out >= 0).all()
    single = net(x[0, 0])
    assert single.shape == (channels, 9, 8, 7)
    torch.testing.assert_close(single, out[0], rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        build_volume_net("unet", 4)
    with pytest.raises(ValueError, match="diameter"):
        EquivariantVolumeNet(4, first_kernel=4)
    with pytest.raises(ValueError, match="density"):
        build_volume_net("e3nn", 4)(torch.zeros(1, 2, 5, 5, 5))


def test_pose_gradient_loss_reaches_the_network_weights():
    """The training loss differentiates ds/dxi (through the projector) w.r.t. the e3nn weights."""
    torch.manual_seed(0)
    net = build_volume_net("e3nn", 2)
    density = volume((1, 1, 10, 10, 10))[0, 0]
    affine = torch.diag(torch.tensor([12.0, 12.0, 12.0, 1.0]))
    affine[:3, 3] = -54.0
    ij = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)
    pixels = torch.cat([(ij.reshape(-1, 2) - 3.5) * 20.0, torch.full((64, 1), 1000.0)], dim=1)
    projector = FeatureProjector(torch.zeros(3), pixels, affine, 8, 8)
    camera = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    pose = carm_pose(torch.tensor([[0.1, 0.0, 0.05]]), torch.tensor([[0.0, 800.0, 0.0]]))
    pose = pose.float() @ camera  # a detector frame whose optical axis is local +z

    xi = torch.zeros(1, 6, requires_grad=True)
    image = projector(net(density), pose @ se3_exp(xi), 16)
    assert image.shape == (1, 3, 8, 8) and image.abs().sum() > 0
    (g,) = torch.autograd.grad(image.std(), xi, create_graph=True)
    loss = (g / g.norm()).sum()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


def test_timing_at_the_prepared_ct_size():
    """Printed, not asserted: forward + backward of the e3nn network on a volume the size of the
    test CT (the embedded chest CT at 6 mm: 60 x 60 x 55)."""
    torch.set_num_threads(2)
    net = build_volume_net("e3nn", 8)
    net(volume((1, 1, 16, 16, 16))).sum().backward()  # warm-up (kernels, allocator)
    x = volume((1, 1, 60, 60, 55))
    start = time.perf_counter()
    net(x).sum().backward()
    seconds = time.perf_counter() - start
    print(f"e3nn volume net {tuple(x.shape[2:])}, 2 threads: {seconds:.2f} s forward+backward")
