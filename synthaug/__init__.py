"""synthaug: diffusion-generated, attention-annotated training data for segmentation.

The core imports torch, numpy and PIL only. diffusers/transformers load lazily when a
generator is built; mmseg and detectron2 are reached only through
``synthaug.integrations.<framework>``.
"""

__version__ = "0.1.0"
