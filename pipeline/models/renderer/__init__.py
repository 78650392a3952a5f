"""face-vid2vid renderer with CERL (method.md §4) and MappingNet (method.md §5), one network per file."""

from pipeline.models.renderer.appearance import AppearanceConfig, AppearanceFeatureExtractor
from pipeline.models.renderer.cerl import CERL, CERLConfig
from pipeline.models.renderer.dense_motion import DenseMotion, DenseMotionConfig, DenseMotionNetwork
from pipeline.models.renderer.discriminator import (DiscriminatorConfig, DiscriminatorOutput,
                                                    MultiScaleDiscriminator)
from pipeline.models.renderer.generator import GeneratorConfig, OcclusionAwareSPADEGenerator
from pipeline.models.renderer.head_pose import HeadPoseConfig, HeadPoseExpressionEstimator
from pipeline.models.renderer.keypoint_detector import CanonicalKeypointDetector, KeypointDetectorConfig
from pipeline.models.renderer.keypoints import HeadMotion, bins_to_degrees, transform_keypoints
from pipeline.models.renderer.mapping import MappingConfig, MappingNet
from pipeline.models.renderer.renderer import (Renderer, RendererConfig, RendererOutput, build_discriminator,
                                               load_sadtalker_renderer, sadtalker_layout)

__all__ = [
    "AppearanceConfig", "AppearanceFeatureExtractor", "CERL", "CERLConfig", "CanonicalKeypointDetector",
    "DenseMotion", "DenseMotionConfig", "DenseMotionNetwork", "DiscriminatorConfig", "DiscriminatorOutput",
    "GeneratorConfig", "HeadMotion", "HeadPoseConfig", "HeadPoseExpressionEstimator", "KeypointDetectorConfig",
    "MappingConfig", "MappingNet", "MultiScaleDiscriminator", "OcclusionAwareSPADEGenerator", "Renderer",
    "RendererConfig", "RendererOutput", "bins_to_degrees", "build_discriminator", "load_sadtalker_renderer",
    "sadtalker_layout", "transform_keypoints",
]
