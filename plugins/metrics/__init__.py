"""Sample-quality metrics in a feature space: ``fid``, ``kid``, ``precision-recall`` and ``density-coverage``;
and ``class-agreement`` for conditional models.

Each compares the generated samples with the run's dataset in the features of an
extractor: ``shapes`` (built in, for the ``shapes`` dataset) or a TorchScript or
ONNX network the user points to. The real features are cached on disk (see
:mod:`.features`). Lower is better for ``fid`` and ``kid``; higher (up to 1) for
precision, recall and coverage; density is about 1 when the sets match.
"""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Context, Options, hookimpl


class FeatureOptions(Options):
    """What every feature-space metric takes."""

    extractor: str = Field("shapes", description="'shapes' (built in), or a TorchScript (.pt) or ONNX (.onnx) file "
                                                 "mapping (N, 3, H, W) images to (N, D) features.")
    input_size: int | None = Field(None, gt=0, description="Resize images to this side for a file extractor "
                                                            "(299 for the usual Inception network).")
    input_range: tuple[float, float] = Field((-1.0, 1.0), description="The value range a file extractor expects, "
                                                                       "e.g. [0, 255].")
    real_samples: int = Field(10000, gt=1, description="Real samples (the dataset's first ones) to compare with.")


class FidOptions(FeatureOptions):
    per_class: bool = Field(False, description="Also the FID within each class and their mean, intra-FID (Miyato & "
                                               "Koyama 2018), for a conditional model on labelled data. Each class "
                                               "has a share of the samples: give it thousands (-n, real_samples).")


class AgreementOptions(Options):
    classifier: str = Field("shapes", description="'shapes' (built in: the shape kind), or a TorchScript (.pt) or "
                                                  "ONNX (.onnx) file mapping (N, 3, H, W) images to (N, K) class "
                                                  "scores, one per class of the data, in its class order.")
    input_size: int | None = Field(None, gt=0, description="Resize images to this side for a file classifier.")
    input_range: tuple[float, float] = Field((-1.0, 1.0), description="The value range a file classifier expects, "
                                                                       "e.g. [0, 255].")


class KidOptions(FeatureOptions):
    subsets: int = Field(100, gt=0, description="Random subsets averaged over.")
    subset_size: int = Field(1000, gt=1, description="Samples per subset (fewer if either set is smaller).")


class NeighbourOptions(FeatureOptions):
    k: int = Field(3, gt=0, description="The k of the k-nearest-neighbour balls (3 in Kynkäänniemi et al.).")


class CoverageOptions(FeatureOptions):
    k: int = Field(5, gt=0, description="The k of the k-nearest-neighbour balls (5 in Naeem et al.).")


def _agreement(options: AgreementOptions, context: Context):
    from .agreement import ClassAgreement

    return ClassAgreement(options, context.data)


def _factory(kind: str):
    def build(options: FeatureOptions, context: Context):
        from .metric import FeatureMetric

        return FeatureMetric(kind, options, context.data)

    return build


@hookimpl
def aigc_register_metrics():
    return [
        ComponentSpec("fid", _factory("fid"), "Fréchet distance of Gaussians fitted to real and generated features "
                      "(lower is better); per class too (intra-FID) for a conditional model.", FidOptions),
        ComponentSpec("kid", _factory("kid"), "Kernel distance: unbiased polynomial-kernel MMD^2, mean and std over "
                      "subsets (lower is better; unbiased at any sample count).", KidOptions),
        ComponentSpec("precision-recall", _factory("precision-recall"), "k-NN manifold precision (fidelity) and "
                      "recall (diversity), Kynkäänniemi et al. 2019.", NeighbourOptions),
        ComponentSpec("density-coverage", _factory("density-coverage"), "Density and coverage around the real "
                      "samples' k-NN balls, Naeem et al. 2020.", CoverageOptions),
        ComponentSpec("class-agreement", _agreement, "The share of a conditional model's samples that a classifier "
                      "assigns to the class they were generated for, overall and per class (higher is better).",
                      AgreementOptions),
    ]
