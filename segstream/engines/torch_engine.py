"""The torch backend: torchvision's Mask R-CNN modules run eagerly on CPU or CUDA.

The pipeline hands over images that are already resized, normalised and padded, so the
network's own GeneralizedRCNNTransform is skipped: backbone -> RPN -> RoI heads, and the
masks come back as 28x28 probabilities for the postprocess stage to paste.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.poolers import _setup_scales

from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Detections, Features


class TorchEngine:
    """Engine protocol over an eager torchvision MaskRCNN."""

    name = "torch"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cpu", max_batch: int = 4) -> None:
        self.config = model.config
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.network = model.network.to(self.device).eval()
        self._fix_pooler_scales()

    @torch.inference_mode()
    def _fix_pooler_scales(self) -> None:
        """Tie the RoI poolers' feature-map scales to the padded network input.

        torchvision infers them once, from the first batch's image sizes. Those are the resized
        frames inside the padding, which here can be far smaller than the input (a wide frame in
        a square input), and then every later frame would be pooled from the wrong FPN level.
        """
        height, width = self.config.input_size
        features = self.network.backbone(torch.zeros((1, 3, height, width), device=self.device))
        heads = self.network.roi_heads
        for pooler in (heads.box_roi_pool, getattr(heads, "mask_roi_pool", None)):
            if pooler is None:
                continue
            maps = [features[name] for name in pooler.featmap_names]
            pooler.scales, pooler.map_levels = _setup_scales(
                maps, [(height, width)], pooler.canonical_scale, pooler.canonical_level
            )

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on self.device."""
        return self.detect(self.extract(images, image_sizes))

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> Features:
        """The backbone+FPN on a batch (the first half, see SplitEngine): FPN maps on self.device."""
        if images.shape[0] > self.max_batch:
            raise ValueError(f"batch of {images.shape[0]} exceeds max_batch {self.max_batch}")
        sizes = [tuple(s) for s in image_sizes]
        return Features(images.shape[0], sizes, {"images": images, "maps": self.network.backbone(images)})

    @torch.inference_mode()
    def detect(self, features: Features) -> list[Detections]:
        """The RPN and the RoI heads on `extract`'s maps (the second half)."""
        images, maps = features.tensors["images"], features.tensors["maps"]
        image_list = ImageList(images, features.image_sizes)
        proposals, _ = self.network.rpn(image_list, maps)
        results, _ = self.network.roi_heads(maps, proposals, image_list.image_sizes)
        out = []
        for result in results:
            masks = result.get("masks")
            if masks is None:  # a network without a mask head still fits the protocol
                masks = images.new_zeros((len(result["scores"]), 28, 28))
            else:
                masks = masks[:, 0]
            out.append(Detections(result["boxes"], result["scores"], result["labels"], masks))
        return out

    def close(self) -> None:
        """Nothing to release beyond the network, which the caller's LoadedModel still holds."""
