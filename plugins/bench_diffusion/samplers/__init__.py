"""Samplers for the diffusion families (docs/diffusion.md, "writing a sampler").

Every sampler draws its randomness from the ``rng`` it is given (a :class:`bench.rng.PerSampleRNG`)
and moves x only through the family interface (``eps``, ``x0``, ``sigma_score``, ``pf_drift`` and
``family.process``), so each is Sigma-aware: injected noise is ``noise.sample(rng)`` = sqrt(Sigma) z.
"""
