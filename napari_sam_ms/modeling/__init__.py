"""SAM's model parts in MindSpore, one module per part of Meta's ``segment_anything.modeling``
(and MobileSAM's TinyViT encoder, ``tiny_vit``)."""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TinyViT", "TwoWayTransformer"]
