"""DRRs of a prepared subject: one renderer object over interchangeable ray marchers.

- :mod:`~regbench.rendering.renderer`: :class:`~regbench.rendering.renderer.Renderer`, the one way to render poses;
- :mod:`~regbench.rendering.diffdrr_adapter`: diffdrr's DRR module over a prepared subject;
- :mod:`~regbench.rendering.torch_projector`: a pure-torch ray marcher for C-channel volumes;
- :mod:`~regbench.rendering.compiled_projector`: the same ray marcher as a compiled CPU kernel;
- :mod:`~regbench.rendering.simulator`: simulated test X-rays (DRRs with a domain gap);
- :mod:`~regbench.rendering.example_folder`: a small custom dataset folder with rendered X-rays.

Submodules are imported where they are used, so importing this package loads no torch.
"""
