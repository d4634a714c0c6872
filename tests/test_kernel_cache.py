"""The compiled kernels give the same bits whether a process compiles them or loads them from
numba's on-disk cache: otherwise a fresh clone's tables depend on which job compiled first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import pandas as pd
    import torch
    from regbench.data.subject import Prepared
    from regbench.geometry.poses import carm_pose
    from regbench.rendering.compiled_projector import FastProjector
    from regbench.rendering.diffdrr_adapter import make_drr

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ct = (400 * rng.random((14, 12, 11))).astype(np.float32)
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = -5.0 * (np.array(ct.shape) - 1)
    geometry = {"sdd": 1020.0, "height": 16, "width": 16, "delx": 12.0, "dely": 12.0,
                "x0": 0.0, "y0": 0.0, "reverse_x_axis": True, "orientation": "AP"}
    fast = FastProjector.from_drr(make_drr(Prepared(ct, affine, pd.DataFrame(), geometry), 1.0))
    angles = torch.tensor([[0.1, -0.05, 0.2], [0.3, 0.1, -0.1]])
    offsets = torch.tensor([[5.0, 850.0, -3.0], [-4.0, 870.0, 6.0]])
    poses = carm_pose(angles, offsets).float()
    digest = hashlib.sha1()
    for dtype in (torch.float32, torch.float64):
        volume = torch.from_numpy(ct).to(dtype).requires_grad_(True)
        images = fast(volume, poses.to(dtype), 37)
        images.square().sum().backward()
        image, jacobian = fast.forward_and_jacobian(volume.detach(), poses.to(dtype), 37)
        for t in (images.detach(), volume.grad, image, jacobian):
            digest.update(t.contiguous().numpy().tobytes())
    print(digest.hexdigest())
    """
)


def test_cold_and_cached_kernels_agree_bitwise(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "NUMBA_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):  # the first compiles into the empty cache, the second loads from it
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(done.stdout.strip())
    assert any((tmp_path / "numba").rglob("*.nbc")), "the first run wrote no cache"
    assert runs[0] == runs[1]
